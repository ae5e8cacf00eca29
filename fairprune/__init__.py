"""fairprune: who pays for pruning? Per-group audits of compressed PyTorch classifiers.

The engine. It never imports a UI toolkit; the dashboard (``app/``) and the CLI call these functions.
"""

__version__ = "0.1.0"
