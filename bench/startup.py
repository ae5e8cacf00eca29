"""Whole processes, as a user waits for them: fairprune's commands against plain PyTorch processes doing the
same work, alternated in the same run (best of N each).

    .venv/bin/python bench/startup.py [--repeats 3] [--n 1024]

- ``diagnose``: ``fairprune diagnose`` (per-sample gradient norms and margins, CSV) on ResNet-18 weights and
  N CIFAR-shaped inputs, against a process that imports torch and torchvision, loads the same weights and runs
  one batched forward+backward over the same inputs (batches of 256). Goal: <= 1.2x.
- ``audit``: ``fairprune audit`` with 5 sparsity levels, against a process that loads the weights and evaluates
  the dense model and 5 globally magnitude-pruned copies per group. Goal: <= 1.1x.

Also prints, for each command, what its imports cost (``-X importtime`` of the command's modules), so a
regression in start-up shows as a named module rather than a ratio.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
FAIRPRUNE = str(Path(PY).with_name("fairprune"))
LEVELS = ["0.5", "0.6", "0.7", "0.8", "0.9"]

_LOAD = """
import sys, numpy as np, torch, torchvision
from safetensors.torch import load_file
torch.manual_seed(0)
model = torchvision.models.resnet18(num_classes=10)
model.load_state_dict(load_file(sys.argv[1]))
model.eval()
z = np.load(sys.argv[2])
x, y, g = torch.from_numpy(z["x"]), torch.from_numpy(z["y"]), z["group"]
"""

REF_DIAGNOSE = _LOAD + """
for p in model.parameters():
    p.grad = None
for i in range(0, len(x), 256):
    loss = torch.nn.functional.cross_entropy(model(x[i:i + 256]), y[i:i + 256], reduction="sum")
    loss.backward()
"""

REF_AUDIT = _LOAD + """
def evaluate(m):
    with torch.no_grad():
        pred = torch.cat([m(x[i:i + 256]).argmax(1) for i in range(0, len(x), 256)])
    right = (pred == y).numpy()
    return {int(k): float(right[g == k].mean()) for k in np.unique(g)}
dense = {k: v.clone() for k, v in model.state_dict().items()}
prunable = [n for n, mod in model.named_modules() if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear))]
evaluate(model)
for s in (0.5, 0.6, 0.7, 0.8, 0.9):
    model.load_state_dict(dense)
    weights = [model.get_submodule(n).weight for n in prunable]
    scores = torch.cat([w.detach().abs().flatten() for w in weights])
    k = int(s * scores.numel())
    cut = torch.kthvalue(scores, k).values
    with torch.no_grad():
        for w in weights:
            w.mul_((w.abs() > cut).to(w.dtype))
    evaluate(model)
"""


def make_inputs(folder: Path, n: int) -> tuple[Path, Path]:
    import numpy as np
    import torch
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    weights = folder / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
    rng = np.random.default_rng(0)
    data = folder / "cifar_shaped.npz"
    np.savez(data, x=rng.random((n, 3, 32, 32), dtype=np.float32), y=rng.integers(0, 10, n),
             group=rng.integers(0, 4, n))
    return weights, data


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    elapsed = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return elapsed


def import_cost(cmd: list[str]) -> list[tuple[float, str]]:
    """The slowest top-level imports a command pays, from ``python -X importtime``."""
    proc = subprocess.run([PY, "-X", "importtime", *cmd], capture_output=True, text=True, cwd=ROOT)
    rows = []
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = line.split("|")
            if not name.startswith("  "):            # top level only: what the command itself imported
                try:
                    rows.append((int(cumulative) / 1e6, name.strip()))
                except ValueError:
                    continue
    return sorted(rows, reverse=True)[:5]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n", type=int, default=1024)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights, data = make_inputs(tmp, args.n)
        model = ["--model", str(weights), "--arch", "resnet18", "--num-classes", "10", "--data", str(data)]
        cases = {
            "diagnose": ([FAIRPRUNE, "diagnose", *model, "--out", str(tmp / "s.csv"), "--quiet"],
                         [PY, "-c", REF_DIAGNOSE, str(weights), str(data)], 1.2,
                         "per-sample gradient norms vs one batched forward+backward"),
            "audit": ([FAIRPRUNE, "audit", *model, "--sparsity", *LEVELS, "--out", str(tmp / "a.json")],
                      [PY, "-c", REF_AUDIT, str(weights), str(data)], 1.1,
                      "5-level sweep vs dense + 5 pruned evaluations"),
        }
        print(f"whole processes, ResNet-18, {args.n} CIFAR-shaped inputs, CPU, best of {args.repeats} (alternated)")
        for name, (cmd, ref, goal, what) in cases.items():
            ours, base = [], []
            for _ in range(args.repeats):
                base.append(timed(ref))
                ours.append(timed(cmd))
            ratio = min(ours) / min(base)
            verdict = "goal met" if ratio <= goal else "goal NOT met"
            print(f"{name:<9} fairprune {min(ours):6.2f} s   reference {min(base):6.2f} s   ratio {ratio:4.2f}x "
                  f"(goal <= {goal}x: {verdict})   {what}")
            module = "fairprune.run.cli"
            slow = import_cost(["-c", f"import sys; from {module} import main; sys.argv=['fairprune', *sys.argv[1:]]; "
                                      "sys.exit(main())", *cmd[1:]])
            print("          slowest imports: " + ", ".join(f"{n} {s:.2f} s" for s, n in slow))
    return 0


if __name__ == "__main__":
    sys.exit(main())
