"""Evaluation on accelerators: out-of-memory back-off, mixed precision checked against full precision,
row batches. CUDA is simulated where the behaviour does not depend on it (an out-of-memory error is
an exception type; autocast exists on the CPU with bfloat16)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fairprune.data import GroupedDataset
from fairprune.core.errors import InputError
from fairprune.engine.evaluate import AMP_TOLERANCE, BatchSize, check_amp, evaluate
from fairprune.zoo import LoadedModel


def _data(n=50, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    group = np.array(["a", "b"])[np.arange(n) % 2]
    return GroupedDataset(x=x, y=y, group=group, name="synthetic", sha256="0" * 64)


class RunsOutAbove(nn.Module):
    """A linear classifier that raises CUDA's out-of-memory error for batches larger than ``limit``."""

    def __init__(self, limit: int):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(6, 3)
        self.limit = limit
        self.sizes: list[int] = []

    def forward(self, x):
        self.sizes.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.lin(x)


def test_out_of_memory_halves_the_batch_and_gives_the_same_predictions():
    data = _data()
    ref = evaluate(LoadedModel.from_module(RunsOutAbove(10_000), name="m"), data, batch_size=64)
    module = RunsOutAbove(12)
    bs = BatchSize(64)
    with pytest.warns(UserWarning, match="out of memory at batch size 64; retrying with 32"):
        got = evaluate(LoadedModel.from_module(module, name="m"), data, batch_size=bs)
    assert bs.value == 8 and bs.backoffs == [64, 32, 16]
    np.testing.assert_array_equal(got.pred, ref.pred)
    np.testing.assert_allclose(got.loss, ref.loss, rtol=1e-6)
    # every row evaluated exactly once in batches of at most 8 once backed off
    ok = [s for s in module.sizes if s <= 12]
    assert sum(ok) == data.n and max(ok) == 8
    # the next pass starts from the size that fit: no more out-of-memory errors
    module.sizes.clear()
    evaluate(LoadedModel.from_module(module, name="m"), data, batch_size=bs)
    assert max(module.sizes) == 8 and bs.backoffs == [64, 32, 16]


def test_out_of_memory_on_one_row_is_a_clear_error():
    with pytest.raises(InputError, match="out of memory on a single row"), pytest.warns(UserWarning):
        evaluate(LoadedModel.from_module(RunsOutAbove(0), name="m"), _data(n=4), batch_size=2)


def test_cpu_memory_errors_back_off_too():
    class Hungry(RunsOutAbove):
        def forward(self, x):
            if x.shape[0] > self.limit:
                raise MemoryError()
            return self.lin(x)
    with pytest.warns(UserWarning, match="out of memory at batch size 32; retrying with 16"):
        got = evaluate(LoadedModel.from_module(Hungry(16), name="m"), _data(), batch_size=32)
    assert len(got.pred) == 50


def test_other_errors_are_not_retried():
    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("shape mismatch")
    with pytest.raises(RuntimeError, match="shape mismatch"):
        evaluate(LoadedModel.from_module(Broken(), name="m"), _data(), batch_size=8)


def test_default_batch_size_depends_on_the_device():
    assert BatchSize(None, "cpu").value == 256
    assert BatchSize(None, "cuda").value == 1024
    with pytest.raises(InputError, match="positive"):
        BatchSize(0)


def test_mixed_precision_is_checked_against_full_precision():
    data = _data(n=400, seed=3)
    torch.manual_seed(1)
    model = LoadedModel.from_module(nn.Sequential(nn.Linear(6, 64), nn.ReLU(), nn.Linear(64, 3)).eval(), name="m")
    full = evaluate(model, data, batch_size=128)
    mixed = evaluate(model, data, batch_size=128, amp="bfloat16")
    assert not np.array_equal(full.loss, mixed.loss)          # bfloat16 really ran
    check = check_amp(full, mixed, data.group, "bfloat16")
    agree = float(np.mean(full.pred == mixed.pred))
    assert check.prediction_agreement == pytest.approx(agree)
    assert check.max_loss_change == pytest.approx(float(np.abs(full.loss - mixed.loss).max()))
    assert check.used == ((1 - agree) <= AMP_TOLERANCE and check.max_group_accuracy_change <= AMP_TOLERANCE)
    # a model whose logits sit within bfloat16's rounding of each other flips predictions: refused
    tie = nn.Linear(6, 3)
    with torch.no_grad():
        tie.weight.copy_(torch.tensor([[1.0] * 6, [1.001] * 6, [0.999] * 6]))
        tie.bias.copy_(torch.tensor([100.0, 100.0, 100.0]))
    tm = LoadedModel.from_module(tie, name="tie")
    flipped = check_amp(evaluate(tm, data), evaluate(tm, data, amp="bfloat16"), data.group, "bfloat16")
    assert flipped.prediction_agreement < 0.99 and not flipped.used


def test_rows_and_batches_agree():
    data = _data(n=10)
    parts = list(data.batches(4))
    assert [p[0].shape[0] for p in parts] == [4, 4, 2]
    x, y = data.rows(4, 8)
    torch.testing.assert_close(x, parts[1][0])
    torch.testing.assert_close(y, parts[1][1])


def test_audit_records_mixed_precision_when_asked_and_is_like_for_like(table_files):
    from fairprune.engine.audit import audit

    csv, weights, df, model = table_files
    from fairprune.data import load_dataset
    data = load_dataset(str(csv), label="label", group=("group",), ignore=("sex",))
    full = audit(model, data, sparsities=[0.5], amp="off", measure_footprint=False)
    assert "precision" not in full.sections                    # CPU, auto/off: never tried
    auto = audit(model, data, sparsities=[0.5], measure_footprint=False)
    assert auto.to_dict() == full.to_dict()
    mixed = audit(model, data, sparsities=[0.5], amp="bfloat16", measure_footprint=False)
    sec = mixed.sections["precision"]
    assert sec["dtype"] == "bfloat16" and sec["checked_on"].startswith("the dense model")
    assert sec["used"] == (1 - sec["prediction_agreement"] <= sec["tolerance"]
                           and sec["max_group_accuracy_change"] <= sec["tolerance"])
    with pytest.raises(InputError, match="--amp must be one of"):
        audit(model, data, sparsities=[0.5], amp="int3")
