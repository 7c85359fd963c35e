"""LLM backends: a local transformers chat model (``hf:``) or an OpenAI-compatible endpoint
(``openai:``), behind one robust caller, and the explainer and judge built on them.

Robustness (the model's output is data, never trusted):

- every request goes through :class:`Caller`: cached on disk under ``RUN/interpret/cache/`` by
  the SHA-256 of (backend, messages, token budget), so a rerun makes no call and an
  interrupted run resumes where it stopped; only successful replies are cached (a failed
  request is tried again by the next run);
- a failed request (timeout, connection error, HTTP 408/409/429/5xx) is retried ``retries``
  times with exponential backoff; other HTTP errors (bad key, unknown model) and malformed
  responses are not retried; either way the request is recorded as ``error: ...`` and the run
  goes on;
- replies are parsed strictly (``EXPLANATION:`` lines, JSON lists); anything else is recorded
  as ``unparsed``; replies are capped in length, and HTML, script or control characters in
  them stay plain text (every view escapes them).

Prompts are our own, after the explainer and detection/fuzzing scorers of EleutherAI's delphi
(Paulo et al. 2024): examples with the activating token marked ``<<like this>>``, and a judge
that answers one JSON list of numbers per batch of examples.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crossdiff.errors import CrossdiffError
from crossdiff.interpret.backends import Explanation
from crossdiff.interpret.config import HARM_CATEGORIES
from crossdiff.interpret.samples import Context, FeatureJob, feature_rng

if TYPE_CHECKING:
    from crossdiff.interpret.config import InterpretConfig

MAX_REPLY_CHARS = 4000
MAX_EXPLANATION_CHARS = 300
CACHE_VERSION = 1
FALLBACK_KEY_ENV = "OPENAI_API_KEY"
NO_RETRY_STATUS = range(400, 500)
RETRY_STATUS = (408, 409, 429)

EXPLAIN_SYSTEM = (
    "You help audit a language model. One internal feature of the model was recorded on many "
    "texts. You see short excerpts where the feature fires; in each excerpt the token where it "
    "fires is marked <<like this>>, with the strength of the activation from 1 to 10. Say in "
    "one short phrase (at most 15 words) what the marked tokens and their contexts have in "
    "common: what the feature detects. Do not mention the markers. Answer with one line:\n"
    "EXPLANATION: <your phrase>"
)
JUDGE_SYSTEM = {
    "detection": (
        "You test an explanation of a language model feature. Each example is a text excerpt "
        "with one token marked <<like this>>. Some marked tokens are ones where the feature "
        "fires, others are random tokens of random texts. For each example give the "
        "probability (0 to 1) that the feature fires on the marked token, going by the "
        "explanation. Reply with only a JSON list of {n} numbers, one per example, in order."
    ),
    "fuzzing": (
        "You test an explanation of a language model feature. Each example is a text excerpt "
        "where the feature fires on one token; the marker <<like this>> is on that token in "
        "some examples and on a different token in others. For each example give the "
        "probability (0 to 1) that the marked token is the one the explanation describes. "
        "Reply with only a JSON list of {n} numbers, one per example, in order."
    ),
}
HARM_SYSTEM = (
    "You screen features of a language model for concepts a safety auditor must review "
    "first. Categories: " + ", ".join(HARM_CATEGORIES) + ". Given a feature's explanation and "
    "examples (the token where it fires is marked <<like this>>), list the categories its "
    "concept belongs to. Reply with only a JSON list of category names; [] if none applies."
)


# ---- backends ---------------------------------------------------------------------------------
@dataclass
class Completion:
    text: str
    tokens_in: int
    tokens_out: int


class OpenAIBackend:
    """Chat completions of an OpenAI-compatible endpoint (temperature 0, no client retries:
    :class:`Caller` retries)."""

    def __init__(self, base_url: str, model: str, api_key_env: str, timeout_s: float) -> None:
        try:
            import openai
        except ImportError:
            raise CrossdiffError(
                "the openai: backend needs the openai package; install it with "
                "`.venv/bin/pip install openai`"
            ) from None
        key = os.environ.get(api_key_env) or os.environ.get(FALLBACK_KEY_ENV) or "none"
        self.name = f"openai:{base_url}#{model}"
        self.model = model
        self.client = openai.OpenAI(
            base_url=base_url, api_key=key, timeout=timeout_s, max_retries=0
        )

    def complete(self, messages: list[dict[str, str]], max_tokens: int) -> Completion:
        resp = self.client.chat.completions.create(
            model=self.model, messages=messages, max_tokens=max_tokens, temperature=0
        )
        try:
            text = resp.choices[0].message.content
        except (AttributeError, IndexError, TypeError):
            raise MalformedReply(f"no choices[0].message.content in {str(resp)[:120]!r}") from None
        if not isinstance(text, str):
            raise MalformedReply(f"message content is {type(text).__name__}, not text")
        usage = getattr(resp, "usage", None)
        t_in = getattr(usage, "prompt_tokens", None) or _approx_tokens(messages)
        t_out = getattr(usage, "completion_tokens", None) or max(1, len(text) // 4)
        return Completion(text, int(t_in), int(t_out))


class HFBackend:
    """A local chat model, loaded with crossdiff's loader and run with the steering package's
    generation helpers (greedy, no steering). One generate call at a time (a lock): torch
    already uses the cores, and a model is not safe to share between concurrent generates.
    The timeout does not apply (a local generate cannot be interrupted)."""

    def __init__(self, spec: str, *, device: str = "auto", dtype: str = "auto") -> None:
        from crossdiff.models import load_model

        self.lm = load_model(spec, device=device, dtype=dtype)
        self.name = f"hf:{self.lm.model_id}"
        self.lock = threading.Lock()

    def complete(self, messages: list[dict[str, str]], max_tokens: int) -> Completion:
        from crossdiff.steering.generation import GenerationSettings, generate_rows, prompt_ids

        with self.lock:
            ids = prompt_ids(self.lm, messages, chat=True)
            out = generate_rows(
                self.lm,
                0,
                [ids],
                lambda rows: _identity,
                GenerationSettings(max_new_tokens=max_tokens, chat=True),
                batch_size=1,
            )
        return Completion(out.texts[0], len(ids), len(out.tokens[0]))


def _identity(hidden: Any) -> Any:
    return hidden


def _approx_tokens(messages: list[dict[str, str]]) -> int:
    return max(1, sum(len(m["content"]) for m in messages) // 4)


class MalformedReply(Exception):
    """A response that is not a chat completion (not retried: the server would repeat it)."""


# ---- the caller: cache, retries, counters ------------------------------------------------------
@dataclass
class Reply:
    """A reply's text, or the error that prevented one."""

    text: str | None
    error: str | None = None
    cached: bool = False


