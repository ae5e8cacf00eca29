"""The model gate: what a ``.pt2`` graph may call, and TorchScript uploads only where the server opts in.

The ``.pt2`` archive checks (entries, pickles, expressions, names) are tested in test_zoo.py; here the
graph itself: a node target or an ``as_operator`` argument naming anything but an operator torch.export
emits for ordinary models is refused before torch opens the file, while real exports (conv, BatchNorm,
dropout, attention, control flow, a torchvision ViT) still load and compute what the module computes.
"""

from __future__ import annotations

import operator
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from fairprune.zoo._pt2_guard import _SYM_OPERATORS
from fairprune.core.errors import InputError
from fairprune.zoo import load_model, save_pt2
from test_zoo import _bn_net, _edit_json, _rewrite


@pytest.fixture
def pt2(tmp_path) -> Path:
    path = tmp_path / "good.pt2"
    save_pt2(_bn_net(), torch.randn(8, 4), path)
    return path


def _evil_node(marker: Path, *, target: str, operator_arg: str | None = None) -> dict:
    """A serialised graph node calling ``target`` (with ``operator_arg`` as an as_operator input) on ``marker``."""
    inputs = [{"name": "path", "arg": {"as_string": str(marker)}, "kind": 1}]
    if operator_arg is not None:
        inputs.insert(0, {"name": "op", "arg": {"as_operator": operator_arg}, "kind": 1})
    return {"target": target, "inputs": inputs, "outputs": [], "metadata": {},
            "is_hop_single_tensor_return": None, "name": "evil"}


def _with_node(src: Path, dst: Path, node: dict) -> Path:
    def inject(doc):
        doc["graph_module"]["graph"]["nodes"].insert(0, node)
    return _rewrite(src, dst, lambda entries: _edit_json(entries, "models/model.json", inject))


@pytest.mark.parametrize("target", [
    "torch.serialization.os.makedirs",          # any callable reachable from torch resolves
    "builtins.exec",
    "torch.ops.higher_order.print",             # a higher-order op torch.export does not emit for models
    "torch.ops.mylib.evil.default",             # a custom-op namespace
    "#mylib:evil",                              # an extension operator
    "torch.ops.aten.__class__.mro",             # aten-shaped, but not an OpOverload
])
def test_a_node_calling_anything_else_is_refused(pt2, tmp_path, target):
    marker = tmp_path / "pwned"
    path = _with_node(pt2, tmp_path / "evil.pt2", _evil_node(marker, target=target))
    with pytest.raises(InputError) as err:
        load_model(path).module(torch.randn(2, 4))
    msg = str(err.value)
    assert msg.startswith(f"{path}: refused to load: 'models/model.json': graph node 'evil' calls {target!r}")
    assert "expected only torch.ops.aten / torch.ops.prims overloads" in msg
    assert not marker.exists()


def test_a_node_without_inputs_is_still_checked(pt2, tmp_path):
    node = _evil_node(tmp_path / "pwned", target="torch.serialization.os.makedirs")
    del node["inputs"]
    path = _with_node(pt2, tmp_path / "evil.pt2", node)
    with pytest.raises(InputError, match="graph node 'evil' calls 'torch.serialization.os.makedirs'"):
        load_model(path)


@pytest.mark.parametrize("host", ["torch.ops.higher_order.out_dtype", "_operator.getitem", "torch.ops.aten.add.Tensor"])
def test_an_operator_argument_naming_anything_else_is_refused(pt2, tmp_path, host):
    marker = tmp_path / "pwned"
    node = _evil_node(marker, target=host, operator_arg="torch.serialization.os.makedirs")
    path = _with_node(pt2, tmp_path / "evil.pt2", node)
    with pytest.raises(InputError) as err:
        load_model(path).module(torch.randn(2, 4))
    msg = str(err.value)
    assert "graph node 'evil' passes the operator 'torch.serialization.os.makedirs'" in msg
    assert "expected only torch.ops.aten / torch.ops.prims overloads" in msg
    assert not marker.exists()


def test_a_node_hidden_in_a_control_flow_branch_is_found(tmp_path):
    """Subgraphs (torch.cond branches) are graphs too: a node inside one is checked like the rest."""
    src = tmp_path / "cond.pt2"
    torch.export.save(torch.export.export(_Cond().eval(), (torch.randn(3, 4),)), str(src))
    assert load_model(src).kind == "pt2"

    def inject(doc):
        branches = [arg["arg"]["as_graph"]["graph"] for node in doc["graph_module"]["graph"]["nodes"]
                    for arg in node["inputs"] if "as_graph" in arg["arg"]]
        assert len(branches) == 2
        branches[1]["nodes"].insert(0, _evil_node(tmp_path / "pwned", target="torch.serialization.os.makedirs"))
    path = _rewrite(src, tmp_path / "evil.pt2", lambda entries: _edit_json(entries, "models/model.json", inject))
    with pytest.raises(InputError, match="graph node 'evil' calls 'torch.serialization.os.makedirs'"):
        load_model(path)


