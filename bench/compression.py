"""Size and latency of each compression variant against the dense model, measured in the same run.

    .venv/bin/python bench/compression.py [--quick] [--size 128] [--batch 16] [--rounds 5]

Models: the MNIST demo's SmallCNN (its shipped weights, MNIST test rows) and torchvision's ResNet-18
(random weights, random images of ``--size`` pixels). Devices: the CPU always, the GPU whenever torch
finds one (named by its card). For each variant (fairprune.engine.compress): ``size`` = safetensors bytes of
the compressed model as it would ship (fairprune.engine.compress.variant_size) against the dense state_dict's
(fairprune.engine.footprint.dense_size); ``latency`` = median ms of one forward pass of one batch. Dense and
variant are timed alternately, ``--rounds`` times (each a median over repeats), and the ratio printed is
the median of the per-round ratios, so a busy machine slows both alike. A variant the device cannot run
(int4 on the CPU) is printed with the reason, not skipped silently.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = ("int8_weight", "int8_dynamic", "int8_static", "int4_weight", "fp16", "bf16", "nm_2_4",
            "nm_2_4+int8_dynamic")


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"CPU ({torch.get_num_threads()} threads)"


def _models(size: int, batch: int, quick: bool):
    from fairprune.data.demos import demo_dataset, demo_model
    from fairprune.zoo import create_model

    data = demo_dataset("mnist").part("test")
    x_mnist = data.to_float(data.x[:batch])
    calib_mnist = data.to_float(data.x[batch:batch + 256])
    yield "small_cnn (mnist demo)", demo_model("mnist").eval(), x_mnist, calib_mnist
    torch.manual_seed(0)
    s = 64 if quick else size
    yield f"resnet18 ({s}x{s}, random)", create_model("resnet18", num_classes=10).eval(), \
        torch.rand(batch, 3, s, s), torch.rand(64 if quick else 128, 3, s, s)


def _latency(forward, x, repeats):
    from fairprune.engine.footprint import measure_latency

    return measure_latency(forward, x, repeats=repeats, warmup=2, budget_s=5.0)


def bench(name, module, x, calib, dev, rounds, repeats):
    from fairprune.engine.compress import Calibration, apply_variant, variant_size
    from fairprune.core.errors import InputError
    from fairprune.engine.evaluate import model_outputs
    from fairprune.engine.footprint import dense_size
    from fairprune.zoo import LoadedModel

    dense = LoadedModel.from_module(module.to(dev), name=name)
    x, calib = x.to(dev), calib.to(dev)
    dense_bytes = dense_size(dense.module)
    print(f"\n{name} on {_device_name(dev)}: dense {dense_bytes:,} bytes")
    print(f"  {'variant':<22}{'bytes':>12}{'x dense':>9}{'ms':>10}{'dense ms':>10}{'x dense':>9}  backend")
    for spec in VARIANTS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                v = apply_variant(dense, spec, device=dev, example=x,
                                  calibration=Calibration(calib, {"rows": int(calib.shape[0])}))
        except InputError as err:
            print(f"  {spec:<22}refused: {err}")
            continue
        size, _ = variant_size(v.module, nm=v.spec.has_nm)
        ratios, v_ms, d_ms = [], [], []
        for _ in range(rounds):
            d = _latency(lambda t: model_outputs(dense, t), x, repeats)
            c = _latency(lambda t: model_outputs(v.model, t), x, repeats)
            d_ms.append(d)
            v_ms.append(c)
            ratios.append(c / d)
        print(f"  {spec:<22}{size:>12,}{size / dense_bytes:>9.3f}{statistics.median(v_ms):>10.2f}"
              f"{statistics.median(d_ms):>10.2f}{statistics.median(ratios):>9.2f}  {v.details.get('backend')}")
        nm = v.details.get("nm_2_4")
        if nm is not None:
            print(f"  {'':<22}2:4 sparse kernel: {nm.get('sparse_kernel')} ({nm.get('sparse_kernel_note')})")
        del v


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="64-pixel ResNet inputs, fewer rounds and repeats")
    ap.add_argument("--size", type=int, default=128, help="ResNet-18 input size in pixels (default 128)")
    ap.add_argument("--batch", type=int, default=16, help="rows per timed batch (default 16)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating dense/variant timing rounds (default 5)")
    args = ap.parse_args(argv)
    rounds = 2 if args.quick else args.rounds
    repeats = 5 if args.quick else 20
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print("compression: size and latency of each variant vs the dense model, measured in the same run "
          f"(latency: median over {rounds} alternating rounds of medians over up to {repeats} passes)")
    for dev in devices:
        for name, module, x, calib in _models(args.size, args.batch, args.quick):
            bench(name, module, x, calib, dev, rounds, repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