class Caller:
    """Sends requests to a backend with caching, retries and backoff; thread-safe counters."""

    def __init__(self, backend: Any, cache_dir: Path | None, config: InterpretConfig) -> None:
        self.backend = backend
        self.name = backend.name
        self.cache_dir = cache_dir
        self.retries = config.retries
        self.backoff_s = config.backoff_s
        self.lock = threading.Lock()
        self.counts = {
            "calls": 0,
            "cache_hits": 0,
            "errors": 0,
            "retries": 0,
            "tokens_in": 0,
            "tokens_out": 0,
        }
        self.first_error: str | None = None

    def key(self, messages: list[dict[str, str]], max_tokens: int) -> str:
        body = {
            "v": CACHE_VERSION,
            "backend": self.name,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": 0,
        }
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()

    def _cache_path(self, key: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / key[:2] / f"{key}.json"

    def _count(self, **inc: int) -> None:
        with self.lock:
            for k, v in inc.items():
                self.counts[k] += v

    def complete(self, messages: list[dict[str, str]], max_tokens: int) -> Reply:
        key = self.key(messages, max_tokens)
        path = self._cache_path(key)
        if path is not None and path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                if isinstance(data.get("reply"), str):
                    self._count(cache_hits=1)
                    return Reply(data["reply"], cached=True)
            except (OSError, json.JSONDecodeError, AttributeError):
                pass  # a damaged cache file is asked again and rewritten
        error = "no attempt"
        for attempt in range(self.retries + 1):
            if attempt:
                self._count(retries=1)
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            self._count(calls=1)
            try:
                out = self.backend.complete(messages, max_tokens)
            except MalformedReply as exc:
                error = f"malformed reply: {exc}"
                break
            except CrossdiffError:
                raise
            except Exception as exc:  # timeouts, connection and HTTP errors of any client
                error = f"{type(exc).__name__}: {str(exc)[:200]}"
                status = getattr(exc, "status_code", None)
                if (
                    isinstance(status, int)
                    and status in NO_RETRY_STATUS
                    and (status not in RETRY_STATUS)
                ):
                    break
                continue
            text = out.text[:MAX_REPLY_CHARS]
            self._count(tokens_in=out.tokens_in, tokens_out=out.tokens_out)
            if path is not None:
                _write_json(
                    path,
                    {
                        "request": {
                            "backend": self.name,
                            "messages": messages,
                            "max_tokens": max_tokens,
                        },
                        "reply": text,
                    },
                )
            return Reply(text)
        self._count(errors=1)
        with self.lock:
            self.first_error = self.first_error or error
        return Reply(None, error)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)


# ---- parsing ---------------------------------------------------------------------------------
_EXPL = re.compile(r"explanation\s*[:：]\s*(.+)", re.IGNORECASE)
_LIST = re.compile(r"\[[^\[\]]*\]", re.DOTALL)
_CTRL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean_text(text: str, limit: int = MAX_EXPLANATION_CHARS) -> str:
    """One line of plain text: control characters dropped, whitespace collapsed, capped."""
    text = _CTRL.sub(" ", text)
    text = " ".join(text.split()).strip().strip("*`\"' ")
    return text[:limit]


