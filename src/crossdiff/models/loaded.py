"""A loaded causal LM with the few operations crossdiff needs from it.

Nothing else in crossdiff touches a model's internals: capturing one layer's residual stream
(with early exit), steering by adding a vector to a layer's output, and rendering/tokenizing
text the way this model reads it all live here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property

import torch
import transformers
from torch import Tensor, nn

from crossdiff.errors import CrossdiffError
from crossdiff.models.layers import find_decoder_layers, resolve_layer
from crossdiff.models.rendering import (
    render_plain,
    render_with_template,
    special_token_ids,
    tokenize_rendered,
    validate_messages,
)
from crossdiff.models.texts import RenderedText, TokenizedText


class _EarlyExit(Exception):
    """Raised by the capture hook to stop the forward pass after the wanted layer."""


def _hidden_of(output: object) -> Tensor:
    """The hidden-state tensor of a decoder layer's output (a tensor, or a tuple in older code)."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise CrossdiffError(f"unexpected decoder layer output type {type(output).__name__}")


def _replace_hidden(output: object, hidden: Tensor) -> object:
    if isinstance(output, Tensor):
        return hidden
    return (hidden, *output[1:])  # type: ignore[index]


@dataclass
class LoadedModel:
    """A causal LM in eval mode with gradients off, and its fast tokenizer.

    ``model_id`` is the resolved identity (hub id, absolute folder/GGUF path, or
    ``"builtin:<alias>"``); ``revision`` the hub commit, or the package version for built-ins.
    ``dtype_reason`` says why this dtype was chosen (for run summaries).
    """

    spec: str
    model_id: str
    revision: str | None
    model: transformers.PreTrainedModel
    tokenizer: transformers.PreTrainedTokenizerBase
    dtype: torch.dtype
    device: torch.device
    n_layers: int
    d_model: int
    dtype_reason: str = ""
    layers: nn.ModuleList = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not getattr(self.tokenizer, "is_fast", False):
            raise CrossdiffError(
                f"the tokenizer of model '{self.model_id}' ({type(self.tokenizer).__name__}) is "
                "not a fast tokenizer, so it cannot report character offsets, which alignment "
                "needs; provide a tokenizer.json (convert it with transformers' "
                "PreTrainedTokenizerFast) or use another checkpoint"
            )
        self.layers = find_decoder_layers(self.model)
        if self.n_layers != len(self.layers):
            raise CrossdiffError(
                f"model '{self.model_id}': n_layers={self.n_layers} but it has "
                f"{len(self.layers)} decoder layers"
            )

    # ----------------------------------------------------------------- layers
    def resolve_layer(self, layer: int | str) -> int:
        """Index in 0..n_layers-1 from an int, a negative int, "P%" or "middle" (resolve_layer)."""
        return resolve_layer(layer, self.n_layers, self.model_id)

    def capture(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        layer: int | str,
        position_ids: Tensor | None = None,
    ) -> Tensor:
        """The residual stream after decoder layer ``layer``, shape (B, T, d_model).

        ``position_ids`` (B, T), with ``attention_mask`` None, runs *packed* rows: where a
        row's positions restart at 0 a new sequence begins, and transformers' mask builder
        (``masking_utils.find_packed_sequence_indices``) then lets each token attend only
        within its own sequence (see :func:`crossdiff.harvest.engine.packing_works`).

        Equal, bit for bit, to ``hidden_states[layer + 1]`` of a full forward with
        ``output_hidden_states=True`` for every layer but the last (transformers replaces the last
        hidden state by the final-norm output; here the last layer's raw output is returned).
        The forward stops right after that layer: a hook raises a private exception that is
        caught here, so later layers and the LM head never run. The hook exists only during this
        call (transformers 5 installs hooks of its own for ``output_hidden_states``).
        """
        index = self.resolve_layer(layer)
        captured: list[Tensor] = []

        def hook(module: nn.Module, args: object, output: object) -> None:
            captured.append(_hidden_of(output))
            raise _EarlyExit

        input_ids = input_ids.to(self.device)
        if attention_mask is not None:
            attention_mask = attention_mask.to(self.device)
        if position_ids is not None:
            position_ids = position_ids.to(self.device)
        handle = self.layers[index].register_forward_hook(hook)
        try:
            with torch.no_grad():
                self.model(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    position_ids=position_ids,
                    use_cache=False,
                )
        except _EarlyExit:
            pass
        finally:
            handle.remove()
        if not captured:
            raise CrossdiffError(
                f"model '{self.model_id}': decoder layer {index} did not run during the forward "
                "pass; this architecture is not supported"
            )
        return captured[0]

    @contextmanager
    def steering(
        self, layer: int | str, vector: Tensor | Callable[[Tensor], Tensor]
    ) -> Iterator[None]:
        """While active, every forward adds ``vector`` (d_model,) to layer ``layer``'s output.

        Applies at every position, prompt and generated tokens alike. ``vector`` may instead be
        a function ``fn(hidden) -> hidden`` of the (B, T, d_model) output (e.g. clamping a
        feature). The hook runs before any other hook on that layer (so ``output_hidden_states``
        and :meth:`capture` see the steered stream) and is removed on exit, also on error.
        """
        index = self.resolve_layer(layer)
        if callable(vector) and not isinstance(vector, Tensor):
            fn = vector
        else:
            delta = torch.as_tensor(vector)
            if delta.shape != (self.d_model,):
                raise CrossdiffError(
                    f"steering vector for model '{self.model_id}' must have shape "
                    f"({self.d_model},), got {tuple(delta.shape)}"
                )
            delta = delta.to(device=self.device, dtype=self.dtype)

            def fn(hidden: Tensor) -> Tensor:
                return hidden + delta

        def hook(module: nn.Module, args: object, output: object) -> object:
            return _replace_hidden(output, fn(_hidden_of(output)))

        handle = self.layers[index].register_forward_hook(hook, prepend=True)
        try:
            yield
        finally:
            handle.remove()

    # ------------------------------------------------------------- rendering
    @property
    def has_chat_template(self) -> bool:
        """Whether the tokenizer has its own chat template (else the plain rendering is used)."""
        return bool(getattr(self.tokenizer, "chat_template", None))

    def render_chat(
        self, messages: list[dict[str, str]], add_generation_prompt: bool = False
    ) -> RenderedText:
        """This model's rendering of a chat, with one content span per message.

        Uses the model's own chat template, or the plain rendering (see
        :func:`crossdiff.models.rendering.render_plain`) when it has none.
        """
        clean = validate_messages(messages)
        if not self.has_chat_template:
            return render_plain(clean, add_generation_prompt)
        return render_with_template(self.tokenizer, clean, add_generation_prompt, self.model_id)

    def render_text(self, text: str) -> RenderedText:
        """A plain document: the whole text is content; the tokenizer adds its BOS if it has one."""
        if not isinstance(text, str):
            raise CrossdiffError(f"a document must be a string, got {type(text).__name__}")
        return RenderedText(text, [(0, len(text))], add_special_tokens=True)

    @cached_property
    def pad_id(self) -> int:
        """The id that fills padded positions of a batch (harvest windows, generation rows).

        Padded positions are masked out of attention, so any id works; the tokenizer's pad
        token, else its EOS, else the generation config's pad, else BOS, else 0."""
        tok = self.tokenizer
        gen = getattr(self.model, "generation_config", None)
        for candidate in (
            tok.pad_token_id,
            tok.eos_token_id,
            getattr(gen, "pad_token_id", None),
            tok.bos_token_id,
        ):
            if isinstance(candidate, int):
                return candidate
        return 0

    @cached_property
    def special_ids(self) -> frozenset[int]:
        """Ids of all special tokens of the tokenizer (BOS/EOS/pad/unk and added specials)."""
        return special_token_ids(self.tokenizer)

    def tokenize(self, rendered: RenderedText, max_tokens: int | None = None) -> TokenizedText:
        """Token ids, character offsets (as the tokenizer reports them) and special-token mask."""
        return tokenize_rendered(self.tokenizer, rendered, max_tokens, self.special_ids)
