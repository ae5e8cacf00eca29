"""Error rates of fairprune's significance flags and violation interval, by simulation (the README's table).

Each replicate is one audit: rows of groups of fixed sizes, each row one of four kinds (dense right?,
pruned right?) drawn from a multinomial, run through ``compare`` exactly as an audit runs it. Under the
null every group has the same kind probabilities (groups assigned at random): a flag is a false flag and
the true violation is 0. In the power settings one 100-row group loses 30% (or 10%) of its rows
right→wrong against a 3% base rate.

    python bench/calibration.py                      # the current fairprune.engine.metrics
    git show 45b76a1:fairprune/metrics.py > /tmp/old_metrics.py
    python bench/calibration.py --metrics /tmp/old_metrics.py     # the bootstrap/normal test before issue 12

Prints one markdown row per setting. About a minute for 400 replicates on one CPU thread.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np

from fairprune.engine.evaluate import Predictions

SIZES = (2000, 300, 100, 40, 30)
MANY = (1000, 500, 200, 100, 60, 40, 30, 30)


def kinds(flip_rate: float, accuracy: float = 0.85) -> np.ndarray:
    """P(right→right, right→wrong, wrong→right, wrong→wrong): 70% of the changed rows turn wrong."""
    return np.array([accuracy - 0.7 * flip_rate, 0.7 * flip_rate, 0.3 * flip_rate, 1 - accuracy - 0.3 * flip_rate])


def rows(rng, sizes, probs):
    kind = np.concatenate([np.repeat(np.arange(4), rng.multinomial(n, p)) for n, p in zip(sizes, probs)])
    groups = np.concatenate([np.full(n, f"g{j}") for j, n in enumerate(sizes)])
    z = np.zeros(len(kind))
    mk = lambda ok: Predictions(loss=z, pred=np.zeros(len(ok), int), correct=ok, margin=z, num_outputs=3)
    return mk(kind <= 1), mk((kind == 0) | (kind == 2)), np.zeros(len(kind), int), groups


def measure(compare, sizes, probs, reps, target=None):
    rng = np.random.default_rng(0)
    names = [f"g{j}" for j in range(len(sizes))]
    drops = np.array([p[1] - p[2] for p in probs])
    true_v = drops.max() - drops.min()
    false_flag = flagged = covered = rejected = 0
    for r in range(reps):
        out = compare(*rows(rng, sizes, probs), names, seed=r)
        by, (lo, hi) = out[1], out[3]["accuracy"]
        if target is None:
            false_flag += any(m.significant for m in by.values())
        else:
            flagged += by[f"g{target}"].significant
        covered += lo - 1e-12 <= true_v <= hi + 1e-12
        p = getattr(out, "violation_p_value", None)
        rejected += p is not None and p["accuracy"] < 0.05
    return {"false_flag": false_flag / reps, "power": flagged / reps, "cover": covered / reps,
            "p_reject": rejected / reps if hasattr(out, "violation_p_value") else None, "true_v": true_v}


def load(path: str | None):
    if path is None:
        from fairprune.engine import metrics
        return metrics
    text = Path(path).read_text().replace("from .", "from fairprune.")
    spec = importlib.util.spec_from_loader("metrics_under_test", loader=None)
    module = importlib.util.module_from_spec(spec)
    exec(compile(text, path, "exec"), module.__dict__)
    return module


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--metrics", help="a copy of fairprune/engine/metrics.py to measure instead of the installed one")
    ap.add_argument("--reps", type=int, default=400)
    args = ap.parse_args(argv)
    compare = load(args.metrics).compare
    se = np.sqrt(0.05 * 0.95 / args.reps)
    print(f"{args.reps} replicates per row (Monte Carlo SE of a 5% rate: {se:.3f})\n")
    print("| setting | some group flagged (null) / target flagged (power) | violation CI covers the truth "
          "| violation p < 0.05 |")
    print("|---|---|---|---|")
    settings = [(f"null, {'/'.join(map(str, s))} rows, {f:.0%} flips", s, [kinds(f)] * len(s), None)
                for s, f in [(SIZES, 0.01), (SIZES, 0.03), (SIZES, 0.10), (SIZES, 0.20), (MANY, 0.03)]]
    for rw in (0.30, 0.10):
        hit = np.array([0.85 - rw, rw, 0.009, 0.15 - 0.009])
        settings.append((f"power, 100-row group {rw:.0%} right→wrong vs 3%", SIZES,
                         [kinds(0.03), kinds(0.03), hit, kinds(0.03), kinds(0.03)], 2))
    for name, sizes, probs, target in settings:
        t = time.perf_counter()
        r = measure(compare, sizes, probs, args.reps, target)
        flag = r["false_flag"] if target is None else r["power"]
        p = "n/a (none)" if r["p_reject"] is None else f"{r['p_reject']:.3f}"
        print(f"| {name} | {flag:.3f} | {r['cover']:.3f} (true {r['true_v']:.3f}) | {p} |", flush=True)
        print(f"  ({time.perf_counter() - t:.1f}s)", file=sys.stderr)


if __name__ == "__main__":
    main()
