"""Mitigation: repair a pruned model's disparate impact, proven on held-out rows.

    >>> from fairprune.engine.mitigate import mitigate, recommend
    >>> res = mitigate(model, data, sparsity=0.95, method="constrained_loss", epochs=3, seeds=3)
    >>> res.to_dict()["mitigation"]["after"]["fairness_violation"]
    >>> recommend(res)                      # the method that measured best on the selection rows

Three disjoint sets of rows: fine-tuning rows; selection rows, carved from the training rows (20% of
each group's by default, ``select_fraction``, stratified, seeded), on which :func:`recommend` chooses;
held-out rows, on which every figure is reported and which took no part in fitting or choosing (so
the chosen method's held-out figures are not flattered by the choice).

Methods (a registry, :func:`list_mitigations`): ``plain`` and ``reweighted`` fine-tuning (baselines),
``constrained_loss`` (the paper's Eq. 8 by the Lagrangian dual method), ``constrained_accuracy_gap``
(Balancing Act's one-sided constraint, proxy-Lagrangian) and ``protect_layers`` (no retraining). The
fine-tuning loop is :func:`fairprune.engine.finetune.finetune` with the masks fixed.

The ``mitigation`` section (``{"mitigation": {...}}``, DESIGN.md) written by :meth:`MitigationResult.to_dict`::

    method, when, sparsity, alpha, epochs, seeds, n_train, n_eval, before, after, baselines, multipliers

as DESIGN.md defines them, and these documented extras:

- ``multipliers_std``: beside ``multipliers`` with several seeds (``multipliers`` is then the mean per
  epoch over seeds; an empty list for methods without multipliers);
- ``lr``, ``batch_size``: the fine-tuning budget every method got (Adam);
- ``split``: ``{"source": "split column" | "train-data" | "stratified", "train_fraction": float}`` (+ ``seed``
  for a stratified split); ``train_fraction`` is the one asked for (stratified) or the measured one;
- ``single_seed``: true when one seed was run (no spread to report);
- ``methods``: ``{name: OUTCOME}`` for every method tried (the method, the baselines, any others);
- ``recommended``: :func:`recommend` of this result, i.e. ``selection.chosen``;
- ``selection``: how the recommendation was chosen, ``{"split": "stratified from the training rows",
  "fraction": float, "seed": int, "n_select": int, "n_select_by_group": {GROUP: int}, "n_train": int,
  "n_eval": int, "chosen": str, "criterion": str, "by_method": {name: OUTCOME-lite}}``: ``n_select``
  selection rows (none of them fine-tunes any method, none is held out), ``n_train`` fine-tuning rows
  (the section's ``n_train``), ``n_eval`` held-out rows; ``by_method`` is every method tried measured
  on the selection rows, OUTCOME without ``groups`` (``{"overall": {n, accuracy, loss},
  "fairness_violation": {accuracy, loss}, "accuracy_gap"}``, ``*_std`` with several seeds); ``chosen``
  is what ``criterion`` picks there. A result without ``selection`` (written before it existed) chose
  ``recommended`` on its own held-out rows; :func:`recommend` refuses such a result unless
  ``on_reported_rows=True``;
- ``prune_method``, ``achieved_sparsity`` (``{name: fraction}`` measured on the first seed's weights),
  ``options`` (``{name: hyper-parameters}``: balanced, alpha, dual_lr, warmup, protect), ``device``;
- ``dense``: the dense model on the held-out rows, ``{"overall", "groups", "accuracy_gap"}``;
- ``protected_layers``: the layers ``protect_layers`` kept dense, when it ran; ``warnings``, when any.

With several seeds every number is the mean over seeds and ``KEY_std`` (sample std) sits beside it;
counts (``n``) that agree stay as they are.
"""

from ._engine import SELECT_FRACTION, WHEN, MitigationSpec, check_masks, mitigate, run_spec
from ._methods import MethodConfig, MitigationMethod, get_mitigation, list_mitigations, register_mitigation
from ._objectives import AccuracyGapConstraint, LossConstraint, Multipliers, group_means
from ._protect import LayerCost, layer_sensitivity, protected_masks
from ._result import ACCURACY_TOLERANCE, CRITERION, MitigationResult, Outcome, aggregate, measure, recommend
from ._split import Split, split_rows, stratified_split

__all__ = ["mitigate", "run_spec", "MitigationSpec", "MitigationResult", "Outcome", "recommend", "WHEN",
           "MitigationMethod", "MethodConfig", "register_mitigation", "get_mitigation", "list_mitigations",
           "Multipliers", "LossConstraint", "AccuracyGapConstraint", "group_means", "LayerCost",
           "layer_sensitivity", "protected_masks", "Split", "split_rows", "stratified_split", "aggregate",
           "measure", "check_masks", "ACCURACY_TOLERANCE", "CRITERION", "SELECT_FRACTION"]
