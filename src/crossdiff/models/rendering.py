"""Rendering chats and documents into the exact text a model reads, and tokenizing it.

Each model renders a chat with its own chat template, so the two models of a pair read
different strings; only the message contents are common ground. Rendering therefore also
returns where each message's content lies in the rendered string (``content_spans``).

How the spans are found: the chat is rendered twice, once for real and once with every content
replaced by a unique placeholder (a "skeleton"). The skeleton splits into the template pieces
between contents; walking the real text piece by piece gives each content's exact position even
when the content also occurs inside template text (a message saying "user"). Templates that
rewrite content are handled for the common case of trimming whitespace (Gemma's ``| trim``): the
span then covers the trimmed content. If the template's structure depends on the content (so the
skeleton does not match), each content is searched forward from the previous one instead. If a
content cannot be found at all (the template changed it beyond trimming), a CrossdiffError says
so. A message whose placeholder is absent from the skeleton was dropped by the template (Phi-3
drops system messages): it gets an empty span and is listed in ``RenderedText.dropped``, and it
is never searched for (its text would be found inside template text or a later message). A
template's own default system prompt (SmolLM2 inserts one when the chat has none) is
template text: it is not in the messages, so it is never a content span.

Models without a chat template get the plain rendering documented in :func:`render_plain`.
"""

from __future__ import annotations

import contextlib
import json
import weakref
from collections.abc import Sequence

from crossdiff.errors import CrossdiffError
from crossdiff.models.texts import RenderedText, TokenizedText

ROLES = ("system", "user", "assistant")

# Plain rendering for models without a chat template: "User: hi\n\nAssistant: hello\n\n".
PLAIN_ROLE_LABELS = {"system": "System", "user": "User", "assistant": "Assistant"}
PLAIN_SEPARATOR = "\n\n"

# Private-use characters: no template trims, escapes or otherwise touches them.
_PLACEHOLDER = "\ue000crossdiff{}\ue001"


