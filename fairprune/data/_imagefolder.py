"""Image sets as people keep them: a folder (or zip) of class subfolders, or a CSV naming images; any sizes.

Layouts (a folder here; ``_imagezip.py`` reads the same two from a zip archive):

- class subfolders ``root/<label>/<file>``: the label is the folder's name; names are mapped to class indices
  in sorted order and kept as ``class_names``. A folder gives no group, so the group must be the class
  (``--group label``) or come from a metadata CSV;
- a ``metadata.csv`` in the folder (or any CSV given by path) listing ``path,label,<group columns>``, paths
  relative to the CSV's folder. Labels are class indices, or class names mapped to indices in sorted order.

Pixels: each image is decoded with ``torchvision.io.decode_image`` (PNG, JPEG, WebP, GIF; BMP and TIFF, which
torchvision does not decode, through Pillow's ``pil_to_tensor``), straight into uint8 with the set's channel
count: 3 (RGB) when any image is in colour or ``--transforms`` is given (gray images are repeated over the
channels), else 1; alpha is dropped, 16-bit gray is scaled to 8 bits. Then ``torchvision.transforms.v2``
resizes (``--resize N``: shorter side to N, bilinear, antialiased) and centre-crops (``--crop N|H,W``). The set
is kept as uint8 (N, C, H, W) and scaled to [0, 1] (and normalised) one batch at a time. ``--transforms NAME``
takes a torchvision weights entry's ``transforms()`` preset (resize, crop, interpolation, mean/std) and applies
it the same way: resize and crop on uint8, normalisation per batch. Without resize or crop every image must
have the same size. The steps taken are recorded as text (``ImageSet.preprocessing``, the result's
``provenance.preprocessing``).

Headers are read first (Pillow, lazily: no pixels), so a mixed-size set, an unknown mode or a decompression
bomb is refused before anything is decoded; decoded pixels are bounded by ``max_uncompressed_bytes``. A set whose
decoded pixels would exceed ``$FAIRPRUNE_STREAM_BYTES`` (1 GiB; sizes from the headers) is not decoded here: its
x is a ``_stream.ImageFiles`` that decodes rows, through the same :func:`decode_one`, when they are read.
EXIF orientation is not applied (pixels as stored, as a plain training pipeline reads them).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from ..core._hash import sha256_file
from ..core.errors import InputError
from ._checks import fit_normalize, fmt_names
from ._dataset import GroupedDataset
from ._stream import ImageFiles, stream_bytes

__all__ = ["ImageSet", "Preprocess", "parse_preprocess", "load_image_folder", "load_image_csv", "IMAGE_SUFFIXES"]

#: File endings read as images in a class-subfolder layout.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
#: The table that names the images, when a folder or zip has one.
METADATA = "metadata.csv"
PATH_COLUMN = "path"

BAD_RESIZE = "resize (--resize): expected a positive whole number of pixels (the shorter side), found {found!r}"
BAD_CROP = "crop (--crop): expected N (a square) or H,W in pixels, positive whole numbers, found {found!r}"
BAD_TRANSFORMS = (
    "transforms (--transforms): expected a torchvision weights entry such as 'ResNet50_Weights.IMAGENET1K_V2' "
    "(torchvision.models.get_model_weights('resnet50') lists a model's entries), found {found!r} ({reason})"
)
NOT_CLASSIFICATION_PRESET = (
    "transforms (--transforms): {name} gives a {kind} preset; expected an image classification preset "
    "(resize, centre crop, normalise), e.g. 'ResNet50_Weights.IMAGENET1K_V2'"
)
TRANSFORMS_CONFLICT = (
    "transforms (--transforms) already sets the resize, crop and normalisation of {name}; found {option} too. "
    "Give --transforms alone, or --resize/--crop/--normalize without it"
)
IMAGES_ONLY = "{file}: {option} applies to image sets only (a folder, an image zip or a CSV of image paths); found a {kind}"
MIXED_SIZES = (
    "{file}: images must all have the same size (the model takes one input shape); {first!r} is {w0}x{h0} "
    "(width x height) but {other!r} is {w}x{h}. Resize them to one size: add {fix}"
)
UNREADABLE = "{file}: image {member!r} does not decode ({reason}); expected a PNG, JPEG, WebP, BMP, TIFF or GIF image. Replace or remove it"
IMAGE_BOMB = "{file}: refused image {member!r}: {reason}"
IMAGE_MODE = (
    "{file}: image {member!r} has Pillow mode {mode!r}; expected 8-bit grayscale or colour "
    "(1, L, LA, I;16, RGB, RGBA, P, CMYK, ...). Convert it to 8 bits per channel first"
)
DECODED_TOO_LARGE = (
    "{file}: refused: {n:,} images of {c}x{h}x{w} decode to {size:,} bytes, more than the limit of {limit:,} bytes "
    "(max_uncompressed_bytes); expected fewer or smaller images (--resize, --crop), or a higher limit"
)
NO_IMAGES = (
    "{file}: expected class subfolders with images ({root}<label>/<image>, endings {suffixes}) or a metadata.csv "
    "(columns path,label,group); found {found}"
)
EMPTY_CLASS = "{file}: class folder {folder!r} holds no image (endings {suffixes}); add images to it or remove it"
STRAY_FILES = (
    "{file}: with class subfolders every image must be in one: <label>/<image>; found {n} elsewhere: {paths}. "
    "Move them into a class folder, or list the images in a metadata.csv"
)
FOLDER_GROUP = (
    "{file}: class subfolders give each image a label ({classes}) but no {group}; expected --group label "
    "(the class is the group), or a metadata.csv listing path,label,<group columns>"
)
UNSAFE_PATH = (
    "{file}: refused: {table} names {path!r} ({where}), which points outside {where_root}; "
    "expected a path relative to the CSV's folder"
)
SMALLER_THAN_CROP = (
    "{file}: image {member!r} is {w}x{h} (width x height){after}, smaller than the crop {cw}x{ch}; a crop would pad it "
    "with black. Add --resize {side} (or larger) before the crop, or crop less"
)
LINK_OUTSIDE = (
    "{file}: refused: {member!r} is a link to {target}, outside the folder; expected images inside it "
    "(copy the file in instead of linking it)"
)
ABSENT_IMAGES = "{file}: {table} names {n} image(s) that are not there: {paths}. Fix the paths or add the files"
BLANK_PATHS = "{file}: {table} column 'path' must name an image in every row; found {n} blank ({where})"

_GRAY_MODES = {"1", "L", "LA", "La", "I;16", "I;16L", "I;16B", "I;16N"}
_COLOUR_MODES = {"RGB", "RGBA", "RGBa", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"}
#: Formats torchvision's decode_image reads (Pillow's names); the others go through Pillow.
_TORCHVISION_FORMATS = {"PNG", "JPEG", "MPO", "WEBP", "GIF"}
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True, eq=False)
class ImageSet(GroupedDataset):
    """A GroupedDataset of images that also says how its pixels were made (``preprocessing``: steps as text)."""

    preprocessing: tuple[str, ...] = ()


# ---- preprocessing options ------------------------------------------------------------------------
@dataclass(frozen=True)
class Preprocess:
    """What happens to each decoded image: resize (shorter side), centre crop (H, W), and a preset's name."""

    resize: int | list[int] | None = None
    crop: tuple[int, int] | None = None
    interpolation: str = "bilinear"
    transforms: str | None = None
    normalize: tuple[tuple[float, ...], tuple[float, ...]] | None = None   # from the preset

    @property
    def changes_size(self) -> bool:
        return self.resize is not None or self.crop is not None


