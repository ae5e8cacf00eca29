"""Text CSVs: a column of raw text tokenised by a Hugging Face checkpoint's own tokenizer (``--text COL``).

The label, group, missing-group and split columns are read as for any CSV (:mod:`._table`); the text column is
tokenised with ``AutoTokenizer.from_pretrained(folder, local_files_only=True)`` (the checkpoint's
``tokenizer.json``; never ``trust_remote_code``, nothing downloaded), every row padded and truncated to
``max_length`` tokens. The model then takes ``input_ids``, ``attention_mask`` (and ``token_type_ids`` where the
tokenizer gives them), int64, passed positionally in that order (:class:`~fairprune.data.Inputs`). The steps,
and how many rows were truncated, are recorded in ``preprocessing`` (the result's ``provenance.preprocessing``).
"""

from __future__ import annotations

import gzip
import io
import json
import zlib
from pathlib import Path

import numpy as np
import torch
from pandas._libs.parsers import STR_NA_VALUES

from ..core._hash import sha256_file
from ..core._transformers import import_transformers
from ..core.errors import InputError
from ._csv import BAD_GZIP, _LimitedGzip
from ._dataset import GroupedDataset
from ._inputs import Inputs
from ._table import SPLIT_COLUMN, line_numbers, read_csv, require_columns, table_parts

__all__ = ["load_text_csv", "TEXT_INPUT_ORDER"]

#: The tokenizer outputs the model takes, in this positional order (those the tokenizer gives).
TEXT_INPUT_ORDER = ("input_ids", "attention_mask", "token_type_ids")
#: Files one of which a checkpoint folder with a tokenizer holds.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                    "sentencepiece.bpe.model", "tokenizer.model")
_MAX_JSON_BYTES = 16 << 20

NO_TOKENIZER = (
    "text (--text {text!r}) is tokenised by the model's own tokenizer, so the model must be a Hugging Face checkpoint "
    "folder (--model DIR) holding one (tokenizer.json); found {found}"
)


def load_text_csv(path: Path, *, text: str, tokenizer, max_length: int, label: str, groups: tuple[str, ...],
                  missing_group: str, name: str | None, features, ignore,
                  max_uncompressed_bytes: int) -> GroupedDataset:
    """A CSV (or .csv.gz) with a text column -> GroupedDataset whose x is Inputs(input_ids, attention_mask[,
    token_type_ids]) (N, max_length) int64, tokenised by ``tokenizer``'s (a checkpoint folder) own tokenizer."""
    path = Path(path)
    file = path.name
    if not path.is_file():
        raise InputError(f"{path}: expected a CSV file with a text column (--text {text!r}); found no such file")
    if features is not None or ignore is not None:
        raise InputError(f"{file}: --features and --ignore choose numeric feature columns; with text (--text "
                         f"{text!r}) the model reads only that column; expected neither option")
    if text == label or text in groups:
        role = "label" if text == label else "group"
        raise InputError(f"{file}: text (--text) must be its own column; found {text!r}, the {role} column")
    if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) or max_length < 2:
        raise InputError(f"max_length (--max-length): expected a whole number of tokens >= 2 (e.g. 128); "
                         f"found {max_length!r}")
    folder = _tokenizer_folder(tokenizer, text)

    text_columns = [text] + [g for g in groups if g != label]
    # pandas' missing-value words ('NA', 'None', 'null', ...) mean missing in the label, group and split columns as
    # in any CSV; in the text column they are words, and only an empty cell is missing
    na = {c: sorted(STR_NA_VALUES) for c in (label, *groups, SPLIT_COLUMN)}
    na[text] = [""]
    if file.lower().endswith(".gz"):
        try:
            with io.BufferedReader(_LimitedGzip(path, limit=max_uncompressed_bytes, file=file)) as f:
                frame = read_csv(f, file=file, text_columns=text_columns, compression=None, keep_default_na=False,
                                 na_values=na)
        except (gzip.BadGzipFile, EOFError, zlib.error) as err:
            raise InputError(BAD_GZIP.format(file=file, reason=err)) from err
    else:
        frame = read_csv(path, file=file, text_columns=text_columns, keep_default_na=False, na_values=na)
    require_columns(frame, [("text", text, "--text"), ("label", label, "--label")]
                    + [("group", g, "--group") for g in groups], file=file)
    parts = table_parts(frame, file=file, label=label, groups=groups, missing_group=missing_group)
    texts = _texts(parts.frame[text].to_numpy(dtype=object), column=text, rows=parts.rows, file=file)

    tok = _load_tokenizer(folder)
    limit = _length_limit(folder, tok)
    if limit is not None and max_length > limit:
        raise InputError(f"max_length (--max-length {max_length}): the checkpoint {folder.name} takes at most "
                         f"{limit} tokens per row; expected --max-length {limit} or less")

    x, truncated, longest = _tokenise(tok, texts, max_length, folder)
    n = len(texts)
    steps = (
        f"text column {text!r} tokenised by the checkpoint's own tokenizer: {type(tok).__name__} "
        f"(vocabulary {_vocab_size(tok):,} tokens) from {folder.name}",
        f"padding='max_length', truncation=True, max_length={max_length} tokens: "
        f"{truncated:,} of {n:,} rows truncated (longest {longest:,} tokens)",
    )
    return GroupedDataset(
        x=x,
        y=torch.from_numpy(parts.y),
        group=parts.group,
        name=name or file,
        sha256=sha256_file(path),
        label_column=label,
        group_columns=groups,
        split=parts.split,
        frame=parts.frame,
        preprocessing=steps,
    )


