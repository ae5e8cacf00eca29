"""The CUDA paths, checked in one short run where a GPU is lent (``make gpu-check``; skips without one).

    .venv/bin/python bench/gpu_check.py [--quick]

Each check prints PASS / FAIL / REFUSED with its figures and the card, and the script exits 1 if any
check failed (a refusal with a clear reason is not a failure). What it covers, all on the GPU:

1. mixed precision: the MNIST demo audited with ``--amp auto``; the ``precision`` section's agreement;
2. out-of-memory back-off: a model that asks for ~1 GiB per row, evaluated at batch 4096: the batch is
   halved on real CUDA out-of-memory errors until it fits, and the predictions equal a small-batch run;
3. compression: int8_weight / int8_dynamic / int4_weight / fp16 / nm_2_4 on an MLP, their size and
   latency against the dense model, and whether the 2:4 sparse kernel ran;
4. the issue's end-to-end goal: a 5-level ResNet-18 audit of 10,000 CIFAR-shaped images with default
   diagnostics (goal on one H100: under 60 s);
5. Ray: the MNIST demo on a local Ray cluster with the GPU, equal to the local run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS: list[tuple[str, str, str]] = []
#: "cuda"; "cpu" only for --dry-run (the same code paths on the CPU, to check this script itself)
DEVICE = "cuda"


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def report(name: str, status: str, detail: str) -> None:
    RESULTS.append((name, status, detail))
    print(f"{status:<8} {name:<22} {detail}", flush=True)


def check(name):
    def wrap(fn):
        def run(*a, **kw):
            t = time.perf_counter()
            try:
                fn(*a, **kw)
            except Exception as err:  # noqa: BLE001 - a check's failure is reported, the others still run
                report(name, "FAIL", f"{type(err).__name__}: {str(err).splitlines()[0][:300]}")
            finally:
                print(f"         ({time.perf_counter() - t:.1f} s)", flush=True)
        return run
    return wrap


@check("mixed precision")
def amp_check():
    from fairprune.engine.audit import AuditSpec, run_spec

    r = run_spec(AuditSpec(demo="mnist", sparsities=(0.5, 0.9), device=DEVICE,
                           amp="auto" if DEVICE == "cuda" else "bfloat16"))
    p = r.sections.get("precision")
    if p is None:
        raise AssertionError(f"no 'precision' section on {DEVICE}")
    report("mixed precision", "PASS", f"{p['dtype']} used={p['used']}, agreement {p['prediction_agreement']:.4%}, "
           f"largest group change {p['max_group_accuracy_change']:.4%}, largest loss change {p['max_loss_change']:.2e}")


class _Hungry(nn.Module):
    """A linear classifier that also allocates ~1 GiB per row on the GPU (a real out-of-memory at large batches)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(8, 3)

    def forward(self, x):
        scratch = torch.empty(x.shape[0], 2 ** 28, device=x.device)     # 1 GiB of float32 per row
        return self.lin(x) + 0 * scratch[:, :1]


@check("out-of-memory back-off")
def oom_check():
    from fairprune.data import GroupedDataset
    from fairprune.engine.evaluate import BatchSize, evaluate
    from fairprune.zoo import LoadedModel

    if DEVICE != "cuda":
        report("out-of-memory back-off", "SKIPPED", "needs a GPU to run out of")
        return
    n = 4096
    g = torch.Generator().manual_seed(0)
    data = GroupedDataset(x=torch.randn(n, 8, generator=g), y=torch.randint(0, 3, (n,), generator=g),
                          group=np.array(["a", "b"])[np.arange(n) % 2], name="oom", sha256="0" * 64)
    model = LoadedModel.from_module(_Hungry().cuda(), name="hungry")
    bs = BatchSize(n, "cuda")
    got = evaluate(model, data, batch_size=bs, device="cuda")
    ref = evaluate(model, data, batch_size=4, device="cuda")
    if not bs.backoffs:
        raise AssertionError(f"batch {n} x 1 GiB did not run out of memory on this card")
    if not np.array_equal(got.pred, ref.pred):
        raise AssertionError("predictions after the back-off differ from a small-batch run")
    report("out-of-memory back-off", "PASS", f"ran out at {bs.backoffs}, settled at {bs.value}; predictions equal")