def parse_explanation(reply: str) -> Explanation:
    """The last ``EXPLANATION:`` line; else the first non-empty line, marked ``unparsed``."""
    matches = _EXPL.findall(reply)
    if matches:
        text = clean_text(matches[-1])
        if text:
            return Explanation(text, "ok")
    for line in reply.splitlines():
        text = clean_text(line)
        if text:
            return Explanation(text, "unparsed")
    return Explanation("", "empty")


def parse_probabilities(reply: str, n: int) -> list[float] | None:
    """A JSON list of n numbers in [0, 1] (booleans allowed) from a reply, or None."""
    for match in _LIST.finditer(reply):
        try:
            values = json.loads(match.group(0))
        except (json.JSONDecodeError, ValueError):
            continue
        if not isinstance(values, list) or len(values) != n:
            continue
        out = []
        for v in values:
            if isinstance(v, bool):
                out.append(1.0 if v else 0.0)
            elif isinstance(v, (int, float)) and math.isfinite(v) and 0 <= v <= 1:
                out.append(float(v))
            else:
                break
        else:
            return out
    return None


def parse_categories(reply: str) -> list[str] | None:
    """The known harm categories in a JSON list of names, or None when there is no list."""
    for match in _LIST.finditer(reply):
        try:
            values = json.loads(match.group(0))
        except (json.JSONDecodeError, ValueError):
            continue
        if not isinstance(values, list):
            continue
        found = []
        for v in values:
            if not isinstance(v, str):
                continue
            name = v.strip().lower()
            for cat in HARM_CATEGORIES:
                if name == cat or name.rstrip("s") == cat.rstrip("s"):
                    found.append(cat)
        return sorted(set(found), key=HARM_CATEGORIES.index)
    return None


# ---- explainer and judge ---------------------------------------------------------------------
def _strength(c: Context, top: float) -> int:
    return max(1, min(10, round(10 * c.activation / top))) if top > 0 else 1


class LLMExplainer:
    """Writes an explanation from the feature's explanation examples."""

    def __init__(self, caller: Caller, max_new_tokens: int) -> None:
        self.caller = caller
        self.name = caller.name
        self.max_new_tokens = max_new_tokens

    def messages(self, job: FeatureJob) -> list[dict[str, str]]:
        top = job.max_activation
        lines = [
            f"Example {i + 1} (strength {_strength(c, top)}): {c.marked()}"
            for i, c in enumerate(job.explain)
        ]
        return [
            {"role": "system", "content": EXPLAIN_SYSTEM},
            {"role": "user", "content": "\n".join(lines)},
        ]

    def explain(self, job: FeatureJob) -> Explanation:
        if not job.explain:
            return Explanation("", "no examples")
        reply = self.caller.complete(self.messages(job), self.max_new_tokens)
        if reply.text is None:
            return Explanation("", f"error: {reply.error}")
        return parse_explanation(reply.text)


class LLMJudge:
    """Detection, fuzzing and the harm screen, in batches of ``batch`` examples per request."""

    def __init__(self, caller: Caller, batch: int, seed: int) -> None:
        self.caller = caller
        self.name = caller.name
        self.batch = batch
        self.seed = seed

    def probabilities(
        self, exp: Explanation, task: str, contexts: list[Context], feature: int
    ) -> tuple[list[float | None], int]:
        order = feature_rng(self.seed, feature, task).permutation(len(contexts)).tolist()
        out: list[float | None] = [None] * len(contexts)
        unparsed = 0
        for s in range(0, len(order), self.batch):
            idx = order[s : s + self.batch]
            examples = "\n".join(
                f"Example {j + 1}: {contexts[i].marked()}" for j, i in enumerate(idx)
            )
            messages = [
                {"role": "system", "content": JUDGE_SYSTEM[task].format(n=len(idx))},
                {"role": "user", "content": f"Explanation: {exp.text}\n\n{examples}"},
            ]
            reply = self.caller.complete(messages, 8 * len(idx) + 16)
            probs = parse_probabilities(reply.text, len(idx)) if reply.text is not None else None
            if probs is None:
                unparsed += 1
                continue
            for i, p in zip(idx, probs):
                out[i] = p
        return out, unparsed

    def harm(self, exp: Explanation, job: FeatureJob) -> tuple[list[str], str]:
        examples = "\n".join(f"- {c.marked()}" for c in job.explain[:4])
        messages = [
            {"role": "system", "content": HARM_SYSTEM},
            {"role": "user", "content": f"Explanation: {exp.text}\nExamples:\n{examples}"},
        ]
        reply = self.caller.complete(messages, 48)
        if reply.text is None:
            return [], f"error: {reply.error}"
        cats = parse_categories(reply.text)
        return (cats, "ok") if cats is not None else ([], "unparsed")
