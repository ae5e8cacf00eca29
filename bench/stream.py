"""An image folder larger than memory: `fairprune audit` streaming it against a bare DataLoader + forward loop.

    .venv/bin/python bench/stream.py [--n 20000] [--batch-size 64] [--workers W] [--channels 16,32]

Makes ``--n`` JPEGs of varied sizes (240-320 px a side, 4 class folders and a metadata.csv with a group column)
once, cached under ``$TMPDIR/fairprune-bench-stream/n<N>`` (not in the repository), then runs, each in a fresh
process on the CPU:

- ``bare``: a ``torch.utils.data.DataLoader`` over the same files (``torchvision.io.decode_image``, then
  ``transforms.v2`` Resize(256, antialias) and CenterCrop(224) in the workers), the same batch size and number of
  workers, and a forward loop (``model(x / 255)``, per-sample loss and prediction) of the same small CNN;
- ``load``: ``fairprune.data.load_dataset`` alone (headers read and every file hashed, nothing decoded: the set
  is streamed, ``$FAIRPRUNE_STREAM_BYTES=0`` so that a small ``--n`` is too);
- ``audit``: ``fairprune audit --resize 256 --crop 224 --sparsity 0.5 --no-footprint`` (the dense model and one
  level: two passes over the set, each decoded again by the DataLoader workers the data layer starts).

For each: wall seconds, images/s, and peak memory, sampled every 0.1 s: the main process's peak RSS (VmHWM) and
the peak proportional set size (PSS) of its whole process tree, DataLoader workers included; and CPU seconds
(user + sys of the process and its workers). Printed ratios: audit seconds per image per pass (its wall time less
the load child's) over the bare loop's seconds per image (goal: <= 1.2), the same in CPU seconds (steadier on a
busy machine), and the audit's peak tree PSS (goal: below 2 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PY = sys.executable
CLASSES = 4
GROUPS = ("north", "south", "east")


# ---- the image set ------------------------------------------------------------------------------------------
def _one_image(args):
    i, folder = args
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(i)
    cls = i % CLASSES
    w, h = (int(v) for v in rng.integers(240, 321, size=2))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    colour = np.array([60 + 45 * cls, 200 - 40 * cls, 90 + 30 * ((i // CLASSES) % 3)], dtype=np.float32)
    wave = np.sin(xx / rng.uniform(6, 30) + rng.uniform(0, 6)) * np.cos(yy / rng.uniform(6, 30))
    img = colour[None, None, :] * (0.6 + 0.4 * wave[..., None]) + rng.normal(0, 12, size=(h, w, 3))
    rel = f"c{cls}/{i:06d}.jpg"
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / rel, format="JPEG", quality=88)
    return rel, cls, GROUPS[(i * 7 + cls) % len(GROUPS)]


def make_set(n: int, base: Path) -> Path:
    folder = base / f"n{n}"
    if (folder / "metadata.csv").is_file():
        return folder
    from multiprocessing import Pool

    for c in range(CLASSES):
        (folder / f"c{c}").mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    with Pool(max(1, min(8, len(os.sched_getaffinity(0))))) as pool:
        rows = pool.map(_one_image, [(i, folder) for i in range(n)], chunksize=64)
    tmp = folder / "metadata.csv.part"
    tmp.write_text("path,label,group\n" + "".join(f"{p},{c},{g}\n" for p, c, g in rows))
    tmp.rename(folder / "metadata.csv")            # last: a half-made set is made again
    size = sum(p.stat().st_size for p in folder.rglob("*.jpg"))
    print(f"made {n} JPEGs ({size / 2**20:.0f} MiB) in {folder} in {time.perf_counter() - t:.0f} s", flush=True)
    return folder


def make_model(path: Path, channels: tuple[int, int]) -> None:
    import torch
    from safetensors.torch import save_file

    from fairprune.zoo.archs import SmallCNN

    torch.manual_seed(0)
    model = SmallCNN(in_channels=3, num_classes=CLASSES, channels=channels, hidden=32)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


# ---- memory of a process tree ---------------------------------------------------------------------------------
def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            continue
    return out


def _kib(path: str, key: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Sampler(threading.Thread):
    """Peak PSS of a process tree and its root's VmHWM, every ``every`` seconds, until the root exits."""

    def __init__(self, proc: subprocess.Popen, every: float = 0.1):
        super().__init__(daemon=True)
        self.proc, self.every = proc, every
        self.peak_pss = self.hwm = 0
        self.max_procs = 1

    def run(self) -> None:
        pid = self.proc.pid
        while self.proc.poll() is None:
            pids = _tree(pid)
            self.max_procs = max(self.max_procs, len(pids))
            self.peak_pss = max(self.peak_pss, sum(_kib(f"/proc/{p}/smaps_rollup", "Pss:") for p in pids))
            self.hwm = max(self.hwm, _kib(f"/proc/{pid}/status", "VmHWM:"))
            time.sleep(self.every)


