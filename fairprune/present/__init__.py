"""Layer 1, results into words, charts and pages: :mod:`.reading` (sentences), :mod:`.plots` (Plotly figures) and
:mod:`.report` (the self-contained HTML report, rendered from ``templates/``). Imports only :mod:`fairprune.core`:
it reads results, it never computes or runs them.
"""
