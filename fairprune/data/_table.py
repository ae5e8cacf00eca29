"""The label, group and split columns of a table: a CSV file, or an image zip's ``metadata.csv``.

Both loaders read the same three roles the same way; only what the other columns mean differs
(features for a CSV, image paths for a zip).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..core.errors import InputError
from ._checks import as_class_indices, check_split, fmt_names, fmt_rows, resolve_missing_groups
from ._dataset import join_groups

#: The optional column that marks rows as ``train`` or ``test``.
SPLIT_COLUMN = "split"

MISSING_COLUMN = "{file}: expected {role} column {col!r}{hint}, found columns: {found}"
EMPTY_TABLE = "{file}: expected at least one data row below the header, found none"
BAD_CSV = "{file}: expected a CSV table with a header row, found text that does not parse ({reason})"
NOT_UTF8 = "{file}: expected UTF-8 text, found bytes that do not decode ({reason})"


def line_numbers(positions) -> str:
    """CSV rows are reported by line number as an editor shows it (line 1 is the header)."""
    return fmt_rows(positions, word="line", offset=2)


def read_csv(source, *, file: str, text_columns, **kw) -> pd.DataFrame:
    """pandas.read_csv with its errors reworded. ``text_columns`` are read as text (so a group '01' stays '01')."""
    dtype = {c: str for c in text_columns}
    try:
        frame = pd.read_csv(source, dtype=dtype, **kw)
    except pd.errors.EmptyDataError as err:
        raise InputError(BAD_CSV.format(file=file, reason="the file is empty")) from err
    except pd.errors.ParserError as err:
        raise InputError(BAD_CSV.format(file=file, reason=str(err).strip())) from err
    except UnicodeDecodeError as err:
        raise InputError(NOT_UTF8.format(file=file, reason=err)) from err
    if len(frame) == 0:
        raise InputError(EMPTY_TABLE.format(file=file))
    return frame


def require_columns(frame: pd.DataFrame, wanted, *, file: str) -> None:
    """``wanted``: (role, column, hint) triples; the first one absent is an InputError listing the columns found."""
    for role, col, hint in wanted:
        if col not in frame.columns:
            raise InputError(
                MISSING_COLUMN.format(
                    file=file, role=role, col=col, hint=f" ({hint})" if hint else "", found=fmt_names(frame.columns)
                )
            )


@dataclass(frozen=True)
class TableParts:
    """The rows kept, and their labels, group keys and split, all row-aligned."""

    frame: pd.DataFrame        # kept rows, index reset
    rows: np.ndarray           # (N,) positions of the kept rows in the file, 0-based
    y: np.ndarray              # (N,) int64
    group: np.ndarray          # (N,) object, group keys
    split: np.ndarray | None   # (N,) object, 'train'/'test'


def table_parts(frame: pd.DataFrame, *, file: str, label: str, groups: tuple[str, ...],
                missing_group: str) -> TableParts:
    """Labels, group keys (intersectional keys joined with ' & ') and split of a table whose columns exist."""
    n_file = len(frame)
    keep, group_values = resolve_missing_groups(
        {col: frame[col].to_numpy(dtype=object) for col in groups if col != label},
        missing_group=missing_group, file=file, field="group column {name!r}", where=line_numbers,
    )
    if not group_values:  # the class is the only group: keys come from the validated labels below
        keep = np.ones(n_file, dtype=bool)
    rows = np.flatnonzero(keep)
    kept = frame.iloc[rows].reset_index(drop=True) if len(rows) < n_file else frame

    def where(idx):
        return line_numbers(rows[idx])

    y = as_class_indices(kept[label].to_numpy(), file=file, field=f"label column {label!r}", where=where)
    keys = join_groups([y if col == label else group_values[col][rows] for col in groups])
    split = None
    if SPLIT_COLUMN in kept.columns and SPLIT_COLUMN != label and SPLIT_COLUMN not in groups:
        split = check_split(kept[SPLIT_COLUMN].to_numpy(dtype=object), file=file,
                            field=f"column {SPLIT_COLUMN!r}", where=where)
    return TableParts(frame=kept, rows=rows, y=y, group=keys, split=split)
