"""fairprune's Streamlit dashboard: `streamlit run app/main.py` (or `make run`)."""
