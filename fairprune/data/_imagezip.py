"""Image zip loader: a ``metadata.csv`` (``path``, label, group(s), optional ``split``) and the images it names,
or class subfolders ``<label>/<image>`` (the label is the folder's name; see ``_imagefolder.py``).

Decoding, channels, resize/crop and the size rules are ``_imagefolder.py``'s (one pipeline for folders, CSVs
and zips): torchvision's ``decode_image`` into uint8 (N, C, H, W), 1 byte per pixel at rest, turned into
float [0, 1] one batch at a time by ``GroupedDataset.to_float`` (then normalised if asked).

The archive is untrusted input, and it is never extracted to disk: members are read in memory. Before
anything is decompressed, an archive is refused when it lists too many entries (``ZIP_MAX_ENTRIES``), when
a member's name points outside it (absolute, a drive letter, or with ``..``), when a member is a symbolic
link or another special file, when it would expand past ``max_uncompressed_bytes``, or when a member
expands absurdly (a zip bomb). Image headers are read (Pillow, no pixels) before any image is decoded, so
Pillow's decompression-bomb guard applies at its default, and the decoded pixels, which are held in memory,
are bounded by the same byte limit. A set too large to hold decoded (``_stream.py``) reads its rows later through
:class:`ZipMembers`, which opens the checked archive again in each process.
"""

from __future__ import annotations

import io
import os
import re
import stat
import zipfile
from pathlib import Path

import numpy as np

from ..core._hash import sha256_file
from ..core.errors import InputError
from ._checks import ZIP_ERRORS, check_zip_size, fmt_names, is_missing, open_zip
from ._imagefolder import IMAGE_SUFFIXES, ImageSet, Preprocess, class_layout, from_classes, from_table
from ._table import line_numbers, read_csv

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
NO_METADATA = (
    "{file}: expected a 'metadata.csv' (columns path,label,group) or class subfolders (<label>/<image>) in the "
    "archive, found {found}"
)
MANY_METADATA = "{file}: expected one 'metadata.csv' in the archive, found {n}: {found}"
BLANK_PATHS = "{file}: metadata.csv column 'path' must name an image in every row; found {n} blank ({where})"
ABSENT_IMAGES = "{file}: metadata.csv names {n} image(s) that are not in the archive: {paths}"
BAD_MEMBER = "{file}: member {member!r} does not read ({reason}); expected an intact zip member"
_DRIVE = re.compile(r"^[A-Za-z]:")


def load_image_zip(path: Path, *, label: str, groups: tuple[str, ...], missing_group: str, normalize,
                   name: str | None, max_uncompressed_bytes: int, pre: Preprocess | None = None) -> ImageSet:
    file = path.name
    with open_zip(path, file=file, what="images and a metadata.csv, or class subfolders") as zf:
        check_zip_size(zf, file=file, limit=max_uncompressed_bytes, check_ratio=True)
        for info in zf.infolist():
            if _unsafe(info.filename):
                raise InputError(UNSAFE_MEMBER.format(file=file, member=info.filename))
            special = _special(info)
            if special:
                raise InputError(SPECIAL_MEMBER.format(file=file, member=info.filename, kind=special))

        def read(member: str) -> bytes:
            return _read(zf, member, file)

        read.stream = zf.open          # headers are read from the member as a stream
        read.lasting = ZipMembers(path, file)   # a streamed set reads its rows after this archive is closed

        common = dict(read=read, label=label, groups=groups, normalize=normalize, pre=pre, name=name or file,
                      sha256=sha256_file(path), file=file, limit=max_uncompressed_bytes)
        meta = _find_metadata(zf, file)
        if meta is None:
            names = [n for n in zf.namelist() if not n.endswith("/")]
            dirs = sorted({n.rstrip("/") for n in zf.namelist() if n.endswith("/")}
                          | {n.rsplit("/", 1)[0] for n in names if "/" in n})
            members, labels, classes = class_layout(names, dirs, file=file)
            return from_classes(members, labels, classes, **common)
        meta, folder = meta
        frame = read_csv(io.BytesIO(_read(zf, meta, file)), file=file,
                         text_columns=[PATH_COLUMN] + [g for g in groups if g != label])

        def members_of(paths, rows):
            return _members(zf, paths, folder=folder, rows=rows, file=file)

        return from_table(frame, members_of=members_of, missing_group=missing_group, **common)


class ZipMembers:
    """``reader(member) -> bytes`` for a streamed set's rows (``_stream.ImageFiles``): the archive, checked when the
    set was loaded, is opened again on first use in each process (a worker gets its own handle: a handle shared
    across a fork shares its file position) and stays open while the set is read. Picklable."""

    def __init__(self, path: Path, file: str):
        self.path, self.file = Path(path), file
        self._zf: zipfile.ZipFile | None = None
        self._pid: int | None = None

    def _zip(self) -> zipfile.ZipFile:
        if self._zf is None or self._pid != os.getpid():
            try:
                self._zf = zipfile.ZipFile(self.path)
            except (OSError, *ZIP_ERRORS) as err:
                raise InputError(f"{self.file}: the archive does not open again to read images ({err}); expected "
                                 "it where it was when the set was loaded, unchanged") from err
            self._pid = os.getpid()
        return self._zf

    def __call__(self, member: str) -> bytes:
        return _read(self._zip(), member, self.file)

    def stream(self, member: str):
        return self._zip().open(member)

    def __getstate__(self):
        return {"path": self.path, "file": self.file, "_zf": None, "_pid": None}


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


def _find_metadata(zf: zipfile.ZipFile, file: str) -> tuple[str, str] | None:
    """The metadata.csv member and its folder ('' at the root; a zipped folder 'data/' also works); None when
    there is none but there are images (class subfolders)."""
    names = zf.namelist()
    if METADATA in names:
        return METADATA, ""
    found = [n for n in names if n.rsplit("/", 1)[-1] == METADATA]
    if not found:
        if any(n.lower().endswith(IMAGE_SUFFIXES) and "/" in n for n in names):
            return None          # class subfolders
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
