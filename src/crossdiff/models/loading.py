"""``load_model(spec)``: a built-in alias, a local folder, a local GGUF file, or a hub id.

Resolution order: built-in alias (``smollm2-135m-instruct``, optionally ``builtin:`` prefixed),
then an existing local path (a model folder, or a ``.gguf`` file converted once into the cache),
then a Hugging Face hub id passed to ``from_pretrained`` as is. Every failure is a
:class:`CrossdiffError` naming the spec and what to do.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from crossdiff.errors import CrossdiffError
from crossdiff.models.builtin import BUILTIN_MODELS, builtin_folder, default_cache_dir
from crossdiff.models.gguf import convert_gguf, folder_lock, is_model_folder
from crossdiff.models.layers import find_decoder_layers
from crossdiff.models.loaded import LoadedModel
from crossdiff.models.tokenizers import load_tokenizer
from crossdiff.runtime.device import resolve_device, resolve_dtype

log = logging.getLogger(__name__)


def _aliases() -> str:
    return ", ".join(BUILTIN_MODELS)


def _looks_like_path(spec: str) -> bool:
    return (
        spec.startswith((".", "/", "~"))
        or spec.count("/") > 1
        or "\\" in spec
        or spec.lower().endswith((".gguf", ".safetensors", ".bin", ".json"))
    )


def _hub_offline() -> bool:
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover - transformers depends on huggingface_hub
        return False


def _hub_error(spec: str, error: Exception) -> CrossdiffError:
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    lowered = str(error).lower()
    unreachable = _hub_offline() or any(
        word in lowered for word in ("offline", "connect", "connection", "resolve", "timed out")
    )
    if unreachable:
        return CrossdiffError(
            f"model '{spec}' not found locally and the hub is unreachable/offline: {text} "
            f"(built-in aliases that work offline: {_aliases()}; or pass a local folder or .gguf)"
        )
    return CrossdiffError(
        f"model '{spec}' is not a built-in alias ({_aliases()}), an existing local path, or a "
        f"model on the Hugging Face hub: {text}"
    )


def _gguf_folder(path: Path, cache_dir: str | Path | None) -> Path:
    """Convert a user's GGUF once into the cache, keyed by its path, size and mtime."""
    stat = path.stat()
    key = hashlib.sha256(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = cache / "models" / f"gguf-{path.stem}-{key}"
    if is_model_folder(target):
        return target
    with folder_lock(target):
        return convert_gguf(path, target, {"gguf_path": str(path)})


def _resolve(spec: str, cache_dir: str | Path | None) -> tuple[str, str, str | None, bool]:
    """(what to pass to from_pretrained, model_id, revision, is_local)."""
    alias = spec.removeprefix("builtin:")
    if alias in BUILTIN_MODELS:
        return (
            str(builtin_folder(alias, cache_dir)),
            f"builtin:{alias}",
            BUILTIN_MODELS[alias].revision,
            True,
        )
    if spec.startswith("builtin:"):
        raise CrossdiffError(f"unknown built-in model '{spec}'; built-in aliases: {_aliases()}")
    path = Path(spec).expanduser()
    if path.exists():
        path = path.resolve()
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise CrossdiffError(
                    f"folder '{spec}' has no config.json, so it is not a transformers model "
                    "folder; pass a folder saved with save_pretrained, a .gguf file, a hub id, or "
                    f"a built-in alias ({_aliases()})"
                )
            return str(path), str(path), None, True
        if path.suffix.lower() == ".gguf":
            return str(_gguf_folder(path, cache_dir)), str(path), None, True
        raise CrossdiffError(
            f"file '{spec}' is not a model: pass a model folder (config.json + weights), a .gguf "
            f"file, a hub id, or a built-in alias ({_aliases()})"
        )
    if _looks_like_path(spec):
        raise CrossdiffError(
            f"model path '{spec}' does not exist; pass an existing folder or .gguf file, a hub "
            f"id, or a built-in alias ({_aliases()})"
        )
    return spec, spec, None, False


def load_model(
    spec: str,
    *,
    dtype: str = "auto",
    device: str = "auto",
    trust_remote_code: bool = False,
    cache_dir: str | Path | None = None,
) -> LoadedModel:
    """Load a causal LM and its fast tokenizer for capturing and steering.

    spec: a built-in alias (``smollm2-135m-instruct``, ``gemma3-270m``), a local model folder,
    a local ``.gguf`` file (converted once into ``cache_dir``), or a Hugging Face hub id.
    dtype: "auto" (bf16 on GPUs and bf16-capable CPUs, else float32), "float32", "bfloat16",
    "float16". device: "auto" (CUDA if available, else CPU), "cpu", "cuda", "cuda:1", ...
    trust_remote_code: run model code from the hub (off unless asked).
    cache_dir: where built-in and GGUF models are converted (default :func:`default_cache_dir`).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    if not isinstance(spec, str) or not spec.strip():
        raise CrossdiffError(f"model spec {spec!r} is empty; built-in aliases: {_aliases()}")
    spec = spec.strip()
    torch_device = resolve_device(device)
    torch_dtype, reason = resolve_dtype(dtype, torch_device)
    source, model_id, revision, is_local = _resolve(spec, cache_dir)

    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except OSError as error:
        if is_local:
            raise CrossdiffError(f"cannot read the config of model '{spec}': {error}") from error
        raise _hub_error(spec, error) from error
    except ValueError as error:
        raise CrossdiffError(f"model '{spec}': {error}") from error
    if not is_local:
        revision = getattr(config, "_commit_hash", None)

    try:
        tokenizer = load_tokenizer(source, trust_remote_code)
    except (OSError, ValueError) as error:
        raise CrossdiffError(f"cannot load the tokenizer of model '{spec}': {error}") from error
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source, config=config, dtype=torch_dtype, trust_remote_code=trust_remote_code
        )
    except ValueError as error:
        raise CrossdiffError(
            f"model '{spec}' ({type(config).__name__}) is not a causal language model that "
            f"transformers can load: {error}"
        ) from error
    except OSError as error:
        raise CrossdiffError(f"cannot load the weights of model '{spec}': {error}") from error
    model = model.to(torch_device).eval()
    model.requires_grad_(False)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return LoadedModel(
        spec=spec,
        model_id=model_id,
        revision=revision,
        model=model,
        tokenizer=tokenizer,
        dtype=torch_dtype,
        device=torch_device,
        n_layers=len(find_decoder_layers(model)),
        d_model=int(text_config.hidden_size),
        dtype_reason=reason,
    )


__all__ = ["load_model", "load_tokenizer"]
