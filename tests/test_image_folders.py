"""Image sets as people keep them: class subfolders or a metadata CSV, in a folder or a zip, any format and size,
resized/cropped/preset-transformed with torchvision, through the CLI (issue 15, part 3)."""

import io
import json
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from fairprune.core.errors import InputError
from fairprune.data import columns, load_dataset
from fairprune.run.cli import main
from fairprune.zoo.archs import SmallCNN

RNG = np.random.default_rng(3)
#: (format, Pillow save name, colour?) cycled over the images
KINDS = [("png", "PNG", True), ("jpg", "JPEG", True), ("webp", "WEBP", True), ("bmp", "BMP", False),
         ("tiff", "TIFF", True), ("png", "PNG", False)]
SIZES = [(20, 16), (17, 23), (30, 30), (26, 14)]          # (width, height)
CLASSES = ["cat", "dog", "emu"]


def image_bytes(i: int, cls: int) -> tuple[str, bytes, np.ndarray]:
    ext, fmt, colour = KINDS[i % len(KINDS)]
    w, h = SIZES[i % len(SIZES)]
    base = 60 + 70 * cls
    arr = np.clip(RNG.normal(base, 30, size=(h, w, 3) if colour else (h, w)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    return ext, buf.getvalue(), arr


def class_folder(root, per_class: int = 6):
    """root/<class>/<i>.<ext>: 3 classes x per_class images of mixed formats, sizes and modes."""
    arrays = {}
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            ext, data, arr = image_bytes(i + c, c)
            (root / name / f"{i}.{ext}").write_bytes(data)
            arrays[f"{name}/{i}.{ext}"] = arr
    return arrays


@pytest.fixture
def weights(tmp_path):
    torch.manual_seed(0)
    p = tmp_path / "cnn.safetensors"
    save_file(SmallCNN(in_channels=3, num_classes=3, channels=(4, 8), hidden=8).state_dict(), str(p))
    return p


def cli(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def audit_args(weights, data, out, *extra):
    return ["audit", "--model", weights, "--arch", "small_cnn", "--num-classes", "3", "--arch-arg", "in_channels=3",
            "--arch-arg", "channels=4,8", "--arch-arg", "hidden=8", "--data", data, "--sparsity", "0.5",
            "--no-footprint", "--out", out, *extra]


def dense_numbers(weights, data) -> tuple[float, float]:
    """The model's accuracy and mean cross-entropy on the loaded set, computed here without the engine."""
    from safetensors.torch import load_file

    model = SmallCNN(in_channels=3, num_classes=3, channels=(4, 8), hidden=8)
    model.load_state_dict(load_file(str(weights)))
    model.eval()
    with torch.no_grad():
        logits = model(data.to_float(data.x))
    correct = int((logits.argmax(1) == data.y).sum())
    return correct / data.n, float(torch.nn.functional.cross_entropy(logits.double(), data.y))


def test_class_folder_of_mixed_formats_and_sizes_audits_through_the_cli(tmp_path, weights, capsys):
    root = tmp_path / "pets"
    arrays = class_folder(root)
    assert columns(root) == ["label"]                   # what the dashboard offers: the class only
    out = tmp_path / "r.json"
    code, stdout, err = cli(audit_args(weights, root, out, "--group", "label", "--resize", "12", "--crop", "10,12"),
                            capsys)
    assert code == 0, err
    r = json.loads(out.read_text())
    assert r["data"]["n"] == 18 and r["data"]["groups"] == {"cat": 6, "dog": 6, "emu": 6}
    steps = r["provenance"]["preprocessing"]
    assert "resize: shorter side to 12 (bilinear, antialias)" in steps
    assert "centre crop: 10x12 (height x width)" in steps
    assert any(s.startswith("channels: 3 (RGB): colour images") for s in steps)
    assert any("torchvision.io.decode_image" in s and "Pillow" in s for s in steps)   # BMP goes through Pillow
    assert "preprocessing: centre crop: 10x12 (height x width)" in stdout
    # the same set through the library: labels in sorted class order, the accuracy the CLI wrote
    data = load_dataset(root, group="label", resize=12, crop="10,12")
    assert data.class_names == tuple(CLASSES) and tuple(data.x.shape) == (18, 3, 10, 12) and data.x.dtype == torch.uint8
    assert data.y.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    accuracy, loss = dense_numbers(weights, data)
    assert r["dense"]["overall"]["accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert r["dense"]["overall"]["loss"] == pytest.approx(loss, rel=1e-5)     # depends on every pixel
    # pixels of a lossless colour PNG equal torchvision's resize + crop of the original array
    from torchvision.transforms.v2 import functional as F

    i = data.frame["path"].tolist().index("cat/0.png")
    ref = F.center_crop(F.resize(torch.from_numpy(arrays["cat/0.png"]).permute(2, 0, 1), [12], antialias=True), [10, 12])
    assert torch.equal(data.x[i], ref)
    # the fingerprint covers names and bytes: the same folder twice is the same set, one changed image is not
    assert r["provenance"]["data_sha256"] == data.sha256 == load_dataset(root, group="label", resize=12, crop=12).sha256
    (root / "cat" / "0.png").write_bytes(image_bytes(0, 0)[1])      # same name, new pixels
    assert load_dataset(root, group="label", resize=12, crop=12).sha256 != data.sha256
    # a gray BMP was repeated over the three channels
    j = data.frame["path"].tolist().index("dog/2.bmp")
    assert torch.equal(data.x[j, 0], data.x[j, 1]) and torch.equal(data.x[j, 1], data.x[j, 2])


def test_zip_of_class_folders_gives_the_folder_numbers(tmp_path, weights, capsys):
    root = tmp_path / "pets"
    class_folder(root)
    z = tmp_path / "pets.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for p in sorted(root.rglob("*")):
            zf.write(p, "pets/" + p.relative_to(root).as_posix())   # a zipped folder: one top folder
    for data, name in ((root, "a.json"), (z, "b.json")):
        code, _, err = cli(audit_args(weights, data, tmp_path / name, "--group", "label", "--resize", "9",
                                      "--crop", "9", "--quiet"), capsys)
        assert code == 0, err
    a, b = (json.loads((tmp_path / n).read_text()) for n in ("a.json", "b.json"))
    assert a["dense"] == b["dense"] and a["levels"] == b["levels"]
    assert a["provenance"]["preprocessing"] == [s.replace("'pets/", "'") for s in b["provenance"]["preprocessing"]]


def test_metadata_csv_with_class_names_and_group_columns(tmp_path, weights, capsys):
    root = tmp_path / "set"
    (root / "imgs").mkdir(parents=True)
    rows = ["path,label,skin"]
    for i in range(12):
        ext, data, _ = image_bytes(i, i % 2)
        (root / "imgs" / f"{i}.{ext}").write_bytes(data)
        rows.append(f"imgs/{i}.{ext},{['benign', 'malignant'][i % 2]},{'light' if i < 8 else 'dark'}")
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")
    (root / "listing.csv").write_text("\n".join(rows) + "\n")
    assert columns(root) == ["label", "skin"] and columns(root / "listing.csv") == ["label", "skin"]
    data = load_dataset(root / "listing.csv", group="skin", resize=8, crop=8)   # any CSV, given by path
    assert data.class_names == ("benign", "malignant") and data.y.tolist() == [i % 2 for i in range(12)]
    assert data.group_sizes == {"light": 8, "dark": 4}
    out = tmp_path / "r.json"
    code, stdout, err = cli(audit_args(weights, root, out, "--group", "skin", "--resize", "8", "--crop", "8"), capsys)
    assert code == 0, err                                 # the folder's own metadata.csv
    r = json.loads(out.read_text())
    assert r["data"]["groups"] == {"light": 8, "dark": 4} and r["provenance"]["group_columns"] == ["skin"]
    accuracy, loss = dense_numbers(weights, data)
    assert r["dense"]["overall"]["accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert r["dense"]["overall"]["loss"] == pytest.approx(loss, rel=1e-5)     # depends on every pixel


def test_mixed_sizes_without_resize_name_two_files_and_the_flag(tmp_path, weights, capsys):
    root = tmp_path / "pets"
    class_folder(root, per_class=2)
    code, _, err = cli(audit_args(weights, root, tmp_path / "r.json", "--group", "label"), capsys)
    assert code == 2
    line = err.strip()
    assert "'cat/0.png' is 20x16" in line and "'cat/1.jpg' is 17x23" in line and "--resize N --crop N" in line
    # resize alone keeps the aspect ratio: different shapes, and the message asks for a crop
    with pytest.raises(InputError, match=r"'cat/0.png' becomes 15x12 .* but 'cat/1.jpg' becomes 12x16.*--crop N"):
        load_dataset(root, group="label", resize=12)


def test_errors_name_the_file_and_the_fix(tmp_path):
    root = tmp_path / "pets"
    class_folder(root, per_class=2)
    with pytest.raises(InputError, match=r"pets/: class subfolders give each image a label .* no group column "
                                         r"'group'; expected --group label"):
        load_dataset(root)
    (root / "emu" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(InputError, match=r"image 'emu/1.png' does not decode .* Replace or remove it"):
        load_dataset(root, group="label", resize=8, crop=8)
    (root / "emu" / "1.png").unlink()
    (root / "yak").mkdir()
    with pytest.raises(InputError, match=r"class folder 'yak' holds no image"):
        load_dataset(root, group="label", resize=8, crop=8)
    (root / "yak").rmdir()
    csv = tmp_path / "list.csv"
    csv.write_text("path,label,group\npets/cat/0.png,0,a\npets/cat/9.png,1,b\n")
    with pytest.raises(InputError, match=r"list.csv: the CSV names 1 image\(s\) that are not there: 'pets/cat/9.png'"):
        load_dataset(csv, resize=8, crop=8)
    outside = tmp_path / "outside.png"
    outside.write_bytes((root / "cat" / "0.png").read_bytes())
    (root / "cat" / "link.png").symlink_to(outside)
    with pytest.raises(InputError, match=r"refused: 'cat/link.png' is a link to .*outside.png, outside the folder"):
        load_dataset(root, group="label", resize=8, crop=8)
    (root / "cat" / "link.png").unlink()
    inner = root / "list.csv"
    inner.write_text("path,label,group\ncat/0.png,0,a\n../elsewhere.png,1,b\n")
    with pytest.raises(InputError, match=r"refused: the CSV names '../elsewhere.png' \(line 3\), which points outside"):
        load_dataset(inner, resize=8, crop=8)
    with pytest.raises(InputError, match=r"image 'cat/0.png' is 20x16 \(width x height\), smaller than the crop 18x18; "
                                         r".* Add --resize 18"):
        load_dataset(root, group="label", crop=18)
    with pytest.raises(InputError, match=r"'cat/0.png' is 15x12 \(width x height\) after the resize, smaller than"):
        load_dataset(root, group="label", resize=12, crop="14,8")
    for kw, fragment in (({"crop": "0"}, "--crop"), ({"resize": "x"}, "--resize"),
                         ({"transforms": "NoSuch_Weights.V1"}, "torchvision weights entry"),
                         ({"transforms": "ResNet18_Weights.IMAGENET1K_V1", "resize": 8}, "--transforms alone")):
        with pytest.raises(InputError, match=fragment):
            load_dataset(root, group="label", **kw)


def test_resize_on_a_table_is_refused(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("f1,label,group\n1.0,0,a\n2.0,1,b\n")
    with pytest.raises(InputError, match=r"t.csv: --resize applies to image sets only"):
        load_dataset(csv, resize=8)
    assert load_dataset(csv).preprocessing == ()


def test_transforms_preset_matches_torchvision_and_records_its_steps(tmp_path):
    from torchvision.models import ResNet18_Weights

    root = tmp_path / "pets"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    for i, (cls, size) in enumerate((("a", (40, 30)), ("b", (25, 50)))):
        arr = RNG.integers(0, 256, size=(size[1], size[0]) + (() if i else (3,)), dtype=np.uint8)
        Image.fromarray(arr).save(root / cls / "x.png")
    data = load_dataset(root, group="label", transforms="ResNet18_Weights.IMAGENET1K_V1")
    assert tuple(data.x.shape) == (2, 3, 224, 224)
    preset = ResNet18_Weights.IMAGENET1K_V1.transforms()
    for i, cls in enumerate("ab"):
        img = torch.from_numpy(np.array(Image.open(root / cls / "x.png").convert("RGB"))).permute(2, 0, 1)
        diff = (data.to_float(data.x[i:i + 1])[0] - preset(img)).abs()
        # v2 resizes uint8 with torch's native uint8 kernel, the preset (v1 functional) through float: a pixel may
        # differ by one uint8 step (1/255, divided by the channel's std), never more
        assert diff.max().item() <= 1 / 255 / min(preset.std) + 1e-6, diff.max().item()
        assert 0 < (diff > 1e-6).float().mean().item() < 0.3
    assert data.preprocessing[2] == ("transforms: ResNet18_Weights.IMAGENET1K_V1.transforms() preset, applied "
                                     "with torchvision.transforms.v2")
    assert "resize: shorter side to 256 (bilinear, antialias)" in data.preprocessing
    assert any(s.startswith("normalize: (x - mean) / std per channel, mean [0.485") for s in data.preprocessing)
