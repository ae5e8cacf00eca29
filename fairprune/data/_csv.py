"""CSV loader: one row per sample, with a label column, group column(s), an optional split and features.

The features are every other column in file order, unless ``features`` names them (in the model's input
order) or ``ignore`` leaves some out. A ``.csv.gz`` file is decompressed as it is parsed, and refused once
it expands past the size limit.
"""

from __future__ import annotations

import gzip
import io
import shlex
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..core._hash import sha256_file
from ..core.errors import InputError
from ._checks import fit_normalize, fmt_names
from ._dataset import GroupedDataset
from ._table import SPLIT_COLUMN, line_numbers, read_csv, require_columns, table_parts

NON_NUMERIC_FEATURES = (
    "{file}: feature columns must be numeric; found text in {cols}. "
    "Leave them out with {ignore}, or one-hot encode them into 0/1 columns"
)
NONFINITE_FEATURES = (
    "{file}: features must be finite numbers; found NaN, inf or blank values in {n} row(s) ({where}) "
    "of column(s) {cols}"
)
ROLE_AS_FEATURE = "{file}: features (--features) must not include the {role} column {col!r}; found it among {features}"
NO_FEATURES = "{file}: expected at least one feature column, found none left; columns in the file: {found}"
GZIP_TOO_LARGE = (
    "{file}: refused: the file expands past the limit of {limit:,} bytes (max_uncompressed_bytes); "
    "expected a smaller file or a higher limit"
)
BAD_GZIP = "{file}: expected gzip-compressed CSV text, found a file that does not decompress ({reason})"


def load_csv(path: Path, *, label: str, groups: tuple[str, ...], features, ignore, missing_group: str,
             normalize, name: str | None, max_uncompressed_bytes: int) -> GroupedDataset:
    file = path.name
    text_columns = [g for g in groups if g != label]
    if path.name.lower().endswith(".gz"):
        try:
            with io.BufferedReader(_LimitedGzip(path, limit=max_uncompressed_bytes, file=file)) as f:
                frame = read_csv(f, file=file, text_columns=text_columns, compression=None)
        except (gzip.BadGzipFile, EOFError, zlib.error) as err:
            raise InputError(BAD_GZIP.format(file=file, reason=err)) from err
    else:
        frame = read_csv(path, file=file, text_columns=text_columns)

    require_columns(
        frame,
        [("label", label, "--label")] + [("group", g, "--group") for g in groups],
        file=file,
    )
    feature_cols = _feature_columns(frame, file=file, label=label, groups=groups, features=features, ignore=ignore)
    parts = table_parts(frame, file=file, label=label, groups=groups, missing_group=missing_group)
    x = _features(parts.frame, feature_cols, rows=parts.rows, file=file)
    return GroupedDataset(
        x=torch.from_numpy(x),
        y=torch.from_numpy(parts.y),
        group=parts.group,
        name=name or file,
        sha256=sha256_file(path),
        label_column=label,
        group_columns=groups,
        feature_names=tuple(feature_cols),
        split=parts.split,
        normalize=fit_normalize(normalize, x.shape, file=file),
        frame=parts.frame,
    )


def _feature_columns(frame: pd.DataFrame, *, file, label, groups, features, ignore) -> list[str]:
    roles = {label: "label", SPLIT_COLUMN: "split", **{g: "group" for g in groups if g != label}}
    if features is not None:
        require_columns(frame, [("feature", c, "--features") for c in features], file=file)
        for c in features:
            if c in roles:  # the column exists (checked above), so a 'split' here is the split column
                raise InputError(ROLE_AS_FEATURE.format(file=file, role=roles[c], col=c, features=list(features)))
        chosen = list(features)
    else:
        chosen = [c for c in frame.columns if c not in roles]
    if ignore is not None:
        require_columns(frame, [("ignored", c, "--ignore") for c in ignore], file=file)
        chosen = [c for c in chosen if c not in ignore]
    if not chosen:
        raise InputError(NO_FEATURES.format(file=file, found=fmt_names(frame.columns)))
    return chosen


def _features(frame: pd.DataFrame, cols: list[str], *, rows: np.ndarray, file: str) -> np.ndarray:
    """(N, F) float32 features; text columns and NaN/inf are refused with the columns and rows named."""
    text = [c for c in cols if not (pd.api.types.is_numeric_dtype(frame[c]) or pd.api.types.is_bool_dtype(frame[c]))]
    if text:
        examples = []
        for c in text:
            values = frame[c].dropna()
            numeric = pd.to_numeric(values, errors="coerce")
            example = values[numeric.isna()].iloc[0] if numeric.isna().any() else None
            examples.append(f"{c!r}" + (f" (e.g. {example!r})" if example is not None else ""))
        ignore = " ".join(f"--ignore {shlex.quote(c)}" for c in text)
        raise InputError(NON_NUMERIC_FEATURES.format(file=file, cols=", ".join(examples), ignore=ignore))
    with np.errstate(over="ignore", invalid="ignore"):
        x = frame[cols].to_numpy(dtype=np.float32, na_value=np.nan)
    bad = ~np.isfinite(x)
    if bad.any():
        bad_rows = np.flatnonzero(bad.any(axis=1))
        bad_cols = [c for c, b in zip(cols, bad.any(axis=0)) if b]
        raise InputError(
            NONFINITE_FEATURES.format(
                file=file, n=len(bad_rows), where=line_numbers(rows[bad_rows]), cols=", ".join(map(repr, bad_cols))
            )
        )
    # pandas may hand back a read-only view of its own buffer; the dataset's tensor must own writable memory
    return np.require(x, requirements=["C_CONTIGUOUS", "WRITEABLE", "OWNDATA"])


class _LimitedGzip(io.RawIOBase):
    """A gzip stream that raises InputError once more than ``limit`` bytes have come out of it."""

    def __init__(self, path: Path, *, limit: int, file: str):
        self._f = gzip.open(path, "rb")
        self._left = limit
        self._limit = limit
        self._file = file

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self._f.readinto(b)
        self._left -= n
        if self._left < 0:
            raise InputError(GZIP_TOO_LARGE.format(file=self._file, limit=self._limit))
        return n

    def close(self) -> None:
        self._f.close()
        super().close()
