"""Hugging Face checkpoints and text, end to end: tiny BERT and ViT checkpoints built offline here (a WordPiece
tokenizer trained with `tokenizers` on a small corpus), trained a few steps on synthetic grouped data, saved with
save_pretrained (safetensors), then audited through the CLI; the refusals (pickled weights, auto_map, no tokenizer,
a missing text column) exit 2 with one line that names the problem."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fairprune.core.errors import InputError
from fairprune.run.cli import main

from test_cli import assert_input_error, run

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

POS = ["good", "great", "fun", "lovely", "superb"]
NEG = ["bad", "awful", "boring", "poor", "dull"]
FILL = {"a": ["the", "movie", "was", "plot", "film"], "b": ["this", "show", "seemed", "story", "series"]}
MAX_LENGTH = 16


def text_frame(n: int, seed: int) -> pd.DataFrame:
    """Label 1 when the sentence holds a positive word, 0 for a negative one; group b writes with other filler."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label, group = i % 2, "a" if (i // 2) % 3 else "b"
        words = [rng.choice(FILL[group]) for _ in range(rng.randint(3, 8))]
        for _ in range(rng.randint(1, 2)):
            words.insert(rng.randrange(len(words) + 1), rng.choice(POS if label else NEG))
        rows.append((" ".join(words), label, group))
    return pd.DataFrame(rows, columns=["text", "label", "group"])