def _positive_int(value) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        number = int(str(value).strip())
    except ValueError:
        return None
    return number if number > 0 else None


def parse_preprocess(resize=None, crop=None, transforms: str | None = None, normalize=None) -> Preprocess | None:
    """Check ``--resize``, ``--crop``, ``--transforms`` (before any file is read); None when none is given."""
    if transforms is not None:
        for option, value in (("--resize", resize), ("--crop", crop), ("--normalize", normalize)):
            if value is not None:
                raise InputError(TRANSFORMS_CONFLICT.format(name=transforms, option=option))
        return _preset(transforms)
    size = None
    if resize is not None:
        size = _positive_int(resize)
        if size is None:
            raise InputError(BAD_RESIZE.format(found=resize))
    box = None
    if crop is not None:
        parts = list(crop) if isinstance(crop, (tuple, list)) else str(crop).replace("x", ",").split(",")
        sides = [_positive_int(p) for p in parts]
        if len(sides) not in (1, 2) or None in sides:
            raise InputError(BAD_CROP.format(found=crop))
        box = (sides[0], sides[-1])
    if size is None and box is None:
        return None
    return Preprocess(resize=size, crop=box)


def _preset(name: str) -> Preprocess:
    """A torchvision weights entry's transforms() preset, resolved through torchvision's registry (no download)."""
    from torchvision.models import get_weight
    from torchvision.transforms._presets import ImageClassification

    try:
        weights = get_weight(str(name).strip())
    except (ValueError, KeyError, AttributeError, TypeError) as err:
        raise InputError(BAD_TRANSFORMS.format(found=name, reason=str(err).strip() or type(err).__name__)) from err
    preset = weights.transforms()
    if not isinstance(preset, ImageClassification):
        raise InputError(NOT_CLASSIFICATION_PRESET.format(name=name, kind=type(preset).__name__))
    crop = list(preset.crop_size)
    return Preprocess(resize=list(preset.resize_size), crop=(crop[0], crop[-1]),
                      interpolation=preset.interpolation.value, transforms=str(name).strip(),
                      normalize=(tuple(map(float, preset.mean)), tuple(map(float, preset.std))))


