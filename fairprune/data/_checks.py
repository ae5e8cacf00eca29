"""Checks and message texts shared by the file loaders (CSV, NPZ, image zip).

Every message names the file, the field, what was expected and what was found. The texts are module
constants so the tests can assert them and the three loaders word the same problem the same way.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from collections.abc import Sequence

import numpy as np

from ..core.errors import InputError

#: The values a ``split`` column/array may hold.
SPLITS = ("train", "test")
#: What ``missing_group`` may be.
MISSING_GROUP_CHOICES = ("error", "drop", "category")
#: The group a missing value becomes with ``missing_group="category"``.
MISSING_GROUP_NAME = "missing"
#: ``normalize="imagenet"``: torchvision's ImageNet channel statistics (RGB).
IMAGENET_NORMALIZE = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

#: A single zip member is a bomb when it expands more than this many times ...
ZIP_MAX_RATIO = 200
#: ... to more than this many bytes (small, highly compressible members such as a CSV of zeros are fine).
ZIP_RATIO_MIN_BYTES = 10 << 20
#: Archives with more entries are refused before their directory is parsed (each entry costs memory to list).
ZIP_MAX_ENTRIES = 1_000_000

# ---- message texts ---------------------------------------------------------------------------------
MISSING_GROUP_OPTION = "missing_group (--missing-group): expected one of {choices}, found {found!r}"
NORMALIZE_FORMAT = (
    "normalize (--normalize): expected 'imagenet', 'MEAN,STD' (one mean and one std for every channel) or "
    "'M1,M2,...;S1,S2,...' (one per channel), found {found!r}"
)
NORMALIZE_LENGTHS = (
    "normalize (--normalize): expected as many means as stds, found {n_mean} means and {n_std} stds in {found!r}"
)
NORMALIZE_STD = "normalize (--normalize): expected every std > 0 and finite, found {std}"
NORMALIZE_CHANNELS = (
    "{file}: normalize (--normalize) gives {n} value(s) per statistic, but the data has {c} channel(s) "
    "(x has shape {shape}); expected {c} mean(s) and {c} std(s), or one of each"
)
BAD_SPLIT = "{file}: {field} must hold {expected}; found {values}"
ZIP_TOO_LARGE = (
    "{file}: refused: the archive expands to {total:,} bytes, more than the limit of {limit:,} bytes "
    "(max_uncompressed_bytes); expected a smaller archive or a higher limit"
)
ZIP_BOMB = (
    "{file}: refused: member {member!r} expands {ratio:.0f}x (from {compressed:,} to {size:,} bytes), "
    "which looks like a zip bomb; expected at most {max_ratio}x for members over {min_bytes:,} bytes"
)
NOT_A_ZIP = "{file}: expected a zip archive ({what}), found a file that is not one ({reason})"
ZIP_TOO_MANY = (
    "{file}: refused: the archive lists {n:,} entries, more than the limit of {limit:,}; expected fewer files "
    "in one archive"
)
NOT_UTF8_VALUE = "{file}: {field} must hold UTF-8 text; found bytes that do not decode: {value!r}"


def decode_text(values, *, file: str, field: str) -> list:
    """Values with bytes (an NPZ ``S`` array) decoded as UTF-8; undecodable bytes are an InputError."""
    out = []
    for v in values:
        if isinstance(v, bytes):
            try:
                v = v.decode()
            except UnicodeDecodeError:
                raise InputError(NOT_UTF8_VALUE.format(file=file, field=field, value=v[:40])) from None
        out.append(v)
    return out


def check_missing_group(missing_group: str) -> str:
    if missing_group not in MISSING_GROUP_CHOICES:
        raise InputError(MISSING_GROUP_OPTION.format(choices=", ".join(MISSING_GROUP_CHOICES), found=missing_group))
    return missing_group


def as_names(value: str | Sequence[str] | None, field: str) -> tuple[str, ...] | None:
    """A column name or a sequence of them -> a tuple of names (duplicates refused)."""
    if value is None:
        return None
    names = (value,) if isinstance(value, str) else tuple(value)
    for n in names:
        if not isinstance(n, str):
            raise TypeError(f"{field}: expected column names (str), found {type(n).__name__} {n!r}")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputError(f"{field}: expected each column once, found {', '.join(map(repr, dup))} more than once")
    return names


# ---- formatting ------------------------------------------------------------------------------------
_PLURAL = {"row": "rows", "line": "lines", "index": "indices"}


def fmt_rows(positions, *, word: str = "row", offset: int = 0, limit: int = 5) -> str:
    """'lines 3, 7, 12 and 4 more': the first few of ``positions`` (0-based), shifted by ``offset``.

    CSV files report ``line`` numbers (offset 2: line 1 is the header), arrays report 0-based ``index``.
    """
    positions = np.asarray(positions)
    shown = ", ".join(str(int(p) + offset) for p in positions[:limit])
    more = f" and {len(positions) - limit} more" if len(positions) > limit else ""
    return f"{word if len(positions) == 1 else _PLURAL.get(word, word + 's')} {shown}{more}"


def fmt_counts(values, *, limit: int = 5) -> str:
    """"'a' (12 rows), 'b' (1 row)" for the distinct values found, most frequent first."""
    shown = np.asarray([_show(v) for v in np.asarray(values, dtype=object).ravel()], dtype=str)
    vals, counts = np.unique(shown, return_counts=True)
    order = sorted(range(len(vals)), key=lambda i: (-counts[i], vals[i]))
    parts = [f"{vals[i]} ({counts[i]} row{'s' if counts[i] != 1 else ''})" for i in order[:limit]]
    if len(order) > limit:
        parts.append(f"and {len(order) - limit} more distinct values")
    return ", ".join(parts)


def fmt_names(names, *, limit: int = 30) -> str:
    names = list(names)
    shown = ", ".join(map(repr, names[:limit]))
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "") if names else "none"


def _show(v) -> str:
    if not isinstance(v, (str, bytes)) and _missing(v):
        return "<missing>"
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    if isinstance(v, (np.integer, int, float, np.floating)):
        return str(v)
    if isinstance(v, bytes):
        v = v.decode(errors="replace")
    return repr(str(v))


def is_missing(values: np.ndarray) -> np.ndarray:
    """(N,) bool: None/NaN, or a string that is empty after stripping whitespace."""
    values = np.asarray(values)
    if values.dtype.kind in "iub":
        return np.zeros(len(values), dtype=bool)
    if values.dtype.kind in "fc":
        return np.isnan(values)
    if values.dtype.kind in "US":
        return np.char.strip(values) == ("" if values.dtype.kind == "U" else b"")
    return np.asarray([_missing(v) for v in values], dtype=bool)


def _missing(v) -> bool:
    if isinstance(v, (str, bytes)):
        return not v.strip()
    if v is None:
        return True
    import pandas as pd      # here, not at import: reading an NPZ never needs pandas

    return np.ndim(v) == 0 and bool(pd.isna(v))  # NaN, pd.NA, NaT


# ---- labels ----------------------------------------------------------------------------------------
MISSING_LABELS = "{file}: {field} must have a class label in every row; found {n} missing ({where})"
NON_INTEGER_LABELS = (
    "{file}: {field} must hold integer class indices (0, 1, 2, ...); found {values} ({where}). "
    "Map class names to indices first"
)


def as_class_indices(values, *, file: str, field: str, where) -> np.ndarray:
    """Labels -> (N,) int64. Integer-valued floats (1.0) are fine; missing, fractional or text labels are not.

    ``where(positions)`` words the positions (0-based) of offending rows for the message.
    """
    v = np.asarray(values)
    if v.dtype.kind == "b":
        return v.astype(np.int64)
    if v.dtype.kind in "iu":
        return v.astype(np.int64)
    missing = is_missing(v)
    if missing.any():
        idx = np.flatnonzero(missing)
        raise InputError(MISSING_LABELS.format(file=file, field=field, n=len(idx), where=where(idx)))
    if v.dtype.kind == "f":
        num = v.astype(np.float64)
    else:
        num = np.asarray([_to_float(x) for x in v.ravel()], dtype=np.float64).reshape(v.shape)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(num) | (num != np.round(num)) | (np.abs(num) > 2**53)
    if bad.any():
        idx = np.flatnonzero(bad)
        raise InputError(
            NON_INTEGER_LABELS.format(file=file, field=field, values=fmt_counts(v[idx]), where=where(idx))
        )
    return num.astype(np.int64)


def _to_float(x) -> float:
    if isinstance(x, (bool, np.bool_)):
        return float(x)
    if isinstance(x, (int, float, np.integer, np.floating)):
        return float(x)
    return math.nan  # text: never a class index


# ---- groups ----------------------------------------------------------------------------------------
MISSING_GROUPS = (
    "{file}: {field} must have a group in every row; found {n} missing ({where}). "
    "Use --missing-group drop to leave those rows out, or --missing-group category to put them in a group "
    "named 'missing'"
)
NUL_IN_GROUPS = (
    "{file}: {field} must hold printable text; found a NUL character in {n} row(s) ({where}). Remove the NUL "
    "bytes (a binary file saved as text?)"
)
NOTHING_LEFT = "{file}: expected rows to audit, found none left after dropping {n} row(s) with a missing group"


def resolve_missing_groups(columns: dict, *, missing_group: str, file: str, field: str, where):
    """Apply ``missing_group`` to per-sample group arrays.

    ``columns`` maps a name to an (N,) array; ``field`` words one (``"group column {name!r}"``);
    ``where(positions)`` words row positions. Returns (keep mask (N,), columns with strings stripped and,
    for ``'category'``, missing values replaced by ``'missing'``). ``'error'`` raises on the first gap.
    """
    n = len(next(iter(columns.values()))) if columns else 0
    keep = np.ones(n, dtype=bool)
    out = {}
    for name, values in columns.items():
        values = np.asarray(values)
        if values.dtype.kind in "OUS":
            values = np.asarray(decode_text(values.tolist(), file=file, field=field.format(name=name)), dtype=object)
            values = np.asarray([v.strip() if isinstance(v, str) else v for v in values], dtype=object)
            # NumPy's str arrays drop trailing NULs, so 'a\0' would name group 'a' in one place and not another
            nul = np.asarray([isinstance(v, str) and "\0" in v for v in values], dtype=bool)
            if nul.any():
                idx = np.flatnonzero(nul)
                raise InputError(NUL_IN_GROUPS.format(file=file, field=field.format(name=name), n=len(idx),
                                                      where=where(idx)))
        missing = is_missing(values)
        if missing.any():
            if missing_group == "error":
                idx = np.flatnonzero(missing)
                raise InputError(MISSING_GROUPS.format(file=file, field=field.format(name=name), n=len(idx),
                                                       where=where(idx)))
            if missing_group == "drop":
                keep &= ~missing
            else:
                values = values.astype(object)
                values[missing] = MISSING_GROUP_NAME
        out[name] = values
    if n and not keep.any():
        raise InputError(NOTHING_LEFT.format(file=file, n=n))
    return keep, out


# ---- split -----------------------------------------------------------------------------------------
def check_split(values, *, file: str, field: str, where) -> np.ndarray:
    """Normalise a split column to an object array of 'train'/'test'; anything else is an InputError."""
    raw = np.asarray(values, dtype=object).ravel()
    out = np.asarray(decode_text(raw.tolist(), file=file, field=field), dtype=object)
    out = np.asarray([v.strip().lower() if isinstance(v, str) else v for v in out], dtype=object)
    bad = np.asarray([not (isinstance(v, str) and v in SPLITS) for v in out], dtype=bool)
    if bad.any():
        idx = np.flatnonzero(bad)
        raise InputError(
            BAD_SPLIT.format(
                file=file, field=field, expected=" or ".join(map(repr, SPLITS)),
                values=f"{fmt_counts(raw[idx])} ({where(idx)})",
            )
        )
    return out


# ---- normalize -------------------------------------------------------------------------------------
def parse_normalize(spec) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``None`` | ``'imagenet'`` | ``'MEAN,STD'`` | ``'M1,M2,M3;S1,S2,S3'`` | ``(means, stds)`` -> (means, stds)."""
    if spec is None:
        return None
    if isinstance(spec, str):
        text = spec.strip()
        if text.lower() == "imagenet":
            return IMAGENET_NORMALIZE
        try:
            if ";" in text:
                mean_text, std_text = text.split(";")
                mean = tuple(float(v) for v in mean_text.split(","))
                std = tuple(float(v) for v in std_text.split(","))
            else:
                m, s = text.split(",")
                mean, std = (float(m),), (float(s),)
        except ValueError as err:
            raise InputError(NORMALIZE_FORMAT.format(found=spec)) from err
    else:
        try:
            mean_seq, std_seq = spec
            mean = tuple(float(v) for v in np.atleast_1d(mean_seq))
            std = tuple(float(v) for v in np.atleast_1d(std_seq))
        except (TypeError, ValueError) as err:
            raise InputError(NORMALIZE_FORMAT.format(found=spec)) from err
    if len(mean) != len(std):
        raise InputError(NORMALIZE_LENGTHS.format(n_mean=len(mean), n_std=len(std), found=spec))
    if not all(math.isfinite(m) for m in mean):
        raise InputError(NORMALIZE_FORMAT.format(found=spec))
    if not all(math.isfinite(s) and s > 0 for s in std):
        raise InputError(NORMALIZE_STD.format(std=list(std)))
    return mean, std


