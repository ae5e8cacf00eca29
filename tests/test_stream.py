"""Image sets larger than memory (issue 15, part 4): rows decoded from their files batch by batch, by DataLoader
workers reading ahead, with the same pixels, fingerprint and audit numbers as the set decoded whole."""

import io
import json
import pickle
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from fairprune.core.errors import InputError
from fairprune.data import load_dataset
from fairprune.data import _stream
from fairprune.data._stream import ImageFiles
from fairprune.run.cli import main
from fairprune.zoo.archs import SmallCNN

RNG = np.random.default_rng(15)
#: (ending, Pillow format, colour?) cycled over the images; sizes (width, height) cycled too
KINDS = [("png", "PNG", True), ("jpg", "JPEG", True), ("bmp", "BMP", False), ("webp", "WEBP", True)]
SIZES = [(20, 16), (17, 23), (30, 30), (26, 14), (19, 19)]
CLASSES = ["cat", "dog", "emu"]


def image(i: int, cls: int) -> tuple[str, bytes]:
    ext, fmt, colour = KINDS[i % len(KINDS)]
    w, h = SIZES[i % len(SIZES)]
    arr = np.clip(RNG.normal(50 + 70 * cls, 40, size=(h, w, 3) if colour else (h, w)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    return ext, buf.getvalue()


def folder(root, per_class: int = 7):
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            ext, data = image(i + 2 * c, c)
            (root / name / f"{i}.{ext}").write_bytes(data)
    return root


def eager_and_lazy(monkeypatch, path, **kw):
    monkeypatch.delenv(_stream.STREAM_BYTES_ENV, raising=False)
    eager = load_dataset(path, **kw)
    monkeypatch.setenv(_stream.STREAM_BYTES_ENV, "0")       # stream anything
    lazy = load_dataset(path, **kw)
    return eager, lazy


@pytest.fixture
def workers(monkeypatch):
    """One worker process even for a tiny set, and a count of the read-aheads started."""
    monkeypatch.setenv(_stream.STREAM_WORKERS_ENV, "1")
    started = []

    class Counted(_stream._Stream):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            started.append(self)

    monkeypatch.setattr(_stream, "_Stream", Counted)
    return started


def test_streamed_folder_has_the_eager_pixels_fingerprint_and_steps(tmp_path, monkeypatch):
    root = folder(tmp_path / "pets")
    eager, lazy = eager_and_lazy(monkeypatch, root, group="label", resize=12, crop="10,12")
    assert isinstance(eager.x, torch.Tensor) and isinstance(lazy.x, ImageFiles)
    assert tuple(lazy.x.shape) == tuple(eager.x.shape) == (21, 3, 10, 12) and lazy.x.dtype == torch.uint8
    assert torch.equal(lazy.x[:], eager.x)
    assert lazy.sha256 == eager.sha256 and lazy.preprocessing == eager.preprocessing
    assert lazy.y.tolist() == eager.y.tolist() and list(lazy.group) == list(eager.group)
    # positions (engine callers: data.x[t]) decode just those rows, in the order given
    t = torch.tensor([20, 3, 3, 0])
    assert torch.equal(lazy.x[t], eager.x[t]) and torch.equal(lazy.x[5], eager.x[5])
    assert torch.equal(lazy.x[5, 0], eager.x[5, 0]) and torch.equal(lazy.x[2:4, 1:], eager.x[2:4, 1:])
    # a subset stays on disk, and reads the right rows
    mask = np.arange(21) % 3 == 1
    sub = lazy.subset(mask)
    assert isinstance(sub.x, ImageFiles) and len(sub.x) == 7
    assert torch.equal(sub.x[:], eager.x[torch.from_numpy(mask)])
    assert torch.equal(sub.subset([6, 0]).x[:], eager.x[torch.tensor([19, 1])])


def test_batches_keep_row_order_and_the_short_last_batch_while_workers_read_ahead(tmp_path, monkeypatch, workers):
    root = folder(tmp_path / "pets")
    eager, lazy = eager_and_lazy(monkeypatch, root, group="label", resize=11, crop=9, normalize="imagenet")
    want = eager.to_float(eager.x)
    got = list(lazy.batches(4))
    assert [len(x) for x, _ in got] == [4, 4, 4, 4, 4, 1]
    assert torch.equal(torch.cat([x for x, _ in got]), want)            # normalised alike, same order
    assert torch.equal(torch.cat([y for _, y in got]), eager.y)
    assert len(workers) == 1 and workers[0].done                        # one read-ahead, over to the end
    # reads that change size half way (an out-of-memory back-off) or start again keep the rows exact
    parts = [lazy.rows(0, 8)[0], lazy.rows(8, 16)[0], lazy.rows(16, 20)[0], lazy.rows(20, 24)[0],
             lazy.rows(0, 5)[0], lazy.rows(5, 10)[0]]
    assert torch.equal(torch.cat(parts[:4]), want) and torch.equal(torch.cat(parts[4:]), want[:10])
    assert len(workers) == 4       # from 8 (8:16), from 16 in 4s (the short read ended the last), from 5
    lazy.x.close()


def test_metadata_zip_with_a_file_named_twice_streams_like_the_eager_set(tmp_path, monkeypatch, workers):
    z = tmp_path / "faces.zip"
    rows = []
    with zipfile.ZipFile(z, "w") as zf:
        for i in range(9):
            ext, data = image(i, i % 2)
            zf.writestr(f"img/{i}.{ext}", data)
            rows.append(f"img/{i}.{ext},{i % 2},{'ab'[i % 3 == 0]}")
        rows.append(f"{rows[2].split(',')[0]},1,b")                     # the same image on two rows
        zf.writestr("metadata.csv", "path,label,group\n" + "\n".join(rows) + "\n")
    eager, lazy = eager_and_lazy(monkeypatch, z, resize=16, crop=14)
    assert isinstance(lazy.x, ImageFiles) and lazy.x.shape[0] == 10
    assert torch.equal(lazy.x[:], eager.x) and torch.equal(lazy.x[9], lazy.x[2])
    assert lazy.sha256 == eager.sha256
    # the archive was closed after loading: the rows are read through a handle of their own, in each worker too
    assert torch.equal(torch.cat([x for x, _ in lazy.batches(3)]), eager.to_float(eager.x)) and workers
    copy = pickle.loads(pickle.dumps(lazy.x))                           # what a forkserver worker receives
    assert torch.equal(copy[[9, 0]], eager.x[[9, 0]])


def test_sizes_come_from_the_headers_and_the_eager_refusals_hold(tmp_path, monkeypatch):
    root = folder(tmp_path / "pets")
    for kw in ({"resize": 10}, {"crop": 24}, {"resize": 8, "crop": 10}):
        monkeypatch.delenv(_stream.STREAM_BYTES_ENV, raising=False)
        with pytest.raises(InputError) as a:
            load_dataset(root, group="label", **kw)
        monkeypatch.setenv(_stream.STREAM_BYTES_ENV, "0")
        with pytest.raises(InputError) as b:
            load_dataset(root, group="label", **kw)
        assert str(a.value) == str(b.value) and "pets/" in str(b.value)


def test_same_size_images_stream_without_resize(tmp_path, monkeypatch):
    root = tmp_path / "digits"
    for c in range(2):
        (root / str(c)).mkdir(parents=True)
        for i in range(5):
            arr = RNG.integers(0, 256, size=(13, 11), dtype=np.uint8)
            Image.fromarray(arr).save(root / str(c) / f"{i}.png")
    eager, lazy = eager_and_lazy(monkeypatch, root, group="label")
    assert isinstance(lazy.x, ImageFiles) and tuple(lazy.x.shape) == (10, 1, 13, 11)
    assert torch.equal(lazy.x[:], eager.x)
    eager, lazy = eager_and_lazy(monkeypatch, root, group="label", resize=17)    # no crop: sizes from the headers
    assert tuple(lazy.x.shape) == tuple(eager.x.shape) == (10, 1, 20, 17) and torch.equal(lazy.x[:], eager.x)
    # the threshold decides: a set under it is decoded whole as before
    monkeypatch.setenv(_stream.STREAM_BYTES_ENV, str(10 * 13 * 11))
    assert isinstance(load_dataset(root, group="label").x, torch.Tensor)
    monkeypatch.setenv(_stream.STREAM_BYTES_ENV, str(10 * 13 * 11 - 1))
    assert isinstance(load_dataset(root, group="label").x, ImageFiles)


def test_a_bad_threshold_and_an_unreadable_streamed_image_are_input_errors(tmp_path, monkeypatch, workers):
    root = folder(tmp_path / "pets")
    monkeypatch.setenv(_stream.STREAM_BYTES_ENV, "lots")
    with pytest.raises(InputError, match=r"\$FAIRPRUNE_STREAM_BYTES: expected a whole number of bytes.*'lots'"):
        load_dataset(root, group="label", resize=12, crop=10)
    monkeypatch.setenv(_stream.STREAM_BYTES_ENV, "0")
    data = load_dataset(root, group="label", resize=12, crop=10)
    (root / "emu" / "5.jpg").write_bytes(b"\xff\xd8 not a jpeg any more")   # changed after loading (row 19)
    with pytest.raises(InputError, match=r"pets/: image 'emu/5.jpg' does not decode"):
        list(data.batches(4))                                           # raised from the worker, as an InputError
    assert workers


def test_streamed_audit_writes_the_eager_numbers_through_the_cli(tmp_path, monkeypatch, capsys, workers):
    root = folder(tmp_path / "pets", per_class=8)
    torch.manual_seed(0)
    weights = tmp_path / "cnn.safetensors"
    save_file(SmallCNN(in_channels=3, num_classes=3, channels=(4, 8), hidden=8).state_dict(), str(weights))

    def audit(out, *extra):
        args = ["audit", "--model", weights, "--arch", "small_cnn", "--num-classes", "3", "--arch-arg",
                "in_channels=3", "--arch-arg", "channels=4,8", "--arch-arg", "hidden=8", "--data", root,
                "--group", "label", "--resize", "14", "--crop", "12", "--sparsity", "0.5", "0.8", "--quiet",
                "--out", out, *extra]
        assert main([str(a) for a in args]) == 0, capsys.readouterr().err
        return json.loads(out.read_text())

    monkeypatch.delenv(_stream.STREAM_BYTES_ENV, raising=False)
    a = audit(tmp_path / "a.json", "--batch-size", "5")
    assert not workers
    monkeypatch.setenv(_stream.STREAM_BYTES_ENV, "0")
    b = audit(tmp_path / "b.json", "--batch-size", "5")
    assert workers                                                      # the passes were read ahead by a worker
    assert a["dense"]["groups"] == b["dense"]["groups"] and a["levels"] == b["levels"]
    assert a["dense"]["groups"]["cat"]["loss"] > 0                     # the numbers depend on every pixel
    assert a["provenance"] == b["provenance"] and a["data"] == b["data"]


def test_worker_count_and_start_method_follow_the_process(monkeypatch):
    monkeypatch.delenv(_stream.STREAM_WORKERS_ENV, raising=False)
    monkeypatch.setattr(_stream.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert _stream.stream_workers(50_000) == 4 and _stream.stream_workers(1999) == 0
    monkeypatch.setattr(_stream.os, "sched_getaffinity", lambda pid: {0, 1})
    assert _stream.stream_workers(50_000) == 1
    monkeypatch.setenv(_stream.STREAM_WORKERS_ENV, "3")
    assert _stream.stream_workers(10) == 3
    daemon = type("P", (), {"daemon": True})()
    monkeypatch.setattr(_stream.multiprocessing, "current_process", lambda: daemon)
    assert _stream.stream_workers(50_000) == 0                         # may not start children
    import threading

    with monkeypatch.context() as m:
        m.setattr(_stream.threading, "active_count", lambda: 1)
        assert _stream._context() is None                               # one thread: workers are forked

    halt = threading.Event()
    beat = threading.Thread(target=halt.wait)                           # like the dashboard worker's heartbeat
    beat.start()
    try:
        assert _stream._context().get_start_method() == "forkserver"
    finally:
        halt.set()
        beat.join()


def test_a_folder_linked_from_outside_is_refused_eager_or_streamed(tmp_path, monkeypatch):
    outside = folder(tmp_path / "elsewhere")
    root = tmp_path / "set"
    root.mkdir()
    (root / "cats").symlink_to(outside / "cat", target_is_directory=True)
    (root / "metadata.csv").write_text("path,label,group\ncats/0.png,0,a\ncats/1.jpg,1,b\n")
    for threshold in ("0", str(1 << 40)):
        monkeypatch.setenv(_stream.STREAM_BYTES_ENV, threshold)
        with pytest.raises(InputError, match=r"refused: 'cats/0.png' is a link to .*elsewhere.*outside the folder"):
            load_dataset(root, resize=8, crop=8)
