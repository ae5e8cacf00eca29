"""The CLI contract: outputs, exit statuses, one-line errors, safe loading, formats end to end."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import save_file

from fairprune.run.cli import main

from conftest import make_table, train_mlp


def run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_input_error(code, err, *fragments):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err
    for f in fragments:
        assert f in lines[0], (f, lines[0])


def test_audit_csv_weights_string_groups(table_files, tmp_path, capsys):
    csv, weights, df, _ = table_files
    out = tmp_path / "r.json"
    code, stdout, err = run(["audit", "--model", weights, "--arch", "mlp", "--num-classes", "3",
                             "--arch-arg", "in_features=4", "--arch-arg", "hidden=32,16",
                             "--data", csv, "--ignore", "sex", "--sparsity", "0.5", "0.9", "--out", out, "--quiet"], capsys)
    assert code == 0, err
    r = json.loads(out.read_text())
    assert r["data"]["groups"] == {"a": int((df.group == "a").sum()), "b": int((df.group == "b").sum())}
    assert [lv["sparsity"] for lv in r["levels"]] == [0.5, 0.9]
    assert r["provenance"]["group_columns"] == ["group"] and r["provenance"]["n_features"] == 4
    assert r["dense"]["overall"]["accuracy"] > 0.8


def test_intersectional_groups_and_table_output(table_files, tmp_path, capsys):
    csv, weights, df, _ = table_files
    out = tmp_path / "r.json"
    code, stdout, err = run(["audit", "--model", weights, "--arch", "mlp", "--num-classes", "3",
                             "--arch-arg", "in_features=4", "--arch-arg", "hidden=32,16", "--data", csv,
                             "--group", "group", "--group", "sex", "--sparsity", "0.7", "--out", out], capsys)
    assert code == 0, err
    r = json.loads(out.read_text())
    expected = df.groupby(["group", "sex"]).size()
    assert r["data"]["groups"] == {f"{g} & {s}": int(n) for (g, s), n in expected.sort_values(ascending=False).items()}
    assert "a & F" in stdout and "violation" in stdout and "At 70% sparsity group" in stdout


def test_same_command_twice_gives_same_json(table_files, tmp_path, capsys):
    csv, weights, _, _ = table_files
    args = ["audit", "--model", weights, "--arch", "mlp", "--num-classes", "3", "--arch-arg", "in_features=4",
            "--arch-arg", "hidden=32,16", "--data", csv, "--ignore", "sex", "--sparsity", "0.6", "--method", "random",
            "--quiet", "--out"]
    assert run(args + [tmp_path / "a.json"], capsys)[0] == 0
    assert run(args + [tmp_path / "b.json"], capsys)[0] == 0
    assert (tmp_path / "a.json").read_text() == (tmp_path / "b.json").read_text()


@pytest.mark.parametrize("mutate,extra,fragments", [
    (lambda df: df.drop(columns=["label"]), [], ["label"]),
    (lambda df: df.drop(columns=["group"]), [], ["group"]),
    (lambda df: df.assign(label=np.where(np.arange(len(df)) == 3, 9, df.label)), [], ["9"]),
    (lambda df: df.assign(f1=np.where(np.arange(len(df)) == 5, np.nan, df.f1)), [], ["f1"]),
    (lambda df: df.assign(note="x"), [], ["note", "--ignore"]),
    (lambda df: df.assign(f4=1.0), [], ["shape"]),
], ids=["missing-label", "missing-group", "label-out-of-range", "nan-feature", "non-numeric", "wrong-shape"])
def test_bad_csv_is_one_line_exit_2(table_files, tmp_path, capsys, mutate, extra, fragments):
    _, weights, df, _ = table_files
    bad = tmp_path / "bad.csv"
    mutate(df.drop(columns=["sex"])).to_csv(bad, index=False)
    code, _, err = run(["audit", "--model", weights, "--arch", "mlp", "--num-classes", "3", "--arch-arg", "in_features=4",
                        "--arch-arg", "hidden=32,16", "--data", bad, "--sparsity", "0.5", "--out", tmp_path / "r.json"] + extra,
                       capsys)
    assert_input_error(code, err, *fragments)
    assert not (tmp_path / "r.json").exists()


def test_npz_unequal_lengths_and_bad_image_zip(table_files, tmp_path, capsys):
    _, weights, _, _ = table_files
    npz = tmp_path / "bad.npz"
    np.savez(npz, x=np.zeros((10, 4), np.float32), y=np.zeros(9, np.int64), group=np.array(["a"] * 10))
    base = ["audit", "--model", weights, "--arch", "mlp", "--num-classes", "3", "--arch-arg", "in_features=4",
            "--arch-arg", "hidden=32,16", "--sparsity", "0.5", "--out", tmp_path / "r.json"]
    code, _, err = run(base + ["--data", npz], capsys)
    assert_input_error(code, err, "bad.npz")
    z = tmp_path / "imgs.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("metadata.csv", "path,label,group\nimg0.png,0,a\n")
        f.writestr("img0.png", b"not a png at all")
    code, _, err = run(base + ["--data", z], capsys)
    assert_input_error(code, err, "img0.png")


def test_model_errors(table_files, tmp_path, capsys):
    csv, weights, _, model = table_files
    base = ["audit", "--data", csv, "--ignore", "sex", "--sparsity", "0.5", "--out", tmp_path / "r.json"]
    code, _, err = run(base + ["--model", weights], capsys)
    assert_input_error(code, err, "--arch")
    code, _, err = run(base + ["--model", weights, "--arch", "no_such_net"], capsys)
    assert_input_error(code, err, "no_such_net", "mlp")
    code, _, err = run(base + ["--model", tmp_path / "missing.pt2"], capsys)
    assert_input_error(code, err, "missing.pt2")
    code, _, err = run(base + ["--model", weights, "--arch", "mlp", "--num-classes", "3", "--arch-arg", "in_features=4",
                               "--arch-arg", "hidden=32,16", "--method", "nope"], capsys)
    assert_input_error(code, err, "nope", "global_magnitude")
    code, _, err = run(["audit", "--data", csv, "--model", weights, "--sparsity", "2", "--out", tmp_path / "r.json"], capsys)
    assert_input_error(code, err)


class _Hostile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_hostile_pickle_refused_and_never_runs(table_files, tmp_path, capsys):
    csv, _, _, _ = table_files
    marker = tmp_path / "pwned"
    evil = tmp_path / "model.pt"
    torch.save({"model": _Hostile(str(marker))}, evil)
    code, _, err = run(["audit", "--model", evil, "--arch", "mlp", "--data", csv, "--sparsity", "0.5",
                        "--out", tmp_path / "r.json"], capsys)
    assert_input_error(code, err)
    assert not marker.exists()
    whole = tmp_path / "whole.pt"
    torch.save(train_mlp(make_table(), epochs=1), whole)
    code, _, err = run(["audit", "--model", whole, "--data", csv, "--sparsity", "0.5", "--out", tmp_path / "r.json"], capsys)
    assert_input_error(code, err, "safetensors")


def test_fixed_batch_pt2_gives_same_numbers_as_dynamic(table_files, tmp_path, capsys):
    csv, _, df, model = table_files
    x = torch.zeros(8, 4)
    fixed, dyn = tmp_path / "fixed.pt2", tmp_path / "dyn.pt2"
    torch.export.save(torch.export.export(model, (x,)), fixed)
    torch.export.save(torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},)), dyn)
    results = []
    for path in (fixed, dyn):
        out = tmp_path / f"{path.stem}.json"
        code, _, err = run(["audit", "--model", path, "--data", csv, "--ignore", "sex", "--sparsity", "0.5",
                            "--batch-size", "64", "--quiet", "--out", out], capsys)
        assert code == 0, err
        results.append(json.loads(out.read_text()))
    # The same rows in batches of 8 (the fixed program's) and of 64: the same predictions, and losses equal up to
    # float summation order (matrix kernels differ by batch size at the 1e-8 level), never dropped or padded rows.
    for a, b in ((results[0]["dense"], results[1]["dense"]),
                 (results[0]["levels"][0], results[1]["levels"][0])):
        for key in ("overall", "groups"):
            ga = a[key] if key == "groups" else {"overall": a[key]}
            gb = b[key] if key == "groups" else {"overall": b[key]}
            assert ga.keys() == gb.keys()
            for g in ga:
                assert {k: v for k, v in ga[g].items() if k not in ("loss", "excessive_loss")} == \
                    {k: v for k, v in gb[g].items() if k not in ("loss", "excessive_loss")}
                assert ga[g]["loss"] == pytest.approx(gb[g]["loss"], rel=1e-6)
    assert results[0]["dense"]["overall"]["n"] == len(df)  # 400 rows: not a multiple of 8 -> padded, not dropped


def test_torchvision_weights_with_bn_and_residuals_npz(tmp_path, capsys):
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=4).eval()
    w = tmp_path / "r18.safetensors"
    save_file(net.state_dict(), str(w))
    rng = np.random.default_rng(0)
    npz = tmp_path / "cifar.npz"
    np.savez(npz, x=rng.random((40, 3, 32, 32)).astype(np.float32), y=rng.integers(0, 4, 40),
             group=rng.integers(0, 2, 40), group_names=np.array(["north", "south"]))
    out = tmp_path / "r.json"
    code, _, err = run(["audit", "--model", w, "--arch", "resnet18", "--num-classes", "4", "--data", npz,
                        "--sparsity", "0.5", "--method", "structured_l1", "--quiet", "--out", out], capsys)
    assert code == 0, err
    r = json.loads(out.read_text())
    assert set(r["data"]["groups"]) == {"north", "south"}
    assert r["levels"][0]["achieved_sparsity"] == pytest.approx(0.5, abs=0.03)


def test_group_label_makes_classes_groups(table_files, tmp_path, capsys):
    csv, weights, df, _ = table_files
    out = tmp_path / "r.json"
    code, _, err = run(["audit", "--model", weights, "--arch", "mlp", "--num-classes", "3", "--arch-arg", "in_features=4",
                        "--arch-arg", "hidden=32,16", "--data", csv, "--ignore", "group", "sex", "--group", "label",
                        "--sparsity", "0.5", "--quiet", "--out", out], capsys)
    assert code == 0, err
    assert set(json.loads(out.read_text())["data"]["groups"]) == {"0", "1", "2"}


def test_models_and_demo_listings(capsys):
    code, out, _ = run(["models"], capsys)
    assert code == 0 and "mlp" in out and "small_cnn" in out and "resnet18" in out
    code, out, _ = run(["demo"], capsys)
    assert code == 0 and "mnist" in out and "adult" in out


def test_internal_error_is_exit_3_one_line(monkeypatch, tmp_path, capsys):
    import fairprune.engine.audit

    def boom(*a, **k):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(fairprune.engine.audit, "audit", boom)
    code, _, err = run(["audit", "--demo", "mnist", "--sparsity", "0.5", "--out", tmp_path / "r.json"], capsys)
    assert code == 3
    assert len(err.strip().splitlines()) == 1 and "internal error" in err and "kaboom" in err and "Traceback" not in err
    with pytest.raises(RuntimeError):
        main(["audit", "--demo", "mnist", "--sparsity", "0.5", "--out", str(tmp_path / "r.json"), "--debug"])


def test_usage_error_is_exit_2_one_line(capsys):
    code, _, err = run(["audit", "--demo", "mnist"], capsys)   # --out missing
    assert_input_error(code, err, "--out")


def test_console_script_demo_audit(tmp_path):
    exe = Path(sys.executable).parent / "fairprune"
    out = tmp_path / "r.json"
    p = subprocess.run([str(exe), "audit", "--demo", "mnist", "--sparsity", "0.9", "--out", str(out)],
                       capture_output=True, text=True, timeout=300, env={**os.environ})
    assert p.returncode == 0, p.stderr
    r = json.loads(out.read_text())
    assert r["levels"][0]["groups"]["inverted"]["accuracy_drop"] > r["levels"][0]["groups"]["standard"]["accuracy_drop"]
    assert "inverted" in p.stdout
