"""What a user brings: per-session upload folders, files from server folders, a first look at a file.

Two browser sessions never see each other's uploads: each writes to ``<FAIRPRUNE_HOME>/uploads/<session
uuid>/``, and a queued run gets its own copies (``RunStore.create_run(files=...)``). Server folders are
the ones listed in ``$FAIRPRUNE_DATA_DIRS``; only files that resolve inside them are ever offered or read.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
import uuid
from pathlib import Path

import streamlit as st

from fairprune.run.store import RunStore as store  # = app.widgets.store (importing widgets: a cycle)
from fairprune.core.errors import InputError
from fairprune.zoo._load import TORCHSCRIPT_ENV, torchscript_allowed  # noqa: F401  (the Data & model page uses them)

log = logging.getLogger("fairprune.app")

#: Server folders a user may pick files from (os.pathsep-separated).
DATA_DIRS_ENV = "FAIRPRUNE_DATA_DIRS"
#: Upload folders of browser sessions untouched for this long are removed (seconds).
STAGING_MAX_AGE_S = 24 * 3600
#: Uploads larger than this many MiB are refused (``$FAIRPRUNE_MAX_UPLOAD_MB``; Streamlit's own limit,
#: ``server.maxUploadSize`` in .streamlit/config.toml, is set to the same default).
MAX_UPLOAD_ENV = "FAIRPRUNE_MAX_UPLOAD_MB"
DEFAULT_MAX_UPLOAD_MB = 2048
MODEL_TYPES = ["pt2", "pt", "pth", "safetensors", "ts", "jit"]
# TorchScript is code: the dashboard (and its worker) load it only where the server's environment opts in
# (fairprune.zoo._load.torchscript_allowed, $FAIRPRUNE_ALLOW_TORCHSCRIPT); otherwise the page refuses it and says how.
DATA_TYPES = ["csv", "gz", "npz", "zip"]


# ---- uploads: one staging folder per browser session -------------------------------------------------
def session_id() -> str:
    """This browser session's id: names its private upload folder."""
    if "session_uuid" not in st.session_state:
        st.session_state["session_uuid"] = uuid.uuid4().hex
        _remove_stale_uploads()
    return st.session_state["session_uuid"]


def _remove_stale_uploads() -> None:
    """Remove other sessions' upload folders untouched for a day (each run keeps its own copies)."""
    root = store().home / "uploads"
    if not root.is_dir():
        return
    cutoff = time.time() - STAGING_MAX_AGE_S
    for d in root.iterdir():
        try:
            if d.is_dir() and max([d.stat().st_mtime] + [f.stat().st_mtime for f in d.rglob("*")]) < cutoff:
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            pass


def staging_dir() -> Path:
    """<FAIRPRUNE_HOME>/uploads/<session uuid>/: this browser session's uploads, invisible to others."""
    d = store().home / "uploads" / session_id()
    d.mkdir(parents=True, exist_ok=True)
    return d


