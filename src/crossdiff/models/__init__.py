"""Loading causal LMs and the operations crossdiff needs from them.

This package is the one door to model internals (docs/ARCHITECTURE.md): load any causal LM
(built-in alias, local folder, GGUF file, hub id), find its decoder layers, capture one layer's
residual stream with early exit, steer with a vector, and render/tokenize text and chats the
way each model reads them.
"""

from __future__ import annotations

from crossdiff.models.builtin import BUILTIN_MODELS, BuiltinModel, default_cache_dir
from crossdiff.models.layers import find_decoder_layers, resolve_layer
from crossdiff.models.loaded import LoadedModel
from crossdiff.models.loading import load_model, load_tokenizer
from crossdiff.models.texts import RenderedText, TokenizedText
from crossdiff.runtime.device import resolve_device, resolve_dtype

__all__ = [
    "BUILTIN_MODELS",
    "BuiltinModel",
    "LoadedModel",
    "RenderedText",
    "TokenizedText",
    "default_cache_dir",
    "find_decoder_layers",
    "load_model",
    "load_tokenizer",
    "resolve_device",
    "resolve_dtype",
    "resolve_layer",
]
