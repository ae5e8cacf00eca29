"""Real users' inputs in the dashboard (issue 15, part 6), driven by AppTest: image folders and Hugging Face checkpoint
folders picked from the server folders (a browser cannot upload a folder), image preprocessing (resize, crop,
normalise, or a torchvision preset from a list), a text checkpoint's text column and max length, and the
preprocessing shown with the run's inputs on Results.

FAIRPRUNE_HOME is a fresh folder per test (conftest); the worker runs in-process (``jobs.run_worker(once=True)``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fairprune.run import jobs
from fairprune.run.store import RunStore

from test_app import assert_clean, new_app, open_page, texts  # noqa: F401  (shared helpers)


@pytest.fixture
def worker_calls(monkeypatch) -> list:
    calls: list = []
    monkeypatch.setattr(jobs, "ensure_worker", lambda store=None, **kw: calls.append(store))
    return calls


def write_image_folder(root: Path, n: int = 40, seed: int = 0) -> Path:
    """A folder of PNGs of three sizes with a metadata.csv (path,label,region): what people keep."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    rows = []
    sizes = [(12, 10), (10, 12), (16, 16)]
    for i in range(n):
        label = i % 2
        w, h = sizes[i % 3]
        pixels = rng.integers(0, 90, size=(h, w, 3), dtype=np.uint8) + (150 if label else 0)
        name = f"img{i:03d}.png"
        Image.fromarray(pixels.astype(np.uint8)).save(root / name)
        rows.append({"path": name, "label": label, "region": "north" if i < 28 else "south"})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root


