"""Architectures x commands: every torchvision classification family that runs in seconds, and the text models
(token ids through Embedding + GRU / LSTM / TransformerEncoder, ids + padding mask), as an nn.Module (weights +
--arch, or the library for models that have no --arch) and as a .pt2 program, through `audit --diagnostics`,
`diagnose` and `audit --compress int8_dynamic`: each ends in exit 0 with every figure finite or null with a stated
reason, never exit 3. The table of outcomes is written to tests/artifacts/arch_matrix.md."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from fairprune.run.cli import main

ARTIFACTS = Path(__file__).parent / "artifacts"
N, SIDE, K = 16, 32, 3
VOCAB, L = 30, 12

#: torchvision families that take 3x32x32 and run the three commands in seconds (kwargs shrink the wide ones)
VISION = {
    "resnet18": {},
    "mobilenet_v2": {"width_mult": 0.25},
    "mobilenet_v3_small": {"width_mult": 0.25},
    "efficientnet_b0": {},
    "regnet_y_400mf": {},
    "shufflenet_v2_x0_5": {},
    "squeezenet1_1": {},
    "mnasnet0_5": {},
}


class GRUText(nn.Module):
    def __init__(self, cell=nn.GRU):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 8)
        self.rnn = cell(8, 8, batch_first=True)
        self.head = nn.Linear(8, K)

    def forward(self, ids):
        out, _ = self.rnn(self.emb(ids))
        return self.head(out[:, -1])


class EncoderText(nn.Module):
    def __init__(self, batch_first=True):
        super().__init__()
        self.batch_first = batch_first
        self.emb = nn.Embedding(VOCAB, 8)
        layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=batch_first)
        self.enc = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(8, K)

    def forward(self, ids):
        h = self.emb(ids)
        if not self.batch_first:
            return self.head(self.enc(h.transpose(0, 1)).mean(0))
        return self.head(self.enc(h).mean(1))


class MaskedText(nn.Module):
    """input_ids + attention_mask, as a tokenizer gives them."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, K)

    def forward(self, ids, mask):
        h = self.emb(ids)
        a, _ = self.attn(h, h, h, key_padding_mask=mask == 0, need_weights=False)
        m = mask.unsqueeze(-1).float()
        return self.head((a * m).sum(1) / m.sum(1).clamp_min(1))


def _vit():
    return torchvision.models.VisionTransformer(image_size=SIDE, patch_size=8, num_layers=1, num_heads=2,
                                                hidden_dim=16, mlp_dim=32, num_classes=K)


TEXT = {"gru": GRUText, "lstm": lambda: GRUText(nn.LSTM), "encoder": EncoderText,
        "encoder_seq_first": lambda: EncoderText(False), "ids_mask_attention": MaskedText, "vit_tiny": _vit}

RESULTS: dict[tuple[str, str], dict[str, str]] = {}


