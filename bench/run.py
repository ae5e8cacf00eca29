"""Benchmarks, each printed as a ratio against a baseline measured in the same run.

    make bench            # or: .venv/bin/python bench/run.py [--quick]

sweep: the cost of a K-level audit as a multiple of one evaluation pass over the same rows. The
pipeline's promise is about K + 1 passes plus the mask computations (no re-loading, no re-export).
Medians over repeats; the device is printed with every number.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"CPU ({torch.get_num_threads()} threads)"


def bench_sweep(name, model, data, levels, dev, repeats):
    from fairprune.engine.audit import audit
    from fairprune.engine.evaluate import evaluate
    from fairprune.zoo import LoadedModel

    lm = LoadedModel.from_module(model, name=name)
    lm.module.to(dev)
    evaluate(lm, data, device=dev)  # warm-up
    t_eval = _median_time(lambda: evaluate(lm, data, device=dev), repeats)
    # size/latency measurement off: this ratio is about evaluation passes and masks
    t_sweep = _median_time(lambda: audit(lm, data, sparsities=levels, device=dev, measure_footprint=False),
                           max(1, repeats // 2))
    k = len(levels)
    print(f"sweep  {name:<22} n={data.n:<6} K={k}  one pass {1000 * t_eval:8.1f} ms   sweep {1000 * t_sweep:9.1f} ms   "
          f"ratio {t_sweep / t_eval:5.2f}x  (ideal ~{k + 1}x + masks)   [{_device_name(dev)}]")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer rows and repeats")
    ap.add_argument("--device", default=None)
    args = ap.parse_args(argv)
    from fairprune.data import GroupedDataset
    from fairprune.data.demos import demo_dataset, demo_model
    from fairprune.engine.evaluate import resolve_device

    dev = resolve_device(args.device)
    repeats = 3 if args.quick else 5
    levels = [0.5, 0.8, 0.9, 0.95]

    data = demo_dataset("mnist").part("test")
    bench_sweep("mnist demo CNN", demo_model("mnist"), data, levels, dev, repeats)

    import torchvision

    n = 512 if args.quick else 2048
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    groups = np.array(["a", "b", "c", "d"])[torch.randint(0, 4, (n,), generator=g).numpy()].astype(object)
    cifar = GroupedDataset(x=x, y=y, group=groups, name="cifar-shaped random", sha256="-")
    torch.manual_seed(0)
    bench_sweep("resnet18 (CIFAR-shaped)", torchvision.models.resnet18(num_classes=10).eval(), cifar, levels, dev,
                max(1, repeats - 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
