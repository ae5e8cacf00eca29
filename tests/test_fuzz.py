"""Fuzzing the loaders of what users bring: no file gives anything but a result or an InputError, none hangs.

``fairprune.data.load_dataset`` (CSV, CSV.gz, NPZ, image zip) and ``fairprune.zoo.load_model``
(.safetensors, state_dict .pt, .pt2) get three kinds of input: random bytes, valid files with random
mutations (bytes flipped, inserted, deleted, the file cut short) and files built from random parts
(random tables, random arrays of any dtype, random metadata and members). Each call is bounded by
hypothesis's deadline and the whole module by pytest-timeout.

The runs are reproducible (``derandomize=True``: the examples follow from the test's source). Set
``FAIRPRUNE_FUZZ_EXAMPLES=N`` to run N examples per test, with fresh randomness, when hunting for bugs.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from fairprune.zoo.archs import MLP
from fairprune.data import columns, load_dataset
from fairprune.core.errors import InputError
from fairprune.zoo import load_model

pytestmark = pytest.mark.timeout(120)

_DEEP = int(os.environ.get("FAIRPRUNE_FUZZ_EXAMPLES", "0"))


def fuzz_settings(examples: int, deadline_ms: int = 5000):
    """Few derandomized examples in CI; FAIRPRUNE_FUZZ_EXAMPLES=N runs N random ones."""
    return settings(max_examples=_DEEP or examples, derandomize=not _DEEP, deadline=deadline_ms,
                    database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


_WORK = Path(tempfile.mkdtemp(prefix="fairprune_fuzz_"))


@pytest.fixture(scope="module", autouse=True)
def _work_folder():
    """Seeds built and every loader imported before the first example, so deadlines time loading only."""
    for name in SEED_BUILDERS:
        seed(name)
    load_model(_write("warm.pt2", seed("pt2")))
    yield
    shutil.rmtree(_WORK, ignore_errors=True)


def _write(name: str, data: bytes) -> Path:
    path = _WORK / name
    path.write_bytes(data)
    return path


# ---- what every call must satisfy ------------------------------------------------------------------
def _check_dataset(path: Path, **options) -> None:
    """load_dataset gives a consistent GroupedDataset or an InputError with a message; nothing else.

    ``columns`` (what the dashboard offers as label and group) reads any file without raising.
    """
    names = columns(path)
    assert isinstance(names, list) and all(isinstance(c, str) for c in names)
    try:
        data = load_dataset(path, max_uncompressed_bytes=8 << 20, **options)
    except InputError as err:
        assert path.name in str(err) or "--" in str(err), f"the message names neither file nor option: {err}"
        event("refused with InputError")
        return
    event("loaded")
    n = len(data.y)
    assert n > 0
    assert data.x.shape[0] == n and len(data.group) == n
    assert data.y.dtype == torch.int64
    if data.x.dtype.is_floating_point:
        assert bool(torch.isfinite(data.x).all())
    assert all(isinstance(g, str) and g for g in data.group_names)


def _check_model(path: Path, **options) -> None:
    try:
        loaded = load_model(path, **options)
    except InputError as err:
        assert path.name in str(err), f"the message does not name the file: {err}"
        event("refused with InputError")
        return
    event("loaded")
    assert isinstance(loaded.module, torch.nn.Module)


# ---- mutations of valid files -----------------------------------------------------------------------
_EDIT = st.tuples(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "copy"]),
                  st.integers(min_value=0, max_value=1 << 20), st.binary(min_size=1, max_size=16),
                  st.integers(min_value=1, max_value=64))


def mutate(data: bytes, edits) -> bytes:
    buf = bytearray(data)
    for op, where, chunk, n in edits:
        if not buf:
            buf += chunk
            continue
        i = where % len(buf)
        if op == "flip":
            buf[i] ^= chunk[0] or 0xFF
        elif op == "set":
            buf[i:i + len(chunk)] = chunk
        elif op == "insert":
            buf[i:i] = chunk
        elif op == "delete":
            del buf[i:i + n]
        elif op == "truncate":
            del buf[i:]
        else:  # copy a chunk of the file elsewhere
            j = (where * 31 + n) % len(buf)
            buf[j:j] = buf[i:i + n]
    return bytes(buf)


edits = st.lists(_EDIT, min_size=1, max_size=6)


# ---- seeds: small valid files ----------------------------------------------------------------------
def _table_csv() -> bytes:
    rng = np.random.default_rng(0)
    rows = ["f0,f1,label,group,split"]
    for i in range(12):
        rows.append(f"{rng.normal():.3f},{rng.normal():.3f},{i % 3},{'ab'[i % 2]},{'train' if i % 4 else 'test'}")
    return ("\n".join(rows) + "\n").encode()


def _npz(**arrays) -> bytes:
    out = io.BytesIO()
    np.savez_compressed(out, **arrays)
    return out.getvalue()


def _valid_npz() -> bytes:
    rng = np.random.default_rng(0)
    return _npz(x=rng.normal(size=(10, 3)).astype(np.float32), y=np.arange(10) % 2,
                group=np.array(["a", "b"] * 5), split=np.array(["train", "test"] * 5),
                class_names=np.array(["no", "yes"]))


def _png(mode: str = "L", size=(4, 3), value: int = 7) -> bytes:
    """An image of one colour; PNG where PNG holds the mode, else TIFF (F, I, CMYK)."""
    out = io.BytesIO()
    bands = len(Image.new(mode, (1, 1)).getbands())
    fmt = "PNG" if mode in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16") else "TIFF"
    Image.new(mode, size, value if bands == 1 else (value,) * bands).save(out, format=fmt)
    return out.getvalue()


def _zip(members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return out.getvalue()


def _valid_image_zip() -> bytes:
    meta = "path,label,group\n" + "".join(f"img/{i}.png,{i % 2},{'xy'[i % 2]}\n" for i in range(4))
    return _zip({"metadata.csv": meta.encode(), **{f"img/{i}.png": _png(value=40 * i) for i in range(4)}})


def _mlp() -> MLP:
    torch.manual_seed(0)
    return MLP(4, 3, hidden=(8,)).eval()


def _safetensors() -> bytes:
    from safetensors.torch import save

    return save(_mlp().state_dict())


def _state_dict_pt() -> bytes:
    out = io.BytesIO()
    torch.save(_mlp().state_dict(), out)
    return out.getvalue()


def _torchscript_pt() -> bytes:
    import warnings

    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)   # TorchScript is deprecated upstream, still accepted
        torch.jit.save(torch.jit.script(_mlp()), out)
    return out.getvalue()


def _pt2() -> bytes:
    from fairprune.zoo import save_pt2

    path = _WORK / "seed.pt2"
    save_pt2(_mlp(), torch.randn(4, 4), path)
    return path.read_bytes()


SEED_BUILDERS = {"csv": _table_csv, "csv.gz": lambda: gzip.compress(_table_csv(), mtime=0), "npz": _valid_npz,
                 "zip": _valid_image_zip, "safetensors": _safetensors, "pt": _state_dict_pt,
                 "ts.pt": _torchscript_pt, "pt2": _pt2}
SEEDS: dict[str, bytes] = {}


def seed(name: str) -> bytes:
    if name not in SEEDS:
        SEEDS[name] = SEED_BUILDERS[name]()
    return SEEDS[name]


def test_seeds_are_valid():
    """The mutations start from files that load: the fuzzing exercises the loaders past their first check."""
    for ext, options in (("csv", {}), ("csv.gz", {}), ("npz", {}), ("zip", {})):
        data = load_dataset(_write(f"seed.{ext}", seed(ext)), **options)
        assert data.n > 0, ext
    for ext in ("safetensors", "pt"):
        assert load_model(_write(f"seed.{ext}", seed(ext)), arch="mlp",
                          arch_args={"in_features": 4, "num_classes": 3, "hidden": (8,)}).kind == "weights"
    assert load_model(_write("seed.pt2", seed("pt2"))).kind == "pt2"
    assert load_model(_write("seed.ts.pt", seed("ts.pt"))).kind == "torchscript"


# ---- data loaders ------------------------------------------------------------------------------------
DATA_EXTS = ["csv", "csv.gz", "npz", "zip"]


@fuzz_settings(100)
@given(ext=st.sampled_from(DATA_EXTS), data=st.binary(max_size=600))
def test_random_bytes_data(ext, data):
    _check_dataset(_write(f"random.{ext}", data))


@fuzz_settings(300)
@given(ext=st.sampled_from(DATA_EXTS), edits=edits,
       group=st.sampled_from(["group", "label", ("group", "label")]),
       missing=st.sampled_from(["error", "drop", "category"]))
@example(ext="npz", edits=[("flip", 55, b"\x00", 1)], group="group", missing="error")   # zlib.error, once
def test_mutated_data_files(ext, edits, group, missing):
    _check_dataset(_write(f"mutated.{ext}", mutate(seed(ext), edits)), group=group, missing_group=missing)


_CELL = st.one_of(
    st.sampled_from(["", " ", "0", "1", "2", "-1", "1.0", "1.5", "nan", "NaN", "inf", "-inf", "1e999", "NA", "None",
                     "a", "b", "train", "test", "TRAIN", "\"q,uoted\"", "\"", "x\"y", "True", "9" * 30, "0x1f",
                     "\u00e9", "\u0000", "\t", "\r"]),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=6),
)
_COLUMN = st.sampled_from(["label", "group", "split", "f0", "f1", "path", "", " label", "label", "Unnamed: 0"])


#: Cells a well-formed table holds: most examples are nearly valid, so the checks past the header are reached.
_PLAIN_CELL = {
    "label": st.sampled_from(["0", "1", "2", "1.0"]),
    "group": st.sampled_from(["a", "b", "01", "c d"]),
    "split": st.sampled_from(["train", "test", "Test "]),
    "f0": st.floats(-1e6, 1e6).map(repr), "f1": st.integers(-5, 5).map(str),
}


@st.composite
def csv_tables(draw) -> bytes:
    if draw(st.booleans()):   # any columns, any cells
        cols = draw(st.lists(_COLUMN, min_size=1, max_size=6))
        rows = draw(st.lists(st.lists(_CELL, min_size=len(cols) - 1, max_size=len(cols) + 1), max_size=8))
    else:                     # the expected columns, plain cells, and now and then an odd one
        cols = draw(st.permutations(["f0", "f1", "label", "group", "split"]))[:draw(st.integers(3, 5))]
        odd = st.one_of(_CELL, st.just(""))

        def cell(c):   # about one cell in 25 is odd
            return draw(odd if draw(st.integers(0, 24)) == 0 else _PLAIN_CELL[c])

        rows = [[cell(c) for c in cols] for _ in range(draw(st.integers(1, 8)))]
    sep = draw(st.sampled_from([",", ",", ",", ";"]))
    end = draw(st.sampled_from(["\n", "\r\n", ""]))
    text = sep.join(cols) + "\n" + "\n".join(sep.join(r) for r in rows) + end
    return text.encode("utf-8", errors="surrogatepass")


@fuzz_settings(200)
@given(table=csv_tables(), gz=st.booleans(), group=st.sampled_from(["group", "label", ("group", "split")]),
       missing=st.sampled_from(["error", "drop", "category"]),
       features=st.sampled_from([None, ("f0",), ("f0", "f1"), ("split",)]))
def test_random_csv_tables(table, gz, group, missing, features):
    if gz:
        table = gzip.compress(table, mtime=0)
    _check_dataset(_write("table.csv.gz" if gz else "table.csv", table), group=group, missing_group=missing,
                   features=features)


_DTYPES = st.sampled_from([np.bool_, np.int8, np.uint8, np.int64, np.uint64, np.float16, np.float32, np.float64,
                           np.complex64, "U3", "S3", "M8[s]", "m8[s]", "V4", [("a", "i4"), ("b", "f4")]])


@st.composite
def arrays(draw):
    dtype = np.dtype(draw(_DTYPES))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5))
    if dtype.kind in "V" or dtype.names:
        return np.zeros(shape, dtype=dtype)
    return draw(hnp.arrays(dtype, shape))


@st.composite
def npz_files(draw) -> bytes:
    keys = draw(st.lists(st.sampled_from(["x", "y", "group", "split", "class_names", "group_names",
                                          "feature_names", "label", "other"]), unique=True, max_size=6))
    arrays_ = {k: draw(arrays()) for k in keys}
    n = draw(st.integers(min_value=0, max_value=5))
    # often make the main arrays agree in length, so the later checks are reached
    if draw(st.booleans()):
        arrays_.setdefault("x", np.zeros((n, 2), np.float32))
        arrays_.setdefault("y", np.zeros(n, np.int64))
        arrays_.setdefault("group", np.array(["a"] * n))
        for k in ("y", "group", "split"):
            if k in arrays_ and arrays_[k].ndim >= 1 and len(arrays_[k]) != n:
                arrays_[k] = np.resize(arrays_[k], (n,) + arrays_[k].shape[1:])
    out = io.BytesIO()
    (np.savez_compressed if draw(st.booleans()) else np.savez)(out, **arrays_)
    return out.getvalue()


@fuzz_settings(150)
@given(data=npz_files(), group=st.sampled_from(["group", "label", ("group", "label")]),
       missing=st.sampled_from(["error", "drop", "category"]))
def test_random_npz_arrays(data, group, missing):
    _check_dataset(_write("arrays.npz", data), group=group, missing_group=missing)


_IMAGE = st.one_of(
    st.builds(_png, st.sampled_from(["L", "RGB", "RGBA", "1", "P", "LA", "I;16", "I", "F", "CMYK"]),
              st.tuples(st.integers(1, 5), st.integers(1, 5)), st.integers(0, 255)),
    st.binary(max_size=64),
)
_MEMBER = st.sampled_from(["a.png", "b.png", "img/c.png", "./d.png", "img//e.png", "metadata.csv", "sub/metadata.csv",
                           "../up.png", "/abs.png", "C:/win.png", "img\\f.png", "", "dir/"])


@st.composite
def image_zips(draw) -> bytes:
    if draw(st.booleans()):   # any members, any metadata
        members = draw(st.dictionaries(_MEMBER, _IMAGE, max_size=4))
        rows = draw(st.lists(st.tuples(_MEMBER, _CELL, _CELL), max_size=5))
    else:                     # images the metadata names, of one size and mode now and then not
        size = draw(st.tuples(st.integers(1, 5), st.integers(1, 5)))
        n = draw(st.integers(1, 4))
        names = [f"img/{i}.png" for i in range(n)]
        image = st.builds(_png, st.sampled_from(["L", "RGB", "I;16", "P"]), st.just(size), st.integers(0, 255))
        members = {name: draw(st.one_of(image, image, image, _IMAGE)) for name in names}
        rows = [(draw(st.sampled_from(names + ["./img/0.png"])), draw(_PLAIN_CELL["label"]),
                 draw(st.one_of(_PLAIN_CELL["group"], _CELL))) for _ in range(draw(st.integers(1, 5)))]
    header = draw(st.sampled_from(["path,label,group", "path,label,group", "path,label", "label,group",
                                   "path,label,group,split"]))
    meta = header + "\n" + "".join(f"{p},{lab},{g}" + (",train" if "split" in header else "") + "\n"
                                   for p, lab, g in rows)
    if draw(st.integers(0, 3)):
        members["metadata.csv"] = meta.encode("utf-8", errors="surrogatepass")
    out = io.BytesIO()
    method = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]))
    with zipfile.ZipFile(out, "w", compression=method) as zf:
        for name, data in members.items():
            zf.writestr(name or "blank", data)
    return out.getvalue()


@fuzz_settings(150)
@given(data=image_zips(), group=st.sampled_from(["group", "label"]),
       normalize=st.sampled_from([None, "imagenet", "0.5,0.5"]))
def test_random_image_zips(data, group, normalize):
    _check_dataset(_write("images.zip", data), group=group, normalize=normalize)


def _zip_with_flag(name: bytes, data: bytes, *, version: int | None = None) -> bytes:
    """A one-member zip whose member name is raw bytes flagged UTF-8, and whose 'version needed' may be odd."""
    placeholder = b"N" * len(name)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr(placeholder.decode(), data)
    raw = bytearray(out.getvalue().replace(placeholder, name))
    for sig, flag_at, version_at in ((b"PK\x03\x04", 6, 4), (b"PK\x01\x02", 8, 6)):
        i = raw.find(sig)
        raw[i + flag_at + 1] |= 0x08             # general purpose flag bit 11: the name is UTF-8
        if version is not None:
            raw[i + version_at] = version        # 'version needed to extract', 23.5 for 235
    return bytes(raw)


@pytest.mark.parametrize("case, ext, data, expected", [
    ("no samples", "npz", _npz(x=np.zeros((0, 2), np.float32), y=np.zeros(0, np.int64), group=np.array([], "U1")),
     "expected at least one sample, found arrays of length 0"),
    ("class as group, bad split", "npz", _npz(x=np.zeros((1, 2), np.float32), y=np.zeros(1, np.int64),
                                               split=np.array(["maybe"])), "array 'split' must hold 'train' or 'test'"),
    ("split of records", "npz", _npz(x=np.zeros((1, 2), np.float32), y=np.zeros(1, np.int64), group=np.array(["a"]),
                                     split=np.zeros(1, [("a", "i4"), ("b", "f4")])),
     "expected array 'split' to hold strings 'train' or 'test'"),
    ("NUL in a group", "csv", b"x,label,group\n1,0,a\n2,1,\x00\n", r"group column 'group' must hold printable text; "
                                                                  r"found a NUL character in 1 row\(s\) \(line 3\)"),
    ("NUL in an image zip's group", "zip", _zip({"a.png": _png(), "metadata.csv": b"path,label,group\na.png,0,b\x00\n"}),
     "must hold printable text"),
    ("group bytes not UTF-8", "npz", _npz(x=np.zeros((1, 2), np.float32), y=np.zeros(1, np.int64),
                                          group=np.array([b"\x80\x81"], "S2")), "must hold UTF-8 text"),
    ("group_names bytes not UTF-8", "npz", _npz(x=np.zeros((1, 2), np.float32), y=np.zeros(1, np.int64),
                                                group=np.zeros(1, np.int64), group_names=np.array([b"\x9e"], "S1")),
     "array 'group_names' must hold UTF-8 text"),
    ("member name not UTF-8", "zip", _zip_with_flag(b"\x9e\x80.png", b"x"), "expected a zip archive"),
    ("unsupported zip version", "zip", _zip_with_flag(b"metadata.csv", b"path,label,group\n", version=235),
     "expected a zip archive"),
    ("npz unsupported zip version", "npz", _zip_with_flag(b"x.npy", b"x", version=235), "expected a zip archive"),
])
def test_regressions_found_by_fuzzing(case, ext, data, expected):
    """Files the fuzzer once turned into a traceback (IndexError, UnicodeDecodeError, NotImplementedError...)."""
    path = _write(f"regression.{ext}", data)
    assert isinstance(columns(path), list)
    with pytest.raises(InputError, match=expected):
        load_dataset(path, group="label" if case == "class as group, bad split" else "group")


# ---- the model loader -------------------------------------------------------------------------------
MODEL_EXTS = ["safetensors", "pt", "pt2"]
SEEDED_MODELS = ["safetensors", "pt", "ts.pt", "pt2"]   # ts.pt: TorchScript
MLP_ARGS = {"arch": "mlp", "arch_args": {"in_features": 4, "num_classes": 3, "hidden": (8,)}}


@fuzz_settings(100)
@given(ext=st.sampled_from(MODEL_EXTS), data=st.binary(max_size=400), with_arch=st.booleans())
def test_random_bytes_model(ext, data, with_arch):
    _check_model(_write(f"random.{ext}", data), **(MLP_ARGS if with_arch else {}))


@fuzz_settings(300)
@given(ext=st.sampled_from(SEEDED_MODELS), edits=edits)
# what the fuzzer found, kept as examples (the errors these once escaped as):
@example(ext="pt", edits=[("flip", 246, b"\x00", 1)])                                 # KeyError (unpickler memo)
@example(ext="pt", edits=[("insert", 0, b"\x00\x00", 1), ("flip", 145288, b"\x00", 1)])  # BadZipFile: multi-disk
@example(ext="pt", edits=[("flip", 627754, b"\x00", 1)])                              # UnicodeDecodeError (name)
@example(ext="pt2", edits=[("flip", 2781, b"\x00", 1)])                               # UnicodeDecodeError (name)
@example(ext="ts.pt", edits=[("flip", 208009, b"\xf1", 50), ("flip", 1237, b"\x15", 54)])  # IndexError (C++ at())
def test_mutated_model_files(ext, edits):
    _check_model(_write(f"mutated.{ext}", mutate(seed(ext), edits)), **(MLP_ARGS if ext in ("safetensors", "pt") else {}))


@fuzz_settings(80)
@given(header=st.one_of(st.binary(max_size=80), st.text(max_size=80).map(str.encode),
                        st.sampled_from([b'{"w":{"dtype":"F32","shape":[1000000000000],"data_offsets":[0,4]}}',
                                         b'{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}',
                                         b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}',
                                         b'{"__metadata__":{"a":1}}', b'{"w":[]}'])),
       length=st.one_of(st.none(), st.integers(min_value=0, max_value=2**64 - 1)),
       body=st.binary(max_size=16))
def test_crafted_safetensors_headers(header, length, body):
    """A safetensors file is an 8-byte header length, a JSON header, then the tensor bytes: lie in each part."""
    n = len(header) if length is None else length
    _check_model(_write("crafted.safetensors", n.to_bytes(8, "little") + header + body), **MLP_ARGS)

