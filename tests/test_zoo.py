"""Safe model loading (fairprune.zoo.load_model and the .pt2 guard).

Models are tiny so every test runs in a second or two. Hostile files stand in for arbitrary code
with ``open(marker, "w")``: a test passes only if the file is refused AND the marker never appears.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import pickle
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from fairprune.zoo.archs import MLP, SmallCNN
from fairprune.core.errors import InputError
from fairprune.zoo import ExportedModule, LoadedModel, load_model, parse_arch_args, save_pt2


class _Touch:
    """Unpickling this creates ``path``: it stands in for whatever code a hostile pickle would run."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


class HostileNet(nn.Module):
    """A whole model whose pickle runs code when loaded."""

    def __init__(self, marker: Path):
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(x)


def _bn_net() -> nn.Sequential:
    """Linear -> BatchNorm -> ReLU -> Dropout -> Linear, with running statistics away from their defaults."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))
    net.train()
    with torch.no_grad():
        for _ in range(5):
            net(torch.randn(16, 4) * 3 + 1)
    return net.eval()


def _bytes_of(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


# --- bare weights ---------------------------------------------------------------------------------

def test_safetensors_mlp_round_trip(tmp_path):
    torch.manual_seed(0)
    net = MLP(5, num_classes=3, hidden=(8, 4)).eval()
    net.mean.fill_(0.5)
    net.std.fill_(2.0)
    path = tmp_path / "mlp.safetensors"
    save_file(net.state_dict(), str(path))

    model = load_model(path, arch="mlp", num_classes=3, arch_args={"in_features": 5, "hidden": (8, 4)})

    x = torch.randn(7, 5)
    assert (model.kind, model.arch, model.name, model.path) == ("weights", "mlp", "mlp", str(path))
    assert not model.module.training
    assert torch.equal(model.module(x), net(x))
    assert model.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert model.parameters == sum(p.numel() for p in net.parameters())
    assert model.fixed_batch_size is None and model.input_shape is None


def test_safetensors_torchvision_resnet18_with_num_classes(tmp_path):
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    path = tmp_path / "resnet.safetensors"
    save_file(net.state_dict(), str(path))

    model = load_model(path, arch="resnet18", num_classes=10)

    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.module(x).argmax(1), net(x).argmax(1))
        assert torch.allclose(model.module(x), net(x))


def test_state_dict_pt_with_arch_args(tmp_path):
    torch.manual_seed(0)
    net = SmallCNN(in_channels=1, num_classes=4, channels=(4, 8), hidden=16).eval()
    path = tmp_path / "cnn.pth"
    torch.save(net.state_dict(), path)

    args = parse_arch_args(["channels=4,8", "hidden=16", "num_classes=4"])
    model = load_model(path, arch="small_cnn", arch_args=args)

    x = torch.rand(3, 1, 12, 12)
    assert model.kind == "weights"
    assert torch.equal(model.module(x), net(x))


def test_bare_weights_without_arch_ask_for_it(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(TinyNet().state_dict(), str(path))
    with pytest.raises(InputError) as err:
        load_model(path)
    msg = str(err.value)
    assert str(path) in msg and "--arch NAME" in msg and "fairprune models" in msg


def test_weights_for_another_architecture_list_the_mismatch(tmp_path):
    path = tmp_path / "mlp.safetensors"
    save_file(MLP(5, num_classes=3).state_dict(), str(path))

    with pytest.raises(InputError) as err:
        load_model(path, arch="small_cnn")
    msg = str(err.value)
    assert str(path) in msg and "missing keys" in msg and "unexpected keys" in msg and "net.0.weight" in msg

    with pytest.raises(InputError) as err:
        load_model(path, arch="mlp", num_classes=4, arch_args={"in_features": 5})
    msg = str(err.value)
    assert "shape mismatches" in msg and "net.4.weight is (3, 32) in the file, (4, 32) in the model" in msg
    assert "--num-classes" in msg


def test_unknown_architecture_lists_the_known_ones(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(TinyNet().state_dict(), str(path))
    with pytest.raises(InputError, match="unknown architecture 'nope'.*mlp"):
        load_model(path, arch="nope")


def test_state_dict_checkpoint_with_extra_entries_is_explained(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"fc.weight": torch.zeros(2, 3), "epoch": 3}, path)
    with pytest.raises(InputError, match=r"not tensors: 'epoch' \(int\)"):
        load_model(path, arch="mlp")


# --- whole pickled models ------------------------------------------------------------------------

def test_whole_pickled_model_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    torch.save(HostileNet(marker), path)

    with pytest.raises(InputError) as err:
        load_model(path, arch="mlp")
    msg = str(err.value)
    assert not marker.exists()
    assert str(path) in msg and "unpickling runs arbitrary code" in msg
    assert 'torch.export.save(torch.export.export(model.eval(), (x,)), "model.pt2")' in msg
    assert 'safetensors.torch.save_file(model.state_dict(), "model.safetensors")' in msg and "--arch" in msg


def test_whole_model_message_names_its_class(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(TinyNet(), path)
    with pytest.raises(InputError, match=r"an object of class [\w.]*TinyNet"):
        load_model(path)


def test_plain_pickle_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(_Touch(marker), protocol=4))
    with pytest.raises(InputError, match="plain pickle file.*unpickling runs arbitrary code"):
        load_model(path)
    assert not marker.exists()


# --- .pt2 programs ------------------------------------------------------------------------------

@pytest.fixture
def pt2(tmp_path) -> Path:
    """A valid .pt2 of ``_bn_net()`` exported in eval mode with a dynamic batch dimension."""
    path = tmp_path / "good.pt2"
    save_pt2(_bn_net(), torch.randn(8, 4), path)
    return path


def test_pt2_with_dynamic_batch_loads_and_matches(pt2):
    net = _bn_net()
    model = load_model(pt2)

    assert (model.kind, model.name, model.fixed_batch_size, model.input_shape) == ("pt2", "good", None, (4,))
    assert isinstance(model.module, ExportedModule) and not model.module.training
    assert model.module.eval() is model.module  # a program's own module would raise here
    assert model.parameters == sum(p.numel() for p in net.parameters())
    assert model.sha256 == hashlib.sha256(pt2.read_bytes()).hexdigest()
    for n in (1, 3, 8):
        x = torch.randn(n, 4)
        assert torch.allclose(model.module(x), net(x), atol=1e-6)


def test_pt2_is_recognised_by_content_not_extension(pt2, tmp_path):
    renamed = tmp_path / "model.pt"
    renamed.write_bytes(pt2.read_bytes())
    assert load_model(renamed).kind == "pt2"


def test_pt2_with_a_fixed_batch_reports_it(tmp_path):
    net = _bn_net()
    path = tmp_path / "fixed.pt2"
    torch.export.save(torch.export.export(net, (torch.randn(8, 4),)), path)

    model = load_model(path)

    assert (model.fixed_batch_size, model.input_shape) == (8, (4,))
    x = torch.randn(8, 4)
    assert torch.allclose(model.module(x), net(x), atol=1e-6)


def test_pt2_exported_in_training_mode_is_moved_to_eval(tmp_path):
    net = _bn_net()
    path = tmp_path / "train.pt2"
    torch.export.save(torch.export.export(net.train(), (torch.randn(8, 4),)), path)
    net.eval()

    model = load_model(path)

    x = torch.randn(8, 4)
    stats = [b.clone() for b in model.module.buffers()]
    out = model.module(x)
    assert torch.allclose(out, net(x), atol=1e-6)
    assert torch.equal(out, model.module(x))
    assert all(torch.equal(a, b) for a, b in zip(stats, model.module.buffers(), strict=True))


def test_pt2_training_mode_after_decompositions_is_moved_to_eval(tmp_path):
    net = _bn_net()
    path = tmp_path / "train_core_aten.pt2"
    program = torch.export.export(net.train(), (torch.randn(8, 4),)).run_decompositions()
    torch.export.save(program, path)
    net.eval()

    x = torch.randn(8, 4)
    assert torch.allclose(load_model(path).module(x), net(x), atol=1e-6)


class _Noisy(nn.Module):
    """Dropout plus noise of its own: no eval form makes this deterministic."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.fc(self.drop(x) + torch.rand_like(x))


