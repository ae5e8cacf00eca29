"""Shared fixtures: small real models and datasets written to disk in the formats users bring."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from fairprune.zoo.archs import MLP
from fairprune.engine.evaluate import loss_fn


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Every test gets its own FAIRPRUNE_HOME: no test touches ~/.local/share/fairprune."""
    monkeypatch.setenv("FAIRPRUNE_HOME", str(tmp_path_factory.mktemp("fairprune_home")))


def make_table(n=400, seed=0, n_features=4):
    """A grouped tabular set where group 'b' (small) follows a different rule than 'a'."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, n_features)).astype(np.float32)
    group = np.where(rng.random(n) < 0.8, "a", "b")
    sex = np.where(rng.random(n) < 0.5, "F", "M")
    score = x[:, 0] + 0.5 * x[:, 1]
    score = np.where(group == "b", x[:, 2] - x[:, 3], score)
    label = (score > 0).astype(int) + (score > 1).astype(int)  # 3 classes
    df = pd.DataFrame(x, columns=[f"f{i}" for i in range(n_features)])
    df["label"] = label
    df["group"] = group
    df["sex"] = sex
    return df


def train_mlp(df, *, num_classes=3, epochs=60, seed=0):
    torch.manual_seed(seed)
    feats = [c for c in df.columns if c.startswith("f")]
    x = torch.tensor(df[feats].to_numpy(np.float32))
    y = torch.tensor(df["label"].to_numpy())
    m = MLP(len(feats), num_classes, hidden=(32, 16))
    m.mean.copy_(x.mean(0))
    m.std.copy_(x.std(0))
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(epochs):
        opt.zero_grad()
        loss = loss_fn(m(x), y)
        loss.backward()
        opt.step()
    return m.eval()


@pytest.fixture(scope="session")
def table_files(tmp_path_factory):
    """(csv path, safetensors path, DataFrame, trained MLP) for a 3-class tabular task."""
    d = tmp_path_factory.mktemp("table")
    df = make_table()
    model = train_mlp(df)
    csv = d / "test.csv"
    df.to_csv(csv, index=False)
    weights = d / "mlp.safetensors"
    save_file(model.state_dict(), str(weights))
    return csv, weights, df, model


@pytest.fixture
def spawned():
    """Pids of worker processes a test started; each is stopped (SIGKILL) and waited for afterwards."""
    import os
    import signal

    from fairprune.run import jobs

    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for p in jobs._STARTED:
        if p.pid in pids:
            p.wait(timeout=10)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a shared machine: an OpenMP barrier per op costs more than the op; one thread per module."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