def fit_normalize(stats, shape: tuple[int, ...], *, file: str):
    """Check (means, stds) against the channel dimension (dim 1) of x; one value is repeated per channel."""
    if stats is None:
        return None
    mean, std = stats
    channels = shape[1] if len(shape) > 1 else 1
    if len(mean) == 1:
        return mean * channels, std * channels
    if len(mean) != channels:
        raise InputError(NORMALIZE_CHANNELS.format(file=file, n=len(mean), c=channels, shape=tuple(shape)))
    return mean, std


# ---- zip archives ----------------------------------------------------------------------------------
#: What Python's zipfile raises on a damaged or unsupported archive or member, besides BadZipFile:
#: a corrupt deflate/bzip2/lzma stream, a truncated file, an unsupported zip version or compression
#: method (NotImplementedError), an encrypted member (RuntimeError), a malformed extra field (ValueError).
ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError, ValueError)


def open_zip(path, *, file: str, what: str) -> zipfile.ZipFile:
    """``zipfile.ZipFile(path)``, with every way a file can fail to be a zip archive an InputError.

    An archive with more than ``ZIP_MAX_ENTRIES`` entries is refused: first from the count its end record
    declares, before zipfile parses (and holds in memory) the whole directory, then from the entries
    actually listed, in case the end record lies.
    """
    declared = _declared_entries(path)
    if declared is not None and declared > ZIP_MAX_ENTRIES:
        raise InputError(ZIP_TOO_MANY.format(file=file, n=declared, limit=ZIP_MAX_ENTRIES))
    try:
        zf = zipfile.ZipFile(path)
    except ZIP_ERRORS as err:
        raise InputError(NOT_A_ZIP.format(file=file, what=what, reason=str(err) or type(err).__name__)) from err
    if len(zf.filelist) > ZIP_MAX_ENTRIES:
        n = len(zf.filelist)
        zf.close()
        raise InputError(ZIP_TOO_MANY.format(file=file, n=n, limit=ZIP_MAX_ENTRIES))
    return zf