def test_pt2_training_mode_that_cannot_be_fixed_is_refused(tmp_path):
    path = tmp_path / "noisy.pt2"
    torch.export.save(torch.export.export(_Noisy().train(), (torch.randn(8, 4),)), path)
    with pytest.raises(InputError) as err:
        load_model(path)
    msg = str(err.value)
    assert str(path) in msg and "training mode" in msg and "aten.dropout.default" in msg
    assert "still differ" in msg and "after model.eval()" in msg


def test_save_pt2_round_trips_a_loaded_program_and_a_batch_of_one(pt2, tmp_path):
    net = _bn_net().train()
    again = tmp_path / "again.pt2"
    save_pt2(net, torch.randn(1, 4), again)
    assert net.training  # restored
    net.eval()
    x = torch.randn(5, 4)
    assert torch.allclose(load_model(again).module(x), net(x), atol=1e-6)

    resaved = tmp_path / "resaved.pt2"
    save_pt2(load_model(pt2).module, torch.randn(4, 4), resaved)
    assert torch.allclose(load_model(resaved).module(x), net(x), atol=1e-6)


def test_options_for_bare_weights_are_refused_for_a_program(pt2):
    with pytest.raises(InputError, match="apply to bare weights.*torch.export program"):
        load_model(pt2, arch="mlp")


