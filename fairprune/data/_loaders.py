"""``load_dataset``: a data file -> GroupedDataset, dispatched by extension; ``validate_labels`` against a model.

Formats (see each loader's module for the details):

- ``.csv`` / ``.csv.gz``: a table, one row per sample (``_csv.py``);
- ``.npz``: NumPy arrays ``x``, ``y``, ``group`` (``_npz.py``);
- ``.zip``: images, named by a ``metadata.csv`` or in class subfolders ``<label>/<image>`` (``_imagezip.py``);
- a folder of images (class subfolders or a ``metadata.csv``), or a ``.csv`` whose ``path`` column names
  images relative to it (``_imagefolder.py``): images of any size, resized and cropped as asked.

Options are checked before the file is opened, so a typo in an option fails fast.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..core.errors import InputError
from ._checks import ZIP_ERRORS, as_names, check_missing_group, fmt_counts, open_zip, parse_normalize
from ._dataset import GroupedDataset

__all__ = ["load_dataset", "validate_labels", "FORMATS"]

#: File endings load_dataset reads, and what each holds.
FORMATS = {
    ".csv": "a table: label, group and feature columns",
    ".csv.gz": "a gzip-compressed table",
    ".npz": "NumPy arrays x, y, group",
    ".zip": "images named by a metadata.csv, or in class subfolders",
}
#: What else --data may be: a folder (no ending).
FOLDER = "a folder of images (class subfolders <label>/<image>, or a metadata.csv)"
#: ending -> (module, loader): imported when a file of that kind is read, so reading an NPZ never pays for pandas
#: (tables) or PIL (images).
_LOADERS = {".csv": ("_csv", "load_csv"), ".csv.gz": ("_csv", "load_csv"), ".npz": ("_npz", "load_npz"),
            ".zip": ("_imagezip", "load_image_zip")}


def _loader(suffix: str):
    import importlib

    module, name = _LOADERS[suffix]
    return getattr(importlib.import_module(f"{__package__}.{module}"), name)

UNKNOWN_FORMAT = "{file}: expected a data file ending in {formats}, or " + FOLDER + "; found {suffix}"
NOT_FOUND = "{file}: expected a data file at {path}, found {found}"
CSV_ONLY = "{file}: {option} applies to CSV files only; found a {suffix} file (its inputs are not named columns)"
BAD_OPTION = "{option}: expected {expected}, found {found!r}"
LABELS_OUT_OF_RANGE = (
    "{source}: labels in {field} must be {expected} for a model with {k} output{s}; found {n} row(s) outside "
    "that range: {values}"
)


def load_dataset(
    path: str | Path,
    *,
    label: str = "label",
    group: str | Sequence[str] = "group",
    features: Sequence[str] | None = None,
    ignore: Sequence[str] | None = None,
    missing_group: str = "error",
    normalize: str | None = None,
    name: str | None = None,
    max_uncompressed_bytes: int = 4 << 30,
    resize: int | None = None,
    crop: int | str | tuple[int, int] | None = None,
    transforms: str | None = None,
    inputs: Sequence[str] | None = None,
    text: str | None = None,
    tokenizer: str | Path | None = None,
    max_length: int = 128,
) -> GroupedDataset:
    """Read a dataset file into a GroupedDataset D = {(x_i, a_i, y_i)}.

    Args:
        path: a ``.csv``/``.csv.gz``, ``.npz`` or ``.zip`` (images) file, or a folder of images. A ``.csv``
            whose ``path`` column names image files is an image set (paths relative to the CSV's folder).
        label: the label column (CSV, metadata.csv) or array (NPZ; ``'label'`` means the array ``y``).
            Labels are integer class indices; 1.0 counts as 1.
        group: the group column(s); several make intersectional keys joined with ``' & '`` in the given
            order (``'African-American & Female'``). The label column itself may be the group.
        features: CSV only: the feature columns, in the model's input order (default: every other column,
            in file order).
        ignore: CSV only: columns to leave out of the features.
        missing_group: ``'error'`` (default), ``'drop'`` the rows, or ``'category'``: a group named ``'missing'``.
        normalize: ``None``, ``'imagenet'``, ``'MEAN,STD'`` (every channel) or ``'M1,M2,M3;S1,S2,S3'``:
            per-channel (dim 1 of x) normalisation applied to each batch after scaling to [0, 1].
        name: the dataset's name in reports (default: the file's name).
        max_uncompressed_bytes: archives (``.zip``, ``.npz``, ``.csv.gz``) that expand past this are refused,
            and so are image sets whose decoded pixels would.
        resize: images only: the shorter side resized to this many pixels (``--resize``).
        crop: images only: centre crop to N x N or (H, W) / ``'H,W'`` (``--crop``).
        transforms: images only: a torchvision weights entry (``'ResNet50_Weights.IMAGENET1K_V2'``) whose
            ``transforms()`` preset (resize, crop, mean/std) is applied; not with resize, crop or normalize.
        inputs: NPZ only: the arrays that are the model's positional inputs, in order (``--inputs``); default
            ``x``, or ``x0``, ``x1``, ... when the file has those.
        text: CSV only: the column of raw text to tokenise (``--text``) with ``tokenizer``'s tokenizer; the model
            then takes ``input_ids`` and ``attention_mask`` (and ``token_type_ids`` where the tokenizer gives them).
        tokenizer: a Hugging Face checkpoint folder whose tokenizer tokenises ``text`` (the model's own folder).
        max_length: tokens per row for ``text`` (``--max-length``): longer texts are truncated, shorter padded.

    Returns:
        GroupedDataset with x (N, F) float32 for tables, (N, ...) float32 or uint8 for NPZ, uint8
        (N, C, H, W) for images (an ``ImageSet``, whose ``preprocessing`` lists the steps as text);
        ``sha256`` is the SHA-256 of the file's bytes (of a folder or image CSV: of the names and bytes read).

    Raises:
        InputError: naming the file, the column/array/option, what was expected and what was found.
    """
    if not isinstance(label, str) or not label:
        raise InputError(BAD_OPTION.format(option="label (--label)", expected="one column name", found=label))
    groups = as_names(group, "group (--group)")
    if not groups or not all(groups):
        raise InputError(BAD_OPTION.format(option="group (--group)", expected="one or more column names", found=group))
    features = as_names(features, "features (--features)")
    if features is not None and not features:
        raise InputError(BAD_OPTION.format(option="features (--features)", expected="at least one column name",
                                           found=features))
    ignore = as_names(ignore, "ignore (--ignore)")
    check_missing_group(missing_group)
    stats = parse_normalize(normalize)
    if isinstance(max_uncompressed_bytes, bool) or not isinstance(max_uncompressed_bytes, int) \
            or max_uncompressed_bytes <= 0:
        raise InputError(BAD_OPTION.format(option="max_uncompressed_bytes", expected="a positive number of bytes",
                                           found=max_uncompressed_bytes))

    pre = None
    if resize is not None or crop is not None or transforms is not None:
        from ._imagefolder import parse_preprocess

        pre = parse_preprocess(resize, crop, transforms, normalize)

    inputs = as_names(inputs, "inputs (--inputs)")
    if inputs is not None and not inputs:
        raise InputError(BAD_OPTION.format(option="inputs (--inputs)", expected="one or more array names", found=inputs))

    path = Path(path)
    if text is not None:
        if not isinstance(text, str) or not text:
            raise InputError(BAD_OPTION.format(option="text (--text)", expected="one column name", found=text))
        if pre is not None or stats is not None or inputs is not None:
            raise InputError(f"{path.name}: text (--text) is tokenised by the model's tokenizer; --resize, --crop, "
                             "--transforms, --normalize and --inputs do not apply to it")
        if path.is_dir() or not path.name.lower().endswith((".csv", ".csv.gz")):
            raise InputError(f"{path.name}: text (--text) expects a .csv or .csv.gz table with a text column; "
                             f"found {'a folder' if path.is_dir() else repr(''.join(path.suffixes) or 'no extension')}")
        from ._text import load_text_csv

        return load_text_csv(path, text=text, tokenizer=tokenizer, max_length=max_length, label=label,
                             groups=groups, missing_group=missing_group, name=name, features=features, ignore=ignore,
                             max_uncompressed_bytes=max_uncompressed_bytes)
    if inputs is not None and (path.is_dir() or not path.name.lower().endswith(".npz")):
        raise InputError(f"{path.name}: inputs (--inputs) names arrays of an .npz file; found "
                         f"{'a folder' if path.is_dir() else repr(''.join(path.suffixes) or 'no extension')}")
    common = dict(label=label, groups=groups, missing_group=missing_group, normalize=stats, name=name,
                  max_uncompressed_bytes=max_uncompressed_bytes)
    if path.is_dir():
        _no_table_options(path.name + "/", "folder", features, ignore)
        from ._imagefolder import load_image_folder

        return load_image_folder(path, pre=pre, **common)
    file = path.name
    lower = file.lower()
    suffix = next((s for s in sorted(FORMATS, key=len, reverse=True) if lower.endswith(s)), None)
    if suffix is None:
        found = f"{''.join(path.suffixes)!r}" if path.suffixes else "no extension"
        formats = ", ".join(f"{s} ({what})" for s, what in FORMATS.items())
        raise InputError(UNKNOWN_FORMAT.format(file=file, formats=formats, suffix=found))
    if not path.is_file():
        found = "a directory" if path.is_dir() else "nothing there"
        raise InputError(NOT_FOUND.format(file=file, path=str(path), found=found))
    if suffix == ".csv" and _names_images(path):
        _no_table_options(file, "CSV of image paths", features, ignore)
        from ._imagefolder import load_image_csv

        return load_image_csv(path, pre=pre, **common)
    if pre is not None and suffix != ".zip":
        from ._imagefolder import IMAGES_ONLY

        option = "--transforms" if transforms is not None else "--resize" if resize is not None else "--crop"
        raise InputError(IMAGES_ONLY.format(file=file, option=option, kind=f"{suffix} file"))
    if _LOADERS[suffix][0] == "_csv":
        return _loader(suffix)(path, features=features, ignore=ignore, **common)
    for option, value in (("features (--features)", features), ("ignore (--ignore)", ignore)):
        if value is not None:
            raise InputError(CSV_ONLY.format(file=file, option=option, suffix=suffix))
    if suffix == ".zip":
        return _loader(suffix)(path, pre=pre, **common)
    return _loader(suffix)(path, inputs=inputs, **common)


def _no_table_options(file: str, kind: str, features, ignore) -> None:
    for option, value in (("features (--features)", features), ("ignore (--ignore)", ignore)):
        if value is not None:
            raise InputError(CSV_ONLY.format(file=file, option=option, suffix=kind))


def _names_images(path: Path) -> bool:
    """A CSV whose header has a ``path`` column and whose first row's path ends in an image ending."""
    import csv

    from ._imagefolder import IMAGE_SUFFIXES

    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = csv.reader(f)
            header = next(rows, None)
            first = next(rows, None)
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    if not header or not first or "path" not in [h.strip() for h in header]:
        return False
    i = [h.strip() for h in header].index("path")
    return i < len(first) and first[i].strip().lower().endswith(IMAGE_SUFFIXES)


def validate_labels(data: GroupedDataset, num_outputs: int, *, source: str) -> None:
    """Check the labels against a model with ``num_outputs`` logits.

    ``num_outputs == 1`` is a binary classifier (one logit, read through a sigmoid): labels must be 0 or 1.
    Otherwise labels must be class indices 0..num_outputs-1.

    Raises:
        InputError: naming ``source`` and the label column, the range expected, and the offending values
            (the most frequent first) with their counts.
    """
    if isinstance(num_outputs, bool) or not isinstance(num_outputs, (int, np.integer)) or num_outputs < 1:
        raise ValueError(f"num_outputs: expected a positive int (the model's logit count), found {num_outputs!r}")
    y = data.y.detach().cpu().numpy()
    last = 1 if num_outputs == 1 else int(num_outputs) - 1
    bad = (y < 0) | (y > last)
    if bad.any():
        expected = ("0 or 1 (one output logit: a binary classifier)" if num_outputs == 1
                    else f"class indices 0..{last}")
        raise InputError(
            LABELS_OUT_OF_RANGE.format(
                source=source, field=repr(data.label_column), expected=expected, k=int(num_outputs),
                s="" if num_outputs == 1 else "s", n=int(bad.sum()), values=fmt_counts(y[bad]),
            )
        )


#: NPZ arrays that are never a label or a group.
_NPZ_NOT_COLUMNS = {"x", "class_names", "group_names", "feature_names", "split"}


def columns(path: str | Path) -> list[str]:
    """The names a user can pick as label or group, reading headers only.

    A CSV's header, an image zip's ``metadata.csv`` header (without ``path``), an NPZ's arrays
    (``label`` standing for the array ``y``). A file that cannot be read gives [] and
    :func:`load_dataset` says why when it is loaded.
    """
    import pandas as pd

    p = Path(path)
    name = p.name.lower()
    try:
        if name.endswith(".csv") and _names_images(p):
            return [str(c) for c in pd.read_csv(p, nrows=0).columns if c != "path"]
        if name.endswith((".csv", ".csv.gz")):
            return [str(c) for c in pd.read_csv(p, nrows=0).columns]
        if name.endswith(".npz"):
            open_zip(p, file=p.name, what="a NumPy .npz").close()   # refuses a zip listing too many entries
            with np.load(p, allow_pickle=False) as z:
                keys = [k for k in z.files if k not in _NPZ_NOT_COLUMNS]
            return ["label"] + [k for k in keys if k != "y"]
        if p.is_dir():
            meta = p / "metadata.csv"
            return [str(c) for c in pd.read_csv(meta, nrows=0).columns if c != "path"] if meta.is_file() \
                else ["label"]
        if name.endswith(".zip"):
            with open_zip(p, file=p.name, what="images and a metadata.csv") as zf:
                meta = [n for n in zf.namelist() if n.rsplit("/", 1)[-1] == "metadata.csv"]
                if not meta:
                    return ["label"]     # class subfolders: the class is the only column
                if len(meta) != 1:
                    return []
                with zf.open(meta[0]) as f:
                    return [str(c) for c in pd.read_csv(f, nrows=0).columns if c != "path"]
    except (InputError, *ZIP_ERRORS, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return []
    return []
