"""Image zip loader: a ``metadata.csv`` (``path``, label, group(s), optional ``split``) and the images it names.

Images are decoded with Pillow into one uint8 tensor (N, C, H, W), 1 byte per pixel at rest, and turned
into float [0, 1] one batch at a time by ``GroupedDataset.to_float`` (then normalised if asked).
C is 1 when every image is grayscale (modes 1, L, LA, 16-bit gray scaled to 8 bits) and 3 otherwise:
colour modes (RGB, RGBA, P, CMYK, ...) are converted to RGB, alpha dropped, and when gray and colour
images mix, gray ones are repeated over three channels. All images must have the same size.

The archive is untrusted input, and it is never extracted to disk: members are read in memory. Before
anything is decompressed, an archive is refused when it lists too many entries (``ZIP_MAX_ENTRIES``), when
a member's name points outside it (absolute, a drive letter, or with ``..``), when a member is a symbolic
link or another special file, when it would expand past ``max_uncompressed_bytes``, or when a member
expands absurdly (a zip bomb). Pillow's decompression-bomb guard stays at its default,
and the decoded pixels, which are held in memory, are bounded by the same byte limit.

Pixels are taken as stored: EXIF orientation is not applied, as in a plain ``Image.open`` training pipeline.
"""

from __future__ import annotations

import io
import re
import stat
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..core._hash import sha256_file
from ..core.errors import InputError
from ._checks import ZIP_ERRORS, check_zip_size, fit_normalize, fmt_names, is_missing, open_zip
from ._dataset import GroupedDataset
from ._table import line_numbers, read_csv, require_columns, table_parts

#: The table inside the archive that names the images and their labels and groups.
METADATA = "metadata.csv"
#: Its column of image paths, relative to the folder that holds ``metadata.csv``.
PATH_COLUMN = "path"

UNSAFE_MEMBER = (
    "{file}: refused: member {member!r} points outside the archive (an absolute path or '..'); "
    "expected paths relative to the archive's root"
)
SPECIAL_MEMBER = (
    "{file}: refused: member {member!r} is a {kind}, not a regular file; expected only image files and a "
    "metadata.csv (and folders)"
)
UNSAFE_PATH = (
    "{file}: refused: metadata.csv names {path!r} ({where}), which points outside the archive; "
    "expected a path relative to metadata.csv's folder"
)
NO_METADATA = "{file}: expected a 'metadata.csv' (columns path,label,group) in the archive, found {found}"
MANY_METADATA = "{file}: expected one 'metadata.csv' in the archive, found {n}: {found}"
BLANK_PATHS = "{file}: metadata.csv column 'path' must name an image in every row; found {n} blank ({where})"
ABSENT_IMAGES = "{file}: metadata.csv names {n} image(s) that are not in the archive: {paths}"
BAD_MEMBER = "{file}: member {member!r} does not read ({reason}); expected an intact zip member"
BAD_IMAGE = "{file}: image {member!r} does not decode ({reason}); expected an image Pillow reads (PNG, JPEG, ...)"
IMAGE_BOMB = "{file}: refused image {member!r}: {reason}"
IMAGE_MODE = (
    "{file}: image {member!r} has Pillow mode {mode!r}; expected 8-bit grayscale or colour "
    "(1, L, LA, I;16, RGB, RGBA, P, CMYK, ...). Convert it to 8 bits per channel first"
)
MIXED_SIZES = (
    "{file}: images must all have the same size; {first!r} is {w0}x{h0} (width x height) but {member!r} is "
    "{w}x{h}. Resize them to one size first (the model takes one input shape)"
)
DECODED_TOO_LARGE = (
    "{file}: refused: {n:,} images of {c}x{h}x{w} decode to {size:,} bytes, more than the limit of {limit:,} bytes "
    "(max_uncompressed_bytes); expected fewer or smaller images, or a higher limit"
)