def _declared_entries(path) -> int | None:
    """The entry count in a zip file's end-of-central-directory record (ZIP64 too); None if there is none."""
    try:
        with open(path, "rb") as f:
            end = zipfile._EndRecData(f)   # what ZipFile itself reads first; stable since Python 2
    except (*ZIP_ERRORS, AttributeError, IndexError):
        return None
    return None if end is None else int(end[zipfile._ECD_ENTRIES_TOTAL])


def check_zip_size(zf: zipfile.ZipFile, *, file: str, limit: int, check_ratio: bool) -> None:
    """Refuse an archive that would expand past ``limit`` bytes, or (``check_ratio``) holds a zip bomb.

    Reads only the central directory: nothing is decompressed. Python's zipfile never returns more than
    a member's recorded ``file_size`` (and checks its CRC), so these figures bound what reading can cost.
    """
    infos = zf.infolist()
    total = sum(i.file_size for i in infos)
    if total > limit:
        raise InputError(ZIP_TOO_LARGE.format(file=file, total=total, limit=limit))
    if check_ratio:
        for i in infos:
            if i.file_size > ZIP_RATIO_MIN_BYTES and i.file_size > ZIP_MAX_RATIO * max(i.compress_size, 1):
                raise InputError(
                    ZIP_BOMB.format(
                        file=file, member=i.filename, ratio=i.file_size / max(i.compress_size, 1),
                        compressed=i.compress_size, size=i.file_size, max_ratio=ZIP_MAX_RATIO,
                        min_bytes=ZIP_RATIO_MIN_BYTES,
                    )
                )