# --- hostile .pt2 archives ------------------------------------------------------------------------

Entries = list[tuple[str, bytes]]


def _rewrite(src: Path, dst: Path, edit) -> Path:
    """Copy archive ``src`` to ``dst`` with ``edit(entries) -> entries`` applied (names without the root)."""
    with zipfile.ZipFile(src) as zin:
        root = zin.namelist()[0].split("/", 1)[0] + "/"
        entries = [(n[len(root):], zin.read(n)) for n in zin.namelist()]
    with zipfile.ZipFile(dst, "w") as zout, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns about the duplicate-entry case
        for rel, data in edit(entries):
            zout.writestr(root + rel, data)
    return dst


def _replace(entries: Entries, rel: str, fn) -> Entries:
    assert any(name == rel for name, _ in entries), rel
    return [(name, fn(data) if name == rel else data) for name, data in entries]


def _edit_json(entries: Entries, rel: str, fn) -> Entries:
    def edit(data: bytes) -> bytes:
        doc = json.loads(data)
        fn(doc)
        return json.dumps(doc).encode()
    return _replace(entries, rel, edit)


def _use_pickle_weight(marker):
    def edit(entries):
        def mark(doc):
            doc["config"]["0.weight"]["use_pickle"] = True
        entries = _edit_json(entries, "data/weights/model_weights_config.json", mark)
        return _replace(entries, "data/weights/weight_0", lambda _: _bytes_of(_Touch(marker)))
    return edit


def _pickled_example_inputs(marker):
    return lambda entries: _replace(entries, "data/sample_inputs/model.pt", lambda _: _bytes_of(_Touch(marker)))


def _legacy_weights(marker):
    return lambda entries: [*entries, ("data/weights/model.pt", _bytes_of({"0.weight": _Touch(marker)}))]


def _opaque_constant(marker):
    def edit(entries):
        def add(doc):
            doc["config"]["evil"] = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True,
                                     "tensor_meta": None}
        entries = _edit_json(entries, "data/constants/model_constants_config.json", add)
        return [*entries, ("data/constants/opaque_obj_0", pickle.dumps(_Touch(marker)))]
    return edit