def _texts(values: np.ndarray, *, column: str, rows: np.ndarray, file: str) -> list[str]:
    """The column's values as str; blank, missing and non-text values refused with their lines named."""
    missing = np.array([not isinstance(v, str) and (v is None or (isinstance(v, float) and np.isnan(v)))
                        for v in values], dtype=bool)
    if missing.any():
        idx = np.flatnonzero(missing)
        raise InputError(f"{file}: text column {column!r} must hold text in every row; found it blank in "
                         f"{len(idx)} row(s) ({line_numbers(rows[idx])}); fill them or remove those rows")
    other = np.array([not isinstance(v, str) for v in values], dtype=bool)
    if other.any():
        idx = np.flatnonzero(other)
        raise InputError(f"{file}: text column {column!r} must hold text; found {type(values[idx[0]]).__name__} "
                         f"values in {len(idx)} row(s) ({line_numbers(rows[idx])})")
    empty = np.array([not v.strip() for v in values], dtype=bool)
    if empty.any():
        idx = np.flatnonzero(empty)
        raise InputError(f"{file}: text column {column!r} must hold text in every row; found only whitespace in "
                         f"{len(idx)} row(s) ({line_numbers(rows[idx])}); fill them or remove those rows")
    return [str(v) for v in values]


def _tokenise(tok, texts: list[str], max_length: int, folder: Path) -> tuple[Inputs, int, int]:
    """(Inputs of int64 (N, max_length) tensors in TEXT_INPUT_ORDER, rows truncated, longest row in tokens)."""
    try:
        lengths = [len(ids) for ids in tok(texts, truncation=False, padding=False, return_attention_mask=False,
                                          return_token_type_ids=False)["input_ids"]]
        enc = tok(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="np")
    except (ValueError, TypeError, KeyError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        hint = ("; the tokenizer has no padding token (set tokenizer.pad_token and save_pretrained the tokenizer "
                "into the folder)" if "pad" in first.lower() else "")
        raise InputError(f"{folder}: the checkpoint's tokenizer could not tokenise the text ({first}){hint}") from err
    names = [k for k in TEXT_INPUT_ORDER if k in enc]
    tensors = [torch.from_numpy(np.ascontiguousarray(enc[k], dtype=np.int64)) for k in names]
    truncated = sum(1 for n in lengths if n > max_length)
    return Inputs(tensors, names), truncated, max(lengths, default=0)


def _tokenizer_folder(tokenizer, text: str) -> Path:
    if tokenizer is None or tokenizer == "":
        raise InputError(NO_TOKENIZER.format(text=text, found="no model folder"))
    folder = Path(tokenizer)
    if not folder.is_dir():
        found = f"{folder.name}, a model file" if folder.is_file() else f"{folder}, which does not exist"
        raise InputError(NO_TOKENIZER.format(text=text, found=found))
    if not any((folder / f).is_file() for f in _TOKENIZER_FILES):
        raise InputError(f"{folder}: text (--text {text!r}) is tokenised by the checkpoint's own tokenizer; found "
                         f"no tokenizer in the folder (expected tokenizer.json, as tokenizer.save_pretrained(folder) "
                         f"writes it, beside config.json)")
    return folder


def _load_tokenizer(folder: Path):
    for name in ("tokenizer_config.json", "config.json"):
        file = folder / name
        if not file.is_file():
            continue
        if file.stat().st_size > _MAX_JSON_BYTES:
            raise InputError(f"{file}: expected a small JSON file; found {file.stat().st_size:,} bytes")
        try:
            cfg = json.loads(file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise InputError(f"{file}: expected JSON text; found text that does not parse ({err})") from err
        if isinstance(cfg, dict) and cfg.get("auto_map"):
            raise InputError(f"{folder}: refused: {name} names code of its own (auto_map); running it would mean "
                             "trust_remote_code, which fairprune never sets. Expected a tokenizer transformers ships "
                             "(tokenizer.json)")
    transformers = _transformers()
    try:
        tok = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, AttributeError, ImportError) as err:
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise InputError(f"{folder}: expected a tokenizer transformers {transformers.__version__} can load offline "
                         f"(tokenizer.json); loading it failed ({first})") from err
    if isinstance(tok, bool) or not callable(tok):
        raise InputError(f"{folder}: expected a tokenizer; found {type(tok).__name__}")
    return tok


def _length_limit(folder: Path, tok) -> int | None:
    """The most tokens the checkpoint takes: its position table (config.json) or the tokenizer's stated limit."""
    limits = []
    cfg_file = folder / "config.json"
    if cfg_file.is_file():
        try:
            cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, OSError):
            cfg = {}
        m = cfg.get("max_position_embeddings") if isinstance(cfg, dict) else None
        if isinstance(m, int) and m > 0:
            limits.append(m)
    m = getattr(tok, "model_max_length", None)
    if isinstance(m, int) and 0 < m < 1_000_000:
        limits.append(m)
    return min(limits) if limits else None


def _vocab_size(tok) -> int:
    try:
        return len(tok)
    except TypeError:  # pragma: no cover
        return int(getattr(tok, "vocab_size", 0))


def _transformers():
    return import_transformers('text (--text)')