def measured(cmd: list[str], env: dict) -> dict:
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = Sampler(proc)
    sampler.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - t
    sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)     # the child and its waited-for workers
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{err[-3000:]}")
    report = json.loads(out.strip().splitlines()[-1]) if out.strip().startswith("{") or "\n{" in out else {}
    return dict(report, wall=wall, cpu=cpu, pss_mib=sampler.peak_pss / 1024, hwm_mib=sampler.hwm / 1024,
                processes=sampler.max_procs)


# ---- the children -------------------------------------------------------------------------------------------
def child_bare(folder: Path, model_path: Path, channels, batch_size: int, workers: int) -> None:
    import torch
    import torchvision
    from safetensors.torch import load_file
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms import v2

    from fairprune.zoo.archs import SmallCNN

    rows = [line.split(",") for line in (folder / "metadata.csv").read_text().splitlines()[1:]]

    class Files(torch.utils.data.Dataset):
        def __init__(self):
            self.resize, self.crop = v2.Resize(256, antialias=True), v2.CenterCrop(224)

        def __len__(self):
            return len(rows)

        def __getitem__(self, i):
            path, label, _ = rows[i]
            img = decode_image(torchvision.io.read_file(str(folder / path)), mode=ImageReadMode.RGB)
            return self.crop(self.resize(img)), int(label)

    model = SmallCNN(in_channels=3, num_classes=CLASSES, channels=channels, hidden=32)
    model.load_state_dict(load_file(str(model_path)))
    model.eval()
    loader = torch.utils.data.DataLoader(Files(), batch_size=batch_size, shuffle=False, num_workers=workers,
                                         prefetch_factor=4 if workers else None)
    cpu0, t = _cpu(), time.perf_counter()
    n, right, loss = 0, 0, 0.0
    with torch.inference_mode():
        for x, y in loader:
            logits = model(x.float().div_(255))
            loss += float(torch.nn.functional.cross_entropy(logits.double(), y, reduction="sum"))
            right += int((logits.argmax(1) == y).sum())
            n += len(y)
    seconds = time.perf_counter() - t
    del loader                                   # its workers are reaped, so their CPU time is counted
    print(json.dumps({"images": n, "seconds": seconds, "loop_cpu": _cpu() - cpu0, "accuracy": right / n,
                      "loss": loss / n}))


def _cpu() -> float:
    """User + sys seconds of this process and its reaped children (DataLoader workers)."""
    import resource

    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                   resource.getrusage(resource.RUSAGE_CHILDREN)))


def child_load(folder: Path) -> None:
    from fairprune.data import load_dataset

    t = time.perf_counter()
    data = load_dataset(folder, resize=256, crop=224)
    print(json.dumps({"images": data.n, "seconds": time.perf_counter() - t, "x": repr(data.x)}))


