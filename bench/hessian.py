"""Hessian-vector product cost, as a multiple of one batched forward+backward measured in the same run.

    .venv/bin/python bench/hessian.py [--quick] [--rows 256] [--repeats 5] [--threads 2]

For each model (ResNet-18 on CIFAR-shaped input, randomly initialised; the MNIST demo's SmallCNN with
its weights), on the same ``--rows`` inputs:

- fwd+bwd         one forward and backward pass of the mean loss (the baseline, 1.00x);
- double backward the PyHessian reference: forward, first backward with create_graph, second backward;
- db, graph kept  the same with the first-order graph built once and reused, cost per product (what
                  a power iteration or Hutchinson pays after its first product when the rows fit one chunk);
- fwd-over-rev    torch.func.jvp of torch.func.grad (functional_call), per product;
- rev-over-fwd    torch.func.grad of torch.func.jvp (the directional derivative), per product;
- Hutchinson      cost per probe of ``fairprune.engine.diagnose.trace`` with the default method ("auto": double
                  backward with the kept graph when the rows fit one chunk, as here; the method is printed),
                  Rademacher probes and dot products included.

Timings are medians over interleaved repeats (wall clock; process CPU time beside it, which is steadier
on a shared machine). Also printed: the largest relative difference between the two HVPs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def _measure(fns: dict, repeats: int) -> dict[str, tuple[float, float]]:
    for f in fns.values():   # warm-up
        f()
    wall = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t, c = time.perf_counter(), time.process_time()
            f()
            wall[k].append(time.perf_counter() - t)
            cpu[k].append(time.process_time() - c)
    return {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in fns}


def bench_model(name: str, module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int, probes: int):
    from fairprune.engine.diagnose import HessianOperator, trace
    from fairprune.engine.diagnose._hessian import _norm, _axpy
    from fairprune.engine.evaluate import loss_fn

    module.eval()
    op_db = HessianOperator(module, x, y, method="double_backward", cache=False)
    op_cached = HessianOperator(module, x, y, method="double_backward", cache=True, chunk_size=len(x))
    op_fr = HessianOperator(module, x, y, method="forward_over_reverse")
    op_rf = HessianOperator(module, x, y, method="reverse_over_forward")
    op_auto = HessianOperator(module, x, y, method="auto", chunk_size=len(x))
    v = op_db.randn(torch.Generator().manual_seed(0))

    def fwd_bwd():
        module.zero_grad(set_to_none=True)
        loss_fn(module(x), y).backward()

    a = op_db.matvec(v)
    agree = max(_norm(_axpy(-1.0, a, op.matvec(v))) / _norm(a) for op in (op_fr, op_rf))
    fns = {"fwd+bwd": fwd_bwd, "double backward": lambda: op_db.matvec(v),
           "db, graph kept": lambda: op_cached.matvec(v), "fwd-over-rev": lambda: op_fr.matvec(v),
           "rev-over-fwd": lambda: op_rf.matvec(v),
           f"Hutchinson/probe (auto: {op_auto.method})": lambda: trace(op_auto, probes=probes)}
    res = _measure(fns, repeats)
    hk = [k for k in fns if k.startswith("Hutchinson")][0]
    res[hk] = (res[hk][0] / probes, res[hk][1] / probes)
    base_w, base_c = res["fwd+bwd"]
    print(f"\n{name}: {len(x)} inputs {tuple(x.shape[1:])}, {sum(p.numel() for p in module.parameters()):,} parameters, "
          f"{torch.get_num_threads()} threads; torch.func HVPs vs double backward: max relative difference {agree:.1e}")
    print(f"  {'':<44}{'wall ms':>10}{'ratio':>8}{'cpu ms':>10}{'ratio':>8}")
    for k, (w, c) in res.items():
        print(f"  {k:<44}{1000 * w:10.1f}{w / base_w:7.2f}x{1000 * c:10.1f}{c / base_c:7.2f}x")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="SmallCNN only, fewer repeats")
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--probes", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from fairprune.data.demos import demo_dataset, demo_model

    data = demo_dataset("mnist").part("test")
    rows = torch.arange(min(args.rows, data.n))
    bench_model("SmallCNN (MNIST demo)", demo_model("mnist"), data.to_float(data.x[rows]), data.y[rows],
                max(2, args.repeats // 2) if args.quick else args.repeats, args.probes)
    if not args.quick:
        import torchvision

        x = torch.rand(args.rows, 3, 32, 32)
        y = torch.randint(0, 10, (args.rows,))
        bench_model("ResNet-18 (CIFAR-shaped, random init)", torchvision.models.resnet18(num_classes=10), x, y,
                    args.repeats, args.probes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