@check("compression")
def compression_check(quick: bool):
    from fairprune.engine.compress import apply_variant
    from fairprune.engine.evaluate import model_outputs
    from fairprune.zoo import LoadedModel

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1024, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(),
                          nn.Linear(4096, 10)).eval().to(DEVICE)
    x = torch.randn(256, 1024, device=DEVICE)
    lm = LoadedModel.from_module(model, name="mlp")

    def timed(m):
        with torch.inference_mode():
            for _ in range(3):
                model_outputs(m, x)
            _sync()
            t = time.perf_counter()
            for _ in range(10 if quick else 50):
                model_outputs(m, x)
            _sync()
        return (time.perf_counter() - t) / (10 if quick else 50) * 1000

    dense_ms = timed(lm)
    for name in ("int8_weight", "int8_dynamic", "int4_weight", "fp16", "nm_2_4", "nm_2_4+int8_dynamic"):
        try:
            v = apply_variant(lm, name, device=DEVICE, example=x)
        except Exception as err:  # noqa: BLE001 - a refusal is reported with its reason
            report(f"compress {name}", "REFUSED", str(err).splitlines()[0][:300])
            continue
        ms = timed(v.model)
        extra = ""
        nm = v.details.get("nm_2_4")
        if nm is not None:
            extra = f", 2:4 sparse kernel {nm.get('sparse_kernel')}"
        report(f"compress {name}", "PASS", f"quantized {v.quantized_fraction:.2f}, {ms:.3f} ms vs dense "
               f"{dense_ms:.3f} ms ({ms / dense_ms:.2f}x){extra}")


@check("audit goal")
def audit_goal(quick: bool):
    import torchvision

    from fairprune.engine.audit import audit
    from fairprune.data import GroupedDataset
    from fairprune.zoo import LoadedModel

    n = (2000 if quick else 10_000) if DEVICE == "cuda" else 64
    g = torch.Generator().manual_seed(0)
    data = GroupedDataset(x=torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                          y=torch.randint(0, 10, (n,), generator=g), group=np.array(["a", "b", "c"])[np.arange(n) % 3],
                          name="cifar-shaped", sha256="0" * 64)
    torch.manual_seed(0)
    lm = LoadedModel.from_module(torchvision.models.resnet18(num_classes=10).eval(), name="resnet18")
    _sync()
    t = time.perf_counter()
    audit(lm, data, sparsities=[0.5, 0.7, 0.8, 0.9, 0.95], diagnostics=True, device=DEVICE)
    _sync()
    s = time.perf_counter() - t
    status = "PASS" if quick or DEVICE != "cuda" or s < 60 else "FAIL"
    report("audit goal", status, f"5-level ResNet-18 audit with diagnostics, {n:,} images: {s:.1f} s "
           f"(goal on one H100 with 10,000: < 60 s)")


@check("ray on the GPU")
def ray_check():
    import ray

    from fairprune.engine.audit import AuditSpec
    from fairprune.run.executors import get_executor

    spec = AuditSpec(demo="mnist", sparsities=(0.5, 0.9), device=DEVICE, amp="off")
    local = get_executor("local").run(spec)
    ray.init(num_cpus=2, num_gpus=1 if DEVICE == "cuda" else 0, include_dashboard=False, log_to_driver=False)
    try:
        with get_executor("ray", address="auto") as ex:
            remote = ex.run(spec)
    finally:
        ray.shutdown()
    if remote.to_json() != local.to_json():
        raise AssertionError("the Ray result differs from the local one")
    report("ray on the GPU", "PASS", "2 levels as GPU tasks; result equal to the local run")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2,000 images for the audit goal; fewer timing rounds")
    ap.add_argument("--dry-run", action="store_true", help="the same code paths on the CPU (checks this script)")
    args = ap.parse_args(argv)
    global DEVICE
    if args.dry_run:
        DEVICE = "cpu"
    elif not torch.cuda.is_available():
        print("no CUDA device: nothing to check here (run it where a GPU is lent; --dry-run tries it on the CPU)")
        return 0
    name = torch.cuda.get_device_name(0) if DEVICE == "cuda" else "CPU (dry run)"
    print(f"device: {name}, torch {torch.__version__}", flush=True)
    amp_check()
    oom_check()
    compression_check(args.quick)
    audit_goal(args.quick)
    ray_check()
    failed = [r for r in RESULTS if r[1] == "FAIL"]
    print(f"\n{len(RESULTS) - len(failed)} of {len(RESULTS)} checks passed or refused with a reason; "
          f"{len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