_GRAY_MODES = {"1", "L", "LA", "La", "I;16", "I;16L", "I;16B", "I;16N"}
_COLOUR_MODES = {"RGB", "RGBA", "RGBa", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"}
_DRIVE = re.compile(r"^[A-Za-z]:")


def load_image_zip(path: Path, *, label: str, groups: tuple[str, ...], missing_group: str, normalize,
                   name: str | None, max_uncompressed_bytes: int) -> GroupedDataset:
    file = path.name
    with open_zip(path, file=file, what="images and a metadata.csv") as zf:
        check_zip_size(zf, file=file, limit=max_uncompressed_bytes, check_ratio=True)
        for info in zf.infolist():
            if _unsafe(info.filename):
                raise InputError(UNSAFE_MEMBER.format(file=file, member=info.filename))
            special = _special(info)
            if special:
                raise InputError(SPECIAL_MEMBER.format(file=file, member=info.filename, kind=special))
        meta, folder = _find_metadata(zf, file)
        frame = read_csv(io.BytesIO(_read(zf, meta, file)), file=file,
                         text_columns=[PATH_COLUMN] + [g for g in groups if g != label])
        require_columns(
            frame,
            [("path", PATH_COLUMN, "image paths")] + [("label", label, "--label")]
            + [("group", g, "--group") for g in groups],
            file=file,
        )
        parts = table_parts(frame, file=file, label=label, groups=groups, missing_group=missing_group)
        members = _members(zf, parts.frame[PATH_COLUMN].to_numpy(dtype=object), folder=folder,
                           rows=parts.rows, file=file)
        unique, inverse = np.unique(members, return_inverse=True)
        x = _decode_all(zf, [str(m) for m in unique], inverse, file=file, limit=max_uncompressed_bytes)
    return GroupedDataset(
        x=torch.from_numpy(x),
        y=torch.from_numpy(parts.y),
        group=parts.group,
        name=name or file,
        sha256=sha256_file(path),
        label_column=label,
        group_columns=groups,
        split=parts.split,
        normalize=fit_normalize(normalize, x.shape, file=file),
        frame=parts.frame,
    )


def _unsafe(name: str) -> bool:
    name = name.replace("\\", "/")
    return name.startswith("/") or bool(_DRIVE.match(name)) or ".." in name.split("/")


_SPECIAL_KINDS = {stat.S_IFLNK: "symbolic link", stat.S_IFCHR: "character device", stat.S_IFBLK: "block device",
                  stat.S_IFIFO: "named pipe (FIFO)", stat.S_IFSOCK: "socket"}


def _special(info: zipfile.ZipInfo) -> str | None:
    """What a member made on Unix is when it is neither a regular file nor a folder (a symlink, a device...)."""
    if info.create_system != 3:   # the high 16 bits of external_attr are a Unix mode only for Unix-made members
        return None
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind in (0, stat.S_IFREG, stat.S_IFDIR):
        return None
    return _SPECIAL_KINDS.get(kind, f"special file (mode {oct(kind)})")


def _find_metadata(zf: zipfile.ZipFile, file: str) -> tuple[str, str]:
    """The metadata.csv member and its folder ('' at the root; a zipped folder 'data/' also works)."""
    names = zf.namelist()
    if METADATA in names:
        return METADATA, ""
    found = [n for n in names if n.rsplit("/", 1)[-1] == METADATA]
    if not found:
        listed = f"members: {fmt_names(names, limit=10)}" if names else "an empty archive"
        raise InputError(NO_METADATA.format(file=file, found=listed))
    if len(found) > 1:
        raise InputError(MANY_METADATA.format(file=file, n=len(found), found=fmt_names(found)))
    return found[0], found[0][: -len(METADATA)]


def _members(zf: zipfile.ZipFile, paths: np.ndarray, *, folder: str, rows: np.ndarray, file: str) -> np.ndarray:
    """metadata paths -> archive member names, refusing blanks, escapes and absent files."""
    blank = is_missing(paths)
    if blank.any():
        idx = np.flatnonzero(blank)
        raise InputError(BLANK_PATHS.format(file=file, n=len(idx), where=line_numbers(rows[idx])))
    present = set(zf.namelist())
    members, absent = [], []
    for i, p in enumerate(paths):
        p = str(p).strip()
        if _unsafe(p):
            raise InputError(UNSAFE_PATH.format(file=file, path=p, where=line_numbers(rows[i:i + 1])))
        member = folder + "/".join(s for s in p.replace("\\", "/").split("/") if s not in ("", "."))
        if member not in present:
            absent.append(p)
        members.append(member)
    if absent:
        raise InputError(ABSENT_IMAGES.format(file=file, n=len(absent), paths=fmt_names(absent, limit=5)))
    return np.asarray(members, dtype=object)


def _read(zf: zipfile.ZipFile, member: str, file: str) -> bytes:
    try:
        return zf.read(member)
    except ZIP_ERRORS as err:
        raise InputError(BAD_MEMBER.format(file=file, member=member, reason=err)) from err


def _open(data_or_stream, member: str, file: str) -> Image.Image:
    try:
        return Image.open(data_or_stream)
    except Image.DecompressionBombError as err:
        raise InputError(IMAGE_BOMB.format(file=file, member=member, reason=err)) from err
    except UnidentifiedImageError as err:  # its text is the stream's repr, which helps no one
        raise InputError(BAD_IMAGE.format(file=file, member=member, reason="not an image format Pillow "
                                          "recognises")) from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise InputError(BAD_IMAGE.format(file=file, member=member, reason=err)) from err


def _header(zf: zipfile.ZipFile, member: str, file: str) -> tuple[str, tuple[int, int]]:
    """(mode, (width, height)) from the image's header, read from the archive as a stream."""
    try:
        with zf.open(member) as stream, _open(stream, member, file) as im:
            return im.mode, im.size
    except InputError:
        raise
    except ZIP_ERRORS as err:
        raise InputError(BAD_MEMBER.format(file=file, member=member, reason=err)) from err


def _decode_all(zf: zipfile.ZipFile, members: list[str], inverse: np.ndarray, *, file: str, limit: int) -> np.ndarray:
    """Decode each distinct image once into uint8 (N, C, H, W); rows naming the same image share it."""
    # Pass 1: headers only (size, mode), so sizes are checked and memory is sized before any pixel is decoded.
    colour, size, first = False, None, None
    for member in members:
        mode, im_size = _header(zf, member, file)
        if mode not in _GRAY_MODES | _COLOUR_MODES:
            raise InputError(IMAGE_MODE.format(file=file, member=member, mode=mode))
        colour |= mode in _COLOUR_MODES
        if size is None:
            size, first = im_size, member
        elif im_size != size:
            raise InputError(MIXED_SIZES.format(file=file, first=first, w0=size[0], h0=size[1], member=member,
                                                w=im_size[0], h=im_size[1]))
    c, (w, h) = (3 if colour else 1), size
    n = len(inverse)
    if n * c * h * w > limit:
        raise InputError(DECODED_TOO_LARGE.format(file=file, n=n, c=c, h=h, w=w, size=n * c * h * w, limit=limit))
    # Pass 2: pixels.
    out = np.empty((len(members), c, h, w), dtype=np.uint8)
    for i, member in enumerate(members):
        data = _read(zf, member, file)
        with _open(io.BytesIO(data), member, file) as im:
            try:
                im.load()
                pixels = _pixels(im, c)
            except Image.DecompressionBombError as err:
                raise InputError(IMAGE_BOMB.format(file=file, member=member, reason=err)) from err
            except (OSError, SyntaxError, ValueError, EOFError) as err:
                raise InputError(BAD_IMAGE.format(file=file, member=member, reason=err)) from err
        if pixels.shape != (c, h, w):  # the header said one thing, the pixels another
            raise InputError(BAD_IMAGE.format(file=file, member=member,
                                              reason=f"decoded to shape {pixels.shape}, expected {(c, h, w)}"))
        out[i] = pixels
    if len(members) == n and np.array_equal(inverse, np.arange(n)):
        return out
    return out[inverse]


def _pixels(im: Image.Image, channels: int) -> np.ndarray:
    """A loaded image -> uint8 (channels, H, W)."""
    if im.mode.startswith("I;16"):
        wide = np.asarray(im).astype(np.uint32)
        gray = ((wide * 255 + 32767) // 65535).astype(np.uint8)  # 16-bit -> 8-bit, rounded
    elif im.mode in _GRAY_MODES:
        gray = np.asarray(im.convert("L"))
    else:
        return np.asarray(im.convert("RGB")).transpose(2, 0, 1)
    if channels == 1:
        return gray[None]
    return np.repeat(gray[None], 3, axis=0)
