"""Layer 2, the computations and the pipelines that string them: evaluation, metrics, pruning, compression,
fine-tuning, footprint, export, diagnostics, mitigation, the audit pipeline and the operating-point search.
Imports :mod:`fairprune.core`, :mod:`fairprune.zoo`, :mod:`fairprune.data` and :mod:`fairprune.present`; never
:mod:`fairprune.run`.
"""
