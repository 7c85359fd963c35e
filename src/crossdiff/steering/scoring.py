"""Turning generations into a behaviour rate per alpha.

A scorer maps (prompt, generation) to a score in [0, 1] (or None: no verdict, left out of the
rate); the rate of one alpha is the mean score over the prompts. Three kinds:

- any Python callable ``fn(prompt, generation) -> float | bool | None``;
- a rule: ``regex:PATTERN`` (case-insensitive search), ``keywords:word,word`` (any of the words,
  whole words, case-insensitive), ``builtin:SUITE`` (a built-in prompt suite's default scorer,
  :mod:`.suites`), or a bare pattern (= ``regex:``);
- ``LLMJudge``: a model behind an OpenAI-compatible ``/chat/completions`` endpoint answers YES
  or NO to "does this response show <criterion>?" (rule ``judge:CRITERION``). The API key is read
  from an environment variable (default ``OPENAI_API_KEY``; no key, no Authorization header,
  which local servers accept), never from the command line.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from crossdiff.errors import CrossdiffError

ScoreFn = Callable[[str, str], "float | bool | None"]

DEFAULT_KEY_ENV = "OPENAI_API_KEY"
JUDGE_SYSTEM = (
    "You grade a language model's response against one criterion. Answer with exactly one word: "
    "YES if the response meets the criterion, NO if it does not."
)
JUDGE_TEMPLATE = (
    "Criterion: {criterion}\n\nPrompt given to the model:\n{prompt}\n\n"
    "The model's response:\n{generation}\n\nDoes the response meet the criterion? YES or NO."
)


@dataclass
class RegexScorer:
    """1.0 where the pattern occurs in the generation (case-insensitive), else 0.0."""

    pattern: str
    label: str | None = None
    """The scorer's name when not ``regex:PATTERN`` (a built-in suite's ``builtin:NAME``, short
    enough for tables and plot titles and still a rule that rebuilds the scorer)."""

    def __post_init__(self) -> None:
        try:
            self._re = re.compile(self.pattern, re.IGNORECASE)
        except re.error as error:
            raise CrossdiffError(
                f"score rule regex {self.pattern!r} is not a valid regular expression: {error}"
            ) from error

    @property
    def name(self) -> str:
        return self.label or f"regex:{self.pattern}"

    def __call__(self, prompt: str, generation: str) -> float:
        return 1.0 if self._re.search(generation) else 0.0


class KeywordScorer(RegexScorer):
    """1.0 where any of the words occurs as a whole word (case-insensitive)."""

    def __init__(self, words: Sequence[str]) -> None:
        self.words = [w.strip() for w in words if w.strip()]
        if not self.words:
            raise CrossdiffError(
                "the keywords: rule needs at least one word, e.g. keywords:paris,france"
            )
        alternatives = "|".join(re.escape(w) for w in self.words)
        super().__init__(rf"(?<!\w)(?:{alternatives})(?!\w)")

    @property
    def name(self) -> str:
        return "keywords:" + ",".join(self.words)


@dataclass
class CallableScorer:
    """Wraps a Python function ``fn(prompt, generation)``."""

    fn: ScoreFn
    label: str = "callable"

    @property
    def name(self) -> str:
        return self.label

    def __call__(self, prompt: str, generation: str) -> float | None:
        value = self.fn(prompt, generation)
        return None if value is None else float(value)


@dataclass
class LLMJudge:
    """A YES/NO judge behind an OpenAI-compatible chat completions endpoint.

    ``url``: the API base (``http://host:8000/v1``) or the full ``.../chat/completions`` URL.
    """

    url: str
    model: str
    criterion: str
    api_key_env: str = DEFAULT_KEY_ENV
    timeout: float = 60.0

    def __post_init__(self) -> None:
        if not self.url or not self.url.startswith(("http://", "https://")):
            raise CrossdiffError(
                f"judge URL {self.url!r} must start with http:// or https:// "
                "(e.g. http://localhost:8000/v1)"
            )
        if not self.model:
            raise CrossdiffError("the LLM judge needs a model name (--judge-model NAME)")
        if not self.criterion.strip():
            raise CrossdiffError("the LLM judge needs a criterion, e.g. judge:mentions Paris")

    @property
    def name(self) -> str:
        return f"judge:{self.criterion} ({self.model})"

    @property
    def endpoint(self) -> str:
        url = self.url.rstrip("/")
        return url if url.endswith("/chat/completions") else url + "/chat/completions"

    def ask(self, prompt: str, generation: str) -> str:
        """The judge's raw answer."""
        body = {
            "model": self.model,
            "temperature": 0,
            "max_tokens": 5,
            "messages": [
                {"role": "system", "content": JUDGE_SYSTEM},
                {
                    "role": "user",
                    "content": JUDGE_TEMPLATE.format(
                        criterion=self.criterion, prompt=prompt, generation=generation
                    ),
                },
            ],
        }
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(
            self.endpoint, data=json.dumps(body).encode("utf-8"), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                data = json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as error:
            detail = error.read().decode("utf-8", "replace")[:300]
            hint = f" (is ${self.api_key_env} set?)" if error.code in (401, 403) else ""
            raise CrossdiffError(
                f"the judge at {self.endpoint} answered HTTP {error.code}{hint}: {detail}"
            ) from error
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            raise CrossdiffError(
                f"cannot reach the judge at {self.endpoint}: {error}; check --judge-url"
            ) from error
        except json.JSONDecodeError as error:
            raise CrossdiffError(f"the judge at {self.endpoint} did not return JSON") from error
        try:
            return str(data["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError) as error:
            raise CrossdiffError(
                f"the judge at {self.endpoint} returned no choices[0].message.content: "
                f"{str(data)[:200]}"
            ) from error

    def __call__(self, prompt: str, generation: str) -> float | None:
        return parse_verdict(self.ask(prompt, generation))


def parse_verdict(answer: str) -> float | None:
    """YES -> 1.0, NO -> 0.0, a number in [0, 1] -> itself; anything else -> None."""
    text = answer.strip().strip("*`\"'.").lower()
    if text.startswith("yes"):
        return 1.0
    if text.startswith("no"):
        return 0.0
    try:
        value = float(text.split()[0]) if text else None
    except ValueError:
        return None
    return value if value is not None and 0.0 <= value <= 1.0 else None


def make_scorer(
    rule: str | ScoreFn | object,
    *,
    judge_url: str | None = None,
    judge_model: str | None = None,
    api_key_env: str = DEFAULT_KEY_ENV,
):
    """A scorer from a rule string, a callable, or an existing scorer (returned as is)."""
    if isinstance(rule, (RegexScorer, LLMJudge, CallableScorer)):
        return rule
    if callable(rule):
        return CallableScorer(rule, getattr(rule, "__name__", "callable"))
    if not isinstance(rule, str) or not rule.strip():
        raise CrossdiffError(
            f"score rule {rule!r} is empty; use regex:PATTERN, keywords:a,b or judge:CRITERION"
        )
    kind, sep, body = rule.partition(":")
    kind = kind.strip().lower() if sep else ""
    if kind == "regex":
        return RegexScorer(body)
    if kind in ("keyword", "keywords"):
        return KeywordScorer(body.split(","))
    if kind == "builtin":
        from crossdiff.steering.suites import load_suite

        suite = load_suite(body)  # a suite is data; its default scorer is a regex rule
        if suite.pattern is None:
            hint = f', e.g. --score "judge:{suite.judge}"' if suite.judge else ""
            raise CrossdiffError(f"built-in suite {suite.name!r}: {suite.scoring}{hint}")
        return RegexScorer(suite.pattern, label=suite.score_rule)
    if kind == "judge":
        if not judge_url or not judge_model:
            raise CrossdiffError(
                "the judge: rule needs an OpenAI-compatible endpoint and model: "
                "--judge-url URL --judge-model NAME (key from $" + api_key_env + ")"
            )
        return LLMJudge(judge_url, judge_model, body.strip(), api_key_env)
    return RegexScorer(rule)


def rates(
    scorer, prompts: Sequence[str], generations: Sequence[Sequence[str]]
) -> tuple[list[float | None], list[list[float | None]]]:
    """Per-alpha mean score over prompts, and the per-(prompt, alpha) scores.

    ``generations[p][a]``; an alpha whose every score is None gets rate None.
    """
    scores = [[scorer(prompts[p], g) for g in row] for p, row in enumerate(generations)]
    n_alpha = len(generations[0]) if generations else 0
    out: list[float | None] = []
    for a in range(n_alpha):
        vals = [s[a] for s in scores if s[a] is not None]
        out.append(sum(vals) / len(vals) if vals else None)
    return out, scores
