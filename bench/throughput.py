"""Images per second: evaluation and per-sample gradient norms on ResNet-18 and ResNet-50.

    .venv/bin/python bench/throughput.py [--quick] [--n 512] [--size 32]

For each model and device (the CPU always; the GPU whenever torch finds one, named by its card):
``eval`` is one per-group evaluation pass (fairprune.engine.evaluate, full precision), ``eval amp`` the
same with float16 autocast on CUDA (bfloat16 on the CPU), ``gradnorm`` is per_sample_grad_norms.
Baseline in the same run: a bare ``model(x)`` loop over the same batches (``forward``), so each
figure is also printed as a ratio to it. Medians over repeats. Random weights, CIFAR-shaped uint8
images (``--size 224`` for ImageNet-shaped).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _median(fn, dev, repeats):
    times = []
    for _ in range(repeats):
        _sync(dev)
        t = time.perf_counter()
        fn()
        _sync(dev)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _name(dev):
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"


def main(argv=None) -> int:
    import torchvision

    from fairprune.data import GroupedDataset
    from fairprune.engine.diagnose import per_sample_grad_norms
    from fairprune.engine.evaluate import evaluate
    from fairprune.zoo import LoadedModel

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="ResNet-18 only, fewer rows and repeats")
    ap.add_argument("--n", type=int, default=None, help="images (default 512 on CPU, 10000 on GPU)")
    ap.add_argument("--size", type=int, default=32, help="image side (32: CIFAR-shaped, 224: ImageNet-shaped)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    archs = ["resnet18"] if args.quick else ["resnet18", "resnet50"]
    for dev in devices:
        n = args.n or ((128 if args.quick else 512) if dev.type == "cpu" else 10_000)
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (n, 3, args.size, args.size), dtype=torch.uint8, generator=g)
        y = torch.randint(0, 10, (n,), generator=g)
        data = GroupedDataset(x=x, y=y, group=np.array(["a", "b"])[np.arange(n) % 2], name="bench", sha256="0" * 64)
        bs = 128 if dev.type == "cpu" else 512
        for arch in archs:
            torch.manual_seed(0)
            module = getattr(torchvision.models, arch)(num_classes=10).eval().to(dev)
            lm = LoadedModel.from_module(module, name=arch)
            amp = "float16" if dev.type == "cuda" else "bfloat16"

            def forward():
                with torch.inference_mode():
                    for xb, _ in data.batches(bs, dev):
                        module(xb)

            runs = {"forward": forward,
                    "eval": lambda: evaluate(lm, data, batch_size=bs, device=dev),
                    f"eval {amp}": lambda: evaluate(lm, data, batch_size=bs, device=dev, amp=amp),
                    "gradnorm": lambda: per_sample_grad_norms(lm, data, batch_size=bs // 2, device=dev)}
            for fn in runs.values():      # warm-up (cuDNN autotuning, allocator)
                fn()
            times = {k: _median(fn, dev, args.repeats) for k, fn in runs.items()}
            base = times["forward"]
            parts = "   ".join(f"{k} {n / t:8.0f} img/s ({t / base:4.2f}x)" for k, t in times.items())
            print(f"throughput {arch:<9} {args.size}px n={n:<6} {parts}   [{_name(dev)}]", flush=True)
        # the end-to-end goal: a 5-level ResNet-18 audit with diagnostics (default settings) over these
        # images, against one evaluation pass measured in the same run (goal on one H100: 10k images in < 60 s)
        from fairprune.engine.audit import audit

        torch.manual_seed(0)
        module = torchvision.models.resnet18(num_classes=10).eval().to(dev)
        lm = LoadedModel.from_module(module, name="resnet18")
        one = _median(lambda: evaluate(lm, data, batch_size=bs, device=dev), dev, args.repeats)
        t = _median(lambda: audit(lm, data, sparsities=[0.5, 0.7, 0.8, 0.9, 0.95], diagnostics=True, device=dev,
                                  batch_size=bs, measure_footprint=False), dev, 1)
        print(f"audit      resnet18  {args.size}px n={n:<6} 5 levels + diagnostics {t:7.1f} s "
              f"({t / one:5.1f}x one evaluation pass){'   goal on one H100 with n=10000: < 60 s' if dev.type == 'cuda' else ''}"
              f"   [{_name(dev)}]", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