def validate_messages(messages: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """Check a chat is a non-empty list of {"role", "content"} dicts with string values."""
    if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
        raise CrossdiffError(
            f"a chat must be a non-empty list of messages, got {type(messages).__name__}"
        )
    clean = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise CrossdiffError(
                f"chat message {i} must be a dict with 'role' and 'content', got {message!r:.80}"
            )
        role, content = message["role"], message["content"]
        if not isinstance(role, str) or not isinstance(content, str):
            raise CrossdiffError(f"chat message {i}: role and content must be strings")
        clean.append({"role": role, "content": content})
    return clean


def render_plain(messages: Sequence[dict[str, str]], add_generation_prompt: bool) -> RenderedText:
    """The documented rendering for models without a chat template.

    Each message becomes ``"<Label>: <content>\\n\\n"`` with Label System/User/Assistant (other
    roles are capitalized); the generation prompt is ``"Assistant:"``.
    """
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    pos = 0
    for message in messages:
        label = PLAIN_ROLE_LABELS.get(message["role"], message["role"].capitalize())
        head = f"{label}: "
        parts.append(head)
        pos += len(head)
        spans.append((pos, pos + len(message["content"])))
        parts.append(message["content"] + PLAIN_SEPARATOR)
        pos += len(message["content"]) + len(PLAIN_SEPARATOR)
    if add_generation_prompt:
        parts.append(f"{PLAIN_ROLE_LABELS['assistant']}:")
    return RenderedText("".join(parts), spans, add_special_tokens=True)


def _content_variants(content: str) -> list[str]:
    """The forms a template may write a content in: as is, or trimmed (longest first)."""
    variants = [content, content.strip(), content.rstrip(), content.lstrip()]
    unique: list[str] = []
    for v in variants:
        if v not in unique:
            unique.append(v)
    return unique


def _spans_from_skeleton(text: str, pieces: list[str], contents: list[str]):
    """Walk ``text`` as piece0 content0 piece1 content1 ... pieceN; None if it doesn't fit."""
    if not text.startswith(pieces[0]):
        return None
    pos = len(pieces[0])
    spans = []
    for content, after in zip(contents, pieces[1:], strict=True):
        for variant in _content_variants(content):
            if text.startswith(variant, pos) and text.startswith(after, pos + len(variant)):
                spans.append((pos, pos + len(variant)))
                pos += len(variant) + len(after)
                break
        else:
            return None
    return spans if pos == len(text) else None


def _spans_by_search(text: str, contents: list[str], model_name: str):
    """Fallback: find each content (or its trimmed form) searching forward from the last one."""
    spans = []
    pos = 0
    for i, content in enumerate(contents):
        for variant in _content_variants(content):
            start = text.find(variant, pos)
            if start >= 0:
                spans.append((start, start + len(variant)))
                pos = start + len(variant)
                break
        else:
            raise CrossdiffError(
                f"the chat template of model '{model_name}' rewrites message {i} beyond trimming "
                f"whitespace ({content[:60]!r} is not in the rendered text), so its content cannot "
                "be located; remove such messages from the corpus or use another template"
            )
    return spans


def render_with_template(
    tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool, model_name: str
) -> RenderedText:
    """Render with the tokenizer's chat template and locate every message's content."""

    def apply(msgs: list[dict[str, str]]) -> str:
        try:
            out = tokenizer.apply_chat_template(
                msgs, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        except Exception as error:  # jinja raises its own TemplateError types
            raise CrossdiffError(
                f"the chat template of model '{model_name}' rejected this chat "
                f"(roles {[m['role'] for m in msgs]}): {error}"
            ) from error
        if not isinstance(out, str):
            raise CrossdiffError(f"chat template of model '{model_name}' did not return text")
        return out

    text = apply(messages)
    contents = [m["content"] for m in messages]
    placeholders = [_PLACEHOLDER.format(i) for i in range(len(messages))]
    spans = None
    try:
        skeleton = apply([{**m, "content": p} for m, p in zip(messages, placeholders, strict=True)])
    except CrossdiffError:
        skeleton = None
    counts = [skeleton.count(p) for p in placeholders] if skeleton is not None else None
    dropped = tuple(i for i, c in enumerate(counts or []) if c == 0)
    present = [i for i in range(len(messages)) if i not in dropped]
    if not present:
        raise CrossdiffError(
            f"the chat template of model '{model_name}' writes none of the chat's messages "
            f"(roles {[m['role'] for m in messages]}); remove such chats from the corpus"
        )
    kept = [contents[i] for i in present]
    if counts is not None and all(counts[i] == 1 for i in present):
        pieces: list[str] = []
        rest = skeleton
        for i in present:
            head, rest = rest.split(placeholders[i])
            pieces.append(head)
        pieces.append(rest)
        spans = _spans_from_skeleton(text, pieces, kept)
    if spans is None:
        spans = _spans_by_search(text, kept, model_name)
    if dropped:  # empty spans where the dropped messages would be, keeping the order
        found = dict(zip(present, spans, strict=True))
        spans, pos = [], 0
        for i in range(len(messages)):
            span = found.get(i, (pos, pos))
            spans.append(span)
            pos = span[1]
    bos = getattr(tokenizer, "bos_token", None)
    add_special = not (isinstance(bos, str) and bos and text.startswith(bos))
    return RenderedText(text, spans, add_special_tokens=add_special, dropped=dropped)


def special_token_ids(tokenizer) -> frozenset[int]:
    """Ids of BOS/EOS/pad and every added token flagged special (computed once per model:
    ``added_tokens_decoder`` rebuilds a dict on every access).

    The unknown token is included when it is also a control token: in GPT-NeoX/StarCoder/
    SmolLM2-style vocabularies it is ``<|endoftext|>`` (= BOS/EOS/pad, or spelled like one), so
    it must never pair as content. A plain ``<unk>`` that stands for characters the vocabulary
    lacks stays content: the model has read *something* there, and the pair both tokenizers end
    at after it is still common text.
    """
    ids = set(getattr(tokenizer, "all_special_ids", []))
    ids.update(
        token_id
        for token_id, added in getattr(tokenizer, "added_tokens_decoder", {}).items()
        if getattr(added, "special", False)
    )
    unk = getattr(tokenizer, "unk_token_id", None)
    unk_text = str(getattr(tokenizer, "unk_token", "") or "")
    controls = {
        str(getattr(tokenizer, name, "") or "") for name in ("bos_token", "eos_token", "pad_token")
    }
    looks_control = unk_text.startswith("<|") and unk_text.endswith("|>")
    if isinstance(unk, int):
        if unk_text in controls - {""} or looks_control:
            ids.add(unk)
        else:
            ids.discard(unk)
    return frozenset(ids)


_UNTRIMMED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _untrim(node: object) -> bool:
    """Set every ``trim_offsets`` in a post-processor's JSON to False; whether one was True."""
    found = False
    if isinstance(node, dict):
        if node.get("trim_offsets") is True:
            node["trim_offsets"] = False
            found = True
        for value in node.values():
            found = _untrim(value) or found
    elif isinstance(node, list):
        for value in node:
            found = _untrim(value) or found
    return found


def untrimmed_backend(tokenizer):
    """A copy of the backend tokenizer whose post-processor keeps offsets untrimmed, or None.

    A ByteLevel / RoBERTa post-processor with ``trim_offsets=true`` reports a token's span
    without its leading and trailing whitespace, although the token holds it (``"\n\n   "``
    reported as the ``"\n\n"``): an end would then lie before spaces the model has read.
    Computed once per tokenizer.
    """
    try:
        return _UNTRIMMED[tokenizer]
    except (KeyError, TypeError):
        pass
    backend = getattr(tokenizer, "backend_tokenizer", None)
    copy = None
    if backend is not None:
        data = json.loads(backend.to_str())
        if _untrim(data.get("post_processor")):
            from tokenizers import Tokenizer

            copy = Tokenizer.from_str(json.dumps(data))
    with contextlib.suppress(TypeError):  # not weak-referenceable: computed again next time
        _UNTRIMMED[tokenizer] = copy
    return copy


def tokenize_rendered(
    tokenizer,
    rendered: RenderedText,
    max_tokens: int | None = None,
    special_ids: frozenset[int] | None = None,
) -> TokenizedText:
    """Tokenize with character offsets; keep the first ``max_tokens`` tokens if given.

    A token is special when the tokenizer says so or its id is in ``special_ids`` (default:
    :func:`special_token_ids`).
    """
    if max_tokens is not None and max_tokens <= 0:
        raise CrossdiffError(f"max_tokens must be positive, got {max_tokens}")
    encoding = tokenizer(
        rendered.text,
        add_special_tokens=rendered.add_special_tokens,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
        return_attention_mask=False,
    )
    ids = list(encoding["input_ids"])
    offsets = [(int(a), int(b)) for a, b in encoding["offset_mapping"]]
    untrimmed = untrimmed_backend(tokenizer)
    if untrimmed is not None:  # the same tokens, with the whitespace they hold
        full = untrimmed.encode(rendered.text, add_special_tokens=rendered.add_special_tokens)
        if list(full.ids) == ids:
            offsets = [(int(a), int(b)) for a, b in full.offsets]
    if special_ids is None:
        special_ids = special_token_ids(tokenizer)
    flagged = encoding["special_tokens_mask"]
    mask = [bool(m) or t in special_ids for m, t in zip(flagged, ids, strict=True)]
    if max_tokens is not None:
        ids, offsets, mask = ids[:max_tokens], offsets[:max_tokens], mask[:max_tokens]
    return TokenizedText(ids, offsets, mask)