def safe_name(name: str) -> str:
    """A plain file name (no folders, only [A-Za-z0-9._-]) that keeps the extension loaders dispatch on."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).name).lstrip(".")
    return base or "upload"


BAD_UPLOAD_LIMIT = "{env}: expected a whole number of MiB greater than 0 (the upload limit); found {found!r}"
UPLOAD_TOO_LARGE = (
    "{name}: refused: the file is {size_mb:,.1f} MiB ({size:,} bytes), more than the upload limit of {limit_mb:,} MiB. "
    "Put it in a folder listed in {data_dirs} and pick it under 'Server folders', or raise the limit: set {env} "
    "and Streamlit's server.maxUploadSize (both in MiB; the latter in .streamlit/config.toml) and "
    "restart the dashboard"
)


def upload_limit_mb() -> int:
    """The upload limit in MiB: ``$FAIRPRUNE_MAX_UPLOAD_MB`` (default 2048), and never more than Streamlit's
    ``server.maxUploadSize``, which refuses a larger file in the browser before this app sees it.

    Raises InputError when the variable is not a whole number > 0.
    """
    raw = os.environ.get(MAX_UPLOAD_ENV, "").strip()
    try:
        ours = int(raw) if raw else DEFAULT_MAX_UPLOAD_MB
    except ValueError:
        ours = 0
    if ours <= 0:
        raise InputError(BAD_UPLOAD_LIMIT.format(env=MAX_UPLOAD_ENV, found=raw))
    try:
        streamlit_mb = int(st.get_option("server.maxUploadSize"))
    except (RuntimeError, ValueError, TypeError):
        streamlit_mb = ours
    if streamlit_mb < ours:
        log.warning("%s=%d MiB, but Streamlit's server.maxUploadSize is %d MiB and refuses larger files first: "
                    "set both to the same value", MAX_UPLOAD_ENV, ours, streamlit_mb)
    return min(ours, streamlit_mb)


def check_upload_size(name: str, size: int) -> None:
    """Refuse (InputError) an upload of ``size`` bytes larger than :func:`upload_limit_mb`."""
    limit_mb = upload_limit_mb()
    if size > limit_mb << 20:
        raise InputError(UPLOAD_TOO_LARGE.format(name=name, size=size, size_mb=size / (1 << 20), limit_mb=limit_mb,
                                                 env=MAX_UPLOAD_ENV, data_dirs=DATA_DIRS_ENV))


def stage_upload(uploaded, slot: str) -> Path | None:
    """Write an st.file_uploader file to this session's staging folder (once per upload) and return its path.

    A file over the upload limit (:func:`check_upload_size`) is not written: the page shows why, and None
    comes back, as when nothing was uploaded.
    """
    try:
        check_upload_size(uploaded.name, int(uploaded.size))
    except InputError as err:
        from app.wording import message

        st.error(message(str(err)), icon=":material/error:")
        return None
    key = f"staged-{slot}"
    prev = st.session_state.get(key)
    if prev and prev[0] == uploaded.file_id and Path(prev[1]).is_file():
        return Path(prev[1])
    folder = staging_dir() / slot
    folder.mkdir(exist_ok=True)
    for old in folder.iterdir():   # one file per slot: a new upload replaces the last one
        if old.is_file():
            old.unlink()
    path = folder / safe_name(uploaded.name)
    path.write_bytes(uploaded.getbuffer())
    st.session_state[key] = (uploaded.file_id, str(path))
    return path


# ---- server folders ---------------------------------------------------------------------------------
def data_dirs() -> list[Path]:
    raw = os.environ.get(DATA_DIRS_ENV, "")
    out = []
    for part in raw.split(os.pathsep):
        if part.strip():
            p = Path(part.strip()).expanduser().resolve()
            if p.is_dir():
                out.append(p)
    return out


def inside_data_dirs(path: str | Path) -> Path | None:
    """The resolved path if it is a file under one of the server folders, else None (never elsewhere)."""
    p = Path(path).resolve()
    if not p.is_file():
        return None
    return p if any(p.is_relative_to(root) for root in data_dirs()) else None


def server_files(types: list[str], limit: int = 2000) -> dict[str, Path]:
    """{label: resolved path} of files under the server folders whose name ends with one of ``types``."""
    out: dict[str, Path] = {}
    for root in data_dirs():
        for p in sorted(root.rglob("*")):
            if len(out) >= limit:
                return out
            if any(part.startswith(".") for part in p.relative_to(root).parts):
                continue
            if p.is_file() and p.name.lower().endswith(tuple("." + t for t in types)):
                safe = inside_data_dirs(p)   # a symlink out of the folder is not offered
                if safe is not None:
                    out[f"{root.name}/{p.relative_to(root)}"] = safe
    return out


# ---- looking at a chosen file ------------------------------------------------------------------------
def file_columns(path: str | Path) -> list[str]:
    """The names a user can pick as label or group (the library reads the header)."""
    from fairprune.data import columns

    return columns(path)


def model_summary(loaded) -> dict[str, int]:
    """Parameters, prunable parameters (fairprune.engine.prune.prunable_parameters) and prunable layers of a LoadedModel."""
    from fairprune.engine.prune import prunable_parameters

    prunable = prunable_parameters(loaded.module)
    return {"parameters": loaded.parameters, "prunable": sum(p.numel() for p in prunable.values()),
            "prunable_layers": len(prunable)}


def compact(n: int) -> str:
    """151306 -> '151.3k', 25557032 -> '25.56M'."""
    if n >= 1_000_000:
        return f"{n / 1e6:.2f}M"
    return f"{n / 1e3:.1f}k" if n >= 10_000 else f"{n:,}"


def show_model_summary(summary: dict[str, int], caption: str = "") -> None:
    c = st.columns(3)
    c[0].metric("Parameters", compact(summary["parameters"]),
                help=f"Every parameter of the model: {summary['parameters']:,}.")
    c[1].metric("Prunable", compact(summary["prunable"]),
                help=f"{summary['prunable']:,} weights of conv and linear layers: what pruning removes. Biases "
                     "and normalisation parameters are kept, as in the paper.")
    c[2].metric("Layers", f"{summary['prunable_layers']}",
                help="Conv and linear weight tensors the pruning methods act on.")
    if caption:
        st.caption(caption)


# ---- folders: image sets and Hugging Face checkpoints (a browser cannot upload a folder) ----------------------------
def _is_image_folder(p: Path) -> bool:
    """A folder of class subfolders holding images, or with a metadata.csv: what ``--data FOLDER`` reads."""
    from fairprune.data import IMAGE_SUFFIXES

    if (p / "metadata.csv").is_file():
        return True
    subs = [d for d in p.iterdir() if d.is_dir() and not d.name.startswith(".")]
    return bool(subs) and any(f.suffix.lower() in IMAGE_SUFFIXES for d in subs[:50] for f in d.iterdir()
                              if f.is_file())


def _is_checkpoint_folder(p: Path) -> bool:
    from fairprune.zoo import is_hf_checkpoint

    return is_hf_checkpoint(p)


def server_folders(kind: str, limit: int = 500) -> dict[str, Path]:
    """{label: resolved path} of folders under the server folders a user may pick as a whole: image sets (``kind``
    'data') or Hugging Face checkpoint folders (``kind`` 'model'). Only folders that resolve inside a server folder
    are offered; hidden ones and the contents of an offered folder are skipped."""
    test = _is_image_folder if kind == "data" else _is_checkpoint_folder
    what = "image folder" if kind == "data" else "Hugging Face checkpoint"
    out: dict[str, Path] = {}
    for root in data_dirs():
        stack = [root]
        while stack and len(out) < limit:
            d = stack.pop()
            try:
                subs = sorted((s for s in d.iterdir() if s.is_dir() and not s.name.startswith(".")), reverse=True)
                found = d != root and test(d)
            except OSError:
                continue
            real = d.resolve()
            if found and any(real.is_relative_to(r) for r in data_dirs()):
                out[f"{root.name}/{d.relative_to(root)}/ ({what})"] = real
                continue                                      # an image set's class folders are not offered apart
            stack += subs
    return dict(sorted(out.items()))


def inside_data_dirs_folder(path: str | Path) -> Path | None:
    """The resolved path if it is a folder under one of the server folders, else None (never elsewhere)."""
    p = Path(path).resolve()
    if not p.is_dir():
        return None
    return p if any(p.is_relative_to(root) and p != root for root in data_dirs()) else None


def is_image_set(path: str | Path) -> bool:
    """The chosen data is a set of images (a folder, an image zip or a CSV naming image files): the page then offers
    the preprocessing (resize, crop, normalise, or a torchvision preset)."""
    from fairprune.data import columns

    p = Path(path)
    if p.is_dir() or p.name.lower().endswith(".zip"):
        return True
    if p.name.lower().endswith(".csv"):
        import pandas as pd

        try:
            header = [str(c) for c in pd.read_csv(p, nrows=0).columns]
        except Exception:   # noqa: BLE001 - unreadable: the loader says why when it is loaded
            return False
        return "path" in header and "path" not in columns(p)      # columns() leaves out an image CSV's 'path'
    return False


def transform_presets() -> list[str]:
    """Every torchvision weights entry of a classification model, as ``--transforms`` names it
    ('ResNet50_Weights.IMAGENET1K_V2'), sorted; read from torchvision's registry, nothing downloaded."""
    import torchvision.models as tvm

    out = set()
    for name in tvm.list_models(module=tvm):
        try:
            enum = tvm.get_model_weights(name)
        except (ValueError, KeyError):
            continue
        out.update(f"{enum.__name__}.{w.name}" for w in enum)
    return sorted(out, key=str.lower)