def _vision_data(path: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.random((N, 3, SIDE, SIDE), dtype=np.float32), y=rng.integers(0, K, N),
             group=np.array(["a", "b"] * (N // 2)))


def _text_data(path: Path, mask: bool) -> None:
    rng = np.random.default_rng(0)
    ids = rng.integers(1, VOCAB, (N, L))
    arrays = dict(y=rng.integers(0, K, N), group=np.array(["a", "b"] * (N // 2)))
    if mask:
        m = (rng.random((N, L)) > 0.3).astype(np.int64)
        m[:, 0] = 1
        arrays.update(x0=ids, x1=m)
    else:
        arrays.update(x=ids)
    np.savez(path, **arrays)


def _example(name: str) -> tuple:
    if name in VISION or name == "vit_tiny":
        return (torch.rand(2, 3, SIDE, SIDE),)
    ids = torch.randint(1, VOCAB, (2, L))
    return (ids, torch.ones(2, L, dtype=torch.int64)) if name == "ids_mask_attention" else (ids,)


def _finite_or_stated(result: dict) -> list[str]:
    """Figures that are neither finite nor null-with-a-reason (a silently wrong number)."""
    bad = []
    warnings = " ".join(result.get("warnings", []))
    for where, groups in [("dense", result["diagnostics"]["dense"])] + [
            (f"level {i}", g) for i, g in enumerate(result["diagnostics"]["levels"])]:
        for g, diag in groups.items():
            for key, v in diag.items():
                if isinstance(v, float) and not math.isfinite(v):
                    bad.append(f"{where} {g} {key}={v}")
                if v is None and key.startswith(("grad_norm", "hessian_max_eig", "hessian_trace", "margin")) \
                        and "not computed" not in warnings:
                    bad.append(f"{where} {g} {key} null without a reason in warnings")
    return bad


def _run(argv: list[str], capsys) -> tuple[int, str]:
    rc = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith(("error", "internal error"))]
    return rc, lines[0] if lines else ""


@pytest.mark.parametrize("path", ["module", "pt2"])
@pytest.mark.parametrize("name", list(VISION) + list(TEXT))
def test_every_command_on_every_architecture(name, path, tmp_path, capsys):
    torch.manual_seed(0)
    if name in VISION:
        model = torchvision.models.get_model(name, num_classes=K, **VISION[name]).eval()
    else:
        model = TEXT[name]().eval()
    data = tmp_path / "d.npz"
    (_vision_data if name in VISION or name == "vit_tiny" else
     lambda p: _text_data(p, name == "ids_mask_attention"))(data)
    if path == "pt2":
        example = _example(name)
        batch = torch.export.Dim("batch", min=1)
        program = torch.export.export(model, example, dynamic_shapes=tuple({0: batch} for _ in example))
        model_args = ["--model", str(tmp_path / "m.pt2")]
        torch.export.save(program, model_args[1])
    elif name in VISION:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "w.safetensors")
        model_args = ["--model", str(tmp_path / "w.safetensors"), "--arch", name, "--num-classes", str(K)]
        model_args += [a for k, v in VISION[name].items() for a in ("--arch-arg", f"{k}={v}")]
    else:
        pytest.skip("no --arch for this model: its nn.Module path is covered by test_library_path_of_text_models")
    common = model_args + ["--data", str(data), "--batch-size", "16"]
    outcome = {}

    # every factor runs; fewer Hessian products than the defaults (this checks that each command works on each
    # architecture, not the estimates' precision)
    rc, err = _run(["audit", *common, "--sparsity", "0.5", "--diagnostics", "--diagnostics-option", "power_iterations=8",
                    "--diagnostics-option", "hutchinson_probes=4", "--out", str(tmp_path / "a.json"), "--quiet"], capsys)
    outcome["audit --diagnostics"] = "OK" if rc == 0 else f"exit {rc}: {err}"
    if rc == 0:
        bad = _finite_or_stated(json.loads((tmp_path / "a.json").read_text()))
        outcome["audit --diagnostics"] = "OK" if not bad else f"silent gaps: {bad[:3]}"
    rc, err = _run(["diagnose", *common, "--sparsity", "0.5", "--out", str(tmp_path / "s.csv")], capsys)
    outcome["diagnose"] = "OK" if rc == 0 else f"exit {rc}: {err}"
    if rc == 0:
        import pandas as pd

        samples = pd.read_csv(tmp_path / "s.csv")
        if len(samples) != N or samples["loss"].isna().any():
            outcome["diagnose"] = f"rows {len(samples)}, losses missing {int(samples['loss'].isna().sum())}"
    rc, err = _run(["audit", *common, "--compress", "int8_dynamic", "--out", str(tmp_path / "c.json"), "--quiet"],
                   capsys)
    outcome["--compress int8_dynamic"] = "OK" if rc in (0, 2) and "internal error" not in err else f"exit {rc}: {err}"
    if rc == 2:
        outcome["--compress int8_dynamic"] = f"refused (exit 2): {err[:120]}"
    RESULTS[(name, path)] = outcome
    _write_table()
    assert all(v == "OK" or v.startswith("refused") for v in outcome.values()), outcome


def _write_table() -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    cmds = ["audit --diagnostics", "diagnose", "--compress int8_dynamic"]
    lines = ["| architecture | as | " + " | ".join(cmds) + " |", "|---|---|" + "---|" * len(cmds)]
    for (name, path), out in sorted(RESULTS.items()):
        lines.append(f"| {name} | {path} | " + " | ".join(out.get(c, "") for c in cmds) + " |")
    (ARTIFACTS / "arch_matrix.md").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("name", ["gru", "lstm", "encoder", "encoder_seq_first", "ids_mask_attention", "vit_tiny"])
def test_library_path_of_text_models(name, tmp_path):
    """The nn.Module path of models with no --arch: the library's audit with diagnostics and a compression variant."""
    from fairprune.data import load_dataset
    from fairprune.engine.audit import audit
    from fairprune.zoo import LoadedModel

    torch.manual_seed(0)
    data = tmp_path / "d.npz"
    (_vision_data if name == "vit_tiny" else lambda p: _text_data(p, name == "ids_mask_attention"))(data)
    result = audit(LoadedModel.from_module(TEXT[name]().eval(), name=name), load_dataset(data), sparsities=[0.5],
                   diagnostics=True, batch_size=16, compress=("int8_dynamic",), measure_footprint=False)
    d = result.to_dict()
    assert not _finite_or_stated(d)
    assert d["compression"][0]["method"] == "int8_dynamic"
    # diagnose's per-sample table (what `fairprune diagnose` writes), on the dense module
    from fairprune.engine.diagnose import input_positions, sample_table

    rows = load_dataset(data)
    table = sample_table(LoadedModel.from_module(TEXT[name]().eval(), name=name), rows, index=input_positions(rows),
                         batch_size=16, device="cpu")
    assert len(table) == N and table["grad_norm"].notna().all() and (table["grad_norm"] > 0).all()
    RESULTS[(name, "module (library)")] = {"audit --diagnostics": "OK", "diagnose": "OK", "--compress int8_dynamic": "OK"}
    _write_table()
