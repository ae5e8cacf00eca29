"""The built-in demos: registry, data built from package files, shipped weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fairprune.data import GroupedDataset
from fairprune.data.demos import (
    DemoInfo, demo_dataset, demo_model, get_demo, list_demos, models_dir,
)
from fairprune.core.errors import InputError
from fairprune.zoo import list_models

REPO = Path(__file__).resolve().parents[1]


@torch.no_grad()
def _accuracy(model, data: GroupedDataset) -> np.ndarray:
    """Per-row correctness (bool array) of ``model`` on ``data``."""
    pred = torch.cat([model(xb).argmax(1) for xb, _ in data.batches(2048)])
    return (pred == data.y).numpy()


# ---- registry ------------------------------------------------------------------------------------
def test_list_and_get():
    demos = list_demos()
    assert [d.name for d in demos] == ["mnist", "adult"]
    for d in demos:
        assert isinstance(d, DemoInfo)
        assert get_demo(d.name) == d
        assert d.arch in list_models()
        assert d.default_group in d.group_options.values()
        assert d.weights.parent == models_dir() and d.weights.suffix == ".safetensors"
        assert all(0 < s < 1 for s in d.default_sparsities)
        assert list(d.default_sparsities) == sorted(d.default_sparsities)
        assert d.title and d.description


def test_unknown_demo_lists_valid_names():
    with pytest.raises(InputError, match=r"unknown demo 'cifar'; expected one of: mnist, adult"):
        get_demo("cifar")
    with pytest.raises(InputError, match="unknown demo"):
        demo_dataset("cifar")


def test_unknown_group_column():
    with pytest.raises(InputError, match=r"unknown group column\(s\) \['gender'\]"):
        demo_dataset("adult", group=("gender",))


def test_models_dir_default_and_env(monkeypatch):
    monkeypatch.delenv("FAIRPRUNE_MODELS", raising=False)
    assert models_dir() == REPO / "models"
    monkeypatch.setenv("FAIRPRUNE_MODELS", "/somewhere/else")
    assert models_dir() == Path("/somewhere/else")
    assert get_demo("mnist").weights == Path("/somewhere/else/mnist_cnn.safetensors")


def test_missing_weights_message(monkeypatch, tmp_path):
    monkeypatch.setenv("FAIRPRUNE_MODELS", str(tmp_path))
    with pytest.raises(InputError, match=r"not found.*python models/train_demo.py adult"):
        demo_model("adult")


# ---- mnist ------------------------------------------------------------------------------------------
def test_mnist_dataset():
    d = demo_dataset("mnist")
    assert d.name == "mnist" and d.group_columns == ("population",) and d.label_column == "label"
    assert d.x.shape == (5000, 1, 28, 28) and d.x.dtype == torch.uint8
    assert d.y.dtype == torch.int64 and set(d.y.tolist()) == set(range(10))
    assert d.class_names == tuple("0123456789")
    assert len(d.frame) == d.n and list(d.frame["population"]) == list(d.group)
    tr, te = d.part("train"), d.part("test")
    assert (tr.n, te.n) == (3500, 1500)
    assert tr.group_sizes == {"standard": 3325, "inverted": 175}      # inverted: 5% of training rows
    assert te.group_sizes == {"standard": 750, "inverted": 750}       # and half of the test rows
    xf = d.to_float(d.x[:8])
    assert xf.dtype == torch.float32 and 0 <= xf.min() and xf.max() <= 1


def test_mnist_inverted_rows_are_inverted():
    d = demo_dataset("mnist")
    mean = d.x.float().mean(dim=(1, 2, 3)).numpy() / 255
    inv = d.group == "inverted"
    # MNIST digits are mostly black background: inverted images are mostly white.
    assert mean[inv].min() > 0.5 > mean[~inv].max()


def test_mnist_classes_as_groups():
    d = demo_dataset("mnist", group=("label",))
    assert d.group_columns == ("label",)
    assert d.group_sizes == {str(k): 500 for k in range(10)}
    assert np.array_equal(d.group.astype(int), d.y.numpy())
    assert demo_dataset("mnist", group="label") is d                   # cached per (name, group)


def test_mnist_model_accuracy():
    d = demo_dataset("mnist").part("test")
    ok = _accuracy(demo_model("mnist"), d)
    assert ok.mean() >= 0.9
    assert ok[d.group == "standard"].mean() >= 0.95
    assert ok[d.group == "inverted"].mean() >= 0.85


# ---- adult --------------------------------------------------------------------------------------------
RACES = {"White", "Black", "Asian-Pac-Islander", "Amer-Indian-Eskimo", "Other"}


def test_adult_dataset():
    d = demo_dataset("adult")
    info = get_demo("adult")
    assert d.name == "adult" and d.group_columns == ("race",) and d.label_column == "income"
    assert d.x.shape == (45222, info.arch_args["in_features"]) and d.x.dtype == torch.float32
    assert len(d.feature_names) == d.n_features
    assert set(d.y.tolist()) == {0, 1} and d.class_names == ("<=50K", ">50K")
    assert 0.2 < d.y.float().mean() < 0.3
    assert set(d.group_sizes) == RACES
    assert set(demo_dataset("adult", group="sex").group_sizes) == {"Male", "Female"}
    # No race or sex information among the model's inputs.
    assert not [f for f in d.feature_names if f.startswith(("race", "sex"))]
    assert "fnlwgt" not in d.feature_names and "fnlwgt" in d.frame.columns
    # The readable frame is row-aligned with the tensors.
    assert len(d.frame) == d.n
    assert np.array_equal((d.frame["income"] == ">50K").to_numpy(), d.y.numpy() == 1)
    assert np.array_equal(d.frame["age"].to_numpy(), d.x[:, d.feature_names.index("age")].numpy())
    tr, te = d.part("train"), d.part("test")
    assert tr.n + te.n == d.n and abs(tr.n / d.n - 2 / 3) < 0.01
    for g, n in d.group_sizes.items():                                # stratified: every group on both sides
        assert abs(tr.group_sizes[g] / n - 2 / 3) < 0.01


def test_adult_grouping_leaves_inputs_unchanged():
    by_race = demo_dataset("adult", group=("race",))
    by_sex = demo_dataset("adult", group=("sex",))
    both = demo_dataset("adult", group=("race", "sex"))
    assert torch.equal(by_race.x, by_sex.x) and torch.equal(by_race.x, both.x)
    assert torch.equal(by_race.y, by_sex.y)
    assert np.array_equal(by_race.split, by_sex.split)
    assert both.group[0] == f"{by_race.group[0]} & {by_sex.group[0]}"
    assert len(both.group_sizes) == 10
    assert len({by_race.sha256, by_sex.sha256, both.sha256}) == 3      # the grouping is part of the fingerprint


def test_adult_model_accuracy():
    d = demo_dataset("adult").part("test")
    model = demo_model("adult")
    ok = _accuracy(model, d)
    assert ok.mean() >= 0.8
    for g in RACES:
        assert ok[d.group == g].mean() >= 0.75, g
    # The standardisation the model was trained with travels inside it.
    assert model.std.min() > 0 and not torch.equal(model.mean, torch.zeros_like(model.mean))


# ---- both ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mnist", "adult"])
def test_split_disjoint_and_complete(name):
    d = demo_dataset(name)
    assert set(d.split) == {"train", "test"}
    assert list(d.frame["split"]) == list(d.split)
    assert (d.split == "train").sum() + (d.split == "test").sum() == d.n


def _clear_caches():
    from fairprune.data import demos

    for fn in (demos._dataset, demos._mnist_base, demos._adult_base):
        fn.cache_clear()


@pytest.mark.parametrize("name", ["mnist", "adult"])
def test_dataset_is_deterministic(name):
    d = demo_dataset(name)
    _clear_caches()
    fresh = demo_dataset(name)                                          # rebuilt from the package files
    assert fresh is not d
    assert fresh.sha256 == d.sha256 and len(d.sha256) == 64
    assert np.array_equal(fresh.split, d.split) and torch.equal(fresh.x, d.x)


@pytest.mark.parametrize("name", ["mnist", "adult"])
def test_model_loads_in_eval_mode_with_all_buffers(name):
    from safetensors.torch import load_file

    model = demo_model(name)
    assert not model.training
    saved = load_file(str(get_demo(name).weights))
    assert set(saved) == set(model.state_dict())


def test_demo_data_needs_no_network(monkeypatch):
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("the demos must not touch the network")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    _clear_caches()
    for name in ("mnist", "adult"):
        d = demo_dataset(name)
        assert d.n > 0
        demo_model(name)
