"""Reproduces the demo weights in this folder from the demo data: seeded, on CPU, in a few minutes.

    python models/train_demo.py [mnist|adult|all] [--out DIR]

Runs top to bottom: build the demo dataset with fairprune, train on its 'train' rows with a fixed
seed and a fixed data order, print per-group accuracy on the 'test' rows, write
``<out>/<demo weights file>`` with safetensors (buffers included: BatchNorm statistics, and the MLP's
standardisation mean/std). ``--out`` defaults to fairprune's models folder (FAIRPRUNE_MODELS or
<repo>/models). Same torch build and machine -> the same bytes; another CPU may differ in the last
bits of float arithmetic, and so in the weights' hash, but not in the reported accuracies beyond noise.
"""

import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

try:
    import fairprune  # noqa: F401  (installed, usually editable)
except ImportError:  # a plain checkout: use the package next to this folder
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fairprune.data.demos import demo_dataset, get_demo
from fairprune.zoo import create_model

# ---- config -----------------------------------------------------------------------------------
SEED = 0
CONFIG = {
    # mnist: small_cnn on 3,500 digits, 5% of them the inverted-colour minority.
    "mnist": dict(epochs=10, batch_size=64, lr=1e-3, weight_decay=0.0),
    # adult: mlp(96 -> 64 -> 32 -> 2) on 30,147 rows; standardisation stats from the train rows.
    "adult": dict(epochs=10, batch_size=256, lr=1e-3, weight_decay=0.0),
}
# -----------------------------------------------------------------------------------------------


def train(name: str, out_dir: Path | None) -> None:
    cfg = CONFIG[name]
    info = get_demo(name)
    data = demo_dataset(name)
    tr, te = data.part("train"), data.part("test")
    torch.manual_seed(SEED)
    model = create_model(info.arch, **info.arch_args)
    if hasattr(model, "mean") and hasattr(model, "std"):
        # The MLP standardises its own input: fit the scaling on the train rows only. A constant
        # column (std 0) keeps std 1, so an unseen value cannot blow up.
        xf = tr.to_float(tr.x)
        std = xf.std(dim=0)
        model.mean.copy_(xf.mean(dim=0))
        model.std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))

    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    order = torch.Generator().manual_seed(SEED)   # the data order, independent of anything else drawing numbers
    t0 = time.time()
    for epoch in range(cfg["epochs"]):
        model.train()
        perm = torch.randperm(tr.n, generator=order)
        total = 0.0
        for start in range(0, tr.n, cfg["batch_size"]):
            idx = perm[start:start + cfg["batch_size"]]
            loss = F.cross_entropy(model(tr.to_float(tr.x[idx])), tr.y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        print(f"{name} epoch {epoch + 1}/{cfg['epochs']}: train loss {total / tr.n:.4f} ({time.time() - t0:.0f}s)")
    model.eval()

    acc = per_group_accuracy(model, te)
    print(f"{name}: test accuracy by {' & '.join(data.group_columns)} (n):")
    for g, (n, a) in acc.items():
        print(f"  {g:<24} {n:>6}  {a:.4f}")

    path = (out_dir / info.weights.name) if out_dir is not None else info.weights
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path))
    print(f"{name}: wrote {path} ({path.stat().st_size:,} bytes)")


@torch.no_grad()
def per_group_accuracy(model: torch.nn.Module, data) -> dict[str, tuple[int, float]]:
    pred = torch.cat([model(xb).argmax(1) for xb, _ in data.batches(1024)])
    correct = (pred == data.y).numpy()
    out = {"overall": (data.n, float(correct.mean()))}
    for g in data.group_names:
        m = data.group == g
        out[g] = (int(m.sum()), float(correct[m].mean()))
    return out


if __name__ == "__main__":
    args = sys.argv[1:]
    out = None
    if "--out" in args:
        i = args.index("--out")
        out = Path(args[i + 1])
        del args[i:i + 2]
    which = args[0] if args else "all"
    if which not in (*CONFIG, "all"):
        sys.exit(f"usage: python models/train_demo.py [{'|'.join(CONFIG)}|all] [--out DIR]; received {which!r}")
    torch.use_deterministic_algorithms(True)
    for name in CONFIG if which == "all" else [which]:
        train(name, out)
