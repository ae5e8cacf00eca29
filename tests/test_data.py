"""Dataset file loaders: CSV, NPZ and image zip, and validate_labels.

Small synthetic files written to tmp_path; every error path is asserted on the parts of its message a
person needs: the file, the column/array/option, what was expected and what was found.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from fairprune.data import FORMATS, GroupedDataset, load_dataset, validate_labels
from fairprune.core.errors import InputError

ADULT = """age,race,sex,hours,label,group
30,White,Male,40,1,a
41,Black,Female,35,0,b
52,White,Female,50,1,a
23,Asian,Male,20,0,b
"""


def write(tmp_path, text: str, name: str = "d.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def csv(tmp_path, text: str, **kw) -> GroupedDataset:
    return load_dataset(write(tmp_path, text), **kw)


def raises(match_parts, fn, *args, **kw) -> str:
    """Call fn, expect InputError, check every part is in the message; return the message."""
    with pytest.raises(InputError) as info:
        fn(*args, **kw)
    msg = str(info.value)
    for part in match_parts:
        assert part in msg, f"{part!r} not in {msg!r}"
    return msg


# ---- CSV: what comes out --------------------------------------------------------------------------
def test_csv_string_groups_features_in_file_order(tmp_path):
    p = write(tmp_path, "a,label,b,group,c\n1,0,2.5,x,3\n4,1,5,y,6\n7,1,8,x,9\n")
    d = load_dataset(p)
    assert d.feature_names == ("a", "b", "c")
    assert d.x.dtype == torch.float32 and d.x.shape == (3, 3)
    assert d.x.tolist() == [[1, 2.5, 3], [4, 5, 6], [7, 8, 9]]
    assert d.y.dtype == torch.int64 and d.y.tolist() == [0, 1, 1]
    assert d.group.tolist() == ["x", "y", "x"]
    assert d.group_sizes == {"x": 2, "y": 1}
    assert d.name == "d.csv" and d.label_column == "label" and d.group_columns == ("group",)
    assert d.sha256 == hashlib.sha256(p.read_bytes()).hexdigest()
    assert d.split is None and d.normalize is None
    assert list(d.frame.columns) == ["a", "label", "b", "group", "c"] and len(d.frame) == 3
    xb, yb = next(d.batches(2))
    assert xb.dtype == torch.float32 and xb.shape == (2, 3) and yb.tolist() == [0, 1]


def test_csv_name_option(tmp_path):
    assert csv(tmp_path, ADULT, ignore=["race", "sex"], name="adult").name == "adult"


def test_csv_int_groups_are_their_text(tmp_path):
    d = csv(tmp_path, "f,label,group\n1,0,1\n2,1,2\n3,0,01\n4,1,1\n")
    assert d.group.tolist() == ["1", "2", "01", "1"]  # read as text: '01' is its own group


def test_csv_intersectional_groups_in_given_order(tmp_path):
    d = csv(tmp_path, "f,label,g1,g2\n1,0,a,x\n2,1,b,x\n3,0,a,y\n", group=["g1", "g2"])
    assert d.group.tolist() == ["a & x", "b & x", "a & y"]
    assert d.group_columns == ("g1", "g2") and d.feature_names == ("f",)
    d = csv(tmp_path, "f,label,g1,g2\n1,0,a,x\n2,1,b,x\n3,0,a,y\n", group=["g2", "g1"])
    assert d.group.tolist() == ["x & a", "x & b", "y & a"]


def test_csv_group_label_makes_the_class_the_group(tmp_path):
    d = csv(tmp_path, "f1,label,f2\n1,0,5\n2,2,6\n3,1.0,7\n", group="label")
    assert d.group.tolist() == ["0", "2", "1"]
    assert d.y.tolist() == [0, 2, 1]
    assert d.feature_names == ("f1", "f2")
    assert d.group_columns == ("label",)


def test_csv_label_with_another_group(tmp_path):
    d = csv(tmp_path, "f,target,sex\n1,0,F\n2,1,M\n", label="target", group=["target", "sex"])
    assert d.group.tolist() == ["0 & F", "1 & M"] and d.label_column == "target"


def test_csv_features_named_in_model_order(tmp_path):
    d = csv(tmp_path, ADULT, features=["hours", "age"])
    assert d.feature_names == ("hours", "age")
    assert d.x[0].tolist() == [40.0, 30.0]


def test_csv_ignore_leaves_columns_out(tmp_path):
    d = csv(tmp_path, ADULT, ignore=["race", "sex"])
    assert d.feature_names == ("age", "hours")
    assert d.x[:, 1].tolist() == [40, 35, 50, 20]
    d = csv(tmp_path, ADULT, features=["hours", "age", "race"], ignore=["race"])
    assert d.feature_names == ("hours", "age")


def test_csv_float_and_bool_labels(tmp_path):
    assert csv(tmp_path, "f,label,group\n1,1.0,a\n2,0.0,b\n").y.tolist() == [1, 0]
    assert csv(tmp_path, "f,label,group\n1,True,a\n2,False,b\n").y.tolist() == [1, 0]


def test_csv_bool_features_are_numbers(tmp_path):
    d = csv(tmp_path, "f,flag,label,group\n1,True,1,a\n2,False,0,b\n")
    assert d.x.tolist() == [[1, 1], [2, 0]]


MISSING = "f,label,group\n1,0,a\n2,1,\n3,0,b\n4,1,  \n"


def test_csv_missing_group_drop(tmp_path):
    d = csv(tmp_path, MISSING, missing_group="drop")
    assert d.n == 2 and d.group.tolist() == ["a", "b"] and d.x[:, 0].tolist() == [1, 3]
    assert d.frame["f"].tolist() == [1, 3]  # row-aligned after the drop
    assert d.frame.index.tolist() == [0, 1]


def test_csv_missing_group_category(tmp_path):
    d = csv(tmp_path, MISSING, missing_group="category")
    assert d.group.tolist() == ["a", "missing", "b", "missing"]
    assert d.group_sizes["missing"] == 2


def test_csv_missing_group_in_one_of_two_columns(tmp_path):
    d = csv(tmp_path, "f,label,g1,g2\n1,0,a,\n2,1,b,y\n", group=["g1", "g2"], missing_group="category")
    assert d.group.tolist() == ["a & missing", "b & y"]


def test_csv_split_column(tmp_path):
    d = csv(tmp_path, "f,label,group,split\n1,0,a,train\n2,1,b,test\n3,0,a, Train\n4,1,b,test\n")
    assert d.split.tolist() == ["train", "test", "train", "test"]
    assert d.feature_names == ("f",)  # split is never a feature
    assert d.part("train").x[:, 0].tolist() == [1, 3]
    assert d.part("test").frame["f"].tolist() == [2, 4]


def test_csv_gz(tmp_path):
    p = tmp_path / "d.csv.gz"
    p.write_bytes(gzip.compress(ADULT.encode()))
    d = load_dataset(p, ignore=["race", "sex"])
    assert d.n == 4 and d.feature_names == ("age", "hours")
    assert d.sha256 == hashlib.sha256(p.read_bytes()).hexdigest()


def test_csv_gz_past_the_limit_refused(tmp_path):
    p = tmp_path / "big.csv.gz"
    p.write_bytes(gzip.compress(("f,label,group\n" + "1,0,a\n" * 100_000).encode()))
    raises(["big.csv.gz", "refused", "limit of 1,000 bytes", "max_uncompressed_bytes"],
           load_dataset, p, max_uncompressed_bytes=1000)


def test_csv_gz_corrupt(tmp_path):
    p = tmp_path / "bad.csv.gz"
    p.write_bytes(b"not gzip at all")
    raises(["bad.csv.gz", "gzip"], load_dataset, p)


def test_csv_normalize_per_feature(tmp_path):
    d = csv(tmp_path, "f1,f2,label,group\n1,2,0,a\n3,4,1,b\n", normalize="1,2;1,2")
    assert d.normalize == ((1.0, 2.0), (1.0, 2.0))
    xb, _ = next(d.batches(2))
    assert torch.allclose(xb, torch.tensor([[0.0, 0.0], [2.0, 1.0]]))


# ---- CSV: what is refused ---------------------------------------------------------------------------
def test_csv_missing_label_column(tmp_path):
    raises(["d.csv", "label column 'label'", "--label", "found columns: 'f', 'y', 'group'"],
           csv, tmp_path, "f,y,group\n1,0,a\n")


def test_csv_missing_group_column(tmp_path):
    raises(["d.csv", "group column 'sex'", "--group", "found columns: 'f', 'label', 'group'"],
           csv, tmp_path, "f,label,group\n1,0,a\n", group=["group", "sex"])


def test_csv_missing_feature_column(tmp_path):
    raises(["d.csv", "feature column 'height'", "found columns: 'age', 'race'"],
           csv, tmp_path, ADULT, features=["age", "height"])


def test_csv_missing_ignored_column(tmp_path):
    raises(["d.csv", "ignored column 'color'", "found columns"], csv, tmp_path, ADULT, ignore=["color"])


def test_csv_non_numeric_feature_suggests_ignore(tmp_path):
    msg = raises(["d.csv", "feature columns must be numeric", "'race' (e.g. 'White')", "'sex' (e.g. 'Male')",
                  "--ignore race --ignore sex", "one-hot"], csv, tmp_path, ADULT)
    assert "'age'" not in msg


def test_csv_mixed_text_in_numeric_column(tmp_path):
    raises(["'f' (e.g. 'n/a?')", "--ignore f"], csv, tmp_path, "f,label,group\n1,0,a\nn/a?,1,b\n")


def test_csv_nan_and_inf_features(tmp_path):
    text = "f1,f2,f3,label,group\n1,2,3,0,a\n1,,3,0,a\n1,2,inf,1,b\n1,2,3,1,b\n1,nan,3,0,a\n"
    raises(["d.csv", "features must be finite", "3 row(s)", "lines 3, 4, 6", "'f2', 'f3'"], csv, tmp_path, text)


def test_csv_nan_rows_counted_after_drop(tmp_path):
    # line numbers stay the file's, after rows with a missing group are dropped
    raises(["1 row(s)", "line 4", "'f'"], csv, tmp_path, "f,label,group\n1,0,\n2,1,a\n,0,b\n",
           missing_group="drop")


def test_csv_fractional_label(tmp_path):
    raises(["d.csv", "label column 'label'", "integer class indices", "1.5 (1 row)", "line 3"],
           csv, tmp_path, "f,label,group\n1,0,a\n2,1.5,b\n")


def test_csv_text_label(tmp_path):
    raises(["d.csv", "label column 'label'", "integer class indices", "'cat' (2 rows)", "'dog' (1 row)"],
           csv, tmp_path, "f,label,group\n1,cat,a\n2,dog,b\n3,cat,a\n")


def test_csv_missing_label(tmp_path):
    raises(["d.csv", "label column 'label'", "every row", "1 missing", "line 3"],
           csv, tmp_path, "f,label,group\n1,0,a\n2,,b\n")


def test_csv_missing_group_is_an_error_by_default(tmp_path):
    raises(["d.csv", "group column 'group'", "2 missing", "lines 3, 5", "--missing-group drop",
            "--missing-group category"], csv, tmp_path, MISSING)


def test_csv_every_row_dropped(tmp_path):
    raises(["d.csv", "none left", "2 row(s)"], csv, tmp_path, "f,label,group\n1,0,\n2,1,\n", missing_group="drop")


def test_csv_bad_split_values(tmp_path):
    raises(["d.csv", "column 'split'", "'train' or 'test'", "'val' (2 rows)", "<missing> (1 row)", "lines 3, 4, 5"],
           csv, tmp_path, "f,label,group,split\n1,0,a,train\n2,1,b,val\n3,0,a,val\n4,1,b,\n")


@pytest.mark.parametrize("col,role", [("label", "label"), ("group", "group"), ("split", "split")])
def test_csv_role_column_as_feature(tmp_path, col, role):
    raises(["d.csv", f"{role} column {col!r}", "--features"],
           csv, tmp_path, "f,label,group,split\n1,0,a,train\n", features=["f", col])


def test_csv_no_features_left(tmp_path):
    raises(["d.csv", "at least one feature column", "'label', 'group'"],
           csv, tmp_path, "f,label,group\n1,0,a\n", ignore=["f"])


def test_csv_header_only_and_empty(tmp_path):
    raises(["d.csv", "at least one data row"], csv, tmp_path, "f,label,group\n")
    raises(["d.csv", "empty"], csv, tmp_path, "")


def test_csv_ragged_rows(tmp_path):
    raises(["d.csv", "does not parse"], csv, tmp_path, "f,label,group\n1,0,a\n1,0,a,4,5\n")


def test_csv_not_utf8(tmp_path):
    p = tmp_path / "d.csv"
    p.write_bytes("f,label,group\n1,0,Zürich\n".encode("utf-16"))
    with pytest.raises(InputError, match="d.csv"):
        load_dataset(p)


# ---- options and formats ------------------------------------------------------------------------------
def test_unknown_extension_lists_formats(tmp_path):
    p = write(tmp_path, "x", "data.parquet")
    raises(["data.parquet", "'.parquet'", ".csv", ".csv.gz", ".npz", ".zip"], load_dataset, p)
    assert set(FORMATS) == {".csv", ".csv.gz", ".npz", ".zip"}


def test_file_not_found(tmp_path):
    raises(["nope.csv", "nothing there"], load_dataset, tmp_path / "nope.csv")


def test_bad_missing_group_option(tmp_path):
    raises(["--missing-group", "error, drop, category", "'skip'"],
           csv, tmp_path, ADULT, missing_group="skip")


@pytest.mark.parametrize("spec,part", [("0.5", "'0.5'"), ("a,b", "'a,b'"), ("1,2,3", "'1,2,3'"),
                                       ("1,2;3", "2 means and 1 stds"), ("0.5,0", "std > 0")])
def test_bad_normalize_spec(tmp_path, spec, part):
    raises(["--normalize", part], csv, tmp_path, ADULT, ignore=["race", "sex"], normalize=spec)


def test_normalize_channel_mismatch(tmp_path):
    raises(["d.csv", "--normalize", "3 value(s)", "2 channel(s)", "(2, 2)"],
           csv, tmp_path, "f1,f2,label,group\n1,2,0,a\n3,4,1,b\n", normalize="imagenet")


def test_features_and_ignore_are_csv_only(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, x=np.zeros((2, 2)), y=np.array([0, 1]), group=np.array([0, 1]))
    raises(["d.npz", "--features", "CSV files only", ".npz"], load_dataset, p, features=["a"])
    raises(["d.npz", "--ignore", "CSV files only"], load_dataset, p, ignore=["a"])


def test_group_named_twice(tmp_path):
    raises(["--group", "'group'", "more than once"], csv, tmp_path, ADULT, group=["group", "group"])


# ---- NPZ ----------------------------------------------------------------------------------------------
def npz(tmp_path, name="d.npz", **arrays):
    p = tmp_path / name
    np.savez(p, **arrays)
    return p


def test_npz_group_names_and_class_names(tmp_path):
    p = npz(tmp_path, x=np.arange(8, dtype=np.float64).reshape(4, 2), y=np.array([0, 1, 2, 1]),
            group=np.array([0, 1, 1, 0]), group_names=np.array(["men", "women"]),
            class_names=np.array(["cat", "dog", "eel"]))
    d = load_dataset(p)
    assert d.x.dtype == torch.float32 and d.x.shape == (4, 2)
    assert d.y.dtype == torch.int64 and d.y.tolist() == [0, 1, 2, 1]
    assert d.group.tolist() == ["men", "women", "women", "men"]
    assert d.class_names == ("cat", "dog", "eel")
    assert d.label_column == "y" and d.group_columns == ("group",)
    assert d.sha256 == hashlib.sha256(p.read_bytes()).hexdigest() and d.name == "d.npz"
    assert d.frame is None


def test_npz_int_and_str_groups(tmp_path):
    d = load_dataset(npz(tmp_path, x=np.zeros((3, 1)), y=np.array([0, 1, 0]), group=np.array([3, 1, 3])))
    assert d.group.tolist() == ["3", "1", "3"]
    d = load_dataset(npz(tmp_path, x=np.zeros((3, 1)), y=np.array([0, 1, 0]), group=np.array(["a", "b", "a"])))
    assert d.group.tolist() == ["a", "b", "a"]


def test_npz_group_label_and_intersectional(tmp_path):
    p = npz(tmp_path, x=np.zeros((2, 1)), y=np.array([0, 1]), group=np.array(["a", "b"]), sex=np.array(["F", "M"]))
    assert load_dataset(p, group="label").group.tolist() == ["0", "1"]
    assert load_dataset(p, group=["group", "sex"]).group.tolist() == ["a & F", "b & M"]


def test_npz_uint8_images_kept_uint8(tmp_path):
    x = np.array([[[[0, 255], [51, 102]]], [[[255, 0], [0, 0]]]], dtype=np.uint8)  # (2, 1, 2, 2)
    d = load_dataset(npz(tmp_path, x=x, y=np.array([0, 1]), group=np.array([0, 1])))
    assert d.x.dtype == torch.uint8 and d.x.shape == (2, 1, 2, 2)
    xb, _ = next(d.batches(2))
    assert xb.dtype == torch.float32 and torch.allclose(xb, torch.from_numpy(x).float() / 255)


def test_npz_one_dimensional_x_is_one_feature(tmp_path):
    d = load_dataset(npz(tmp_path, x=np.array([1.0, 2.0]), y=np.array([0, 1]), group=np.array([0, 1])))
    assert d.x.shape == (2, 1)


def test_npz_split_and_float_labels_and_missing_group(tmp_path):
    p = npz(tmp_path, x=np.zeros((4, 1)), y=np.array([0.0, 1.0, 1.0, 0.0]), group=np.array(["a", "", "b", "a"]),
            split=np.array(["train", "test", "test", "train"]))
    raises(["d.npz", "array 'group'", "1 missing", "index 1", "--missing-group"], load_dataset, p)
    d = load_dataset(p, missing_group="drop")
    assert d.y.tolist() == [0, 1, 0] and d.split.tolist() == ["train", "test", "train"]
    assert load_dataset(p, missing_group="category").group.tolist() == ["a", "missing", "b", "a"]


def test_npz_missing_array_lists_found(tmp_path):
    p = npz(tmp_path, x=np.zeros((2, 1)), labels=np.array([0, 1]), group=np.array([0, 1]))
    raises(["d.npz", "array 'y'", "found arrays: 'x', 'labels', 'group'"], load_dataset, p)
    p = npz(tmp_path, x=np.zeros((2, 1)), y=np.array([0, 1]))
    raises(["d.npz", "array 'group'", "found arrays: 'x', 'y'"], load_dataset, p)


def test_npz_object_array_refused_not_unpickled(tmp_path):
    p = npz(tmp_path, x=np.zeros((2, 1)), y=np.array([0, 1]), group=np.array(["a", 1], dtype=object))
    raises(["d.npz", "array 'group'", "object array", "unpickle", "dtype=str"], load_dataset, p)


def test_npz_unequal_lengths(tmp_path):
    p = npz(tmp_path, x=np.zeros((3, 1)), y=np.array([0, 1]), group=np.array([0, 1, 1]))
    raises(["d.npz", "same length", "x: 3, y: 2, group: 3"], load_dataset, p)


def test_npz_non_integer_y(tmp_path):
    p = npz(tmp_path, x=np.zeros((2, 1)), y=np.array([0.5, 1.0]), group=np.array([0, 1]))
    raises(["d.npz", "array 'y'", "integer class indices", "0.5 (1 row)", "index 0"], load_dataset, p)
    p = npz(tmp_path, x=np.zeros((2, 1)), y=np.array(["a", "b"]), group=np.array([0, 1]))
    raises(["d.npz", "array 'y'", "'a' (1 row)"], load_dataset, p)


def test_npz_nan_and_inf_x(tmp_path):
    x = np.zeros((4, 2))
    x[1, 0], x[3, 1] = np.nan, np.inf
    p = npz(tmp_path, x=x, y=np.zeros(4, dtype=int), group=np.zeros(4, dtype=int))
    raises(["d.npz", "array 'x'", "finite", "2 sample(s)", "indices 1, 3"], load_dataset, p)


def test_npz_text_x(tmp_path):
    p = npz(tmp_path, x=np.array(["a", "b"]), y=np.array([0, 1]), group=np.array([0, 1]))
    raises(["d.npz", "array 'x'", "numbers", "<U1"], load_dataset, p)


def test_npz_group_index_past_group_names(tmp_path):
    p = npz(tmp_path, x=np.zeros((3, 1)), y=np.array([0, 1, 0]), group=np.array([0, 2, 5]),
            group_names=np.array(["a", "b"]))
    raises(["d.npz", "array 'group'", "group_names", "2 names", "0..1", "2 (1 row)", "5 (1 row)", "indices 1, 2"],
           load_dataset, p)


def test_npz_label_past_class_names(tmp_path):
    p = npz(tmp_path, x=np.zeros((2, 1)), y=np.array([0, 3]), group=np.array([0, 1]),
            class_names=np.array(["a", "b"]))
    raises(["d.npz", "'class_names' has 2 names", "array 'y'", "0..1", "3 (1 row)"], load_dataset, p)


def test_npz_bad_shapes(tmp_path):
    p = npz(tmp_path, x=np.zeros((2, 1)), y=np.zeros((2, 2), dtype=int), group=np.array([0, 1]))
    raises(["d.npz", "array 'y'", "(N,)", "(2, 2)"], load_dataset, p)


def test_npz_bad_split(tmp_path):
    p = npz(tmp_path, x=np.zeros((2, 1)), y=np.array([0, 1]), group=np.array([0, 1]),
            split=np.array(["train", "valid"]))
    raises(["d.npz", "array 'split'", "'train' or 'test'", "'valid' (1 row)", "index 1"], load_dataset, p)


def test_npz_not_an_archive(tmp_path):
    p = tmp_path / "d.npz"
    p.write_bytes(b"\x93NUMPY garbage")
    raises(["d.npz", "zip archive", "np.savez"], load_dataset, p)


def test_npz_past_the_limit_refused(tmp_path):
    p = tmp_path / "d.npz"
    np.savez_compressed(p, x=np.zeros((1000, 100)), y=np.zeros(1000, dtype=int), group=np.zeros(1000, dtype=int))
    raises(["d.npz", "refused", "max_uncompressed_bytes"], load_dataset, p, max_uncompressed_bytes=100_000)


# ---- image zip ----------------------------------------------------------------------------------------
def png(array: np.ndarray, mode: str | None = None, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format=fmt)
    return buf.getvalue()


def image_zip(tmp_path, members: dict[str, bytes], metadata: str | None, name: str = "imgs.zip",
              compression=zipfile.ZIP_DEFLATED):
    p = tmp_path / name
    with zipfile.ZipFile(p, "w", compression=compression) as zf:
        if metadata is not None:
            zf.writestr("metadata.csv", metadata)
        for n, data in members.items():
            zf.writestr(n, data)
    return p


RNG = np.random.default_rng(0)
GRAY = [RNG.integers(0, 256, size=(4, 5), dtype=np.uint8) for _ in range(3)]
META = "path,label,group,split\nimg/0.png,0,a,train\nimg/1.png,1,b,test\nimg/2.png,1,a,test\n"


def gray_zip(tmp_path, metadata=META, **kw):
    return image_zip(tmp_path, {f"img/{i}.png": png(a) for i, a in enumerate(GRAY)}, metadata, **kw)


def test_image_zip_gray_round_trip(tmp_path):
    p = gray_zip(tmp_path)
    d = load_dataset(p)
    assert d.x.dtype == torch.uint8 and d.x.shape == (3, 1, 4, 5)
    assert np.array_equal(d.x.numpy()[:, 0], np.stack(GRAY))
    assert d.y.tolist() == [0, 1, 1] and d.group.tolist() == ["a", "b", "a"]
    assert d.split.tolist() == ["train", "test", "test"]
    assert d.feature_names is None and d.frame["path"].tolist() == ["img/0.png", "img/1.png", "img/2.png"]
    assert d.sha256 == hashlib.sha256(p.read_bytes()).hexdigest() and d.name == "imgs.zip"
    xs = torch.cat([xb for xb, _ in d.batches(2)])
    assert xs.dtype == torch.float32 and 0.0 <= xs.min() and xs.max() <= 1.0
    assert torch.allclose(xs[:, 0], torch.from_numpy(np.stack(GRAY)).float() / 255)


def test_image_zip_same_image_twice_and_metadata_in_a_folder(tmp_path):
    p = tmp_path / "folder.zip"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("data/metadata.csv", "path,label,group\n./a.png,0,x\nb.png,1,y\na.png,1,x\n")
        zf.writestr("data/a.png", png(GRAY[0]))
        zf.writestr("data/b.png", png(GRAY[1]))
    d = load_dataset(p)
    assert np.array_equal(d.x.numpy()[:, 0], np.stack([GRAY[0], GRAY[1], GRAY[0]]))


def test_image_zip_mixed_gray_and_colour_become_rgb(tmp_path):
    rgb = RNG.integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
    rgba = RNG.integers(0, 256, size=(4, 5, 4), dtype=np.uint8)
    members = {"g.png": png(GRAY[0]), "c.png": png(rgb), "a.png": png(rgba), "p.gif": png(GRAY[1], fmt="GIF")}
    meta = "path,label,group\ng.png,0,a\nc.png,1,b\na.png,0,b\np.gif,1,a\n"
    d = load_dataset(image_zip(tmp_path, members, meta))
    assert d.x.shape == (4, 3, 4, 5)
    x = d.x.numpy()
    assert all(np.array_equal(x[0, c], GRAY[0]) for c in range(3))  # gray repeated over RGB
    assert np.array_equal(x[1], rgb.transpose(2, 0, 1))
    assert np.array_equal(x[2], rgba[..., :3].transpose(2, 0, 1))  # alpha dropped
    assert np.array_equal(x[3, 0], x[3, 1])  # a gray palette image


def test_image_zip_la_and_16_bit_gray_stay_one_channel(tmp_path):
    la = RNG.integers(0, 256, size=(4, 5, 2), dtype=np.uint8)
    wide = GRAY[0].astype(np.uint16) * 257
    members = {"la.png": png(la), "w.png": png(wide)}
    meta = "path,label,group\nla.png,0,a\nw.png,1,b\n"
    d = load_dataset(image_zip(tmp_path, members, meta))
    assert d.x.shape == (2, 1, 4, 5)
    assert np.array_equal(d.x.numpy()[0, 0], la[..., 0])
    assert np.array_equal(d.x.numpy()[1, 0], GRAY[0])


def test_image_zip_normalize_imagenet(tmp_path):
    rgb = [RNG.integers(0, 256, size=(2, 3, 3), dtype=np.uint8) for _ in range(2)]
    p = image_zip(tmp_path, {"0.png": png(rgb[0]), "1.png": png(rgb[1])}, "path,label,group\n0.png,0,a\n1.png,1,b\n")
    d = load_dataset(p, normalize="imagenet")
    assert d.normalize == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    xb, _ = next(d.batches(2))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    expected = (torch.from_numpy(np.stack(rgb)).permute(0, 3, 1, 2).float() / 255 - mean) / std
    assert torch.allclose(xb, expected, atol=1e-6)
    # one mean and one std for every channel
    d = load_dataset(p, normalize="0.5,0.25")
    assert d.normalize == ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    xb, _ = next(d.batches(2))
    assert torch.allclose(xb, (torch.from_numpy(np.stack(rgb)).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25)


def test_image_zip_normalize_channel_mismatch(tmp_path):
    raises(["imgs.zip", "--normalize", "3 value(s)", "1 channel(s)"], load_dataset, gray_zip(tmp_path),
           normalize="imagenet")


def test_image_zip_group_label_and_missing_group(tmp_path):
    d = load_dataset(gray_zip(tmp_path), group="label")
    assert d.group.tolist() == ["0", "1", "1"]
    meta = "path,label,group\nimg/0.png,0,a\nimg/1.png,1,\nimg/2.png,1,a\n"
    raises(["imgs.zip", "group column 'group'", "line 3", "--missing-group"], load_dataset, gray_zip(tmp_path, meta))
    d = load_dataset(gray_zip(tmp_path, meta), missing_group="drop")
    assert d.n == 2 and np.array_equal(d.x.numpy()[1, 0], GRAY[2]) and d.frame["path"].tolist()[1] == "img/2.png"


def test_image_zip_member_path_traversal_refused(tmp_path):
    p = image_zip(tmp_path, {"../evil.png": png(GRAY[0])}, "path,label,group\n../evil.png,0,a\n")
    raises(["imgs.zip", "refused", "'../evil.png'", "outside the archive"], load_dataset, p)
    p = image_zip(tmp_path, {"/etc/evil.png": png(GRAY[0])}, "path,label,group\n/etc/evil.png,0,a\n")
    raises(["imgs.zip", "refused", "'/etc/evil.png'", "outside the archive"], load_dataset, p)


def test_image_zip_metadata_path_traversal_refused(tmp_path):
    p = image_zip(tmp_path, {"a.png": png(GRAY[0])}, "path,label,group\na.png,0,a\nsub/../../b.png,1,b\n")
    raises(["imgs.zip", "refused", "'sub/../../b.png'", "line 3", "outside the archive"], load_dataset, p)


def test_image_zip_absent_image(tmp_path):
    p = image_zip(tmp_path, {"a.png": png(GRAY[0])}, "path,label,group\na.png,0,a\nb.png,1,b\nc.png,0,a\n")
    raises(["imgs.zip", "2 image(s) that are not in the archive", "'b.png', 'c.png'"], load_dataset, p)


def test_image_zip_blank_path(tmp_path):
    p = image_zip(tmp_path, {"a.png": png(GRAY[0])}, "path,label,group\na.png,0,a\n,1,b\n")
    raises(["imgs.zip", "column 'path'", "1 blank", "line 3"], load_dataset, p)


def test_image_zip_without_metadata(tmp_path):
    p = image_zip(tmp_path, {"a.png": png(GRAY[0])}, None)
    raises(["imgs.zip", "'metadata.csv'", "path,label,group", "members: 'a.png'"], load_dataset, p)


def test_image_zip_metadata_missing_columns(tmp_path):
    p = image_zip(tmp_path, {"a.png": png(GRAY[0])}, "file,label,group\na.png,0,a\n")
    raises(["imgs.zip", "path column 'path'", "found columns: 'file', 'label', 'group'"], load_dataset, p)
    p = image_zip(tmp_path, {"a.png": png(GRAY[0])}, "path,class,group\na.png,0,a\n")
    raises(["imgs.zip", "label column 'label'", "'class'"], load_dataset, p)


def test_image_zip_bomb_refused_before_decompressing(tmp_path):
    p = image_zip(tmp_path, {"zeros.png": bytes(50 << 20)}, "path,label,group\nzeros.png,0,a\n")
    assert p.stat().st_size < 1 << 20
    raises(["imgs.zip", "refused", "'zeros.png'", "zip bomb", "52,428,800 bytes"], load_dataset, p)


def test_image_zip_past_the_size_limit_refused(tmp_path):
    raises(["imgs.zip", "refused", "limit of 100 bytes", "max_uncompressed_bytes"],
           load_dataset, gray_zip(tmp_path), max_uncompressed_bytes=100)


def test_image_zip_claimed_size_is_what_counts(tmp_path):
    # A member whose central-directory record claims a huge size is refused from the claim alone.
    raw = bytearray(gray_zip(tmp_path, compression=zipfile.ZIP_STORED).read_bytes())
    pos = raw.find(b"PK\x01\x02")  # first central-directory record (metadata.csv)
    raw[pos + 24:pos + 28] = (0xFFFFFFF0).to_bytes(4, "little")  # its uncompressed size
    p = tmp_path / "claims.zip"
    p.write_bytes(bytes(raw))
    raises(["claims.zip", "refused", "4,294,967,", "max_uncompressed_bytes"], load_dataset, p)


def test_image_zip_decoded_pixels_bounded(tmp_path):
    big = np.zeros((300, 300), dtype=np.uint8)  # compresses to almost nothing, decodes to 90,000 bytes
    p = image_zip(tmp_path, {"a.png": png(big)}, "path,label,group\n" + "a.png,0,a\n" * 20)
    raises(["imgs.zip", "20 images of 1x300x300", "1,800,000 bytes", "limit of 1,000,000"],
           load_dataset, p, max_uncompressed_bytes=1_000_000)


def test_image_zip_corrupt_image(tmp_path):
    good = png(GRAY[0])
    members = {"a.png": good, "b.png": good[: len(good) // 2], "c.png": b"not an image"}
    p = image_zip(tmp_path, members, "path,label,group\na.png,0,a\nc.png,1,b\n")
    raises(["imgs.zip", "image 'c.png' does not decode", "not an image format"], load_dataset, p)
    p = image_zip(tmp_path, members, "path,label,group\na.png,0,a\nb.png,1,b\n")
    raises(["imgs.zip", "image 'b.png' does not decode", "truncated"], load_dataset, p)


def test_image_zip_mixed_sizes(tmp_path):
    members = {"a.png": png(GRAY[0]), "b.png": png(np.zeros((6, 7), dtype=np.uint8))}
    p = image_zip(tmp_path, members, "path,label,group\na.png,0,a\nb.png,1,b\n")
    raises(["imgs.zip", "same size", "'a.png' is 5x4", "'b.png' is 7x6", "Resize"], load_dataset, p)


def test_image_zip_unsupported_mode(tmp_path):
    members = {"f.tiff": png(np.zeros((4, 5), dtype=np.float32), fmt="TIFF")}
    p = image_zip(tmp_path, members, "path,label,group\nf.tiff,0,a\n")
    raises(["imgs.zip", "'f.tiff'", "mode 'F'", "8-bit"], load_dataset, p)


def test_image_zip_pil_decompression_bomb(tmp_path, monkeypatch):
    # Pillow's guard is left at its default in the loader; lower it here so a tiny image trips it.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4)
    raises(["imgs.zip", "refused image 'img/0.png'", "decompression bomb"], load_dataset, gray_zip(tmp_path))


def test_not_a_zip(tmp_path):
    p = tmp_path / "imgs.zip"
    p.write_bytes(b"hello")
    raises(["imgs.zip", "expected a zip archive"], load_dataset, p)


# ---- validate_labels ------------------------------------------------------------------------------------
def dataset(y) -> GroupedDataset:
    y = torch.tensor(y)
    return GroupedDataset(x=torch.zeros(len(y), 1), y=y, group=np.array(["a"] * len(y), dtype=object),
                          name="t", sha256="0", label_column="income")


def test_validate_labels_in_range():
    validate_labels(dataset([0, 1, 1]), 1, source="t.csv")
    validate_labels(dataset([0, 1, 1]), 2, source="t.csv")
    validate_labels(dataset([0, 2, 4]), 5, source="t.csv")


def test_validate_labels_binary():
    raises(["t.csv", "'income'", "0 or 1", "binary", "1 output", "2 row(s)", "2 (2 rows)"],
           validate_labels, dataset([0, 2, 2, 1]), 1, source="t.csv")


def test_validate_labels_multiclass():
    raises(["t.csv", "'income'", "class indices 0..2", "3 outputs", "4 row(s)", "5 (2 rows)", "-1 (1 row)",
            "3 (1 row)"], validate_labels, dataset([0, 5, -1, 3, 5, 1]), 3, source="t.csv")


def test_validate_labels_num_outputs_checked():
    with pytest.raises(ValueError, match="num_outputs"):
        validate_labels(dataset([0]), 0, source="t")


def test_reading_an_npz_imports_neither_pandas_nor_pil(tmp_path):
    """Start-up costs only what the command needs (issue 13): the table and image loaders are imported when a file of
    their kind is read."""
    import subprocess
    import sys

    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((4, 3), np.float32), y=np.array([0, 1, 0, 1]), group=np.array(["a", "a", "b", "b"]))
    code = ("import sys; from fairprune.data import load_dataset; d = load_dataset(sys.argv[1]); "
            "print(d.n, 'pandas' in sys.modules, 'PIL' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["4", "False", "False"]
