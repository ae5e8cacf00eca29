"""Sanity warnings: what an auditor must know before reading the numbers (the result's ``warnings``).

Three conditions make figures of an otherwise valid audit misleading, so they are stated in words:

- the evaluated labels are all one class: a model that always answers that class scores 100%, and
  binary rates (tpr or fpr) are undefined for every group;
- a model (the dense one, a pruning level or a compression variant) is at or below chance. Chance is
  the majority-class rate of the evaluated labels, the accuracy of always answering the most frequent
  class: on imbalanced labels that constant model beats 1/K, so 1/K would let a collapsed model pass.
  A model exactly at that rate counts (it may be the constant model). Its group drops then describe
  a model that no longer does the task, and a drop that differs "beyond chance" says nothing more;
- a binary task where a group has no positive or no negative labels: its tpr or fpr is undefined
  (null in the result), so rate gaps leave it out.

Each warning names the group or model and the figure. Nothing here changes a number.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..core.result import Metrics

__all__ = ["sanity_warnings"]


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def sanity_warnings(y: np.ndarray, groups: np.ndarray, names: Sequence[str], num_outputs: int,
                    dense: Metrics, models: Sequence[tuple[str, Metrics]] = ()) -> list[str]:
    """The warnings for one audit's evaluated rows.

    ``y``: (N,) integer labels; ``groups``: (N,) group names; ``names``: the groups in result order;
    ``num_outputs``: the model's outputs (1 or 2 is a binary task); ``dense``: the dense model's overall
    Metrics; ``models``: (label, overall Metrics) of each pruned model or variant, e.g. ("90% sparsity", m).
    """
    y, groups = np.asarray(y).reshape(-1), np.asarray(groups).astype(str).reshape(-1)
    if len(y) == 0:
        return []
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) == 1:
        rows = "the one evaluated row is" if len(y) == 1 else f"all {len(y):,} evaluated rows are"
        return [f"labels: {rows} class {classes[0]}: a model that always answers "
                f"{classes[0]} scores 100%, accuracy cannot tell a model that learned the task from one that did "
                f"not, and per-class rates (true/false positive rate) are undefined; evaluate on rows of more "
                f"than one class"]
    out = []
    top = int(np.argmax(counts))
    chance, majority = counts[top] / len(y), classes[top]
    where = f"the majority-class rate ({_pct(chance)}: always answering class {majority})"
    if dense.accuracy <= chance + 1e-12:
        out.append(f"the dense model's accuracy ({_pct(dense.accuracy)}) is at or below chance, {where}: it does "
                   f"not do the task on these rows, so its group gaps and every drop measured from it say little "
                   f"about who pays for pruning")
    collapsed = [f"{label} {_pct(m.accuracy)}" for label, m in models if m.accuracy <= chance + 1e-12]
    if collapsed:
        out.append(f"at or below chance, {where}: {', '.join(collapsed)}; "
                   f"{'this model has' if len(collapsed) == 1 else 'these models have'} collapsed, so "
                   f"{'its' if len(collapsed) == 1 else 'their'} group drops (and any drop that differs beyond "
                   f"chance) describe a broken model, not who pays for pruning")
    if num_outputs <= 2:
        for g in names:
            in_g = y[groups == g]
            if len(in_g) == 0:
                continue
            for value, missing, rate in ((1, "positive", "true positive rate"), (0, "negative", "false positive rate")):
                if not (in_g == value).any():
                    out.append(f"group {g!r} ({len(in_g):,} row{'s' * (len(in_g) != 1)}) has no {missing} labels "
                               f"(every label is {1 - value}): its {rate} is undefined (null in the result) "
                               f"and rate gaps leave it out")
    return out