def test_the_symbolic_operators_allowed_are_the_ones_torch_serialises():
    """Every symbolic-shape operator torch's serializer may write is allowed, under the name it writes."""
    from torch._export.serde.serialize import _SYM_OPS, GraphModuleSerializer

    written = {GraphModuleSerializer.serialize_operator(None, op) for op in _SYM_OPS}
    assert written <= _SYM_OPERATORS, written - _SYM_OPERATORS
    assert GraphModuleSerializer.serialize_operator(None, operator.getitem) in _SYM_OPERATORS


# --- real exports still load ------------------------------------------------------------------------

class _Mixed(nn.Module):
    """Conv, BatchNorm, dropout, LayerNorm, linear, MultiheadAttention and SDPA in one model."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.drop = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.1)
        self.attn, self.norm, self.head = nn.MultiheadAttention(4, 2, batch_first=True), nn.LayerNorm(4), nn.Linear(4, 2)

    def forward(self, x):
        y = self.drop(self.bn(self.conv(x))).mean((2, 3))
        tokens = torch.stack([y, 2 * y], 1)
        a, _ = self.attn(tokens, tokens, tokens)
        a = nn.functional.scaled_dot_product_attention(a, a, a)
        return self.head(self.norm(a[:, 0] + y))


class _Cond(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, x):
        return torch.cond(x.sum() > 0, lambda x: self.lin(x), lambda x: self.lin(-x), (x,))


class _NoGradAutocast(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, x):
        with torch.no_grad():
            y = self.lin(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z = self.lin(x)
        return y + z.float()


def _tiny_vit() -> nn.Module:
    return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2,
                                                hidden_dim=16, mlp_dim=32, num_classes=3)


@pytest.mark.parametrize("make, shape, mode", [
    (_Mixed, (4, 3, 8, 8), "eval"),
    (_Mixed, (4, 3, 8, 8), "train"),             # training-mode export: moved to eval by load_model
    (_Cond, (4, 4), "eval"),
    (_NoGradAutocast, (4, 4), "eval"),
    (_tiny_vit, (4, 3, 32, 32), "eval"),         # torchvision ViT: patch conv, encoder attention, MLP
], ids=["conv_bn_dropout_attention", "same_exported_in_training_mode", "torch_cond", "no_grad_autocast", "vit"])
def test_real_exports_still_load_and_compute_the_same(tmp_path, make, shape, mode):
    module = make().train(mode == "train")
    x = torch.randn(*shape)
    program = torch.export.export(module, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    path = tmp_path / "model.pt2"
    torch.export.save(program, str(path))

    loaded = load_model(path)
    module.eval()
    with torch.no_grad():
        got, want = loaded.module(x), module(x)
    assert loaded.kind == "pt2" and got.shape == want.shape
    tol = 2e-2 if make is _NoGradAutocast else 1e-5         # bfloat16 autocast inside
    assert torch.allclose(got, want, atol=tol), (got - want).abs().max()


def test_a_decomposed_export_still_loads(tmp_path):
    """run_decompositions() rewrites to core aten (and symbolic arithmetic for the dynamic batch)."""
    module = _Mixed().eval()
    x = torch.randn(4, 3, 8, 8)
    program = torch.export.export(module, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    path = tmp_path / "core.pt2"
    torch.export.save(program.run_decompositions(), str(path))
    with torch.no_grad():
        assert torch.allclose(load_model(path).module(x), module(x), atol=1e-5)


# --- TorchScript: code, so the dashboard takes it only where the server opts in --------------------------

@pytest.fixture
def torchscript(tmp_path) -> Path:
    path = tmp_path / "net.pt"
    torch.jit.save(torch.jit.script(_bn_net().eval()), str(path))
    return path


def test_the_library_refuses_torchscript_before_opening_it_when_asked(torchscript, monkeypatch):
    from fairprune.zoo._load import TORCHSCRIPT_ENV

    x = torch.randn(3, 4)
    assert torch.allclose(load_model(torchscript).module(x), _bn_net()(x), atol=1e-6)   # the default: accepted
    opened = []
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: opened.append(a))
    with pytest.raises(InputError) as err:
        load_model(torchscript, allow_torchscript=False)
    msg = str(err.value)
    assert not opened, "torch.jit.load must not run on a refused file"
    assert msg.startswith(f"{torchscript}: refused: expected bare weights")
    for part in ("found a TorchScript archive, which is code", "model.pt2", "command line accepts TorchScript",
                 f"{TORCHSCRIPT_ENV}=1"):
        assert part in msg, (part, msg)
    # other formats are untouched by the switch
    pt2 = torchscript.parent / "net.pt2"
    save_pt2(_bn_net(), torch.randn(4, 4), pt2)
    assert load_model(pt2, allow_torchscript=False).kind == "pt2"


@pytest.mark.parametrize("value, allowed", [("", False), ("0", False), ("false", False), ("off", False),
                                            ("1", True), ("true", True), ("Yes", True), (" on ", True)])
def test_the_dashboard_switch(monkeypatch, value, allowed):
    from app import files

    monkeypatch.setenv(files.TORCHSCRIPT_ENV, value)
    assert files.torchscript_allowed() is allowed


def test_the_dashboard_and_the_library_name_the_same_switch():
    import subprocess
    import sys

    from app import files
    from fairprune.zoo._load import TORCHSCRIPT_ENV, TORCHSCRIPT_REFUSED

    assert files.TORCHSCRIPT_ENV == TORCHSCRIPT_ENV == "FAIRPRUNE_ALLOW_TORCHSCRIPT"
    assert f"{TORCHSCRIPT_ENV}=1" in TORCHSCRIPT_REFUSED
    # the library module imports on its own
    subprocess.run([sys.executable, "-c", "import fairprune.zoo._load"], check=True, timeout=120)


def test_a_bad_dashboard_switch_is_refused(monkeypatch):
    from app import files

    monkeypatch.setenv("FAIRPRUNE_ALLOW_TORCHSCRIPT", "perhaps")
    with pytest.raises(InputError, match=r"FAIRPRUNE_ALLOW_TORCHSCRIPT: expected 1 .* or 0 .*; found 'perhaps'"):
        files.torchscript_allowed()


@pytest.mark.parametrize("opt_in", [False, True])
def test_the_data_page_takes_torchscript_only_when_the_server_opts_in(torchscript, monkeypatch, opt_in):
    from fairprune.run import jobs
    from test_app import assert_clean, choose_own_files, new_app

    monkeypatch.setattr(jobs, "ensure_worker", lambda store=None, **kw: None)
    if opt_in:
        monkeypatch.setenv("FAIRPRUNE_ALLOW_TORCHSCRIPT", "1")
    else:
        monkeypatch.delenv("FAIRPRUNE_ALLOW_TORCHSCRIPT", raising=False)
    at = choose_own_files(new_app().run())
    at.file_uploader(key="model-upload").set_value(("net.pt", torchscript.read_bytes(), "application/octet-stream"))
    at.run()
    assert_clean(at)
    errors = [e.value.replace("\\", "") for e in at.error]     # as a person reads it: markdown escapes rendered
    captions = [c.value for c in at.caption]
    if opt_in:
        assert not errors, errors
        assert "net.pt: torchscript" in captions, captions
    else:
        [error] = errors
        assert error.startswith("net.pt: refused: expected bare weights")
        assert "TorchScript archive, which is code" in error and "FAIRPRUNE_ALLOW_TORCHSCRIPT=1" in error
        assert ".pt2" in error
        assert not any(c.startswith("net.pt:") for c in captions)
        assert not at.session_state["inputs"]["model"]["valid"]


def test_the_cli_still_audits_torchscript(tmp_path, capsys):
    import json

    from conftest import make_table, train_mlp
    from fairprune.run.cli import main

    df = make_table(n=120)
    model = train_mlp(df, epochs=20).eval()
    path = tmp_path / "mlp.pt"
    torch.jit.save(torch.jit.script(model), str(path))
    data = tmp_path / "t.csv"
    df.to_csv(data, index=False)
    out = tmp_path / "r.json"
    code = main([str(a) for a in ["audit", "--model", path, "--data", data, "--ignore", "sex", "--sparsity", "0.5",
                                  "--out", out, "--quiet", "--no-footprint"]])
    _, err = capsys.readouterr()
    assert code == 0, err
    r = json.loads(out.read_text())
    assert r["data"]["n"] == 120 and r["dense"]["overall"]["accuracy"] > 0.8


@pytest.mark.parametrize("allowed", [False, True])
def test_the_worker_keeps_the_dashboards_torchscript_rule(torchscript, tmp_path, monkeypatch, allowed):
    """A queued run (however it was queued: re-queued, restored, written by hand) is refused by the worker before
    torch.jit.load runs, unless the server opts in."""
    from fairprune.run.jobs import execute
    from fairprune.run.store import RunStore

    if allowed:
        monkeypatch.setenv("FAIRPRUNE_ALLOW_TORCHSCRIPT", "1")
    else:
        monkeypatch.delenv("FAIRPRUNE_ALLOW_TORCHSCRIPT", raising=False)
        opened = []
        monkeypatch.setattr(torch.jit, "load", lambda *a, **k: opened.append(a))
    store = RunStore(tmp_path / "home")
    store.create_run({"model": str(torchscript), "data": str(tmp_path / "missing.csv"), "sparsities": [0.5]},
                     kind="audit")
    run = store.claim_next(worker_pid=1)
    execute(store, run)
    done = store.get(run.id)
    assert done.status == "failed"
    refused = "TorchScript archive, which is code" in (done.error or "")
    assert refused is not allowed, done.error
    if not allowed:
        assert not opened and "FAIRPRUNE_ALLOW_TORCHSCRIPT=1" in done.error