def _pipeline(pre: Preprocess | None):
    """The torchvision.transforms.v2 steps applied to each uint8 (C, H, W) image: (resize or None, crop or None)."""
    if pre is None or not pre.changes_size:
        return None, None
    key = repr(pre)
    if key not in _PIPELINES:
        _PIPELINES[key] = _make_pipeline(pre)
    return _PIPELINES[key]


_PIPELINES: dict[str, tuple] = {}


def _make_pipeline(pre: Preprocess):
    from torchvision.transforms import InterpolationMode, v2

    resize = crop = None
    if pre.resize is not None:
        resize = v2.Resize(pre.resize, interpolation=InterpolationMode(pre.interpolation), antialias=True)
    if pre.crop is not None:
        crop = v2.CenterCrop(list(pre.crop))
    return resize, crop


def describe(pre: Preprocess | None, *, channels: int, why_channels: str, normalize, decoders: set[str]) -> tuple[str, ...]:
    """The steps, in order, as text for the result's provenance."""
    steps = [f"decode: {' and '.join(sorted(decoders))} to uint8, EXIF orientation not applied",
             f"channels: {channels} ({'RGB' if channels == 3 else 'gray'}): {why_channels}"]
    if pre is not None and pre.transforms:
        steps.append(f"transforms: {pre.transforms}.transforms() preset, applied with torchvision.transforms.v2")
    if pre is not None and pre.resize is not None:
        side = pre.resize[0] if isinstance(pre.resize, list) else pre.resize
        steps.append(f"resize: shorter side to {side} ({pre.interpolation}, antialias)")
    if pre is not None and pre.crop is not None:
        steps.append(f"centre crop: {pre.crop[0]}x{pre.crop[1]} (height x width)")
    steps.append("scale: uint8 / 255 to [0, 1], per batch")
    if normalize is not None:
        mean, std = normalize
        steps.append(f"normalize: (x - mean) / std per channel, mean {list(mean)}, std {list(std)}")
    return tuple(steps)


# ---- decoding ---------------------------------------------------------------------------------------
def _header(read: Callable[[str], bytes], member: str, file: str):
    """(format, mode, (width, height)) from the image's header; no pixels are decoded. A reader with a
    ``stream`` (a file, a zip member) is read only as far as the header."""
    import zipfile
    import zlib

    from PIL import Image, UnidentifiedImageError

    stream = getattr(read, "stream", None)
    try:
        with (stream(member) if stream is not None else io.BytesIO(read(member))) as f, Image.open(f) as im:
            return im.format, im.mode, im.size
    except Image.DecompressionBombError as err:
        raise InputError(IMAGE_BOMB.format(file=file, member=member, reason=err)) from err
    except UnidentifiedImageError as err:
        raise InputError(UNREADABLE.format(file=file, member=member, reason="not an image format Pillow or "
                                           "torchvision recognises")) from err
    except (OSError, SyntaxError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError,
            RuntimeError) as err:
        raise InputError(UNREADABLE.format(file=file, member=member, reason=err)) from err


