"""NPZ loader: NumPy arrays saved with ``np.savez`` / ``np.savez_compressed``.

Arrays: ``x`` (N, ...) features, ``y`` (N,) integer class indices, ``group`` (N,) int or str; optional
``class_names`` and ``group_names`` (str, index-aligned: an int ``group`` is mapped through ``group_names``),
``feature_names`` (for a 2-D ``x``) and ``split`` (``'train'``/``'test'``).

``x`` keeps its kind: a float (or bool) ``x`` becomes float32; a uint8 ``x`` is kept as uint8 and read as
images: scaled by 1/255 to [0, 1] one batch at a time (see ``GroupedDataset.to_float``); any other integer
``x`` (int8..int64, uint16..uint64) is kept as int64 and reaches the model as int64, unscaled: token ids
(N, L) for an ``nn.Embedding``, or category codes. ``normalize`` is refused for integer ids. A 1-D ``x`` is one feature per sample,
(N, 1). Arrays are loaded with ``allow_pickle=False``: an object array is refused, since loading it
would unpickle, that is, run code from the file. Store strings as a fixed-width unicode array
(``np.array(names, dtype=str)``).

Group arrays are named by the ``group`` argument (default ``'group'``); ``'label'`` (or ``'y'``) makes
the class the group. The label array is ``y`` unless ``label`` names another array.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..core._hash import sha256_file
from ..core.errors import InputError
from ._checks import (
    NOT_A_ZIP,
    ZIP_ERRORS,
    as_class_indices,
    check_split,
    check_zip_size,
    decode_text,
    fit_normalize,
    fmt_counts,
    fmt_names,
    fmt_rows,
    open_zip,
    resolve_missing_groups,
)
from ._dataset import GroupedDataset, join_groups
from ._inputs import Inputs

NPZ_MISSING_ARRAY = "{file}: expected an array {key!r} ({what}), found arrays: {found}"
NPZ_OBJECT_ARRAY = (
    "{file}: refused array {key!r}: it is an object array, and loading it would unpickle (run code from the "
    "file); expected numbers, or strings stored as a fixed-width unicode array (np.array(values, dtype=str))"
)
NPZ_UNREADABLE = "{file}: array {key!r} does not load ({reason}); expected an array written by np.savez"
NPZ_LENGTHS = "{file}: expected arrays of the same length along the first axis; found {lengths}"
NPZ_SHAPE = "{file}: expected array {key!r} of shape {expected}, found shape {shape}"
NPZ_EMPTY = "{file}: expected at least one sample, found arrays of length 0 ({lengths})"
NPZ_DTYPE = "{file}: expected array {key!r} to hold {expected}, found dtype {dtype}"
NPZ_IDS_NORMALIZE = (
    "{file}: normalize applies to float features and uint8 images; array 'x' holds integers ({dtype}), which "
    "reach the model unchanged as int64 (token ids); drop the normalization, or store x as float32"
)
NONFINITE_X = "{file}: array {key!r} must hold finite numbers; found NaN or inf in {n} sample(s) ({where})"
NPZ_MISSING_INPUTS = "{file}: --inputs names arrays {missing} that the file does not have; found arrays: {found}"
NPZ_X_AND_NUMBERED = (
    "{file}: found both 'x' and {numbered}; expected either one input 'x' or several 'x0', 'x1', ...; name the "
    "model's inputs in order with --inputs (e.g. --inputs x0 x1)"
)
NPZ_SEVERAL_NORMALIZE = (
    "{file}: normalize applies to a single image input; this file gives the model several inputs ({names}). "
    "Normalise inside the model, or store the arrays already normalised"
)
GROUP_NAME_INDEX = (
    "{file}: array {key!r} indexes into 'group_names' ({k} names), so it must hold 0..{last}; found {values}"
)
CLASS_NAME_INDEX = "{file}: 'class_names' has {k} names, so array {key!r} must hold 0..{last}; found {values}"

NPZ_WHAT = "a NumPy .npz written by np.savez"
_WHAT = {"x": "features (N, ...)", "y": "integer class labels (N,)", "group": "group of each sample (N,)"}


def _where(idx) -> str:
    return fmt_rows(idx, word="index")


def load_npz(path: Path, *, label: str, groups: tuple[str, ...], missing_group: str, normalize,
             name: str | None, max_uncompressed_bytes: int, inputs: tuple[str, ...] | None = None) -> GroupedDataset:
    file = path.name
    # An .npz is a zip; np.load would expand every member it is asked for, so bound that first.
    with open_zip(path, file=file, what=NPZ_WHAT) as zf:
        check_zip_size(zf, file=file, limit=max_uncompressed_bytes, check_ratio=False)
    label_key = "y" if label == "label" else label
    group_keys = tuple(label_key if g in ("label", label_key) else g for g in groups)
    try:
        npz = np.load(path, allow_pickle=False)
    except ZIP_ERRORS as err:  # e.g. a zip with a prefix, which np.load takes for a pickle
        raise InputError(NOT_A_ZIP.format(file=file, what=NPZ_WHAT, reason=err)) from err
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise InputError(NOT_A_ZIP.format(file=file, what=NPZ_WHAT, reason="a single array"))
    with npz:
        found = list(npz.files)

        def get(key, required=True):
            if key not in found:
                if not required:
                    return None
                raise InputError(NPZ_MISSING_ARRAY.format(file=file, key=key, what=_WHAT.get(key, "a group array"),
                                                          found=fmt_names(found)))
            try:
                value = npz[key]
            except ValueError as err:
                if "pickle" in str(err).lower():
                    raise InputError(NPZ_OBJECT_ARRAY.format(file=file, key=key)) from err
                raise InputError(NPZ_UNREADABLE.format(file=file, key=key, reason=err)) from err
            except ZIP_ERRORS as err:
                raise InputError(NPZ_UNREADABLE.format(file=file, key=key, reason=err)) from err
            if not isinstance(value, np.ndarray):  # a member that is not a .npy file comes back as bytes
                raise InputError(NPZ_UNREADABLE.format(file=file, key=key, reason="not a .npy member"))
            return value

        input_keys = _input_keys(found, inputs, file)
        xs = [get(k) for k in input_keys]
        x = xs[0]
        y = _vector(get(label_key), label_key, file)
        group_arrays = {k: _vector(get(k), k, file) for k in dict.fromkeys(group_keys) if k != label_key}
        split = get("split", required=False)
        split = None if split is None else _vector(split, "split", file)
        class_names = _names(get("class_names", required=False), "class_names", file)
        group_names = _names(get("group_names", required=False), "group_names", file)
        feature_names = _names(get("feature_names", required=False), "feature_names", file)

    for k, a in zip(input_keys, xs):
        if a.ndim == 0:
            raise InputError(NPZ_SHAPE.format(file=file, key=k, expected="(N, ...)", shape=a.shape))
    lengths = {**{k: len(a) for k, a in zip(input_keys, xs)}, label_key: len(y),
               **{k: len(v) for k, v in group_arrays.items()}}
    if split is not None:
        lengths["split"] = len(split)
    if len(set(lengths.values())) > 1:
        raise InputError(NPZ_LENGTHS.format(file=file, lengths=", ".join(f"{k}: {n}" for k, n in lengths.items())))
    if len(x) == 0:
        raise InputError(NPZ_EMPTY.format(file=file, lengths=", ".join(f"{k}: 0" for k in lengths)))

    for k, v in group_arrays.items():
        if v.dtype.kind not in "iubfUS":
            raise InputError(NPZ_DTYPE.format(file=file, key=k, expected="integers or strings", dtype=v.dtype))
    keep, group_arrays = resolve_missing_groups(group_arrays, missing_group=missing_group, file=file,
                                                field="array {name!r}", where=_where)
    if not group_arrays:  # the class is the only group: every row is kept
        keep = np.ones(len(x), dtype=bool)
    rows = np.flatnonzero(keep)
    if len(rows) < len(keep):
        xs, y = [a[rows] for a in xs], y[rows]
        split = None if split is None else split[rows]
        group_arrays = {k: v[rows] for k, v in group_arrays.items()}

    def where(idx):
        return _where(rows[idx])

    y = as_class_indices(y, file=file, field=f"array {label_key!r}", where=where)
    x_dtype = x.dtype
    if class_names is not None:
        _check_index(y, len(class_names), CLASS_NAME_INDEX, key=label_key, file=file, where=where)
    for k, v in group_arrays.items():
        group_arrays[k] = _group_values(v, k, file=file, names=group_names if k == "group" else None,
                                        where=where)
    keys = join_groups([y if k == label_key else group_arrays[k] for k in group_keys])
    several = len(xs) > 1
    xs = [_features(a, file=file, where=where, key=k, several=several) for k, a in zip(input_keys, xs)]
    x = xs[0]
    if normalize is not None and several:
        raise InputError(NPZ_SEVERAL_NORMALIZE.format(file=file, names=", ".join(input_keys)))
    if normalize is not None and x.dtype == np.int64:
        raise InputError(NPZ_IDS_NORMALIZE.format(file=file, dtype=x_dtype))
    if feature_names is not None and (several or x.ndim != 2 or len(feature_names) != x.shape[1]):
        raise InputError(NPZ_SHAPE.format(file=file, key="feature_names", expected=f"({x.shape[-1]},) for x of shape "
                                          f"{tuple(x.shape)}", shape=(len(feature_names),)))
    if split is not None:
        if split.dtype.kind not in "US":
            raise InputError(NPZ_DTYPE.format(file=file, key="split", expected="strings 'train' or 'test'",
                                              dtype=split.dtype))
        split = check_split(split, file=file, field="array 'split'", where=where)
    model_input = (Inputs([torch.from_numpy(a) for a in xs], input_keys) if several else torch.from_numpy(x))
    return GroupedDataset(
        x=model_input,
        y=torch.from_numpy(y),
        group=keys,
        name=name or file,
        sha256=sha256_file(path),
        label_column=label_key,
        group_columns=group_keys,
        feature_names=feature_names,
        class_names=class_names,
        split=split,
        normalize=fit_normalize(normalize, x.shape, file=file),
    )


def _vector(a: np.ndarray, key: str, file: str) -> np.ndarray:
    """(N,) or (N, 1) -> (N,)."""
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise InputError(NPZ_SHAPE.format(file=file, key=key, expected="(N,)", shape=a.shape))
    return a


def _names(a: np.ndarray | None, key: str, file: str) -> tuple[str, ...] | None:
    if a is None:
        return None
    if a.ndim != 1:
        raise InputError(NPZ_SHAPE.format(file=file, key=key, expected="(K,)", shape=a.shape))
    if a.dtype.kind not in "US":
        raise InputError(NPZ_DTYPE.format(file=file, key=key, expected="strings", dtype=a.dtype))
    return tuple(str(v) for v in decode_text(a.tolist(), file=file, field=f"array {key!r}"))


def _check_index(values: np.ndarray, k: int, message: str, *, key: str, file: str, where) -> None:
    bad = (values < 0) | (values >= k)
    if bad.any():
        raise InputError(message.format(file=file, key=key, k=k, last=k - 1,
                                         values=f"{fmt_counts(values[bad])} ({where(np.flatnonzero(bad))})"))


def _group_values(v: np.ndarray, key: str, *, file: str, names, where) -> np.ndarray:
    """Group values as given (strings, or whole numbers), numbers mapped through ``group_names`` when given."""
    if v.dtype != object:
        return _name_groups(_whole(v, key, file), names, key, file, where)
    text = np.asarray([isinstance(s, str) for s in v], dtype=bool)
    if text.all():
        return v
    # numbers with 'missing' put in by missing_group='category'
    out = v.copy()
    numbers = np.flatnonzero(~text)
    out[~text] = _name_groups(_whole(v[~text].astype(np.float64), key, file), names, key, file,
                              lambda idx: where(numbers[idx]))
    return out


def _whole(v: np.ndarray, key: str, file: str) -> np.ndarray:
    if v.dtype.kind == "f":
        frac = v != np.round(v)
        if frac.any():
            raise InputError(NPZ_DTYPE.format(file=file, key=key, expected="integers or strings",
                                              dtype=f"{v.dtype} with fractional values such as {v[frac][0]}"))
    return v.astype(np.int64)


def _name_groups(ints: np.ndarray, names, key: str, file: str, where) -> np.ndarray:
    if names is None:
        return ints
    _check_index(ints, len(names), GROUP_NAME_INDEX, key=key, file=file, where=where)
    return np.asarray(names, dtype=object)[ints]


def _input_keys(found: list[str], inputs: tuple[str, ...] | None, file: str) -> tuple[str, ...]:
    """The arrays that are the model's positional inputs, in order: ``inputs`` (--inputs) when given; else ``x``;
    else ``x0``, ``x1``, ... (consecutive)."""
    if inputs:
        missing = [k for k in inputs if k not in found]
        if missing:
            raise InputError(NPZ_MISSING_INPUTS.format(file=file, missing=fmt_names(missing), found=fmt_names(found)))
        if len(set(inputs)) != len(inputs):
            raise InputError(f"--inputs: expected distinct array names, found {', '.join(inputs)}")
        return tuple(inputs)
    numbered = []
    while f"x{len(numbered)}" in found:
        numbered.append(f"x{len(numbered)}")
    if "x" in found and numbered:
        raise InputError(NPZ_X_AND_NUMBERED.format(file=file, numbered=", ".join(numbered)))
    if "x" in found or not numbered:
        return ("x",)      # a missing 'x' is reported by get()
    return tuple(numbered)


def _features(x: np.ndarray, *, file: str, where, key: str = "x", several: bool = False) -> np.ndarray:
    """uint8 stays uint8 (images); other integers become int64 (token ids, category codes: what
    ``nn.Embedding`` takes); floats and booleans become float32; NaN/inf are refused. One of several inputs:
    uint8 stays uint8 (images) only as (N, C, H, W); other uint8 and booleans become int64 (masks, codes)."""
    if x.dtype.kind not in "iubf":
        raise InputError(NPZ_DTYPE.format(file=file, key=key, expected="numbers", dtype=x.dtype))
    if x.ndim == 1:
        x = x[:, None]
    if several and (x.dtype == np.bool_ or (x.dtype == np.uint8 and x.ndim != 4)):
        return np.ascontiguousarray(x, dtype=np.int64)
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if x.dtype.kind in "iu":
        if x.dtype == np.uint64 and x.size and int(x.max()) > np.iinfo(np.int64).max:
            big = np.flatnonzero((x.reshape(len(x), -1) > np.iinfo(np.int64).max).any(axis=1))
            raise InputError(NPZ_DTYPE.format(file=file, key=key, expected="integers that fit in int64 (token ids)",
                                              dtype=f"uint64 with values above 2**63 - 1 ({where(big)})"))
        return np.ascontiguousarray(x, dtype=np.int64)
    with np.errstate(over="ignore"):
        x = np.ascontiguousarray(x, dtype=np.float32)
    finite = np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    if not finite.all():
        idx = np.flatnonzero(~finite)
        raise InputError(NONFINITE_X.format(file=file, key=key, n=len(idx), where=where(idx)))
    return x
