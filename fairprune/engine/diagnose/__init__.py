"""Diagnostics: why a group pays for pruning (PAPER.md, "Why it happens").

Per sample: the gradient norm ‖∇_θ ℓ(f(x_i), y_i)‖, the margin p_y − max_{k≠y} p_k, the uncertainty
Σ_k p_k(1 − p_k), optionally the input-space distance to the decision boundary. Per group: the mean
gradient norm, ‖g_a‖ (the gradient of the group's mean loss), λ_max and the trace of the group
Hessian H_a with standard errors (Theorem 1's quantities), mean margin and uncertainty. Across groups:
which factor ranks the groups' accuracy drops (Spearman), Theorem 1's terms next to the measured
excessive loss, and the samples pruning flips.

    >>> from fairprune.engine.diagnose import diagnose
    >>> d = diagnose(loaded_model, data)            # ModelDiagnostics: .samples (DataFrame), .groups (DIAG)
    >>> from fairprune.engine.audit import sample_diagnostics
    >>> table = sample_diagnostics(loaded_model, data, sparsity=0.9)   # the `fairprune diagnose` CSV
    >>> audit(model, data, sparsities=[0.9], diagnostics=True).diagnostics   # the result section

Modules: ``_hessian`` (HVPs, power iteration, Hutchinson), ``_gradients`` (‖g_a‖), ``_gradnorm``
(per-sample gradient norms), ``_boundary`` (margin, uncertainty, input-space distance), ``_factors``
(rank correlations, Theorem 1's terms, the plain reading), ``_run`` (one model; the result section).
"""

from ._boundary import BOUNDARY_ATTACKS, boundary_distances, output_stats, uncertainty
from ._factors import (FACTORS, MIN_GROUPS, compare_groups, factor_correlations, factor_sentence, factor_values,
                       theory_reading, theory_terms)
from ._gradients import group_grad_norms
from ._gradnorm import per_sample_grad_norms, per_sample_grad_norms_reference
from ._hessian import (HVP_METHODS, EigenEstimate, HessianOperator, TraceEstimate, hvp_double_backward,
                       hvp_forward_over_reverse, hvp_reverse_over_forward, max_eigenvalue, trace)
from ._run import (DIAG_KEYS, SAMPLE_COLUMNS, AuditDiagnostics, DiagnosticsConfig, ModelDiagnostics, diagnose,
                   diagnose_steps, diagnostics_section, input_positions, sample_rows, sample_table)

__all__ = [
    "AuditDiagnostics", "BOUNDARY_ATTACKS", "DIAG_KEYS", "DiagnosticsConfig", "EigenEstimate", "FACTORS",
    "HVP_METHODS", "HessianOperator", "MIN_GROUPS", "ModelDiagnostics", "SAMPLE_COLUMNS", "TraceEstimate",
    "boundary_distances", "compare_groups", "diagnose", "diagnose_steps", "diagnostics_section", "factor_correlations",
    "factor_sentence", "factor_values", "group_grad_norms", "hvp_double_backward", "hvp_forward_over_reverse",
    "hvp_reverse_over_forward",
    "input_positions", "max_eigenvalue", "output_stats", "per_sample_grad_norms", "per_sample_grad_norms_reference",
    "sample_rows", "sample_table", "theory_reading", "theory_terms", "trace", "uncertainty",
]