def _decode(data: bytes, fmt: str, channels: int, member: str, file: str) -> tuple[torch.Tensor, str]:
    """bytes -> uint8 (channels, H, W), and which decoder read it."""
    from torchvision.io import ImageReadMode, decode_image

    if fmt in _TORCHVISION_FORMATS:
        mode = ImageReadMode.RGB if channels == 3 else ImageReadMode.GRAY
        try:
            with warnings.catch_warnings():   # torchvision 0.29 points to TorchCodec; decoding is unchanged
                warnings.simplefilter("ignore", DeprecationWarning)
                img = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=mode)
        except (RuntimeError, ValueError):
            img = None   # e.g. a CMYK JPEG or a 16-bit PNG some builds refuse: Pillow reads it below
        if img is not None and img.dim() == 4:
            img = img[0]                      # an animated GIF: its first frame, as Pillow gives it
        if img is not None and img.dtype == torch.uint16:
            img = ((img.to(torch.int64) * 255 + 32767) // 65535).to(torch.uint8)
        if img is not None and img.dtype == torch.uint8 and img.shape[0] == channels:
            return img, "torchvision.io.decode_image"
    return _decode_pil(data, channels, member, file), "Pillow (pil_to_tensor)"


def _decode_pil(data: bytes, channels: int, member: str, file: str) -> torch.Tensor:
    from PIL import Image
    from torchvision.transforms.v2.functional import pil_to_tensor

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.mode.startswith("I"):
                wide = np.asarray(im).astype(np.int64)
                gray = torch.from_numpy(((wide * 255 + 32767) // 65535).astype(np.uint8))[None]
                return gray.repeat(channels, 1, 1) if channels == 3 else gray
            if channels == 1:
                return pil_to_tensor(im.convert("L"))
            return pil_to_tensor(im.convert("RGB"))
    except Image.DecompressionBombError as err:
        raise InputError(IMAGE_BOMB.format(file=file, member=member, reason=err)) from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise InputError(UNREADABLE.format(file=file, member=member, reason=err)) from err


def scan_headers(members: Sequence[str], read: Callable[[str], bytes], *, pre: Preprocess | None, file: str):
    """Pass 1, headers only (no pixels): (formats, sizes (width, height), channels, why_channels). Refuses an
    unknown mode, and images of mixed sizes when nothing resizes or crops them."""
    formats, sizes, colour, first_colour = [], [], False, None
    size0 = first = None
    for member in members:
        fmt, mode, size = _header(read, member, file)
        if mode not in _GRAY_MODES | _COLOUR_MODES:
            raise InputError(IMAGE_MODE.format(file=file, member=member, mode=mode))
        if mode in _COLOUR_MODES and not colour:
            colour, first_colour = True, member
        if size0 is None:
            size0, first = size, member
        elif size != size0 and (pre is None or not pre.changes_size):
            raise InputError(MIXED_SIZES.format(file=file, first=first, w0=size0[0], h0=size0[1], other=member,
                                                w=size[0], h=size[1], fix=_fix(pre)))
        formats.append(fmt)
        sizes.append(size)
    if pre is not None and pre.transforms:
        c, why = 3, f"the {pre.transforms} preset takes RGB; gray images repeated over 3 channels"
    elif colour:
        c, why = 3, f"colour images (the first: {first_colour!r}); gray images repeated over 3 channels, alpha dropped"
    else:
        c, why = 1, "every image is grayscale"
    return formats, sizes, c, why


def decode_one(read: Callable[[str], bytes], member: str, fmt: str, channels: int, pre: Preprocess | None,
               file: str, data: bytes | None = None) -> tuple[torch.Tensor, str]:
    """One image: its bytes decoded into uint8 (channels, H, W), resized and cropped; and which decoder read it.
    The eager path and a streamed set (``_stream.ImageFiles``) both decode through this."""
    img, decoder = _decode(read(member) if data is None else data, fmt, channels, member, file)
    resize, crop = _pipeline(pre)
    if resize is not None:
        img = resize(img)
    if crop is not None:
        _check_crop(img, pre, member, file)
        img = crop(img)
    return img, decoder


def _decode_pixels(read, member: str, fmt: str, channels: int, pre: Preprocess | None, file: str) -> torch.Tensor:
    """decode_one's pixels only (what a streamed set reads)."""
    return decode_one(read, member, fmt, channels, pre, file)[0]


def _resized(size: tuple[int, int], pre: Preprocess | None) -> tuple[int, int]:
    """(height, width) of an image of ``size`` (width, height) after the resize, from the header alone."""
    w, h = size
    if pre is None or pre.resize is None:
        return h, w
    from torchvision.transforms.v2.functional._geometry import _compute_resized_output_size

    side = pre.resize if isinstance(pre.resize, list) else [pre.resize]
    out = _compute_resized_output_size((h, w), size=list(side))
    return int(out[0]), int(out[1])


def decode_images(members: Sequence[str], read: Callable[[str], bytes], *, pre: Preprocess | None, file: str,
                  limit: int, inverse: np.ndarray | None = None, digests: dict | None = None,
                  stream_above: int | None = None):
    """Decode each member once into uint8 (N, C, H, W) (rows ``inverse`` of the distinct ``members``).

    Returns (x, channels, why_channels, decoders). Pass 1 reads headers only; pass 2 decodes and transforms.
    ``digests``: filled with each member's SHA-256, from the bytes decoded (a folder's fingerprint).
    ``stream_above``: when the decoded rows would take more bytes than this, nothing is decoded here: x is a
    ``_stream.ImageFiles`` that decodes rows when they are read (sizes known from the headers, each file read
    once for ``digests``; the limit on decoded bytes does not apply, since they are never held together).
    """
    formats, sizes, c, why = scan_headers(members, read, pre=pre, file=file)
    n = len(members) if inverse is None else len(inverse)
    if stream_above is not None:
        h, w = pre.crop if pre is not None and pre.crop is not None else _resized(sizes[0], pre)
        if n * c * h * w > stream_above:
            return _lazy(members, read, formats, sizes, c, why, pre=pre, file=file, inverse=inverse,
                         digests=digests)
    out, shape0, decoders = None, None, set()
    for i, (member, fmt) in enumerate(zip(members, formats)):
        data = read(member)
        if digests is not None:
            digests[member] = hashlib.sha256(data).hexdigest()
        img, decoder = decode_one(read, member, fmt, c, pre, file, data=data)
        decoders.add(decoder)
        if out is None:
            shape0 = tuple(img.shape)
            total = n * int(np.prod(shape0))
            if total > limit:
                raise InputError(DECODED_TOO_LARGE.format(file=file, n=n, c=shape0[0], h=shape0[1], w=shape0[2],
                                                          size=total, limit=limit))
            out = torch.empty((len(members), *shape0), dtype=torch.uint8)
        elif tuple(img.shape) != shape0:
            raise InputError(_mixed_after(file, members[0], shape0, member, img.shape, pre))
        out[i] = img
    if inverse is not None and not np.array_equal(inverse, np.arange(len(members))):
        out = out[torch.as_tensor(inverse, dtype=torch.long)]
    return out, c, why, decoders


def _mixed_after(file: str, first: str, shape0, member: str, shape, pre: Preprocess | None) -> str:
    return MIXED_SIZES.format(file=file, first=first, w0=shape0[2], h0=shape0[1], other=member, w=shape[2],
                              h=shape[1], fix=_fix(pre)).replace(" is ", " becomes ").replace(
                                  "(width x height)", "(width x height, after resize/crop)")


def _lazy(members, read, formats, sizes, c, why, *, pre, file, inverse, digests):
    """A streamed set: the checks the eager path makes while decoding, made from the headers (a crop larger
    than a resized image, resized images of different sizes), one image decoded per format and mode (the
    decoders for the provenance), each file read once for its SHA-256 when a fingerprint needs it."""
    h0, w0 = _resized(sizes[0], pre)
    for member, size in zip(members, sizes):
        h, w = _resized(size, pre)
        if pre is not None and pre.crop is not None:
            ch, cw = pre.crop
            if h < ch or w < cw:
                raise InputError(SMALLER_THAN_CROP.format(file=file, member=member, w=w, h=h, cw=cw, ch=ch,
                                                          after=" after the resize" if pre.resize is not None else "",
                                                          side=max(ch, cw)))
        elif (h, w) != (h0, w0):
            raise InputError(_mixed_after(file, members[0], (c, h0, w0), member, (c, h, w), pre))
    shape = (c, *pre.crop) if pre is not None and pre.crop is not None else (c, h0, w0)
    decoders, seen = set(), set()
    for member, fmt in zip(members, formats):
        if fmt in seen:
            continue
        seen.add(fmt)
        img, decoder = decode_one(read, member, fmt, c, pre, file)
        decoders.add(decoder)
        if tuple(img.shape) != shape:
            raise InputError(_mixed_after(file, members[0], shape, member, img.shape, pre))
    if digests is not None:
        for member in members:
            digests[member] = hashlib.sha256(read(member)).hexdigest()
    rows = np.arange(len(members)) if inverse is None else np.asarray(inverse)
    x = ImageFiles(getattr(read, "lasting", read), members, formats, rows, shape, _decode_pixels, pre, file)
    return x, c, why, decoders


def _check_crop(img: torch.Tensor, pre: Preprocess, member: str, file: str) -> None:
    """Refuse a crop larger than the (resized) image: v2.CenterCrop would pad it with zeros."""
    h, w = img.shape[-2:]
    after = " after the resize" if pre.resize is not None else ""
    ch, cw = pre.crop
    if h < ch or w < cw:
        raise InputError(SMALLER_THAN_CROP.format(file=file, member=member, w=w, h=h, after=after, cw=cw, ch=ch,
                                                  side=max(ch, cw)))


def _fix(pre: Preprocess | None) -> str:
    if pre is not None and pre.resize is not None and pre.crop is None:
        return "--crop N (or H,W) to cut every resized image to one size"
    return "--resize N --crop N to bring them to one size (or --transforms NAME, a torchvision weights preset)"


# ---- layouts ----------------------------------------------------------------------------------------
def unsafe(name: str) -> bool:
    """A path that is absolute, has a drive letter or climbs out with '..'."""
    name = name.replace("\\", "/")
    return name.startswith("/") or bool(_DRIVE.match(name)) or ".." in name.split("/")


def class_layout(names: Sequence[str], dirs: Sequence[str], *, file: str, root_hint: str = ""):
    """Files listed relative to the root -> (members, labels, class_names) for ``<label>/<image>``.

    A single top folder holding the class folders (a zipped folder) is stepped into. ``dirs``: every folder,
    so an empty class folder is found.
    """
    original = {}
    for n in names:       # 'img//e.png' and './img/e.png' name img/e.png; read by the name listed
        if n.lower().endswith(IMAGE_SUFFIXES):
            original.setdefault("/".join(s for s in n.replace("\\", "/").split("/") if s not in ("", ".")), n)
    images = sorted(original)
    dirs = ["/".join(s for s in d.replace("\\", "/").split("/") if s not in ("", ".")) for d in dirs]
    prefix = ""
    tops = {n.split("/")[0] for n in images if "/" in n}
    if len(tops) == 1 and all(n.count("/") >= 2 for n in images):
        prefix = next(iter(tops)) + "/"
    inner = [n[len(prefix):] for n in images]
    if not inner:
        found = f"files: {fmt_names(names, limit=10)}" if names else "nothing"
        raise InputError(NO_IMAGES.format(file=file, root=root_hint, suffixes=", ".join(IMAGE_SUFFIXES), found=found))
    stray = [prefix + n for n in inner if n.count("/") != 1]
    if stray:
        raise InputError(STRAY_FILES.format(file=file, n=len(stray), paths=fmt_names(stray, limit=5)))
    classes = sorted({n.split("/")[0] for n in inner})
    folders = {d[len(prefix):].strip("/") for d in dirs if d.startswith(prefix)}
    for folder in sorted(folders):
        if folder and "/" not in folder and folder not in classes:
            raise InputError(EMPTY_CLASS.format(file=file, folder=prefix + folder, suffixes=", ".join(IMAGE_SUFFIXES)))
    order = sorted(range(len(inner)), key=lambda i: inner[i])
    members = [original[prefix + inner[i]] for i in order]
    index = {c: k for k, c in enumerate(classes)}
    labels = np.asarray([index[inner[i].split("/")[0]] for i in order], dtype=np.int64)
    return members, labels, tuple(classes)


def class_names_for_labels(frame, label: str):
    """A metadata table whose label column holds class names: names -> indices (sorted); else None."""
    import pandas as pd

    values = frame[label]
    if pd.api.types.is_numeric_dtype(values):
        return None
    text = values.astype("string").str.strip()
    numeric = pd.to_numeric(text, errors="coerce")
    if numeric.notna().sum() == text.notna().sum():
        return None
    classes = sorted(set(text.dropna()) - {""})
    index = {c: k for k, c in enumerate(classes)}
    frame[label] = [index.get(v) if isinstance(v, str) else None for v in text.astype(object).where(text.notna(), None)]
    return tuple(classes)


def build(x: torch.Tensor | ImageFiles, *, y, group, name, sha256, label, groups, split, normalize, frame, class_names,
          pre, channels, why, decoders, file) -> ImageSet:
    stats = pre.normalize if pre is not None and pre.normalize is not None else normalize
    stats = fit_normalize(stats, tuple(x.shape), file=file)
    return ImageSet(x=x, y=torch.from_numpy(np.asarray(y, dtype=np.int64)), group=group, name=name, sha256=sha256,
                    label_column=label, group_columns=groups, class_names=class_names, split=split,
                    normalize=stats, frame=frame,
                    preprocessing=describe(pre, channels=channels, why_channels=why, normalize=stats,
                                           decoders=decoders))


def from_table(frame, *, members_of: Callable, read, label, groups, missing_group, normalize, pre, name, sha256,
               file, limit) -> ImageSet:
    """An image set from a metadata table (already read): label/group/split columns and the images it names."""
    from ._table import require_columns, table_parts

    require_columns(frame, [("path", PATH_COLUMN, "image paths")] + [("label", label, "--label")]
                    + [("group", g, "--group") for g in groups], file=file)
    class_names = class_names_for_labels(frame, label)
    parts = table_parts(frame, file=file, label=label, groups=groups, missing_group=missing_group)
    members = members_of(parts.frame[PATH_COLUMN].to_numpy(dtype=object), parts.rows)
    unique, inverse = np.unique(members, return_inverse=True)
    digests = {} if callable(sha256) else None
    x, c, why, decoders = decode_images([str(m) for m in unique], read, pre=pre, file=file, limit=limit,
                                        inverse=inverse, digests=digests, stream_above=stream_bytes())
    if digests is not None:
        sha256 = sha256(digests)
    group = parts.group
    if class_names is not None and label in groups and len(groups) == 1:
        group = np.asarray([class_names[int(v)] for v in parts.y], dtype=object)
    return build(x, y=parts.y, group=group, name=name, sha256=sha256, label=label, groups=groups,
                 split=parts.split, normalize=normalize, frame=parts.frame, class_names=class_names, pre=pre,
                 channels=c, why=why, decoders=decoders, file=file)


def from_classes(members, labels, class_names, *, read, label, groups, normalize, pre, name, sha256, file,
                 limit) -> ImageSet:
    """An image set from class subfolders: the group is the class (``--group label``)."""
    import pandas as pd

    if tuple(groups) != (label,):
        missing = [g for g in groups if g != label]
        raise InputError(FOLDER_GROUP.format(file=file, classes=fmt_names(class_names, limit=5),
                                             group=f"group column {missing[0]!r}"))
    digests = {} if callable(sha256) else None
    x, c, why, decoders = decode_images(list(members), read, pre=pre, file=file, limit=limit, digests=digests,
                                        stream_above=stream_bytes())
    if digests is not None:
        sha256 = sha256(digests)
    group = np.asarray([class_names[i] for i in labels], dtype=object)
    frame = pd.DataFrame({PATH_COLUMN: list(members), label: [class_names[i] for i in labels]})
    return build(x, y=labels, group=group, name=name, sha256=sha256, label=label, groups=tuple(groups), split=None,
                 normalize=normalize, frame=frame, class_names=tuple(class_names), pre=pre, channels=c, why=why,
                 decoders=decoders, file=file)


# ---- a folder on disk ---------------------------------------------------------------------------------
class FolderReader:
    """``reader(member) -> bytes`` for files under ``root`` (a link pointing outside it refused); ``stream(member)``
    opens one for its header. Picklable: a streamed set's worker processes read through their own copy."""

    def __init__(self, root: Path, file: str):
        self.root, self.file = Path(root), file
        self.real_root = self.root.resolve()
        self._dirs: dict[Path, Path] = {}       # folder -> resolved: one lstat per file, not one per path part

    def inside(self, member: str) -> Path:
        path = self.root / member
        parent = self._dirs.get(path.parent)
        if parent is None:
            parent = self._dirs[path.parent] = path.parent.resolve()
        p = parent / path.name
        if p.is_symlink():
            p = p.resolve()
        if not p.is_relative_to(self.real_root):
            raise InputError(LINK_OUTSIDE.format(file=self.file, member=member, target=str(p)))
        return p

    def __call__(self, member: str) -> bytes:
        try:
            return self.inside(member).read_bytes()
        except OSError as err:
            raise InputError(UNREADABLE.format(file=self.file, member=member, reason=err.strerror or err)) from err

    def stream(self, member: str):
        return open(self.inside(member), "rb")


def _folder_reader(root: Path, file: str) -> FolderReader:
    return FolderReader(root, file)


def _csv_members(root: Path, file: str, table: str):
    def members_of(paths, rows):
        from ._checks import is_missing
        from ._table import line_numbers

        blank = is_missing(paths)
        if blank.any():
            idx = np.flatnonzero(blank)
            raise InputError(BLANK_PATHS.format(file=file, table=table, n=len(idx), where=line_numbers(rows[idx])))
        out, absent = [], []
        for i, p in enumerate(paths):
            p = str(p).strip().replace("\\", "/")
            if unsafe(p):
                raise InputError(UNSAFE_PATH.format(file=file, table=table, path=p, where=line_numbers(rows[i:i + 1]),
                                                    where_root="the CSV's folder"))
            member = str(PurePosixPath(*[s for s in p.split("/") if s not in ("", ".")]))
            if not (root / member).is_file():
                absent.append(p)
            out.append(member)
        if absent:
            raise InputError(ABSENT_IMAGES.format(file=file, table=table, n=len(absent),
                                                  paths=fmt_names(absent, limit=5)))
        return np.asarray(out, dtype=object)
    return members_of


def _tree_hash(table: Path | None = None):
    """SHA-256 over the (table's hash and) relative names and SHA-256s of the images read: a folder has no one
    file to hash. Returns a function of the digests ``decode_images`` collects, so each file is read once."""
    def digest(digests: dict) -> str:
        h = hashlib.sha256()
        if table is not None:
            h.update(b"table\0" + sha256_file(table).encode())
        for m in sorted(digests):
            h.update(m.encode() + b"\0" + digests[m].encode())
        return h.hexdigest()
    return digest


def load_image_folder(path: Path, *, label: str, groups: tuple[str, ...], missing_group: str, normalize,
                      name: str | None, max_uncompressed_bytes: int, pre: Preprocess | None) -> ImageSet:
    """A folder: its ``metadata.csv`` if it has one, else class subfolders ``<label>/<image>``."""
    file = path.name + "/"
    if (path / METADATA).is_file():
        return load_image_csv(path / METADATA, label=label, groups=groups, missing_group=missing_group,
                              normalize=normalize, name=name or file, max_uncompressed_bytes=max_uncompressed_bytes,
                              pre=pre, shown=file + METADATA)
    names, dirs = [], []
    for dirpath, dirnames, filenames in os.walk(path):
        rel = Path(dirpath).relative_to(path).as_posix()
        rel = "" if rel == "." else rel + "/"
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        dirs += [rel + d for d in dirnames]
        names += [rel + f for f in sorted(filenames) if not f.startswith(".")]
    members, labels, classes = class_layout(names, dirs, file=file, root_hint=file)
    read = _folder_reader(path, file)
    return from_classes(members, labels, classes, read=read, label=label, groups=groups, normalize=normalize,
                        pre=pre, name=name or file, sha256=_tree_hash(), file=file,
                        limit=max_uncompressed_bytes)


def load_image_csv(path: Path, *, label: str, groups: tuple[str, ...], missing_group: str, normalize,
                   name: str | None, max_uncompressed_bytes: int, pre: Preprocess | None,
                   shown: str | None = None) -> ImageSet:
    """A CSV listing ``path,label,<group columns>``, image paths relative to the CSV's folder."""
    from ._table import read_csv

    file = shown or path.name
    root = path.parent
    frame = read_csv(path, file=file, text_columns=[PATH_COLUMN] + [g for g in groups if g != label])
    return from_table(frame, members_of=_csv_members(root, file, "the CSV" if shown is None else METADATA),
                      read=_folder_reader(root, file), label=label, groups=groups, missing_group=missing_group,
                      normalize=normalize, pre=pre, name=name or file, sha256=_tree_hash(path), file=file,
                      limit=max_uncompressed_bytes)