def _stray_pickle(marker):
    return lambda entries: [*entries, ("data/payload.pkl", pickle.dumps(_Touch(marker)))]


def _aotinductor(marker):
    return lambda entries: [*entries, ("data/aotinductor/model/model.so", b"\x7fELF")]


def _duplicate_example_inputs(marker):
    # Two entries with one name: Python's zipfile reads the last, a C++ reader may take the first.
    return lambda entries: [("data/sample_inputs/model.pt", _bytes_of(_Touch(marker))), *entries]


def _sympy_expression(marker):
    def edit(entries):
        def inject(doc):
            size = doc["graph_module"]["graph"]["tensor_values"]["input"]["sizes"][0]["as_expr"]
            size["expr_str"] = f"(__import__('builtins').open({str(marker)!r}, 'w').close() or 1) * {size['expr_str']}"
        return _edit_json(entries, "models/model.json", inject)
    return edit


def _guard_code(marker):
    def edit(entries):
        def inject(doc):
            doc["guards_code"] = [f"__import__('builtins').open({str(marker)!r}, 'w') is not None"]
        return _edit_json(entries, "models/model.json", inject)
    return edit


def _name_injection(marker):
    evil = json.dumps(f"x=__import__('builtins').open({str(marker)!r}, 'w')")

    def edit(entries):
        def inject(data: bytes) -> bytes:
            text = data.decode()
            assert '{"name": "input"}' in text
            return (text.replace('{"name": "input"}', '{"name": %s}' % evil)
                        .replace('"input": {"dtype"', '%s: {"dtype"' % evil).encode())
        return _replace(entries, "models/model.json", inject)
    return edit


