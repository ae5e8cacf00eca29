"""Per-sample gradient norms vs one batched forward+backward over the same inputs (same run, medians).

    .venv/bin/python bench/gradnorm.py [--quick] [--n 1024] [--batch-size 256] [--repeats 5] [--only NAME ...]

For each model: ``fwd+bwd`` is one batched forward and ``loss.sum().backward()`` with parameter
gradients over all N inputs (batch by batch); ``fast`` is ``per_sample_grad_norms`` over the same
inputs; ``loop`` (one forward+backward per sample) and ``vmap`` (torch.func.vmap of grad over
functional_call) run on a subset and are scaled to N. Every timing is interleaved with the others
and the median over repeats is reported, as ratios to fwd+bwd measured in the same process. The
largest relative difference between fast and loop on the subset is printed as a check. ``fast+masks``
is ``fast`` on the model with 90% of its conv/linear weights masked out (a pruned model). ``fast/loop`` is
the speed-up of the fast path over the per-sample loop. The sequence models (``vit_tiny``: torchvision's
VisionTransformer, 2 layers, on 32x32 images; ``text_tf``: int64 token ids through nn.Embedding, learned
positions and a 2-layer nn.TransformerEncoder with a padding mask) exercise attention, sequence-first
layouts and parameters used directly in forward; any parameter that falls back to the loop is named.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def plain_cnn(num_classes: int = 10) -> nn.Module:
    """A VGG-style CNN for 32x32 inputs: 3x3 conv, BatchNorm, ReLU blocks; max-pool; one linear head."""
    layers: list[nn.Module] = []
    width = 3
    for c in (32, 32, "M", 64, 64, "M", 128, 128, "M"):
        if c == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(width, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            width = c
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes)]
    return nn.Sequential(*layers)


def _randomise_bn(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial running statistics and affine parameters, as a trained model would have."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
                m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model.eval()


def _vmap_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int) -> torch.Tensor:
    from torch.func import functional_call, grad, vmap

    from fairprune.engine.evaluate import loss_fn

    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    buffers = {k: v for k, v in model.named_buffers()}

    def loss_one(p, xi, yi):
        return loss_fn(functional_call(model, (p, buffers), (xi[None],)), yi[None], reduction="sum")

    per = vmap(grad(loss_one), in_dims=(None, 0, 0), chunk_size=chunk)(params, x, y)
    return torch.stack([g.reshape(g.shape[0], -1).square().sum(1) for g in per.values()]).sum(0).sqrt()


class TextTransformer(nn.Module):
    """int64 ids (B, L) -> embedding + learned positions -> 2-layer nn.TransformerEncoder (padding masked) -> head."""

    def __init__(self, vocab: int = 1000, length: int = 32, dim: int = 64, num_classes: int = 10):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim, padding_idx=0)
        self.pos = nn.Parameter(0.02 * torch.randn(1, length, dim))
        layer = nn.TransformerEncoderLayer(dim, 4, 2 * dim, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, ids):
        return self.head(self.enc(self.emb(ids) + self.pos, src_key_padding_mask=ids == 0).mean(1))


def vit_tiny(num_classes: int = 10) -> nn.Module:
    import torchvision

    return torchvision.models.VisionTransformer(image_size=32, patch_size=4, num_layers=2, num_heads=4, hidden_dim=64,
                                                mlp_dim=128, num_classes=num_classes)


def bench_model(name, model, x, y, *, batch_size, repeats, subset, vmap_subset):
    from fairprune.data import GroupedDataset
    from fairprune.engine.diagnose._gradnorm import per_sample_grad_norms, per_sample_grad_norms_reference
    from fairprune.engine.evaluate import loss_fn

    n = x.shape[0]
    data = GroupedDataset(x=x, y=y, group=np.array(["a"] * n, dtype=object), name=name, sha256="")
    params = [p for p in model.parameters() if p.requires_grad]

    def fwd_bwd():
        for start in range(0, n, batch_size):
            for p in params:
                p.grad = None
            loss_fn(model(x[start:start + batch_size]), y[start:start + batch_size], reduction="sum").backward()

    def fast():
        return per_sample_grad_norms(model, data, batch_size=batch_size)

    # a pruned model: 90% of the conv/linear weights masked out (random keep-masks, as magnitude pruning's
    # would be as far as cost goes); masked layers need materialised per-sample gradients
    g = torch.Generator().manual_seed(0)
    masks = {k: torch.rand(p.shape, generator=g) > 0.9 for k, p in model.named_parameters() if p.dim() > 1}

    def fast_masked():
        return per_sample_grad_norms(model, data, batch_size=batch_size, masks=masks)

    def loop():
        return per_sample_grad_norms_reference(model, x[:subset], y[:subset])

    def vm():
        return _vmap_norms(model, x[:vmap_subset], y[:vmap_subset], chunk=min(64, vmap_subset))

    # warm-up and the exactness check (and which parameters, if any, the fast path sends to the loop)
    fwd_bwd()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fast()
    looped = [str(w.message) for w in caught if "per-sample gradient norms:" in str(w.message)]
    print(f"gradnorm {name:<10} fallback: " + ("; ".join(m.split(" are used by")[0] for m in looped) or "none"))
    got = torch.as_tensor(fast()[:subset])
    want = loop()
    rel = float(((got - want).abs() / want.abs().clamp_min(1e-12)).max())
    got_m = torch.as_tensor(fast_masked()[:subset])
    want_m = per_sample_grad_norms_reference(model, x[:subset], y[:subset], masks=masks)
    rel_m = float(((got_m - want_m).abs() / want_m.abs().clamp_min(1e-12)).max())
    candidates = {"fwd+bwd": fwd_bwd, "fast": fast, "fast+masks": fast_masked, "loop": loop}
    try:
        vm()
        candidates["vmap"] = vm
    except Exception as err:  # noqa: BLE001 - torch.func fails on some models; report why, keep going
        print(f"  vmap unavailable on {name}: {type(err).__name__}: {str(err).splitlines()[0][:120]}")
    wall: dict[str, list[float]] = {k: [] for k in candidates}
    cpu: dict[str, list[float]] = {k: [] for k in candidates}
    for _ in range(repeats):
        for key, fn in candidates.items():
            t, c = time.perf_counter(), time.process_time()
            fn()
            wall[key].append(time.perf_counter() - t)
            cpu[key].append(time.process_time() - c)
    scale = {"loop": n / subset, "vmap": n / vmap_subset}
    for label, times in (("wall", wall), ("cpu", cpu)):
        med = {k: statistics.median(v) * scale.get(k, 1.0) for k, v in times.items()}
        base = med["fwd+bwd"]
        parts = [f"fwd+bwd {1000 * base:8.1f} ms"]
        parts += [f"{key} {med[key] / base:5.2f}x" for key in ("fast", "fast+masks", "loop", "vmap") if key in med]
        parts.append(f"fast/loop speed-up {med['loop'] / med['fast']:6.1f}x")
        print(f"gradnorm {name:<10} N={n} batch={batch_size} {label:<4}  " + "   ".join(parts))
    print(f"gradnorm {name:<10} max rel err vs loop: fast {rel:.1e}, fast+masks {rel_m:.1e} (on {subset} samples)")
    return wall


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer inputs and repeats")
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run only these models "
                    "(resnet18, plain_cnn, small_cnn, vit_tiny, text_tf)")
    args = ap.parse_args(argv)
    import torchvision

    from fairprune.zoo.archs import SmallCNN

    torch.set_num_threads(args.threads)
    n, repeats = (256, 3) if args.quick else (args.n, args.repeats)
    subset, vmap_subset = (16, 32) if args.quick else (32, 64)
    print(f"device: CPU ({torch.get_num_threads()} threads), torch {torch.__version__}; ratios are time / one "
          f"batched forward+backward over the same {n} inputs, medians of {repeats} interleaved repeats; loop and "
          f"vmap on {subset} and {vmap_subset} samples, scaled; 'wall' is elapsed time, 'cpu' the process's CPU "
          f"time (steadier on a shared machine)")
    g = torch.Generator().manual_seed(0)
    cifar = torch.rand(n, 3, 32, 32, generator=g)
    mnist = torch.rand(n, 1, 28, 28, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    torch.manual_seed(0)
    ids = torch.randint(1, 1000, (n, 32), generator=g)
    ids[::2, 24:] = 0                                          # every other row padded after 24 tokens
    models = [
        ("resnet18", lambda: _randomise_bn(torchvision.models.resnet18(num_classes=10), 1), cifar),
        ("plain_cnn", lambda: _randomise_bn(plain_cnn(), 2), cifar),
        ("small_cnn", lambda: _randomise_bn(SmallCNN(), 3), mnist),
        ("vit_tiny", lambda: vit_tiny().eval(), cifar),
        ("text_tf", lambda: TextTransformer().eval(), ids),
    ]
    for name, build, x in models:
        if args.only and name not in args.only:
            continue
        model = build()
        bench_model(name, model, x, labels, batch_size=args.batch_size, repeats=repeats, subset=subset,
                    vmap_subset=vmap_subset)
    return 0


if __name__ == "__main__":
    sys.exit(main())
