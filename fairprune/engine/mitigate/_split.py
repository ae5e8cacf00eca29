"""Which rows fine-tune and which rows measure: never the same ones.

Three sources, in this order of precedence (the result records which one was used):

- ``--train-data PATH``: those rows fine-tune; the data's 'test' rows (or all its rows, when it has no
  split) are held out;
- a ``split`` column/array: 'train' rows fine-tune, 'test' rows are held out;
- otherwise a seeded split stratified by group: in every group, ``train_fraction`` of its rows
  (rounded, at least one row on each side when the group has two or more) fine-tune and the rest are
  held out, so each group keeps its share on both sides. A group of one row is held out only.

Selection rows (``select_fraction``): a further seeded split, stratified by group, carved from the
training rows before any method sees them. Methods fine-tune on the rest of the training rows; the
recommendation is chosen on the selection rows; the figures reported are on the held-out rows, which
took no part in fitting or choosing. In every group with two or more training rows,
``select_fraction`` of them (rounded, at least one, never all) select; a group with one training row
keeps it for fine-tuning (the choice does not see that group).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...data import GroupedDataset
from ...core.errors import InputError

__all__ = ["Split", "split_rows", "stratified_split"]

SOURCES = ("split column", "train-data", "stratified")


@dataclass(frozen=True, eq=False)
class Split:
    """Training rows, held-out rows and (with ``select_fraction``) selection rows.

    ``train_index`` / ``eval_index``: positions in the dataset given to :func:`split_rows` (None for
    ``train_index`` when the training rows come from another file). ``train_fraction``: the fraction
    asked for (stratified) or measured, n_train / (n_train + n_eval), for the other sources; it
    describes the training side before selection rows are carved from it.
    ``select`` / ``select_index``: the selection rows and their positions in the file the training rows
    came from (``train_data`` for the 'train-data' source, else the dataset); None without selection.
    ``train`` and ``train_index`` then hold the fine-tuning rows only.
    """

    train: GroupedDataset
    eval: GroupedDataset
    source: str
    train_fraction: float
    seed: int | None
    train_index: np.ndarray | None
    eval_index: np.ndarray
    select: GroupedDataset | None = None
    select_index: np.ndarray | None = None
    select_fraction: float | None = None

    def to_dict(self) -> dict:
        d = {"source": self.source, "train_fraction": self.train_fraction}
        if self.seed is not None:
            d["seed"] = self.seed
        return d


def stratified_split(groups: np.ndarray, train_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train positions, held-out positions), sorted, drawn per group with a seeded generator."""
    if not 0.0 < float(train_fraction) < 1.0:
        raise InputError(f"train_fraction must be in (0, 1), e.g. 0.5; got {train_fraction!r}")
    rng = np.random.default_rng(seed)
    keys = np.asarray(groups).astype(str)
    train, held = [], []
    for g in sorted(set(keys.tolist())):
        rows = np.flatnonzero(keys == g)
        rows = rows[rng.permutation(len(rows))]
        k = int(round(train_fraction * len(rows)))
        k = min(max(k, 1), len(rows) - 1) if len(rows) >= 2 else 0
        train.append(rows[:k])
        held.append(rows[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(held))


def split_rows(data: GroupedDataset, *, train_data: GroupedDataset | None = None, train_fraction: float = 0.5,
               seed: int = 0, select_fraction: float | None = None) -> Split:
    """The training rows and held-out rows for a mitigation run, and selection rows carved from the
    training rows when ``select_fraction`` is given (see the module docstring)."""
    split = _train_and_held(data, train_data=train_data, train_fraction=train_fraction, seed=seed)
    if select_fraction is None:
        return split
    return _carve_selection(split, select_fraction, int(seed))


def _carve_selection(split: Split, fraction, seed: int) -> Split:
    try:
        fraction = float(fraction)
    except (TypeError, ValueError):
        raise InputError(f"--select-fraction must be a number in (0, 1), e.g. 0.2; got {fraction!r}") from None
    if not 0.0 < fraction < 1.0:
        raise InputError(f"--select-fraction must be in (0, 1), e.g. 0.2; got {fraction!r}")
    train = split.train
    # stratified_split's 'held' side keeps a one-row group, so it is the fine-tuning side here
    select, fit = stratified_split(train.group, fraction, seed)
    if len(select) == 0:
        sizes = ", ".join(f"{g!r} {n}" for g, n in train.group_sizes.items())
        raise InputError(f"{train.name}: too few training rows to keep selection rows apart from the fine-tuning "
                         f"rows: expected at least 2 training rows in some group, found {sizes}")
    base = split.train_index
    return Split(train.subset(fit), split.eval, split.source, split.train_fraction, split.seed,
                 None if base is None else base[fit], split.eval_index, train.subset(select),
                 select if base is None else base[select], fraction)


def _train_and_held(data: GroupedDataset, *, train_data: GroupedDataset | None, train_fraction: float,
                    seed: int) -> Split:
    if train_data is not None:
        held = np.flatnonzero(data.split == "test") if data.split is not None else np.arange(data.n)
        if len(held) == 0:
            raise InputError(f"{data.name}: the split column has no 'test' rows to hold out")
        ev = data.subset(held)
        return Split(train_data, ev, "train-data", train_data.n / (train_data.n + ev.n), None, None, held)
    if data.split is not None:
        tr, held = np.flatnonzero(data.split == "train"), np.flatnonzero(data.split == "test")
        for which, rows in (("train", tr), ("test", held)):
            if len(rows) == 0:
                raise InputError(f"{data.name}: the split column has no '{which}' rows; expected both "
                                 f"'train' and 'test' rows")
        return Split(data.subset(tr), data.subset(held), "split column", len(tr) / (len(tr) + len(held)),
                     None, tr, held)
    tr, held = stratified_split(data.group, train_fraction, seed)
    if len(tr) == 0:
        raise InputError(f"{data.name}: too few rows to split into training and held-out rows; "
                         f"found {data.n}")
    return Split(data.subset(tr), data.subset(held), "stratified", float(train_fraction), int(seed), tr, held)