class _Brightness(torch.nn.Module):
    """Two classes from an image's mean brightness: a model that works on 3 x 8 x 8 inputs."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.head = torch.nn.Linear(4 * 8 * 8, 2)
        with torch.no_grad():
            self.conv.weight.fill_(0.1)
            self.conv.bias.zero_()
            self.head.weight.copy_(torch.stack([-torch.ones(256), torch.ones(256)]) / 64)
            self.head.bias.copy_(torch.tensor([0.5, -0.5]) * 1.2)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).flatten(1))


def write_image_model(path: Path) -> Path:
    from fairprune.zoo import save_pt2

    save_pt2(_Brightness().eval(), torch.zeros(2, 3, 8, 8), path)
    return path


@pytest.fixture
def served_images(tmp_path, monkeypatch) -> Path:
    served = tmp_path / "served"
    write_image_folder(served / "photos")
    write_image_model(served / "brightness.pt2")
    monkeypatch.setenv("FAIRPRUNE_DATA_DIRS", str(served))
    return served


def _own_files(at):
    open_page(at, "pages_/data.py")
    return at.radio(key="data-source").set_value("files").run()


def test_an_image_folder_from_the_server_is_resized_cropped_and_audited(served_images, worker_calls):
    at = _own_files(new_app().run())
    at.radio(key="model-origin").set_value("server").run()
    at.selectbox(key="model-server").set_value("served/brightness.pt2").run()
    at.radio(key="data-origin").set_value("server").run()
    options = at.selectbox(key="data-server").options
    assert "served/photos/ (image folder)" in options, options
    at.selectbox(key="data-server").set_value("served/photos/ (image folder)").run()
    at.selectbox(key="data-label").set_value("label").run()
    at.multiselect(key="data-group").set_value(["region"]).run()
    assert_clean(at)
    # as stored, three sizes cannot be one batch: the library's message says so, naming the widget that fixes it
    assert any("same size" in e.value for e in at.error), [e.value for e in at.error]
    at.radio(key="data-prep").set_value("resize").run()
    at.number_input(key="data-resize").set_value(8).run()
    at.text_input(key="data-crop").input("8").run()
    at.radio(key="data-normalize").set_value("custom").run()
    at.text_input(key="data-normalize-own").input("0.5,0.25").run()
    assert_clean(at)
    assert not at.error, [e.value for e in at.error]
    assert any("The model runs on this data" in s.value for s in at.success)
    shown = texts(at)
    assert "resize: shorter side to 8" in shown and "centre crop: 8x8" in shown and "normalize" in shown
    data = at.session_state["inputs"]["data"]
    assert (data["resize"], data["crop"], data["normalize"]) == (8, "8", "0.5,0.25")

    open_page(at, "pages_/audit.py")
    assert "resize 8, crop 8, normalize 0.5,0.25" in texts(at)
    at.radio(key="audit-preset").set_value("custom").run()
    at.text_input(key="audit-levels").input("0.5").run()
    at.button(key="audit-run").click().run()
    assert_clean(at)
    [run] = RunStore().list(kind="audit")
    assert (run.spec["resize"], run.spec["crop"], run.spec["normalize"]) == (8, "8", "0.5,0.25")
    assert run.spec["data"] == str((served_images / "photos").resolve())      # a folder is read in place
    jobs.run_worker(RunStore(), once=True)
    done = RunStore().get(run.id)
    assert done.status == "done", done.error
    steps = done.result["provenance"]["preprocessing"]
    assert any(s.startswith("resize: shorter side to 8") for s in steps), steps
    from fairprune.core.result import AuditResult
    from fairprune.present.report import render_html

    report = render_html(AuditResult.from_dict(done.result))          # the report's inputs list the steps too
    assert "<th>preprocessing</th>" in report
    assert "centre crop: 8x8" in report and "resize: shorter side to 8" in report
    at = open_page(at, "pages_/results.py", run=run.id)
    assert_clean(at)
    shown = texts(at)
    assert "From file to model input" in shown and "centre crop: 8x8" in shown
    assert "resize 8, crop 8" in shown          # the run's inputs line under the picker


def test_preset_list_names_torchvision_weights_and_sets_transforms(served_images, worker_calls):
    at = _own_files(new_app().run())
    at.radio(key="data-origin").set_value("server").run()
    at.selectbox(key="data-server").set_value("served/photos/ (image folder)").run()
    at.selectbox(key="data-label").set_value("label").run()
    at.multiselect(key="data-group").set_value(["region"]).run()
    at.radio(key="data-prep").set_value("preset").run()
    presets = at.selectbox(key="data-preset").options
    assert "ResNet50_Weights.IMAGENET1K_V2" in presets and "ViT_B_16_Weights.IMAGENET1K_V1" in presets
    assert not any("Weights" not in p.split(".")[0] for p in presets)
    assert any("Choose a preset" in i.value for i in at.info)         # asked before anything is read
    at.selectbox(key="data-preset").set_value("ResNet18_Weights.IMAGENET1K_V1").run()
    assert_clean(at)
    assert not at.error, [e.value for e in at.error]
    assert at.session_state["inputs"]["data"]["transforms"] == "ResNet18_Weights.IMAGENET1K_V1"
    shown = texts(at).replace("\\", "")          # as markdown shows it: escapes gone
    assert "ResNet18_Weights.IMAGENET1K_V1.transforms() preset" in shown and "centre crop: 224x224" in shown


def test_a_table_is_not_offered_image_preprocessing(table_files, worker_calls):
    csv, _, _, _ = table_files
    at = _own_files(new_app().run())
    at.file_uploader(key="data-upload").set_value(("table.csv", csv.read_bytes(), "text/csv")).run()
    assert_clean(at)
    assert not [r for r in at.radio if r.key == "data-prep"]


# ---- a Hugging Face text checkpoint -------------------------------------------------------------------------------
WORDS = ["good", "great", "fine", "bad", "awful", "poor", "the", "film", "was", "very", "plot", "acting"]


def write_text_checkpoint(folder: Path) -> Path:
    """A tiny BERT for 2 classes with a word-level tokenizer, saved with save_pretrained (offline)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]")
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64, num_labels=2)
    BertForSequenceClassification(cfg).eval().save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def write_text_csv(path: Path, n: int = 60, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = int(rng.random() < 0.5)
        words = rng.choice(WORDS[:3] if label else WORDS[3:6], size=2).tolist() + rng.choice(WORDS[6:], 3).tolist()
        rows.append({"review": " ".join(words), "label": label, "site": "a" if i % 3 else "b", "stars": i % 5})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_a_text_checkpoint_folder_asks_for_the_text_column_and_max_length(tmp_path, monkeypatch, worker_calls):
    served = tmp_path / "served"
    write_text_checkpoint(served / "tiny-bert")
    csv = write_text_csv(tmp_path / "reviews.csv")
    monkeypatch.setenv("FAIRPRUNE_DATA_DIRS", str(served))
    at = _own_files(new_app().run())
    at.radio(key="model-origin").set_value("server").run()
    options = at.selectbox(key="model-server").options
    assert "served/tiny-bert/ (Hugging Face checkpoint)" in options, options
    at.selectbox(key="model-server").set_value("served/tiny-bert/ (Hugging Face checkpoint)").run()
    assert_clean(at)
    assert not at.error, [e.value for e in at.error]
    assert "text classification" in texts(at)
    at.file_uploader(key="data-upload").set_value(("reviews.csv", csv.read_bytes(), "text/csv")).run()
    at.selectbox(key="data-label").set_value("label").run()
    at.multiselect(key="data-group").set_value(["site"]).run()
    assert at.selectbox(key="data-text").options == ["review", "stars"]      # label and group are not offered
    assert any("Choose the text column" in i.value for i in at.info)
    at.selectbox(key="data-text").set_value("review").run()
    at.number_input(key="data-max-length").set_value(8).run()
    assert_clean(at)
    assert not at.error, [e.value for e in at.error]
    assert any("The model runs on this data" in s.value for s in at.success)
    assert "max_length" in texts(at) or "8 tokens" in texts(at)

    open_page(at, "pages_/audit.py")
    at.radio(key="audit-preset").set_value("custom").run()
    at.text_input(key="audit-levels").input("0.5").run()
    at.button(key="audit-run").click().run()
    assert_clean(at)
    [run] = RunStore().list(kind="audit")
    assert (run.spec["text"], run.spec["max_length"]) == ("review", 8)
    assert run.spec["model"] == str((served / "tiny-bert").resolve())       # the checkpoint folder, read in place
    jobs.run_worker(RunStore(), once=True)
    done = RunStore().get(run.id)
    assert done.status == "done", done.error
    at = open_page(at, "pages_/results.py", run=run.id)
    assert_clean(at)
    assert "text column review, max length 8 tokens" in texts(at)


def test_a_model_with_several_inputs_and_its_npz_from_the_server(tmp_path, monkeypatch, worker_calls):
    """NPZ arrays x0, x1, x2 reach a three-input program positionally; the page says what the model is given."""
    from test_multi_input import IdsMaskFeatures

    served = tmp_path / "served"
    served.mkdir()
    rng = np.random.default_rng(0)
    n = 60
    ids, mask = rng.integers(1, 40, (n, 6)), np.ones((n, 6), dtype=np.int64)
    feats = rng.standard_normal((n, 3)).astype(np.float32)
    np.savez(served / "rows.npz", x0=ids, x1=mask, x2=feats, y=rng.integers(0, 3, n),
             group=np.array(["a", "b", "c"] * (n // 3)))
    torch.manual_seed(0)
    example = (torch.tensor(ids[:2]), torch.tensor(mask[:2]), torch.tensor(feats[:2]))
    batch = torch.export.Dim("batch", min=1)
    torch.export.save(torch.export.export(IdsMaskFeatures().eval(), example,
                                          dynamic_shapes=tuple({0: batch} for _ in example)), str(served / "m.pt2"))
    monkeypatch.setenv("FAIRPRUNE_DATA_DIRS", str(served))
    at = _own_files(new_app().run())
    at.radio(key="model-origin").set_value("server").run()
    at.selectbox(key="model-server").set_value("served/m.pt2").run()
    at.radio(key="data-origin").set_value("server").run()
    at.selectbox(key="data-server").set_value("served/rows.npz").run()
    assert_clean(at)
    assert not at.error, [e.value for e in at.error]
    assert any("The model runs on this data" in s.value for s in at.success)
    assert "the model is given 3 inputs, in this order: x0 (6,) int64, x1 (6,) int64, x2 (3,) float32" in texts(at)
    open_page(at, "pages_/audit.py")
    at.radio(key="audit-preset").set_value("custom").run()
    at.text_input(key="audit-levels").input("0.5").run()
    at.button(key="audit-run").click().run()
    assert_clean(at)
    [run] = RunStore().list(kind="audit")
    jobs.run_worker(RunStore(), once=True)
    done = RunStore().get(run.id)
    assert done.status == "done", done.error
    assert any("x0 (6,) int64, x1 (6,) int64, x2 (3,) float32" in s for s in done.result["provenance"]["preprocessing"])
