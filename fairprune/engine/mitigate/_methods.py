"""Mitigation methods, registered by name (after ``fairprune.engine.prune``'s registry).

A method says how to repair a pruned model: which masks to use (the pruning method's, by default) and,
if it retrains, what to minimise (an :class:`~fairprune.engine.finetune.Objective`) over which batches
(shuffled or group-balanced). Its hyper-parameters have tuned defaults (see ``bench/RESULTS.md``) that
the caller may override for the method under test; baselines always run with their defaults.

==========================  ==========================================================================
``plain``                   minimise the mean loss J(θ; D) over shuffled batches (baseline)
``reweighted``              the same loss over group-balanced batches (every group equally likely) (baseline)
``constrained_loss``        Eq. 8's form, |J_a − J̄| ≤ α, by the Lagrangian dual method; J̄ is the batch's
                            mean loss: by default (group-balanced batches) the unweighted mean of the
                            group losses, not the paper's population loss J(θ; D); with balanced=False,
                            the population's (the training rows' group mix)
``constrained_accuracy_gap``  Balancing Act's one-sided form: each group's accuracy drop ≤ the reference
                            drop + α, the reference being the batch's: by default the unweighted mean of
                            the group drops, not Balancing Act's overall drop; with balanced=False, the
                            overall drop. CE surrogate in the primal step, true rates in the dual step
``protect_layers``          no retraining: keep dense the layers whose pruning costs the worst-off group most
                            (measured on training rows, one layer at a time), same overall sparsity
==========================  ==========================================================================

The descriptions below are what ``fairprune mitigate --help`` and the dashboard show: they say exactly
what each method constrains under its defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ...core.errors import InputError
from ..finetune import Objective
from ._objectives import AccuracyGapConstraint, LossConstraint

__all__ = ["MitigationMethod", "MethodConfig", "register_mitigation", "get_mitigation", "list_mitigations"]

_METHODS: dict[str, "MitigationMethod"] = {}


@dataclass(frozen=True)
class MethodConfig:
    """Resolved hyper-parameters of one method in one run.

    alpha: the constraint's tolerance (loss units for ``constrained_loss``, accuracy for
    ``constrained_accuracy_gap``); dual_lr: η_λ, the multipliers' step size; warmup: epochs with the
    multipliers held at zero; balanced: group-balanced batches; dual_holdout: the fraction of each group's
    training rows held back from the primal step for the dual step to measure the constraints on (0: the
    dual step measures the training batch); protect: at most this many layers kept dense (``protect_layers``).
    """

    alpha: float = 0.0
    dual_lr: float = 0.0
    warmup: int = 0
    balanced: bool = False
    dual_holdout: float = 0.0
    protect: int = 0

    def replaced(self, **overrides) -> "MethodConfig":
        """A copy with the given (non-None) values replaced, checked; an unknown name is an InputError."""
        unknown = sorted(set(overrides) - set(self.__dataclass_fields__))
        if unknown:
            raise InputError(f"unknown mitigation option(s) {unknown}; expected some of {list(self.__dataclass_fields__)}")
        cfg = replace(self, **{k: v for k, v in overrides.items() if v is not None})
        if cfg.alpha < 0:
            raise InputError(f"--alpha must be >= 0 (a tolerance); got {cfg.alpha!r}")
        if cfg.dual_lr < 0:
            raise InputError(f"--dual-lr must be >= 0; got {cfg.dual_lr!r}")
        if cfg.warmup < 0:
            raise InputError(f"--warmup must be >= 0 epochs; got {cfg.warmup!r}")
        if not 0.0 <= cfg.dual_holdout < 1.0:
            raise InputError(f"--dual-holdout must be a fraction in [0, 1); got {cfg.dual_holdout!r}")
        if cfg.protect < 0:
            raise InputError(f"--protect must be >= 0 layers; got {cfg.protect!r}")
        return cfg

    def to_dict(self, method: "MitigationMethod") -> dict:
        d = {"balanced": self.balanced} if method.retrains else {}
        if method.constrained:
            d.update(alpha=self.alpha, dual_lr=self.dual_lr, warmup=self.warmup, dual_holdout=self.dual_holdout)
        if method.name == "protect_layers":
            d["protect"] = self.protect
        return d


@dataclass(frozen=True)
class MitigationMethod:
    """Base class. ``objective`` builds the loss of one run (None: the plain mean loss)."""

    name: str = ""
    description: str = ""
    retrains: bool = True
    constrained: bool = False
    defaults: MethodConfig = MethodConfig()

    def config(self, **overrides) -> MethodConfig:
        """The defaults with the given (non-None) values replaced; values are checked."""
        return self.defaults.replaced(**overrides)

    def objective(self, names: list[str], cfg: MethodConfig, run) -> Objective | None:
        """``run``: what the engine prepared for this run (``run.probe``: held-back rows for the dual step
        or None; ``run.dense_accuracy``: (G,) dense accuracy per group on the rows the dual step measures)."""
        return None


def register_mitigation(cls):
    inst = cls()
    _METHODS[inst.name] = inst
    return cls


def list_mitigations() -> list[MitigationMethod]:
    return list(_METHODS.values())


def get_mitigation(name: str) -> MitigationMethod:
    try:
        return _METHODS[name]
    except KeyError:
        raise InputError(f"unknown mitigation method {name!r}; expected one of: {', '.join(_METHODS)}") from None


@register_mitigation
@dataclass(frozen=True)
class Plain(MitigationMethod):
    name: str = "plain"
    description: str = ("fine-tune with the plain mean loss over shuffled batches, i.e. the loss over the training "
                        "rows' group mix (baseline)")


@register_mitigation
@dataclass(frozen=True)
class Reweighted(MitigationMethod):
    name: str = "reweighted"
    description: str = ("fine-tune with the mean loss over group-balanced batches, i.e. the unweighted mean of the "
                        "group losses, every group counting once (baseline)")
    defaults: MethodConfig = MethodConfig(balanced=True)


@register_mitigation
@dataclass(frozen=True)
class ConstrainedLoss(MitigationMethod):
    name: str = "constrained_loss"
    description: str = ("the form of the paper's Eq. 8 by the Lagrangian dual method (one multiplier per group): "
                        "minimise the batch's mean loss J subject to |J_a − J| ≤ α for every group a. With the "
                        "default group-balanced batches J is the unweighted mean of the group losses (every group "
                        "counts once), not the paper's population loss; with --no-balanced, J is the population's "
                        "loss (the training rows' group mix), as in Eq. 8")
    constrained: bool = True
    defaults: MethodConfig = MethodConfig(alpha=0.0, dual_lr=0.2, warmup=1, balanced=True)

    def objective(self, names, cfg, run):
        return LossConstraint(names, alpha=cfg.alpha, dual_lr=cfg.dual_lr, warmup=cfg.warmup, probe=run.probe)


@register_mitigation
@dataclass(frozen=True)
class ConstrainedAccuracyGap(MitigationMethod):
    name: str = "constrained_accuracy_gap"
    description: str = ("Balancing Act's one-sided constraint: each group's accuracy drop (dense − pruned) at most "
                        "the reference drop + α. With the default group-balanced batches the reference is the "
                        "unweighted mean of the group drops (every group counts once), not Balancing Act's overall "
                        "drop; with --no-balanced, it is the overall drop (the training rows' group mix), as in "
                        "Balancing Act. Cross-entropy surrogate in the primal step, true accuracies in the dual step")
    constrained: bool = True
    defaults: MethodConfig = MethodConfig(alpha=0.0, dual_lr=0.2, warmup=1, balanced=True)

    def objective(self, names, cfg, run):
        return AccuracyGapConstraint(names, alpha=cfg.alpha, dual_lr=cfg.dual_lr, warmup=cfg.warmup,
                                     dense_accuracy=run.dense_accuracy, probe=run.probe)


@register_mitigation
@dataclass(frozen=True)
class ProtectLayers(MitigationMethod):
    name: str = "protect_layers"
    description: str = ("no retraining: keep dense the few layers whose pruning costs the worst-off group most "
                        "(per-group sensitivity on training rows), same overall sparsity from the other layers")
    retrains: bool = False
    defaults: MethodConfig = MethodConfig(protect=2)
