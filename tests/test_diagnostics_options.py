"""--diagnostics-option KEY=VALUE: per-factor settings from the command line (hessian=false skips the Hessian, the
costliest factor; bad keys and values are input errors before any work)."""

from __future__ import annotations

import json

import pytest

from fairprune.run.cli import main


def test_hessian_false_skips_only_the_hessian(tmp_path, capsys):
    out = tmp_path / "r.json"
    rc = main(["audit", "--demo", "mnist", "--sparsity", "0.9", "--diagnostics-option", "hessian=false",
               "--diagnostics-option", "hessian_rows=16", "--out", str(out), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    r = json.loads(out.read_text())
    for diag in [r["diagnostics"]["dense"], *r["diagnostics"]["levels"]]:
        for g, d in diag.items():
            assert d["hessian_max_eig"] is None and d["hessian_trace"] is None
            assert d["grad_norm_mean"] > 0 and -1 <= d["margin_mean"] <= 1
    assert any("hessian=false" in w for w in r["warnings"])
    assert r["diagnostics"]["details"]["config"]["hessian"] is False


@pytest.mark.parametrize("option, needle", [
    ("hessian", "expected KEY=VALUE"),
    ("hesian=false", "unknown diagnostics option(s) ['hesian']"),
    ("hessian_rows=0", "hessian_rows must be a whole number >= 1"),
    ("hessian=maybe", "hessian must be true or false"),
])
def test_bad_options_are_input_errors(option, needle, tmp_path, capsys):
    rc = main(["audit", "--demo", "mnist", "--sparsity", "0.9", "--diagnostics-option", option,
               "--out", str(tmp_path / "r.json"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert needle in err
    assert not (tmp_path / "r.json").exists()