# ---- main ---------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="images in the folder (default 20000)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=None,
                    help="DataLoader workers for both (default: what fairprune picks, min(4, CPUs - 1))")
    ap.add_argument("--channels", default="16,32", help="the small CNN's conv channels (default 16,32)")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "fairprune-bench-stream")
    ap.add_argument("--child", choices=("bare", "load"), help=argparse.SUPPRESS)
    ap.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    channels = tuple(int(c) for c in args.channels.split(","))
    if args.child == "bare":
        child_bare(args.folder, args.model, channels, args.batch_size, args.workers)
        return 0
    if args.child == "load":
        child_load(args.folder)
        return 0

    from fairprune.data._stream import stream_workers

    folder = make_set(args.n, args.cache)
    model = args.cache / f"cnn_{channels[0]}_{channels[1]}.safetensors"
    make_model(model, channels)
    workers = stream_workers(args.n) if args.workers is None else args.workers
    # streamed whatever --n (a 20,000-image set at 224x224 would be anyway: 3 GB decoded, above the 1 GiB default)
    env = dict(os.environ, FAIRPRUNE_STREAM_WORKERS=str(workers), FAIRPRUNE_STREAM_BYTES="0")
    print(f"device: cpu ({platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} CPUs), "
          f"{args.n} JPEGs 240-320 px -> 224x224, batch {args.batch_size}, {workers} DataLoader worker(s), "
          f"SmallCNN channels {channels}", flush=True)

    bare = measured([PY, __file__, "--child", "bare", "--folder", str(folder), "--model", str(model),
                     "--batch-size", str(args.batch_size), "--workers", str(workers), "--channels", args.channels],
                    env)
    print(f"bare DataLoader + forward: {bare['images'] / bare['seconds']:.0f} images/s ({bare['seconds']:.1f} s "
          f"loop, {bare['wall']:.1f} s with start-up), peak RSS {bare['hwm_mib']:.0f} MiB, tree PSS "
          f"{bare['pss_mib']:.0f} MiB", flush=True)
    load = measured([PY, __file__, "--child", "load", "--folder", str(folder)], env)
    print(f"load_dataset alone: {load['seconds']:.1f} s ({load['wall']:.1f} s with start-up), peak RSS "
          f"{load['hwm_mib']:.0f} MiB; x = {load['x']}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "audit.json"
        cmd = [PY, "-m", "fairprune", "audit", "--model", str(model), "--arch", "small_cnn", "--num-classes",
               str(CLASSES), "--arch-arg", "in_channels=3", "--arch-arg", f"channels={args.channels}",
               "--arch-arg", "hidden=32", "--data", str(folder), "--resize", "256", "--crop", "224",
               "--sparsity", "0.5", "--no-footprint", "--batch-size", str(args.batch_size), "--device", "cpu",
               "--quiet", "--out", str(out)]
        audit = measured(cmd, env)
        result = json.loads(out.read_text())
    passes = 2
    per_image = (audit["wall"] - load["wall"]) / (passes * args.n)
    bare_per_image = bare["seconds"] / bare["images"]
    print(f"fairprune audit (dense + 1 level): {audit['wall']:.1f} s, {1 / per_image:.0f} images/s per pass "
          f"after loading, "
          f"peak RSS {audit['hwm_mib']:.0f} MiB, tree PSS {audit['pss_mib']:.0f} MiB "
          f"(processes at most: {audit['processes']}); dense accuracy {result['dense']['overall']['accuracy']:.3f} "
          f"(bare loop {bare['accuracy']:.3f}), loss {result['dense']['overall']['loss']:.6f} (bare loop "
          f"{bare['loss']:.6f}: the same pixels)")
    print(f"ratio audit/bare, seconds per image per pass: {per_image / bare_per_image:.2f}x (goal <= 1.2); "
          f"end to end with loading and start-up: {audit['wall'] / (passes * bare['wall']):.2f}x")
    print(f"ratio audit/bare, CPU seconds (user + sys, workers included) per image per pass: "
          f"{(audit['cpu'] - load['cpu']) / (passes * args.n) / (bare['loop_cpu'] / bare['images']):.2f}x "
          f"(bare loop {bare['loop_cpu']:.0f} s, load child {load['cpu']:.0f} s, audit child {audit['cpu']:.0f} s)")
    print(f"ratio audit/bare, peak tree PSS: {audit['pss_mib'] / bare['pss_mib']:.2f}x; audit peak "
          f"{audit['pss_mib'] / 1024:.2f} GiB (goal < 2 GB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