def _tokenizer(corpus):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=120, special_tokens=specials))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                                cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def _train(model, batches, steps: int):
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        kwargs = batches(torch.randint(0, batches.n, (32,), generator=gen))
        loss = model(**kwargs).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """A trained tiny BERT (with its tokenizer) and ViT checkpoint, a text CSV and an image folder."""
    root = tmp_path_factory.mktemp("hf")
    train = text_frame(160, seed=0)
    fast = _tokenizer(train["text"].tolist())
    torch.manual_seed(0)
    bert = transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=len(fast), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, num_labels=2))
    enc = fast(train["text"].tolist(), padding="max_length", truncation=True, max_length=MAX_LENGTH,
               return_tensors="pt")
    y = torch.tensor(train["label"].to_numpy())

    def text_batch(idx):
        return {**{k: v[idx] for k, v in enc.items()}, "labels": y[idx]}
    text_batch.n = len(y)
    _train(bert, text_batch, 40)
    (root / "bert").mkdir()
    bert.save_pretrained(root / "bert")
    fast.save_pretrained(root / "bert")
    csv = root / "text.csv"
    text_frame(120, seed=1).to_csv(csv, index=False)

    # images: class 1 has a bright blue channel; 40x40 PNGs in class folders, resized to the ViT's 32x32
    from PIL import Image

    gen = torch.Generator().manual_seed(1)
    images = root / "images"
    xs, ys = [], []
    for i in range(40):
        label = i % 2
        x = torch.rand(3, 40, 40, generator=gen) * 0.5
        if label:
            x[2] += 0.5
        (images / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray((x.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(images / str(label) / f"{i}.png")
        xs.append(torch.nn.functional.interpolate(x[None], size=(32, 32), mode="bilinear")[0])
        ys.append(label)
    px, py = (torch.stack(xs) - 0.5) / 0.5, torch.tensor(ys)
    torch.manual_seed(0)
    vit = transformers.ViTForImageClassification(transformers.ViTConfig(
        image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=2))

    def image_batch(idx):
        return {"pixel_values": px[idx], "labels": py[idx]}
    image_batch.n = len(py)
    _train(vit, image_batch, 30)
    vit.save_pretrained(root / "vit")
    return {"root": root, "bert": root / "bert", "vit": root / "vit", "csv": csv, "images": images}


def _copy(src: Path, dst: Path, *names: str) -> Path:
    dst.mkdir()
    for n in names:
        shutil.copy(src / n, dst / n)
    return dst


# --- the library ------------------------------------------------------------------------------------

def test_load_model_and_load_dataset_on_a_checkpoint_folder(hf):
    from fairprune.data import Inputs, load_dataset
    from fairprune.zoo import HFClassifier, hf_task, load_model
    from fairprune.zoo._load import model_kind

    assert hf_task(hf["bert"]) == "text" and hf_task(hf["vit"]) == "image"
    assert model_kind(hf["bert"]) == "hf"
    model = load_model(hf["bert"])
    assert model.kind == "hf" and model.arch == "BertForSequenceClassification" and model.name == "bert"
    assert isinstance(model.module, HFClassifier) and not model.module.training
    names = [n for n, _ in model.module.named_parameters()]
    assert names[0] == "hf.bert.embeddings.word_embeddings.weight" and "hf.classifier.weight" in names
    h = hashlib.sha256()
    for f in ("config.json", "model.safetensors"):
        h.update(f"{f}\n".encode() + (hf["bert"] / f).read_bytes())
    assert model.sha256 == h.hexdigest()

    data = load_dataset(hf["csv"], text="text", tokenizer=hf["bert"], max_length=6)
    assert isinstance(data.x, Inputs) and data.x.names[:2] == ("input_ids", "attention_mask")
    assert data.x.shapes[0] == (120, 6) and all(d == torch.int64 for d in data.x.dtypes)
    frame = pd.read_csv(hf["csv"])
    lengths = [len(ids) for ids in transformers.AutoTokenizer.from_pretrained(hf["bert"])(
        frame["text"].tolist())["input_ids"]]
    truncated = sum(n > 6 for n in lengths)
    assert 0 < truncated < 120
    assert f"{truncated} of 120 rows truncated" in data.preprocessing[1]
    assert "max_length=6" in data.preprocessing[1] and "padding='max_length'" in data.preprocessing[1]
    # the model reads the same ids the tokenizer gives, [CLS] first and [SEP] last in a truncated row
    row = int(np.argmax(np.array(lengths) > 6))
    ids = data.x.tensors[0][row].tolist()
    assert ids[0] == 2 and ids[-1] == 3 and data.x.tensors[1][row].tolist() == [1] * 6
    with torch.no_grad():
        logits = model.module(*data.x[:5].tensors)
    assert logits.shape == (5, 2)

    vit = load_model(hf["vit"])
    assert vit.kind == "hf" and vit.input_shape == (3, 32, 32) and vit.module.input_names == ("pixel_values",)


def test_text_words_that_pandas_calls_missing_stay_text(hf, tmp_path):
    from fairprune.data import load_dataset

    csv = tmp_path / "na.csv"
    pd.DataFrame({"text": ["None", "NA", "good fun", "null"], "label": [0, 1, 1, 0],
                  "group": ["a", "b", "a", "b"]}).to_csv(csv, index=False)
    data = load_dataset(csv, text="text", tokenizer=hf["bert"], max_length=8)
    assert data.n == 4 and (data.x.tensors[1].sum(1) >= 3).all()   # [CLS] word(s) [SEP] in every row


# --- the CLI --------------------------------------------------------------------------------------

def test_audit_text_checkpoint_through_the_cli(hf, tmp_path, capsys):
    out = tmp_path / "r.json"
    code, stdout, err = run(["audit", "--model", hf["bert"], "--data", hf["csv"], "--text", "text", "--label", "label",
                             "--group", "group", "--sparsity", "0.5", "0.9", "--max-length", MAX_LENGTH,
                             "--out", out], capsys)
    assert code == 0, err
    r = json.loads(out.read_text())
    assert r["dense"]["overall"]["accuracy"] >= 0.9          # trained on the same rule; chance is 0.5
    assert r["data"]["groups"] == {"a": 80, "b": 40}
    pre = " | ".join(r["provenance"]["preprocessing"])
    assert "tokenizer" in pre and f"max_length={MAX_LENGTH}" in pre and "truncation=True" in pre
    assert "input_ids" in pre and "attention_mask" in pre
    # pruning covers the encoder's linear layers (q/k/v/o, FFN), the pooler and the classifier; embeddings kept
    from fairprune.zoo import load_model

    module = load_model(hf["bert"]).module
    linear = sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))
    assert r["model"]["prunable_by_kind"]["linear"] == linear == r["model"]["prunable_parameters"]
    assert r["model"]["prunable_by_kind"]["embedding"] == 0
    assert [lv["achieved_sparsity"] for lv in r["levels"]] == pytest.approx([0.5, 0.9], abs=0.01)
    assert r["levels"][0]["overall"]["accuracy"] >= r["levels"][1]["overall"]["accuracy"] - 0.05


def test_export_a_pruned_text_checkpoint_as_a_program(hf, tmp_path, capsys):
    from fairprune.data import load_dataset
    from fairprune.engine.prune import MaskedModel, compute_masks
    from fairprune.zoo import load_model

    out = tmp_path / "bert.pt2"
    code, _, err = run(["export", "--model", hf["bert"], "--data", hf["csv"], "--text", "text", "--max-length",
                        MAX_LENGTH, "--sparsity", "0.5", "--out", out], capsys)
    assert code == 0, err
    program = load_model(out)
    data = load_dataset(hf["csv"], text="text", tokenizer=hf["bert"], max_length=MAX_LENGTH)
    model = load_model(hf["bert"])
    MaskedModel(model.module).apply(compute_masks(model.module, "global_magnitude", 0.5,
                                                  example_input=data.x[:2]))
    with torch.no_grad():
        assert torch.allclose(program.module(*data.x.tensors), model.module(*data.x.tensors), atol=1e-5)


def test_diagnostics_on_the_text_checkpoint(hf, tmp_path, capsys):
    out = tmp_path / "d.json"
    code, _, err = run(["audit", "--model", hf["bert"], "--data", hf["csv"], "--text", "text", "--sparsity", "0.5",
                        "--max-length", MAX_LENGTH, "--diagnostics", "--out", out], capsys)
    assert code == 0, err
    r = json.loads(out.read_text())
    for g in ("a", "b"):
        d = r["diagnostics"]["dense"][g]
        assert 0 < d["margin_mean"] <= 1
        # the Hessian differentiates twice through eager attention; where a factor is not computed, a warning says why
        if d["hessian_max_eig"] is None:
            assert any("hessian" in w.lower() for w in r["warnings"]), r["warnings"]
        else:
            assert d["hessian_max_eig"] > 0 and d["hessian_trace"] is not None


def test_structured_l1_removes_whole_attention_heads(hf):
    from fairprune.data import load_dataset
    from fairprune.engine.prune import compute_masks
    from fairprune.zoo import load_model

    module = load_model(hf["bert"]).module
    data = load_dataset(hf["csv"], text="text", tokenizer=hf["bert"], max_length=MAX_LENGTH)
    heads_removed = 0
    for s in (0.3, 0.6, 0.8):
        masks = compute_masks(module, "structured_l1", s, example_input=data.x[:2])
        for layer in range(2):
            p = f"hf.bert.encoder.layer.{layer}.attention."
            rows = {n: (~masks[p + f"self.{n}.weight"]).all(1) for n in ("query", "key", "value")}
            cols = (~masks[p + "output.dense.weight"]).all(0)
            # q, k, v rows and the output projection's columns go together, 16 (one head) at a time
            assert torch.equal(rows["query"], rows["key"]) and torch.equal(rows["key"], rows["value"])
            assert torch.equal(rows["value"], cols)
            per_head = rows["query"].reshape(2, 16)
            assert (per_head.all(1) | ~per_head.any(1)).all(), per_head
            assert not per_head.all(1).all()                         # each layer keeps a head
            heads_removed += int(per_head.all(1).sum())
        # an embedding's removed channels are whole columns (hidden dims), never token rows
        emb = masks["hf.bert.embeddings.word_embeddings.weight"]
        assert torch.equal((~emb).any(0), (~emb).all(0)) and (~emb).all(1).sum() == 0
    assert heads_removed >= 1

    # a ViT's attention (q_proj, k_proj, v_proj -> o_proj, head_dim 16): whole heads too
    vit = load_model(hf["vit"]).module
    masks = compute_masks(vit, "structured_l1", 0.8, example_input=torch.rand(2, 3, 32, 32))
    removed = 0
    for layer in range(2):
        p = f"hf.vit.layers.{layer}.attention."
        rows = (~masks[p + "q_proj.weight"]).all(1)
        assert torch.equal(rows, (~masks[p + "v_proj.weight"]).all(1))
        assert torch.equal(rows, (~masks[p + "o_proj.weight"]).all(0))
        per_head = rows.reshape(2, 16)
        assert (per_head.all(1) | ~per_head.any(1)).all()
        removed += int(per_head.all(1).sum())
    assert removed >= 1


def test_audit_image_checkpoint_on_an_image_folder(hf, tmp_path, capsys):
    out = tmp_path / "v.json"
    code, _, err = run(["audit", "--model", hf["vit"], "--data", hf["images"], "--group", "label", "--resize", 32,
                        "--normalize", "0.5,0.5", "--sparsity", "0.5", "--out", out], capsys)
    assert code == 0, err
    r = json.loads(out.read_text())
    assert r["dense"]["overall"]["accuracy"] >= 0.9
    assert r["model"]["prunable_by_kind"]["conv"] == 3 * 32 * 8 * 8        # the patch embedding
    assert any("resize" in p for p in r["provenance"]["preprocessing"])


def test_an_image_checkpoint_whose_processor_normalises_otherwise_is_warned(hf, tmp_path, capsys):
    """The checkpoint's preprocessor_config.json normalises to [-1, 1]: images audited as [0, 1] get a warning that
    names the matching options; the same options silence it."""
    vit = _copy(hf["vit"], tmp_path / "vit", "config.json", "model.safetensors")
    (vit / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "ViTImageProcessor", "do_resize": True, "size": {"height": 32, "width": 32},
        "do_normalize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}))
    common = ["audit", "--model", vit, "--data", hf["images"], "--group", "label", "--resize", 32, "--sparsity", "0.5"]
    code, _, err = run(common + ["--out", tmp_path / "a.json"], capsys)
    assert code == 0, err
    warned = [w for w in json.loads((tmp_path / "a.json").read_text())["warnings"] if "image processor" in w]
    assert len(warned) == 1 and "given as pixels in [0, 1]" in warned[0]
    assert "--normalize '0.5,0.5,0.5;0.5,0.5,0.5'" in warned[0]
    code, _, err = run(common + ["--normalize", "0.5,0.5", "--out", tmp_path / "b.json"], capsys)
    assert code == 0, err
    assert not [w for w in json.loads((tmp_path / "b.json").read_text())["warnings"] if "image processor" in w]


def test_refusals_exit_2_with_the_reason(hf, tmp_path, capsys):
    bert = hf["bert"]

    def audit(*args):
        return run(["audit", *args, "--sparsity", "0.5", "--out", tmp_path / "x.json"], capsys)

    # pickled weights only
    pickled = _copy(bert, tmp_path / "pickled", "config.json", "tokenizer.json", "tokenizer_config.json")
    from fairprune.zoo import load_model

    torch.save(load_model(bert).module.hf.state_dict(), pickled / "pytorch_model.bin")
    code, _, err = audit("--model", pickled, "--data", hf["csv"], "--text", "text")
    assert_input_error(code, err, "pytorch_model.bin", "unpickling runs arbitrary code", "safetensors")

    # a config naming code of its own
    remote = _copy(bert, tmp_path / "remote", "config.json", "model.safetensors", "tokenizer.json",
                   "tokenizer_config.json")
    cfg = json.loads((remote / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForSequenceClassification": "modeling_evil.EvilModel"}
    (remote / "config.json").write_text(json.dumps(cfg))
    (remote / "modeling_evil.py").write_text("raise SystemExit('ran code from the checkpoint')\n")
    code, _, err = audit("--model", remote, "--data", hf["csv"], "--text", "text")
    assert_input_error(code, err, "auto_map", "trust_remote_code")

    # an architecture transformers does not ship
    custom = _copy(bert, tmp_path / "custom", "config.json", "model.safetensors")
    cfg = json.loads((custom / "config.json").read_text())
    cfg["model_type"] = "evilbert"
    (custom / "config.json").write_text(json.dumps(cfg))
    code, _, err = audit("--model", custom, "--data", hf["images"])
    assert_input_error(code, err, "evilbert", "trust_remote_code")

    # --text with a checkpoint that has no tokenizer, and with a model that is no checkpoint folder
    bare = _copy(bert, tmp_path / "bare", "config.json", "model.safetensors")
    code, _, err = audit("--model", bare, "--data", hf["csv"], "--text", "text")
    assert_input_error(code, err, "no tokenizer", "tokenizer.json")
    from fairprune.zoo import save_pt2

    save_pt2(torch.nn.Linear(4, 2), torch.randn(2, 4), tmp_path / "m.pt2")
    code, _, err = audit("--model", tmp_path / "m.pt2", "--data", hf["csv"], "--text", "text")
    assert_input_error(code, err, "Hugging Face checkpoint folder (--model DIR)", "m.pt2, a model file")

    # the text column is missing; blank text
    code, _, err = audit("--model", bert, "--data", hf["csv"], "--text", "review")
    assert_input_error(code, err, "text column 'review'", "--text", "'text'")
    blank = tmp_path / "blank.csv"
    frame = text_frame(10, seed=3)
    frame.loc[[2, 5], "text"] = ["", "   "]
    frame.to_csv(blank, index=False)
    code, _, err = audit("--model", bert, "--data", blank, "--text", "text")
    assert_input_error(code, err, "text column 'text'", "line 4")

    # --max-length past the checkpoint's position table
    code, _, err = audit("--model", bert, "--data", hf["csv"], "--text", "text", "--max-length", "65")
    assert_input_error(code, err, "--max-length 65", "at most 64 tokens")


def test_checks_before_transformers_reads_anything(hf, tmp_path):
    from fairprune.zoo import load_model

    # a base model (no classification head) would get a random classifier: refused
    base = tmp_path / "base"
    transformers.BertModel(transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1,
                                                   num_attention_heads=2, intermediate_size=64)).save_pretrained(base)
    with pytest.raises(InputError, match=r"ForImageClassification\); found BertModel"):
        load_model(base)
    cfg = json.loads((base / "config.json").read_text())
    cfg["architectures"] = ["BertForSequenceClassification"]
    (base / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match="no weights for .*classifier"):
        load_model(base)
    # a shard index that points outside the folder
    sharded = _copy(hf["bert"], tmp_path / "sharded", "config.json")
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "../model.safetensors"}}))
    with pytest.raises(InputError, match="shard file names in this folder"):
        load_model(sharded)
    # sharded safetensors load; a pickle beside safetensors is never opened (unpickling it would create a file)
    shards = tmp_path / "shards"
    load_model(hf["bert"]).module.hf.save_pretrained(shards, max_shard_size="40KB")
    assert len(list(shards.glob("model-*.safetensors"))) >= 2
    assert load_model(shards).kind == "hf"
    both = tmp_path / "both"
    shutil.copytree(hf["bert"], both)
    flag = tmp_path / "unpickled"
    (both / "pytorch_model.bin").write_bytes(
        b"cos\nsystem\n(V" + f"touch {flag}".encode() + b"\ntR.")     # os.system("touch ...") when unpickled
    assert load_model(both).kind == "hf" and not flag.exists()
    # a tokenizer naming code of its own is refused before transformers loads it
    from fairprune.data import load_dataset

    cfg = json.loads((both / "tokenizer_config.json").read_text())
    (both / "tokenizer_config.json").write_text(json.dumps({**cfg, "auto_map": {"AutoTokenizer": ["evil.Tok", None]}}))
    with pytest.raises(InputError, match="tokenizer_config.json names code of its own"):
        load_dataset(hf["csv"], text="text", tokenizer=both, max_length=8)
    # --arch does not apply to a checkpoint folder
    with pytest.raises(InputError, match="--arch"):
        load_model(hf["bert"], arch="mlp")
