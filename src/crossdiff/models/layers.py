"""Architecture-agnostic access to a causal LM's decoder layers.

Every Hugging Face causal LM keeps its transformer blocks in one ``nn.ModuleList`` whose length
is ``config.num_hidden_layers`` (``model.layers``, ``transformer.h``, ``gpt_neox.layers`` ...).
Finding it by that property, rather than by a per-architecture attribute path, is what lets
crossdiff hook any architecture (the approach of EleutherAI's sparsify).
"""

from __future__ import annotations

import math

from torch import nn

from crossdiff.errors import CrossdiffError

# Sub-module names that hold non-text towers in multimodal models; their layer lists may happen
# to have the same length as the text decoder's.
_NON_TEXT_PARTS = ("vision", "visual", "audio", "image", "encoder")


def _num_hidden_layers(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    if config is None:
        raise CrossdiffError(
            f"model {type(model).__name__} has no .config; pass a transformers model"
        )
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    n = getattr(text_config, "num_hidden_layers", None)
    if not isinstance(n, int) or n <= 0:
        raise CrossdiffError(
            f"model {type(model).__name__}: its config has no usable num_hidden_layers ({n!r})"
        )
    return n


def find_decoder_layers_named(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """Like :func:`find_decoder_layers`, also returning the module's dotted name."""
    n = _num_hidden_layers(model)
    found = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) == n
    ]
    if len(found) > 1:
        text_only = [
            (name, module)
            for name, module in found
            if not any(part in name.lower() for part in _NON_TEXT_PARTS)
        ]
        found = text_only or found
    if len(found) != 1:
        names = [name for name, _ in found]
        raise CrossdiffError(
            f"model {type(model).__name__}: expected exactly one nn.ModuleList of length "
            f"num_hidden_layers={n} (the decoder layers), found {len(found)}: {names}; "
            "this architecture is not supported"
        )
    return found[0]


def find_decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The one ``nn.ModuleList`` of ``model`` whose length is ``num_hidden_layers``.

    >>> layers = find_decoder_layers(model)  # doctest: +SKIP
    >>> layers[5].register_forward_hook(...)  # doctest: +SKIP
    """
    return find_decoder_layers_named(model)[1]


def resolve_layer(layer: int | str, n_layers: int, model_name: str = "model") -> int:
    """A layer index in ``0 .. n_layers-1`` from an int, a negative int, a relative depth
    (``"75%"``) or ``"middle"``.

    Strings holding integers (``"12"``, ``"-1"``, as the CLI passes them) are accepted.
    ``"middle"`` is ``n_layers // 2`` (= ``"50%"``); ``"P%"`` is ``floor(P / 100 x n_layers)``,
    capped at the last layer, so one setting reads the same relative depth of two models of
    different depths (``"75%"``: 22 of SmolLM2's 30, 13 of Gemma-3-270M's 18). Out of range
    raises a :class:`CrossdiffError` such as ``layer 40 out of range: model 'X' has 30 layers
    (0-29)``.
    """
    if isinstance(layer, bool):
        raise CrossdiffError(f"layer {layer!r} is not a layer index; use an int or 'middle'")
    value: int
    if isinstance(layer, str):
        text = layer.strip().lower()
        if text == "middle":
            return n_layers // 2
        if text.endswith("%"):
            return _relative_depth(layer, text[:-1], n_layers)
        try:
            value = int(text)
        except ValueError:
            raise CrossdiffError(
                f"layer {layer!r} is not a layer index: use an integer (negative counts from the "
                "end), a relative depth such as '75%', or 'middle'"
            ) from None
    elif isinstance(layer, int):
        value = layer
    else:
        raise CrossdiffError(f"layer {layer!r} is not a layer index; use an int or 'middle'")
    index = value + n_layers if value < 0 else value
    if not 0 <= index < n_layers:
        raise CrossdiffError(
            f"layer {value} out of range: model '{model_name}' has {n_layers} layers "
            f"(0-{n_layers - 1}, or -{n_layers} to -1, or 'middle')"
        )
    return index


def _relative_depth(layer: str, percent: str, n_layers: int) -> int:
    """The layer at ``percent`` % of the depth (``resolve_layer``'s ``"P%"`` form)."""
    try:
        value = float(percent)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 100:
        raise CrossdiffError(
            f"layer {layer!r} is not a relative depth: use a percentage from 0% to 100%, e.g. '75%'"
        )
    return min(n_layers - 1, math.floor(value / 100 * n_layers + 1e-9))