HOSTILE = {
    "use_pickle_weight": (_use_pickle_weight, "marked use_pickle"),
    "pickled_example_inputs": (_pickled_example_inputs, "example inputs 'data/sample_inputs/model.pt' do not load"),
    "legacy_weights_file": (_legacy_weights, "legacy weights/constants file"),
    "opaque_object_constant": (_opaque_constant, "custom-object constant"),
    "stray_pickle": (_stray_pickle, "pickled payload"),
    "aotinductor_library": (_aotinductor, "AOTInductor compiled code"),
    "duplicate_entry": (_duplicate_example_inputs, "duplicate entries"),
    "sympy_expression": (_sympy_expression, "is not a symbolic-shape expression"),
    "guard_code": (_guard_code, "is not a shape comparison"),
    "name_injection": (_name_injection, "is not a Python identifier"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_pt2_is_refused_before_torch_opens_it(case, pt2, tmp_path):
    craft, reason = HOSTILE[case]
    marker = tmp_path / "pwned"
    path = _rewrite(pt2, tmp_path / f"{case}.pt2", craft(marker))

    with pytest.raises(InputError) as err:
        model = load_model(path)
        model.module(torch.randn(2, 4))  # only reached if the guard failed
    msg = str(err.value)
    assert not marker.exists()
    assert msg.startswith(f"{path}: refused to load") and reason in msg and "weights_only=True" in msg


@pytest.mark.parametrize("case", ["use_pickle_weight", "pickled_example_inputs", "opaque_object_constant",
                                  "sympy_expression", "name_injection"])
def test_hostile_pt2_cases_do_run_code_in_plain_torch(case, pt2, tmp_path):
    """The crafted files are real attacks on torch 2.14.1's own loader, so the guard above matters.

    If torch stops running these, this test fails; the guard can then be relaxed for that case.
    """
    craft, _ = HOSTILE[case]
    marker = tmp_path / "pwned"
    path = _rewrite(pt2, tmp_path / f"{case}.pt2", craft(marker))
    with contextlib.suppress(Exception):  # torch may fail after running the payload; only the marker matters
        torch.export.load(path).module()
    assert marker.exists()


def test_unmodified_rewrite_still_loads(pt2, tmp_path):
    """The crafting helper alone does not make an archive unloadable (so refusals above are the guard's)."""
    path = _rewrite(pt2, tmp_path / "copy.pt2", lambda entries: entries)
    x = torch.randn(3, 4)
    assert torch.allclose(load_model(path).module(x), _bn_net()(x), atol=1e-6)


# --- TorchScript ----------------------------------------------------------------------------------

def test_torchscript_loads(tmp_path):
    net = _bn_net()
    path = tmp_path / "scripted.pt"
    torch.jit.script(net).save(str(path))

    model = load_model(path)

    x = torch.randn(5, 4)
    assert model.kind == "torchscript" and not model.module.training
    assert torch.allclose(model.module(x), net(x), atol=1e-6)
    assert model.parameters == sum(p.numel() for p in net.parameters())


# --- files that are none of the formats ----------------------------------------------------------

def _truncated_pt2(tmp_path, pt2):
    data = pt2.read_bytes()
    return data[: len(data) // 2]


def _truncated_safetensors(tmp_path, pt2):
    buf = tmp_path / "full.safetensors"
    save_file(TinyNet().state_dict(), str(buf))
    data = buf.read_bytes()
    return data[:-5]


BAD_FILES = {
    "random_bytes": lambda tmp_path, pt2: b"\x00\x01not a model at all" * 10,
    "empty": lambda tmp_path, pt2: b"",
    "text": lambda tmp_path, pt2: b"x,y,group\n1,0,a\n",
    "truncated_zip": _truncated_pt2,
    "unrelated_zip": lambda tmp_path, pt2: _zip_of({"stuff/readme.txt": b"hello"}),
    "truncated_safetensors": _truncated_safetensors,
}


def _zip_of(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_unreadable_files_are_named_and_explained(case, pt2, tmp_path):
    path = tmp_path / f"{case}.pt"
    path.write_bytes(BAD_FILES[case](tmp_path, pt2))
    with pytest.raises(InputError) as err:
        load_model(path, arch="mlp")
    msg = str(err.value)
    assert msg.startswith(f"{path}: expected") and "\n" not in msg
    if case != "truncated_safetensors":
        assert ".safetensors" in msg and ".pt2" in msg and "TorchScript" in msg


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(InputError, match=r"nope\.pt2: expected a model file, .*\.safetensors.*; found no such file"):
        load_model(tmp_path / "nope.pt2")
    with pytest.raises(InputError, match="found a directory"):
        load_model(tmp_path)


# --- in-memory models, arguments -----------------------------------------------------------------

def test_from_module_puts_it_in_eval_and_fingerprints_its_weights():
    net = _bn_net().train()
    model = LoadedModel.from_module(net, name="demo")

    assert (model.kind, model.name, model.path) == ("module", "demo", None)
    assert not net.training and model.module is net
    assert model.parameters == sum(p.numel() for p in net.parameters())
    assert model.sha256 == LoadedModel.from_module(_bn_net(), name="other").sha256
    with torch.no_grad():
        net[0].weight[0, 0] += 1
    assert model.sha256 != LoadedModel.from_module(net, name="demo").sha256
    with pytest.raises(TypeError, match="torch.nn.Module"):
        LoadedModel.from_module("not a module", name="x")


def test_parse_arch_args():
    assert parse_arch_args(["in_features=14", "hidden=64,32", "one=8,", "dropout=0.1", "flag=True",
                            "off=false", "mode=fan_in"]) == {
        "in_features": 14, "hidden": (64, 32), "one": (8,), "dropout": 0.1, "flag": True, "off": False,
        "mode": "fan_in"}
    assert parse_arch_args([]) == {}


@pytest.mark.parametrize("item", ["hidden", "=3", "2x=3", "hidden=", "hidden=64,abc"])
def test_parse_arch_args_refuses_bad_items(item):
    with pytest.raises(InputError, match="--arch-arg"):
        parse_arch_args([item])


def test_parse_arch_args_refuses_a_repeated_key():
    with pytest.raises(InputError, match="given twice"):
        parse_arch_args(["a=1", "a=2"])
