"""Diagnostics of one model (dense or pruned), and the ``diagnostics`` section of an audit result.

:func:`diagnose` measures one model on a grouped dataset: per sample (loss, prediction, gradient norm,
margin, uncertainty, optionally the input-space boundary distance) and per group (the DIAG figures
of DESIGN.md: mean gradient norm, ‖g_a‖, λ_max and Tr of the group Hessian with standard errors, mean
margin and uncertainty, mean boundary distance or None). :func:`diagnostics_section` turns the dense
model's and each level's diagnostics into the result JSON's ``diagnostics`` section, with the
extras a reader may use (Theorem 1's terms, the factor reading, the flipped samples, distributions).

Cost [fairprune]: per model, one per-sample-gradient pass (whose forward gives the per-sample outputs) and one
gradient pass over the rows, plus per group (power iterations + probes) Hessian-vector products and one
forward-over-forward pass (λ_max's row-part quotients) on a seeded sample of at most ``hessian_rows`` rows (the
same rows for the dense model and every level, so level differences are not sampling noise). Each level's power
iteration starts from the dense model's eigenvector of the same group, so it usually stops after a few products.

Degrade per factor [fairprune] (issue 15): each factor (group gradient norm, per-sample gradient norms, margins and
uncertainty, Hessian per group, boundary distance per group) runs on its own; one that raises leaves its DIAG keys
None and says why in ``warnings`` (:data:`FACTOR_KEYS`), the others are kept; and an audit keeps its levels even
when a model's diagnostics fail outside any factor (every figure None, the reason in ``warnings``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch

from ...core.errors import Cancelled, InputError
from ..evaluate import resolve_device
from ._boundary import BOUNDARY_ATTACKS, boundary_distances, output_stats
from ._factors import FACTORS, factor_correlations, factor_values, theory_terms
from ._gradients import RowOutputs, group_pass
from ._gradnorm import per_sample_grad_norms
from ._hessian import HVP_METHODS, HessianOperator, max_eigenvalue, trace

__all__ = ["AuditDiagnostics", "DiagnosticsConfig", "ModelDiagnostics", "DIAG_KEYS", "SAMPLE_COLUMNS", "diagnose",
           "sample_table", "sample_rows", "input_positions", "diagnostics_section", "diagnose_steps"]

#: the per-group figures: DESIGN.md's DIAG, plus ``hessian_max_eig_converged`` (issue 12): whether the
#: power iteration met its tolerance within ``power_iterations`` (None where λ_max was not computed); and
#: (issue 15) ``hessian_method``, the Hessian-vector product the group's Hessian figures used, and
#: ``hessian_hvp_rel_error``, the estimated relative error of those products for finite differences (None
#: for exact products and where the Hessian was not computed)
DIAG_KEYS = ("grad_norm_mean", "group_grad_norm", "hessian_max_eig", "hessian_max_eig_se",
             "hessian_max_eig_converged", "hessian_trace", "hessian_trace_se", "hessian_method",
             "hessian_hvp_rel_error", "margin_mean", "uncertainty_mean", "boundary_distance_mean")
#: the start of the per-sample gradient norms' fallback warning (kept in ModelDiagnostics.warnings)
GRADNORM_WARNING = "per-sample gradient norms"
#: Why the input-space boundary distance is refused on integer inputs (token ids).
BOUNDARY_NEEDS_FLOATS = (
    "{name}: the boundary distance (--boundary) moves each input a small step in the direction that changes the "
    "prediction, which needs continuous inputs; its x holds integer ids ({dtype}: token ids or category codes), "
    "which have no such step and no input gradient; run without --boundary (margins and gradient norms are "
    "still computed)"
)

#: the per-sample CSV's columns (``boundary_distance`` appended where computed)
SAMPLE_COLUMNS = ("index", "group", "label", "pred", "loss", "grad_norm", "margin")
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
#: most parameter entries kept for warm-starting the levels' power iterations (all groups together)
WARM_START_ELEMENTS = 250_000_000
MARGIN_EDGES = tuple(np.round(np.linspace(-1, 1, 21), 10).tolist())


@dataclass(frozen=True)
class DiagnosticsConfig:
    """How much work the diagnostics do. The defaults keep the MNIST demo's 4-level audit fast on 2 CPU cores.

    hessian: False skips the Hessian (λ_max and trace null, a note in ``warnings``): most of the diagnostics' cost on
        large convolutional nets (each product is 2-4 forward+backward passes); gradient norms and margins remain.
    hessian_rows: rows per group the Hessian is estimated on (a seeded sample when the group is larger).
        λ_max of a subsample's Hessian is biased upward (the top eigenvalue of a noisy estimate of a matrix
        exceeds the matrix's on average), the more so the fewer rows: compare groups on equal row counts.
    power_iterations / power_tol: cap and relative stopping tolerance of the power iteration.
    hutchinson_probes: Rademacher probes for the trace. se_parts: row-parts for λ_max's sampling SE.
    hutchinson_rel_se: None (default): always ``hutchinson_probes`` probes; a number r > 0: stop after 4 or more
        probes once the trace's standard error is at most r·|trace| (fewer products where the estimate is already
        tight; the probes used are in ``details``).
    hvp: "auto" (double backward when the rows fit one batch, else reverse-over-forward; double backward where
        torch.func refuses the module; finite differences, with their error stated, where no exact product runs),
        or one of :data:`fairprune.engine.diagnose.HVP_METHODS` by name (never swapped).
    boundary: also measure the input-space boundary distance, on ``boundary_rows`` rows per group,
    ε up to ``boundary_max_eps`` (input units, L∞) with ``boundary_attack`` ("fgsm" or "pgd").
    flips_cap: flipped-sample indices kept per group and level. seed: None -> the audit's seed.
    """

    hessian: bool = True
    hessian_rows: int = 64
    power_iterations: int = 20
    power_tol: float = 1e-2
    hutchinson_probes: int = 8
    hutchinson_rel_se: float | None = None
    se_parts: int = 4
    hvp: str = "auto"
    boundary: bool = False
    boundary_rows: int = 32
    boundary_max_eps: float = 1.0
    boundary_attack: str = "fgsm"
    flips_cap: int = 200
    seed: int | None = None

    def __post_init__(self):
        if not isinstance(self.hessian, bool):
            raise InputError(f"diagnostics option hessian must be true or false; received {self.hessian!r}")
        for name in ("hessian_rows", "power_iterations", "hutchinson_probes", "se_parts", "boundary_rows", "flips_cap"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"diagnostics option {name} must be a whole number >= 1; received {v!r}")
        r = self.hutchinson_rel_se
        if r is not None and (isinstance(r, bool) or not isinstance(r, (int, float)) or not r > 0):
            raise InputError(f"diagnostics option hutchinson_rel_se must be null or a number > 0; received {r!r}")
        if not isinstance(self.power_tol, (int, float)) or not self.power_tol > 0:
            raise InputError(f"diagnostics option power_tol must be a number > 0; received {self.power_tol!r}")
        if self.hvp not in HVP_METHODS:
            raise InputError(f"diagnostics option hvp must be one of {', '.join(HVP_METHODS)}; received {self.hvp!r}")
        if self.boundary_attack not in BOUNDARY_ATTACKS:
            raise InputError(f"diagnostics option boundary_attack must be one of {', '.join(BOUNDARY_ATTACKS)}; "
                             f"received {self.boundary_attack!r}")
        if not isinstance(self.boundary_max_eps, (int, float)) or not self.boundary_max_eps > 0:
            raise InputError(f"diagnostics option boundary_max_eps must be a number > 0; received {self.boundary_max_eps!r}")

    @classmethod
    def coerce(cls, value) -> "DiagnosticsConfig | None":
        """False/None -> None; True -> defaults; a dict of options (an AuditSpec's JSON form) or a config."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise InputError(f"unknown diagnostics option(s) {unknown}; expected some of {sorted(known)}")
            return cls(**value)
        raise InputError(f"diagnostics must be true/false or a dict of options; received {type(value).__name__}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ModelDiagnostics:
    """One model's diagnostics on one dataset.

    samples: a pandas DataFrame, row-aligned with the data, columns ``index`` (position in the input),
        ``group``, ``label``, ``pred``, ``correct``, ``loss``, ``grad_norm`` (‖∇_θ ℓ(f(x_i), y_i)‖₂ over
        the trainable, unpruned coordinates), ``margin``, ``uncertainty``, ``boundary_distance`` (NaN
        where not measured).
    groups: group -> DIAG (:data:`DIAG_KEYS`); None for a figure that was not computed.
    details: group -> how the Hessian figures were obtained (rows, iterations, converged, probes).
    hvp_method: the Hessian-vector product(s) used ("+"-joined); hvp_fallback: why "auto" could not use the
        product it picked first (torch.func refused the module, no exact product runs), if it could not.
    warnings: what an auditor must know about these figures: parameters whose gradient norms came from
        the exact per-sample loop (no rule covers them), Hessian figures from finite differences, any factor not
        computed (its figures null) and why.
    """

    samples: object
    groups: dict[str, dict]
    details: dict[str, dict] = field(default_factory=dict)
    hvp_method: str | None = None
    hvp_fallback: str | None = None
    vectors: dict = field(default_factory=dict, repr=False)   # group -> top eigenvector (warm starts; not serialised)
    warnings: tuple[str, ...] = ()


def sample_rows(data, n_per_group: int, seed: int) -> dict[str, np.ndarray]:
    """Group -> sorted row positions: all rows of a group with at most ``n_per_group``, else a seeded sample."""
    groups = np.asarray(data.group).astype(str)
    out = {}
    for i, g in enumerate(sorted(set(groups))):
        rows = np.flatnonzero(groups == g)
        if len(rows) > n_per_group:
            rng = np.random.default_rng([seed, i])
            rows = np.sort(rng.choice(rows, n_per_group, replace=False))
        out[g] = rows
    return out


def input_positions(data) -> np.ndarray:
    """Positions in the input of the rows ``data.part('test')`` measures (all rows when there is no split)."""
    if data.split is None:
        return np.arange(data.n)
    return np.flatnonzero(data.split == "test")


def diagnose_steps(n_groups: int, *, hessian: bool = True, boundary: bool = False) -> int:
    """Progress steps one :func:`diagnose` call reports."""
    return 1 + (n_groups if hessian else 0) + (1 if boundary else 0)


def _rows(data, positions: np.ndarray, device) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.as_tensor(positions, dtype=torch.long)
    return data.to_float(data.x[t].to(device)), data.y[t].to(device)


def _mean(values: np.ndarray) -> float | None:
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else None


def _per_sample_grad_norms(model, data, *, batch_size, device, masks, cancel, on_logits=None
                           ) -> tuple[np.ndarray, list[str]]:
    """The norms and the fallback warnings they gave (recorded, not only shown: the CLI silences Python
    warnings); any other warning is passed on."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        norms = per_sample_grad_norms(model, data, batch_size=batch_size, device=device, masks=masks, cancel=cancel,
                                      on_logits=on_logits)
    said = []
    for w in caught:
        if str(w.message).startswith(GRADNORM_WARNING):
            said.append(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return np.asarray(norms, dtype=np.float64), said


#: each factor: what a reader calls it, and the DIAG keys that are null when it could not be computed
FACTOR_KEYS = {
    "group_grad_norm": ("group gradient norm ‖g_a‖", ("group_grad_norm",)),
    "grad_norm_mean": ("per-sample gradient norms", ("grad_norm_mean",)),
    "margin_mean": ("margins and uncertainty", ("margin_mean", "uncertainty_mean")),
    "hessian": ("Hessian", ("hessian_max_eig", "hessian_trace")),
    "boundary_distance_mean": ("boundary distance", ("boundary_distance_mean",)),
}
#: the start of the warning that the Hessian's figures came from finite differences
FD_WARNING = "Hessian figures from finite-difference Hessian-vector products"


def _reason(err: BaseException) -> str:
    first = (str(err).strip().splitlines() or [""])[0][:200]
    return f"{type(err).__name__}: {first}"


def _factor_failed(factor: str, groups: Sequence[str], reason: str) -> str:
    what, keys = FACTOR_KEYS[factor]
    groups = list(dict.fromkeys(groups))
    null = " and ".join(keys)
    return (f"{what} not computed for group(s) {', '.join(groups)} ({null} {'is' if len(keys) == 1 else 'are'} "
            f"null; every other figure is kept): {reason}")


def diagnose(model, data, *, masks: Mapping[str, torch.Tensor] | None = None, config: DiagnosticsConfig | None = None,
             hessian: bool = True, hessian_rows: Mapping[str, np.ndarray] | None = None,
             boundary_rows: Mapping[str, np.ndarray] | None = None, init: Mapping | None = None,
             index: np.ndarray | None = None, seed: int = 0, batch_size: int = 256,
             device: torch.device | str = "cpu", cancel: Callable[[], bool] | None = None,
             step: Callable[[str], None] | None = None, keep_vectors: bool = False,
             hvp: str | None = None, group_norms: bool = True) -> ModelDiagnostics:
    """Per-sample and per-group diagnostics of ``model`` (a LoadedModel at its current weights) on ``data``.

    Args:
        masks: the pruning masks the model's weights carry (name -> bool keep-mask): gradient norms and
            the Hessian are then over the unpruned coordinates only.
        hessian: False skips the Hessian figures (None in DIAG), e.g. for the per-sample CSV.
        group_norms: False skips ‖g_a‖ (``group_grad_norm`` None in DIAG) and the forward and backward pass it
            costs; the per-sample outputs then come from the gradient-norm pass's own forward (the per-sample CSV).
        hessian_rows / boundary_rows: group -> row positions to use (default: seeded samples of
            ``config.hessian_rows`` / ``config.boundary_rows`` per group).
        init: group -> start vector for the power iteration (e.g. the dense model's eigenvector).
        index: (N,) position of each row in the input (default 0..N-1).
        step: called with a message after each step (:func:`diagnose_steps` of them).
        keep_vectors: keep each group's top eigenvector in ``vectors`` (one parameter-sized vector per group).
        hvp: the Hessian-vector product to use (default ``config.hvp``); when "auto" had to fall back to
            double backward on one group, the other groups use double backward directly.
    """
    from ...zoo import LoadedModel

    if not isinstance(model, LoadedModel):
        model = LoadedModel.from_module(model, name=type(model).__name__)
    cfg = config or DiagnosticsConfig()
    if cfg.boundary and getattr(data, "n_inputs", 1) > 1:
        raise InputError(f"{data.name}: the boundary distance searches the input space of one continuous input; "
                         f"this model takes {data.n_inputs} inputs ({data.describe_inputs()}). Leave the boundary "
                         "distance out (the other diagnostics do not need it)")
    if cfg.boundary and getattr(data, "integer_inputs", False):
        raise InputError(BOUNDARY_NEEDS_FLOATS.format(name=data.name, dtype=str(data.x.dtype).removeprefix("torch.")))
    seed = cfg.seed if cfg.seed is not None else seed
    device = resolve_device(device)     # None: CUDA when available, else the CPU
    step = step or (lambda msg: None)
    groups = np.asarray(data.group).astype(str)
    names = data.group_names

    n = data.n
    failed: dict[tuple[str, str], list[str]] = {}    # (factor, reason) -> groups it could not be computed for

    def fail(factor: str, err: BaseException, groups: Sequence[str] = tuple(names)) -> None:
        failed.setdefault((factor, _reason(err)), []).extend(groups)

    # the group gradient norms ‖g_a‖: one forward and backward pass
    g_norms: dict[str, float] = {}
    if group_norms:
        try:
            g_norms, _ = group_pass(model, data, batch_size=batch_size, device=device, masks=masks, cancel=cancel,
                                    outputs=False)
        except Cancelled:
            raise
        except Exception as err:  # noqa: BLE001 - degrade per factor
            fail("group_grad_norm", err)
    # the per-sample gradient norms; the per-sample outputs (loss, prediction, margin, uncertainty) come from the
    # same forward pass, each batch's logits handed over as they are computed
    rows_out, out_error = RowOutputs(n), []

    def on_logits(logits, yb):
        if not out_error:
            try:
                rows_out.add(None, logits, yb)
            except Exception as err:  # noqa: BLE001 - degrade per factor: the outputs are recomputed below
                out_error.append(err)

    out = None
    try:
        grad_norm, notes = _per_sample_grad_norms(model, data, batch_size=batch_size, device=device, masks=masks,
                                                  cancel=cancel, on_logits=on_logits)
        if not out_error:
            out = rows_out.columns
    except Cancelled:
        raise
    except Exception as err:  # noqa: BLE001 - degrade per factor
        fail("grad_norm_mean", err)
        grad_norm, notes = np.full(n, np.nan), []
    if out is None:     # one inference pass of its own
        try:
            out = output_stats(model, data, batch_size=batch_size, device=device, cancel=cancel)
        except Cancelled:
            raise
        except Exception as err:  # noqa: BLE001 - degrade per factor
            fail("margin_mean", err)
            out = {"loss": np.full(n, np.nan), "pred": np.full(n, -1, dtype=np.int64), "margin": np.full(n, np.nan),
                   "uncertainty": np.full(n, np.nan)}
    step("gradient norms")

    import pandas as pd

    y = data.y.numpy()
    samples = pd.DataFrame({
        "index": np.arange(n) if index is None else np.asarray(index),
        "group": groups, "label": y, "pred": out["pred"], "correct": out["pred"] == y, "loss": out["loss"],
        "grad_norm": grad_norm, "margin": out["margin"], "uncertainty": out["uncertainty"],
        "boundary_distance": np.full(n, np.nan),
    })

    diags: dict[str, dict] = {}
    for g in names:
        rows = groups == g
        diags[g] = {"grad_norm_mean": _mean(grad_norm[rows]), "group_grad_norm": g_norms.get(g),
                    "hessian_max_eig": None, "hessian_max_eig_se": None, "hessian_max_eig_converged": None,
                    "hessian_trace": None, "hessian_trace_se": None, "hessian_method": None,
                    "hessian_hvp_rel_error": None, "margin_mean": _mean(out["margin"][rows]),
                    "uncertainty_mean": _mean(out["uncertainty"][rows]), "boundary_distance_mean": None}

    details: dict[str, dict] = {}
    vectors: dict = {}
    methods: set[str] = set()
    fallback = None
    if hessian:
        hrows = hessian_rows if hessian_rows is not None else sample_rows(data, cfg.hessian_rows, seed)
        module = model.module
        hvp = hvp or cfg.hvp
        for gi, g in enumerate(names):
            op = None
            try:
                x, yy = _rows(data, hrows[g], device)
                op = HessianOperator(module, x, yy, masks=masks, method=hvp, chunk_size=batch_size,
                                     fixed_batch_size=model.fixed_batch_size)
                eig = max_eigenvalue(op, iterations=cfg.power_iterations, tol=cfg.power_tol, seed=seed + 7919 * gi,
                                     init=(init or {}).get(g), se_parts=cfg.se_parts, cancel=cancel)
                tr = trace(op, probes=cfg.hutchinson_probes, seed=seed + 104729 * (gi + 1),
                           rel_se=cfg.hutchinson_rel_se, cancel=cancel)
            except Cancelled:
                raise
            except Exception as err:  # noqa: BLE001 - degrade per factor: the Hessian's figures stay null
                fail("hessian", err, [g])
                step(f"Hessian of group {g} (not computed)")
                continue
            finally:
                if op is not None:
                    op.release()
            method = "+".join(sorted(op.methods_used)) or op.method
            diags[g].update(hessian_max_eig=eig.value, hessian_max_eig_se=eig.se,
                            hessian_max_eig_converged=bool(eig.converged), hessian_trace=tr.value,
                            hessian_trace_se=None if math.isnan(tr.se) else tr.se, hessian_method=method,
                            hessian_hvp_rel_error=op.max_rel_error)
            details[g] = {"rows": int(len(hrows[g])), "iterations": eig.iterations, "converged": eig.converged,
                          "probes": tr.probes, "products": op.products, "dimension": op.dimension,
                          "hvp": method}
            if "finite_difference" in op.methods_used:
                details[g]["finite_difference"] = {
                    "precision": op.fd_dtype, "step": op.eps, "max_eig_error": eig.hvp_error,
                    "trace_error": tr.hvp_error, "max_rel_error": op.max_rel_error}
            if keep_vectors:
                vectors[g] = eig.vector
            methods.update(op.methods_used)
            fallback = fallback or op.fallback
            if op.fallback:
                hvp = op.method     # what worked: the other groups do not try the methods that failed again
            step(f"Hessian of group {g}")

    if cfg.boundary:
        brows = boundary_rows if boundary_rows is not None else sample_rows(data, cfg.boundary_rows, seed + 1)
        dist = samples["boundary_distance"].to_numpy(copy=True)
        for g in names:
            try:
                x, _ = _rows(data, brows[g], device)
                d, censored = boundary_distances(model, x, max_eps=cfg.boundary_max_eps, attack=cfg.boundary_attack,
                                                 cancel=cancel)
            except Cancelled:
                raise
            except Exception as err:  # noqa: BLE001 - degrade per factor
                fail("boundary_distance_mean", err, [g])
                continue
            dist[brows[g]] = d
            diags[g]["boundary_distance_mean"] = _mean(d)
            details.setdefault(g, {}).update(boundary_rows=int(len(d)), boundary_censored=int(censored.sum()))
        samples["boundary_distance"] = dist
        step("boundary distances")
    notes = list(notes)
    if fallback and "finite_difference" in methods:
        fd = [g for g in names if "finite_difference" in (diags[g]["hessian_method"] or "")]
        worst = max(diags[g]["hessian_hvp_rel_error"] or 0.0 for g in fd)
        notes.append(f"{FD_WARNING} for group(s) {', '.join(fd)}: no exact Hessian-vector product runs on this model "
                     f"({fallback}); hessian_method says finite_difference and hessian_hvp_rel_error states each "
                     f"group's estimated relative error (at most {worst:.1e} here)")
    notes += [_factor_failed(factor, gs, reason) for (factor, reason), gs in failed.items()]
    unconverged = [g for g in names if diags[g]["hessian_max_eig_converged"] is False]
    if unconverged:
        notes.append(f"the power iteration for λ_max did not converge within {cfg.power_iterations} products "
                     f"(relative tolerance {cfg.power_tol:g}) for group(s) {', '.join(unconverged)}: their "
                     f"hessian_max_eig is the last iterate, hessian_max_eig_converged is false")
    return ModelDiagnostics(samples=samples, groups=diags, details=details,
                            hvp_method="+".join(sorted(methods)) or None, hvp_fallback=fallback, vectors=vectors,
                            warnings=tuple(notes))


def _nothing_computed(data, names: Sequence[str], index, reason: str) -> ModelDiagnostics:
    """Every figure null, with the reason: what the audit keeps when a model's diagnostics fail outside any factor."""
    import pandas as pd

    n = data.n
    nan = np.full(n, np.nan)
    samples = pd.DataFrame({"index": np.arange(n) if index is None else np.asarray(index),
                            "group": np.asarray(data.group).astype(str), "label": data.y.numpy(),
                            "pred": np.full(n, -1, dtype=np.int64), "correct": np.zeros(n, dtype=bool), "loss": nan,
                            "grad_norm": nan, "margin": nan, "uncertainty": nan, "boundary_distance": nan})
    groups = {g: {k: None for k in DIAG_KEYS} for g in names}
    return ModelDiagnostics(samples=samples, groups=groups,
                            warnings=(f"no diagnostics computed for this model (every DIAG figure is null; the levels "
                                      f"are kept): {reason}",))


# ---- the result section ------------------------------------------------------------------------------
def _clean(v):
    """JSON-safe: numpy scalars to Python, NaN/inf to None, recursively."""
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.bool_,)):
        return bool(v)
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return f if math.isfinite(f) else None
    return v


def _distribution(samples, g) -> dict:
    rows = samples[samples["group"] == g]
    d = {}
    for col in ("grad_norm", "margin", "uncertainty"):
        vals = rows[col].to_numpy(dtype=float)
        vals = vals[np.isfinite(vals)]
        d[col] = np.quantile(vals, QUANTILES).tolist() if len(vals) else None
    d["margin_histogram"] = np.histogram(np.clip(rows["margin"].to_numpy(dtype=float), -1, 1),
                                         bins=np.asarray(MARGIN_EDGES))[0].tolist()
    return d


def _flips(dense, level, names: Sequence[str], cap: int) -> dict:
    """Rows the dense model gets right and the pruned one wrong, per group (capped), and how well the
    dense model's risk scores rank them (precision@k, k = number of flips, among the dense-correct rows)."""
    d, p = dense.samples, level.samples
    flipped = d["correct"].to_numpy() & ~p["correct"].to_numpy()
    fixed = ~d["correct"].to_numpy() & p["correct"].to_numpy()
    groups = d["group"].to_numpy()
    index = d["index"].to_numpy()
    per_group = {}
    for g in names:
        rows = np.flatnonzero(flipped & (groups == g))
        per_group[g] = {"n": int(len(rows)), "fixed": int((fixed & (groups == g)).sum()),
                        "indices": index[rows[:cap]].tolist()}
    candidates = np.flatnonzero(d["correct"].to_numpy())
    k = int(flipped.sum())
    precision = {"k": k, "grad_norm": None, "margin": None, "random": None}
    if k and len(candidates):
        for name, score in (("grad_norm", -d["grad_norm"].to_numpy()), ("margin", d["margin"].to_numpy())):
            order = candidates[np.argsort(score[candidates], kind="stable")]
            precision[name] = float(flipped[order[:k]].mean())
        precision["random"] = k / len(candidates)
    return {"n_flips": k, "n_fixed": int(fixed.sum()), "groups": per_group, "precision_at_k": precision}


def _risk(dense, names: Sequence[str], cap: int) -> dict:
    """Per group, the dense-correct rows most at risk: highest gradient norm, lowest margin (input positions)."""
    d = dense.samples
    out: dict[str, dict] = {"grad_norm": {}, "margin": {}}
    for g in names:
        rows = d[(d["group"] == g) & d["correct"]]
        out["grad_norm"][g] = rows.sort_values("grad_norm", ascending=False, kind="stable")["index"].head(cap).tolist()
        out["margin"][g] = rows.sort_values("margin", ascending=True, kind="stable")["index"].head(cap).tolist()
    return out


def diagnostics_section(dense: ModelDiagnostics, levels: Sequence[ModelDiagnostics], level_results: Sequence,
                        distances: Sequence[float], sizes: Mapping[str, int], config: DiagnosticsConfig) -> dict:
    """The result JSON's ``diagnostics`` section.

    ``level_results``: the audit's LevelResult per level (for drops and excessive losses);
    ``distances``: ‖θ̄ − θ*‖₂ over all parameters per level (Theorem 1's distance). The section::

        "diagnostics": {
          "dense":  {GROUP: DIAG},                 # DESIGN.md's DIAG, exactly these keys
          "levels": [{GROUP: DIAG}],               # one per level, in the result's level order
          # extra keys [fairprune] (readers ignore what they do not know):
          "theory": [{GROUP: {"grad_term", "hessian_term", "bound", "excessive_loss", "weight_distance"}}],
              # Theorem 1 per level: ‖g_a‖·d, ½ λ_max(H_a)·d², their sum, the measured R(a); g_a, H_a of the
              # dense model, d = ‖θ̄ − θ*‖₂ over all parameters (= the level's weight_distance unless
              # fine-tuning moved unprunable parameters)
          "factors": {"n_groups", "factors": [name], "values": {factor: {GROUP: value}},
                      "levels": [{"sparsity", "n_groups", "spearman": {factor: ρ | null},
                                  "p_value": {factor: p | null}, "n": {factor: groups used},
                                  "strongest": factor | null, "sentence": str}]},
              # Spearman across groups between each dense-model factor and the level's accuracy drops;
              # null with fewer than 4 groups or a constant factor; factors: grad_norm_mean,
              # group_grad_norm, hessian_max_eig, hessian_trace, neg_margin_mean (= −margin_mean),
              # uncertainty_mean, group_size
          "flips": {"cap_per_group": int,
                    "risk": {"grad_norm": {GROUP: [index]}, "margin": {GROUP: [index]}},
                        # dense-correct rows ranked by risk: highest gradient norm / lowest margin (capped)
                    "levels": [{"sparsity", "n_flips", "n_fixed",
                                "groups": {GROUP: {"n": flips, "fixed": wrong->right, "indices": [index]}},
                                "precision_at_k": {"k", "grad_norm", "margin", "random"}}]},
              # flip = right under the dense model, wrong under the pruned one; indices are row positions in
              # the input data (any split), capped per group; precision@k of each dense risk ranking among
              # the dense-correct rows, k = number of flips; "random" = k / dense-correct rows
          "distributions": {"quantiles": [0.05, 0.25, 0.5, 0.75, 0.95], "margin_edges": [21 edges],
                            "dense": {GROUP: {"grad_norm": [q], "margin": [q], "uncertainty": [q],
                                              "margin_histogram": [20 counts]}},
                            "levels": [{GROUP: ...}]},
          "details": {"config": DiagnosticsConfig, "hessian": {"methods": [str], "fallback": str | null,
                      "dense": {GROUP: {"rows", "iterations", "converged", "probes", "products", "dimension",
                                        "hvp", ["boundary_rows", "boundary_censored"]}},
                      "levels": [...]}, "index": str}
        No timings: the same audit gives the same JSON.
        }
    """
    names = list(dense.groups)
    values = factor_values(dense.groups, sizes)
    factor_levels, theory = [], []
    for lv, dist in zip(level_results, distances):
        drops = {g: lv.groups[g].accuracy_drop for g in names}
        corr = factor_correlations(values, drops)
        factor_levels.append({"sparsity": lv.sparsity, **corr})
        theory.append(theory_terms(dense.groups, {g: lv.groups[g].excessive_loss for g in names}, dist))
    used = sorted({m for d in [dense, *levels] if d.hvp_method for m in d.hvp_method.split("+")})
    hessian_details = {
        "methods": used, "fallback": next((d.hvp_fallback for d in [dense, *levels] if d.hvp_fallback), None),
        "dense": dense.details, "levels": [d.details for d in levels],
    }
    section = {
        "dense": {g: {k: dense.groups[g][k] for k in DIAG_KEYS} for g in names},
        "levels": [{g: {k: d.groups[g][k] for k in DIAG_KEYS} for g in names} for d in levels],
        "theory": theory,
        "factors": {"n_groups": len(names), "factors": list(FACTORS), "values": values, "levels": factor_levels},
        "flips": {"cap_per_group": config.flips_cap, "risk": _risk(dense, names, config.flips_cap),
                  "levels": [{"sparsity": lv.sparsity, **_flips(dense, d, names, config.flips_cap)}
                             for lv, d in zip(level_results, levels)]},
        "distributions": {"quantiles": list(QUANTILES), "margin_edges": list(MARGIN_EDGES),
                          "dense": {g: _distribution(dense.samples, g) for g in names},
                          "levels": [{g: _distribution(d.samples, g) for g in names} for d in levels]},
        "details": {"config": config.to_dict(), "hessian": hessian_details,
                    "index": "flip and risk indices are row positions in the input data (all rows, any split)"},
    }
    return _clean(section)



class AuditDiagnostics:
    """The diagnostics step of an audit (:func:`fairprune.engine.audit.audit`): the pipeline hands it what it needs.

    >>> diag = AuditDiagnostics(model, data, eval_data, config, masked=..., names=..., ...)   # measures the dense model
    >>> auditor.measure(levels, inspect=diag.inspect)        # each level while its weights are in place
    >>> result = result.with_section("diagnostics", diag.section(levels))

    ``model``: the LoadedModel (on ``device``); ``data``: the whole input (row positions); ``eval_data``: the rows
    measured; ``masked``: the MaskedModel through which the pipeline puts each level's masks in place; ``names``:
    the group names in order; ``batch_size()``: the pipeline's current batch size (it backs off on out-of-memory);
    ``warnings``: the audit's warning list, to which each diagnostics warning is added once; ``step(message)``
    after each step; ``cancel()`` True to stop.
    """

    def __init__(self, model, data, eval_data, config: DiagnosticsConfig, *, masked, names: Sequence[str], seed: int,
                 batch_size: Callable[[], int], device: torch.device, cancel: Callable[[], bool] | None = None,
                 warnings: list[str], step: Callable[[str], None] | None = None):
        self.model, self.eval_data, self.config, self.masked = model, eval_data, config, masked
        self.batch_size, self.device, self.cancel, self.warnings = batch_size, device, cancel, warnings
        self.seed = config.seed if config.seed is not None else seed
        self._step = step or (lambda msg: None)
        self.index = input_positions(data)
        self.hessian_rows = sample_rows(eval_data, config.hessian_rows, self.seed)
        self.boundary_rows = sample_rows(eval_data, config.boundary_rows, self.seed + 1)
        # ‖θ̄ − θ*‖ of Theorem 1 is over all parameters (fine-tuning moves the unpruned ones too)
        self.all_params = list(dict(model.module.named_parameters()))
        # warm starts keep one parameter-sized vector per group: only while that stays small
        n_params = sum(p.numel() for p in model.module.parameters())
        self.keep_vectors = n_params * len(names) <= WARM_START_ELEMENTS
        self.hvp = config.hvp
        self.names = list(names)
        if not config.hessian:
            self.warnings.append("diagnostics: the Hessian was not asked for (diagnostics option hessian=false): "
                                 "hessian_max_eig and hessian_trace are null; gradient norms and margins are measured")
        self.dense = self._diagnose(None, "dense")
        # "auto" had to fall back on the dense model: the levels go straight to the product that worked
        if self.dense.hvp_fallback and self.dense.hvp_method:
            self.hvp = "finite_difference" if "finite_difference" in self.dense.hvp_method else "double_backward"
        self.levels: dict[float, ModelDiagnostics] = {}
        self.distances: dict[float, float] = {}

    @staticmethod
    def steps(n_groups: int, n_levels: int, config: DiagnosticsConfig) -> int:
        return (n_levels + 1) * diagnose_steps(n_groups, hessian=config.hessian, boundary=config.boundary)

    def _diagnose(self, masks, label: str, init=None) -> ModelDiagnostics:
        try:
            d = self._diagnose_model(masks, label, init)
        except (Cancelled, InputError):
            raise
        except Exception as err:  # noqa: BLE001 - never lose the audit's levels to the diagnostics
            d = _nothing_computed(self.eval_data, self.names, self.index, _reason(err))
        self.record(d, label)
        return d

    def _diagnose_model(self, masks, label: str, init=None) -> ModelDiagnostics:
        return diagnose(self.model, self.eval_data, masks=masks, config=self.config, hessian=self.config.hessian,
                        hessian_rows=self.hessian_rows,
                     boundary_rows=self.boundary_rows, init=init, index=self.index, seed=self.seed,
                     batch_size=self.batch_size(), device=self.device, cancel=self.cancel,
                     step=lambda msg: self._step(f"diagnostics ({label}): {msg}"),
                     keep_vectors=masks is None and self.keep_vectors, hvp=self.hvp)

    def record(self, d: ModelDiagnostics, label: str) -> None:
        """Put ``d``'s warnings in the audit's ``warnings`` (the result and the CLI's ``warning:`` lines),
        each once: the same fallback on the dense model and every level is one warning."""
        for w in d.warnings:
            text = f"diagnostics: {w}"
            if label != "dense" and not w.startswith(GRADNORM_WARNING):
                text = f"diagnostics ({label}): {w}"
            if text not in self.warnings:
                self.warnings.append(text)

    def inspect(self, sparsity: float, _predictions=None) -> None:
        """Called by ``Auditor.measure`` while the level's pruned weights are in place."""
        masked = self.masked
        self.distances[sparsity] = masked.weight_distance(self.all_params)
        self.levels[sparsity] = self._diagnose(dict(masked.masks), f"sparsity {sparsity:g}", init=self.dense.vectors)

    def section(self, level_results: Sequence) -> dict:
        lv = [r for r in level_results if r.sparsity in self.levels]
        return diagnostics_section(self.dense, [self.levels[r.sparsity] for r in lv], lv,
                                   [self.distances[r.sparsity] for r in lv], self.eval_data.group_sizes,
                                   self.config)


def sample_table(model, eval_data, *, index, masks=None, boundary: bool | int = False,
                 config: DiagnosticsConfig | None = None, seed: int = 0, device: str | torch.device | None = None,
                 batch_size: int = 256, cancel: Callable[[], bool] | None = None):
    """The per-sample table of ``fairprune diagnose`` for ``model`` (with ``masks`` in place, if given) on the rows
    ``eval_data``; ``index``: their positions in the input (:func:`input_positions`). The pipeline that chose the
    rows and the masks is :func:`fairprune.engine.audit.sample_diagnostics`.

    Columns :data:`SAMPLE_COLUMNS`, plus ``boundary_distance`` when ``boundary`` (True: ``config.boundary_rows``
    rows per group; an int: that many), NaN on rows not sampled. ``table.attrs["warnings"]``: the diagnostics'
    warnings (e.g. parameters whose gradient norms came from the exact per-sample loop).
    """
    import dataclasses

    cfg = config or DiagnosticsConfig()
    if boundary:
        cfg = dataclasses.replace(cfg, boundary=True,
                                  boundary_rows=cfg.boundary_rows if boundary is True else int(boundary))
    diag = diagnose(model, eval_data, masks=masks, config=cfg, hessian=False, group_norms=False, index=index,
                    seed=seed, batch_size=batch_size, device=device, cancel=cancel)
    cols = list(SAMPLE_COLUMNS) + (["boundary_distance"] if cfg.boundary else [])
    table = diag.samples[cols].reset_index(drop=True)
    table.attrs["warnings"] = list(diag.warnings)
    return table
