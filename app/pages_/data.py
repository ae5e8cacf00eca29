"""Data & model: the built-in demo (preselected), or the user's own model and test set, checked as they are chosen."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app import files, widgets
from fairprune.present import plots
from fairprune.core.errors import InputError

st.title("Data & model")
inp = widgets.inputs()

SOURCES = {"demo": "Built-in demo", "files": "My own model and data"}
source = st.radio("What to audit", list(SOURCES), format_func=SOURCES.get, horizontal=True, key="data-source",
                  index=0 if inp["source"] == "demo" else 1)


# ---- cached loads (the library does the loading and the checking) -----------------------------------
@st.cache_resource(max_entries=8, show_spinner=False)
def _load_data(path: str, mtime: float, label: str, group: tuple, ignore: tuple | None, missing: str,
               prep: tuple = ()):
    """``prep``: sorted (key, value) pairs of the preprocessing and text options (resize, crop, normalize, transforms;
    text, tokenizer, max_length), as :func:`fairprune.data.load_dataset` names them."""
    from fairprune.data import load_dataset

    return load_dataset(path, label=label, group=group, ignore=ignore, missing_group=missing, **dict(prep))


@st.cache_resource(max_entries=4, show_spinner=False)
def _load_model(path: str, mtime: float, arch: str | None, num_classes: int | None, arch_args: tuple,
                allow_torchscript: bool):
    from fairprune.zoo import load_model

    return load_model(path, arch=arch, num_classes=num_classes, arch_args=dict(arch_args),
                      allow_torchscript=allow_torchscript)


@st.cache_resource(max_entries=4, show_spinner=False)
def _demo_summary(name: str) -> dict:
    from fairprune.data.demos import demo_model
    from fairprune.zoo import LoadedModel

    return files.model_summary(LoadedModel.from_module(demo_model(name), name=name))


@st.cache_data(ttl=30, show_spinner=False)
def _server_folders(kind: str, roots: tuple[str, ...]) -> dict[str, Path]:
    """files.server_folders, walked at most every 30 s (a folder of 100,000 images is listed once, not per rerun)."""
    return files.server_folders(kind)


@st.cache_data(ttl=30, show_spinner=False)
def _server_files(types: tuple[str, ...], roots: tuple[str, ...]) -> dict[str, Path]:
    return files.server_files(list(types))


def _preview_data(data) -> None:
    """Group sizes (of the rows that will be measured) and the first rows of the file."""
    measured = data.part("test") if data.split is not None else data
    where = " (the test rows the audit measures)" if data.split is not None else ""
    st.plotly_chart(plots.group_sizes(measured.group_sizes, title=f"Samples per group{where}"),
                    key=f"sizes-{data.name}", theme=None, config={"displaylogo": False})
    if len(measured.group_sizes) > 1 and len(set(measured.group_sizes.values())) == 1:
        st.caption(f"Every group has {next(iter(measured.group_sizes.values())):,} rows to measure: balanced by "
                   "design of the test set, so each group's accuracy is measured as precisely (the training rows "
                   "may be far from balanced).")
    small = [g for g, n in measured.group_sizes.items() if n < 30]
    if small:
        st.warning(f"Groups with fewer than 30 samples are measured but marked unreliable: {', '.join(small)}.")
    steps = list(getattr(data, "preprocessing", None) or ())
    if steps:
        st.markdown("**From file to model input**", help="The steps each row goes through, in order; the results "
                    "and the report list them with what was audited.")
        st.markdown("\n".join(f"{i}. {widgets.message(step)}" for i, step in enumerate(steps, 1)))
    if data.frame is not None:
        st.caption(f"First rows of {data.name} ({data.n:,} rows)")
        st.dataframe(data.frame.head(8), hide_index=True, width="stretch")
    else:
        if data.n_inputs > 1:
            st.caption(f"{data.name}: {data.n:,} samples; the model is given {data.n_inputs} inputs, in this order: "
                       f"{data.describe_inputs()}")
        else:
            st.caption(f"{data.name}: {data.n:,} samples, features of shape {data.feature_shape}")


def _forget_upload(kind: str) -> None:
    """The user removed the file from the uploader: forget the staged copy too."""
    if st.session_state.get(f"{kind}-upload") is None:
        st.session_state.pop(f"staged-{kind}", None)


def _pick_file(kind: str, types: list[str], help_text: str, prev: dict) -> Path | None:
    """Upload (staged in this session's folder) or, when the server offers folders, a file from them.

    A file chosen earlier in this session is kept when the user comes back to the page (Streamlit forgets
    an uploader's file once its page is left; the staged copy remains).
    """
    origin = "upload"
    if files.data_dirs():
        origins = ["upload", "server"]
        origin = st.radio(f"{kind.capitalize()} from", origins, horizontal=True, key=f"{kind}-origin",
                          index=origins.index(prev.get("origin", "upload")),
                          format_func={"upload": "Upload", "server": "Server folders"}.get)
    if origin == "upload":
        if kind == "model":
            st.caption("A Hugging Face checkpoint is a folder (config.json and safetensors weights), which a browser "
                       "cannot upload: " + ("pick it under 'Server folders'." if files.data_dirs() else
                                            f"whoever runs this server can list a folder holding it in "
                                            f"{files.DATA_DIRS_ENV}, and you pick it under 'Server folders'."))
        else:
            st.caption("An image folder cannot be uploaded from a browser: upload it as a zip, " + (
                "or pick the folder under 'Server folders'." if files.data_dirs() else
                f"or ask whoever runs this server to list its parent in {files.DATA_DIRS_ENV}."))
        up = st.file_uploader(f"{kind.capitalize()} file", type=types, key=f"{kind}-upload", help=help_text,
                              on_change=_forget_upload, args=(kind,))
        if up is not None:
            return files.stage_upload(up, kind)
        staged = st.session_state.get(f"staged-{kind}")
        if staged and Path(staged[1]).is_file():
            st.caption(f"Using **{Path(staged[1]).name}**, uploaded earlier in this session; upload another file "
                       "to replace it.")
            return Path(staged[1])
        return None
    folders = _server_folders(kind, tuple(map(str, files.data_dirs())))
    offered = {**folders, **_server_files(tuple(types), tuple(map(str, files.data_dirs())))}
    what = "image folders" if kind == "data" else "Hugging Face checkpoint folders"
    if not offered:
        st.info(f"No {kind} files ({', '.join('.' + t for t in types)}) or {what} in the server folders.")
        return None
    labels = list(offered)
    previous = next((i for i, lab in enumerate(labels) if str(offered[lab]) == prev.get("path")), None)
    label = st.selectbox(f"{kind.capitalize()} on the server", labels, index=previous, key=f"{kind}-server",
                         placeholder="Choose a file or folder", help=help_text + f" Folders: {what}, picked as a whole.")
    if not label:
        return None
    return files.inside_data_dirs_folder(offered[label]) if label in folders else files.inside_data_dirs(offered[label])


# ---- the demo --------------------------------------------------------------------------------------
def demo_section() -> None:
    from fairprune.data.demos import demo_dataset, list_demos

    demos = {d.name: d for d in list_demos()}
    current = inp.get("demo", widgets.DEFAULT_DEMO) if inp["source"] == "demo" else widgets.DEFAULT_DEMO
    name = st.selectbox("Demo", list(demos), index=list(demos).index(current), key="demo-name",
                        format_func=lambda n: demos[n].title)
    info = demos[name]
    st.markdown(info.description)
    options = list(info.group_options)
    chosen = tuple(inp.get("group") or info.default_group) if inp["source"] == "demo" and current == name \
        else info.default_group
    default = next((i for i, o in enumerate(options) if info.group_options[o] == chosen), 0)
    option = st.selectbox("Groups", options, index=default, key=f"demo-group-{name}",
                          help="Which attribute defines the groups whose accuracy is compared.")
    cols = info.group_options[option]
    st.session_state["inputs"] = {"source": "demo", "demo": name, "group": list(cols)}

    data_col, model_col = st.columns([3, 2], gap="large")
    with data_col:
        st.subheader("Data")
        with widgets.friendly_errors("Loading the demo data"):
            _preview_data(demo_dataset(name, group=cols))
    with model_col:
        st.subheader("Model")
        with widgets.friendly_errors("Loading the demo model"):
            files.show_model_summary(_demo_summary(name),
                                     caption=f"{info.arch} with the shipped weights ({info.weights.name}).")
    widgets.next_button("Next: choose sparsity levels and run", "audit", key="data-next-demo")


#: Hints that help with a refusal, keyed by words of the library's message: what to do on this page.
_HINTS = {
    "pickled Python object": "This page cannot open a pickled model, whatever architecture is chosen: convert it "
                             "where you trust it, as the message says, then upload the .pt2 file (or the "
                             ".safetensors file and choose its architecture in the list).",
    "TorchScript archive": "Re-export the model as a .pt2 file where you trust it, as the message says, and upload "
                           "that instead.",
    "no architecture": "Choose the architecture in the 'Architecture (bare weights only)' list under the model file; "
                       "its arguments appear below it.",
    "expected group column": "Pick the column that says which group each row belongs to under 'Group column(s)'.",
    "expected label column": "Pick the column that holds each row's true class under 'Label column'.",
}


def show_input_error(err: InputError, *paths: Path) -> None:
    """The library's message in the dashboard's words (:func:`widgets.message`: widgets, not flags; markdown
    escaped), this session's private upload folder shortened to the file's name, and a hint that helps."""
    msg = str(err)
    for p in paths:
        msg = msg.replace(str(p), p.name)
    st.error(widgets.message(msg), icon=":material/error:")
    hints = [hint for words, hint in _HINTS.items() if words in msg]
    if hints:
        st.caption(" ".join(hints))


def _origin(kind: str) -> str:
    return st.session_state.get(f"{kind}-origin", "upload")


def arch_args_placeholder(arguments: dict[str, str]) -> str:
    """The text box's example, from the chosen architecture's registry entry: its own arguments with their
    defaults (the number of classes has its own box), or that none are needed."""
    lines = [f"{k}={'…' if v == 'required' else v.strip('()').replace(' ', '')}"
             for k, v in arguments.items() if k not in ("num_classes", "...")]
    if lines:
        return "\n".join(lines)
    return "none needed" + (" (any keyword torchvision accepts)" if "..." in arguments else "")


# ---- the user's own files ----------------------------------------------------------------------------
def model_section(prev: dict) -> dict | None:
    from fairprune.zoo import list_models, model_info, parse_arch_args

    try:
        torchscript = files.torchscript_allowed()
    except InputError as err:
        st.error(widgets.message(str(err)), icon=":material/error:")
        return None
    kinds = "TorchScript, " if torchscript else ""
    path = _pick_file("model", files.MODEL_TYPES,
                      f"A torch.export program (.pt2, recommended), {kinds}or bare weights "
                      "(.safetensors or a state_dict .pt) together with an architecture below."
                      + ("" if torchscript else f" TorchScript is code and is accepted only where the server "
                                                 f"sets {files.TORCHSCRIPT_ENV}=1."), prev)
    if path is not None and path.is_dir():        # a Hugging Face checkpoint folder holds its own architecture
        return _checkpoint_section(path)
    archs = [""] + list_models()
    arch = st.selectbox("Architecture (bare weights only)", archs, key="model-arch",
                        index=archs.index(prev.get("arch") or ""),
                        format_func=lambda a: a or "— none: the file holds its own architecture —",
                        help="Needed only when the file holds bare weights (.safetensors, state_dict .pt).")
    num_classes, arch_args, text = None, {}, ""
    if arch:
        info = model_info(arch)
        st.caption(f"{info.description}. Arguments: " + ", ".join(f"{k}={v}" for k, v in info.arguments.items()))
        num_classes = st.number_input("Number of classes", min_value=1, value=prev.get("num_classes"), step=1,
                                      key="model-classes", placeholder="as the architecture's default")
        text = st.text_area("Further arguments (one KEY=VALUE per line)", key="model-args",
                            value=prev.get("arch_args_text", ""),
                            placeholder=arch_args_placeholder(info.arguments), height=80)
        with widgets.friendly_errors("Reading the architecture arguments"):
            arch_args = parse_arch_args([ln for ln in text.splitlines() if ln.strip()])
    if path is None:
        return None
    out = {"path": str(path), "name": path.name, "arch": arch or None, "origin": _origin("model"),
           "num_classes": int(num_classes) if num_classes else None, "arch_args": arch_args,
           "arch_args_text": text, "valid": False}
    try:
        loaded = _load_model(str(path), path.stat().st_mtime, out["arch"], out["num_classes"],
                             tuple(sorted(arch_args.items())), torchscript)
    except InputError as err:
        show_input_error(err, path)
        return out
    except Exception as err:
        widgets.show_unexpected("Loading the model", err)
        return out
    files.show_model_summary(files.model_summary(loaded), caption=f"{path.name}: {loaded.kind}"
                               + (f" ({loaded.arch})" if loaded.arch else ""))
    out["valid"] = True
    out["loaded"] = loaded
    return out


def _checkpoint_section(path: Path) -> dict:
    """A Hugging Face checkpoint folder picked from the server folders: loaded (safely) and summarised, with its task
    (text: the data needs a text column; image: an image set, with the checkpoint's own preprocessing offered)."""
    from fairprune.zoo import hf_image_preprocessing, hf_task

    out = {"path": str(path), "name": path.name, "arch": None, "origin": _origin("model"), "num_classes": None,
           "arch_args": {}, "arch_args_text": "", "valid": False, "hf_task": None}
    try:
        loaded = _load_model(str(path), path.stat().st_mtime, None, None, (), False)
        out["hf_task"] = hf_task(path)
        out["hf_preprocessing"] = hf_image_preprocessing(path) if out["hf_task"] == "image" else None
        out["max_tokens"] = _max_tokens(path)
    except InputError as err:
        show_input_error(err, path)
        return out
    except Exception as err:
        widgets.show_unexpected("Loading the checkpoint", err)
        return out
    task = {"text": "text classification: choose the data's text column", "image": "image classification: "
            "choose an image set and its preprocessing"}.get(out["hf_task"], out["hf_task"])
    files.show_model_summary(files.model_summary(loaded), caption=f"{path.name}: Hugging Face checkpoint"
                             + (f" ({loaded.arch})" if loaded.arch else "") + f"; {task}.")
    out["valid"] = True
    out["loaded"] = loaded
    return out


def _max_tokens(folder: Path) -> int | None:
    """The most tokens a text checkpoint takes per row (config.json's max_position_embeddings), None if unsaid."""
    import json

    try:
        n = json.loads((folder / "config.json").read_text()).get("max_position_embeddings")
    except (OSError, ValueError, AttributeError):
        return None
    return int(n) if isinstance(n, int) and n > 0 else None


PREP_MODES = {"none": "As stored (every image has one size)", "resize": "Resize and crop",
              "preset": "A torchvision preset"}
NORMALIZE = {"none": "No normalisation ([0, 1])", "imagenet": "ImageNet mean and std", "custom": "My own mean and std"}


def preprocessing_section(prev: dict, model: dict | None) -> tuple[dict, str | None]:
    """Image sets: how each image becomes the model's input. Returns ({resize, crop, normalize, transforms} as the
    loader names them, only those chosen) and a problem to show instead of loading (None: none)."""
    hint = (model or {}).get("hf_preprocessing") or {}
    st.markdown("**Image preprocessing**", help="Images of any size are resized (shorter side), centre-cropped and "
                "scaled to [0, 1], then optionally normalised per channel, with torchvision's own transforms. A "
                "preset applies a torchvision weights entry's own transforms() (resize, crop, mean and std), so a "
                "torchvision-trained model sees what it was trained on. The steps are listed with the results.")
    modes = list(PREP_MODES)
    start = "preset" if prev.get("transforms") else "resize" if (
        prev.get("resize") or prev.get("crop") or prev.get("normalize") or hint.get("size")) else "none"
    mode = st.radio("Preprocessing", modes, index=modes.index(start), format_func=PREP_MODES.get, horizontal=True,
                    key="data-prep", label_visibility="collapsed")
    if hint.get("flags"):
        st.caption(f"The checkpoint's own image processor: {hint['flags']} (set below as the defaults).")
    if mode == "preset":
        presets = files.transform_presets()
        chosen = prev.get("transforms") if prev.get("transforms") in presets else None
        name = st.selectbox("Preset (torchvision weights entry)", presets, key="data-preset",
                            index=presets.index(chosen) if chosen else None, placeholder="Choose a preset",
                            help="The weights entry your model was trained with, e.g. ResNet50_Weights.IMAGENET1K_V2: "
                                 "its transforms() preset is applied (nothing is downloaded).")
        return ({"transforms": name}, None) if name else ({}, "Choose a preset above; the images are read once it "
                                                              "is chosen.")
    if mode == "none":
        return {}, None
    size = hint.get("size") or (None, None)
    c1, c2 = st.columns(2)
    resize_default = prev.get("resize") or (min(size) if size[0] and size[1] else 0)
    resize = c1.number_input("Resize: shorter side (pixels)", min_value=0, step=1, key="data-resize",
                             value=int(resize_default),
                             help="0: no resize. Bilinear, antialiased; the longer side keeps the aspect ratio.")
    crop_default = prev.get("crop") or (f"{size[0]},{size[1]}" if size[0] and size[0] != size[1] else
                                        str(size[0]) if size[0] else "")
    crop = c2.text_input("Centre crop (pixels: N or H,W)", value=crop_default, key="data-crop",
                         placeholder="e.g. 224 or 224,160", help="Empty: no crop. Applied after the resize.")
    norms = list(NORMALIZE)
    mean, std = hint.get("mean"), hint.get("std")
    own = ",".join(f"{m:g}" for m in mean) + ";" + ",".join(f"{v:g}" for v in std) if mean and std else ""
    previous = prev.get("normalize") or ""
    norm_start = "imagenet" if previous == "imagenet" else "custom" if previous or own else "none"
    norm = st.radio("Normalise", norms, index=norms.index(norm_start), format_func=NORMALIZE.get, horizontal=True,
                    key="data-normalize", help="After scaling to [0, 1]: (x − mean) / std per channel.")
    out: dict = {}
    if resize:
        out["resize"] = int(resize)
    if crop.strip():
        out["crop"] = crop.strip()
    if norm == "imagenet":
        out["normalize"] = "imagenet"
    elif norm == "custom":
        text = st.text_input("Mean and std (MEAN,STD for every channel, or M1,M2,M3;S1,S2,S3)",
                             value=previous if previous not in ("", "imagenet") else own, key="data-normalize-own",
                             placeholder="0.5,0.5 or 0.485,0.456,0.406;0.229,0.224,0.225")
        if not text.strip():
            return out, "Enter the mean and std above, or choose another normalisation."
        out["normalize"] = text.strip()
    return out, None


def text_section(prev: dict, columns: list[str], taken: list[str], limit: int | None = None) -> tuple[dict, str | None]:
    """A text checkpoint: the column of raw text its tokenizer reads, and how many tokens a row keeps (at most
    ``limit``, the checkpoint's own; default 128 or that limit)."""
    choices = [c for c in columns if c not in taken]
    default = prev.get("text") if prev.get("text") in choices else ("text" if "text" in choices else None)
    c1, c2 = st.columns([2, 1])
    text = c1.selectbox("Text column", choices, index=choices.index(default) if default else None, key="data-text",
                        placeholder="Choose the text column",
                        help="The column of raw text, tokenised by the checkpoint's own tokenizer (padding and "
                             "truncation are listed with the results).")
    top = limit or 4096
    max_length = c2.number_input("Max length (tokens)", min_value=1, max_value=top, step=1, key="data-max-length",
                                 value=min(int(prev.get("max_length") or 128), top),
                                 help="Tokens per row: longer texts are truncated (the results say how many), "
                                      "shorter ones padded." + (f" This checkpoint takes at most {limit}." if limit
                                                                 else ""))
    if not text:
        return {"max_length": int(max_length)}, "Choose the text column above; the texts are read once it is chosen."
    return {"text": text, "max_length": int(max_length)}, None


def data_section(prev: dict, model: dict | None = None) -> dict | None:
    path = _pick_file("data", files.DATA_TYPES,
                      "CSV (a label column, group column(s), features), NPZ (arrays x, y, group) or a zip of "
                      "images with a metadata.csv (path,label,group).", prev)
    if path is None:
        return None
    columns = files.file_columns(path)
    if columns:
        lab_default = prev.get("label") if prev.get("label") in columns else ("label" if "label" in columns else None)
        label = st.selectbox("Label column", columns, key="data-label", placeholder="Choose the label column",
                             index=columns.index(lab_default) if lab_default else None,
                             help="The true class of each row, as integer class indices 0..K-1.")
        grp_default = [g for g in (prev.get("group") or ["group"]) if g in columns]
        # asked, not guessed: only a column named as the library's default (or chosen before) is preselected
        group = st.multiselect("Group column(s)", columns, default=grp_default, key="data-group",
                               placeholder="Choose one or more group columns",
                               help="The groups whose accuracy is compared. Several columns make intersectional "
                                    "groups (e.g. race & sex). The label column itself gives classes as groups.")
        with st.expander("More options"):
            choices = [c for c in columns if c not in group and c != label]
            ignore = st.multiselect("Columns that are not model inputs", choices, key="data-ignore",
                                    default=[c for c in prev.get("ignore") or [] if c in choices],
                                    help="CSV only: left out of the features.")
            modes = ["error", "drop", "category"]
            missing = st.radio("Rows without a group", modes, horizontal=True, key="data-missing",
                               index=modes.index(prev.get("missing_group", "error")),
                               format_func={"error": "Stop with an error", "drop": "Leave them out",
                                            "category": "Group them as 'missing'"}.get)
    else:
        label, group, ignore, missing = None, [], [], "error"
    # what turns each row into the model's input: a text checkpoint's tokenizer, or an image set's preprocessing
    prep, waiting = {}, None
    if (model or {}).get("hf_task") == "text" and columns:
        prep, waiting = text_section(prev, columns, [c for c in [label, *group] if c], model.get("max_tokens"))
        if prep.get("text"):
            prep["tokenizer"] = model["path"]
    elif files.is_image_set(path):
        prep, waiting = preprocessing_section(prev, model)
    out = {"path": str(path), "name": path.name, "label": label, "group": list(group), "origin": _origin("data"),
           "ignore": list(ignore) or None, "missing_group": missing, "valid": False,
           **{k: v for k, v in prep.items() if k != "tokenizer"}}
    unchosen = [what for what, v in (("the label column", label), ("the group column(s)", group)) if not v]
    if columns and unchosen:
        # ask first: no alarm before the user could choose; the file is checked once the choices are made
        st.info(f"Choose {' and '.join(unchosen)} above; {path.name} is checked once "
                f"{'they are' if len(unchosen) > 1 else 'it is'} chosen.", icon=":material/touch_app:")
        return out
    if waiting:
        st.info(waiting, icon=":material/touch_app:")
        return out
    try:
        # NPZ and image zips name their arrays themselves: the library's defaults
        data = _load_data(str(path), path.stat().st_mtime, label or "label", tuple(group) or ("group",),
                          tuple(ignore) or None, missing, tuple(sorted(prep.items())))
    except InputError as err:
        show_input_error(err, path)
        return out
    except Exception as err:
        widgets.show_unexpected("Loading the data", err)
        return out
    out.update(valid=True, label=data.label_column, group=list(data.group_columns), loaded=data)
    _preview_data(data)
    return out


def files_section() -> None:
    prev = inp if inp["source"] == "files" else {}
    model_col, data_col = st.columns(2, gap="large")
    with model_col:
        st.subheader("Model")
        model = model_section(prev.get("model") or {})
    with data_col:
        st.subheader("Data")
        data = data_section(prev.get("data") or {}, model)
    fits = False
    if model and data and model["valid"] and data["valid"]:
        from fairprune.data import validate_labels
        from fairprune.engine.evaluate import check_model_fits

        m, d = model.pop("loaded"), data.pop("loaded")
        measured = d.part("test") if d.split is not None else d
        try:
            k = check_model_fits(m, measured, "cpu")   # one forward pass on two rows
            validate_labels(measured, k, source=measured.name)
            st.success(f"The model runs on this data: {k} output{'s' if k > 1 else ''}, {measured.n:,} rows to "
                       f"measure in {len(measured.group_sizes)} groups.", icon=":material/check_circle:")
            fits = True
        except InputError as err:
            show_input_error(err, Path(model["path"]), Path(data["path"]))
        except Exception as err:
            widgets.show_unexpected("Running the model on two rows of the data", err)
    for part in (model, data):
        if part:
            part.pop("loaded", None)
    st.session_state["inputs"] = {"source": "files", "model": model, "data": data, "fits": fits}
    if fits:
        widgets.next_button("Next: choose sparsity levels and run", "audit", key="data-next-files")


if source == "demo":
    demo_section()
else:
    files_section()
