"""The one interface every backend implements, and ``make_backends`` to build them by spec.

An *explainer* turns a :class:`~crossdiff.interpret.samples.FeatureJob` into an
:class:`Explanation`; a *judge* gives, for a list of marked contexts, the probability that the
feature fires on each marked token (detection and fuzzing alike, the task only changes the
question), and answers the harm screen. Specs:

- ``stats``: :mod:`crossdiff.interpret.stats` (offline, deterministic);
- ``hf:<model>``: a local transformers chat model loaded by :func:`crossdiff.models.load_model`
  (built-in alias such as ``smollm2-135m-instruct``, a folder, or a hub id);
- ``openai:<base URL>#<model>``: an OpenAI-compatible endpoint through the ``openai`` client.

LLM backends go through :class:`crossdiff.interpret.llm.Caller` (cache, retries, counters).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from crossdiff.errors import CrossdiffError

if TYPE_CHECKING:
    from crossdiff.interpret.config import InterpretConfig
    from crossdiff.interpret.samples import Context, FeatureJob

USABLE = ("ok", "unparsed")


@dataclass
class Explanation:
    """An explanation and how it came about.

    ``status``: ``ok``; ``unparsed`` (the reply had no ``EXPLANATION:`` line: its first line is
    used, and scored, as is); ``empty``; ``error: ...`` (the request failed); ``no examples``.
    ``terms``: (kind, text, weight) of the stats explainer, empty otherwise.
    """

    text: str
    status: str
    terms: list[tuple[str, str, float]] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        """Whether there is something to score."""
        return self.status in USABLE and bool(self.text.strip())

    def top_terms(self) -> list[str]:
        """The terms as shown: tokens and n-grams as text, context words as ``ctx:word``,
        earlier words as ``far:word``."""
        return [f"{kind}:{t}" if kind in ("ctx", "far") else t for kind, t, _ in self.terms]


class Explainer(Protocol):
    name: str

    def explain(self, job: FeatureJob) -> Explanation: ...


class Judge(Protocol):
    name: str

    def probabilities(
        self, exp: Explanation, task: str, contexts: list[Context], feature: int
    ) -> tuple[list[float | None], int]:
        """P(fires on the marked token) per context (None: no answer), and the number of
        replies that did not parse. ``task`` is "detection" or "fuzzing"."""
        ...

    def harm(self, exp: Explanation, job: FeatureJob) -> tuple[list[str], str]:
        """The harm categories of the feature's concept, and a status (ok/unparsed/error)."""
        ...


def parse_spec(spec: str) -> tuple[str, str, str]:
    """(kind, target, model) of a backend spec; raises a CrossdiffError naming the fix."""
    if not isinstance(spec, str) or not spec.strip():
        raise CrossdiffError(
            f"backend {spec!r} is empty; use stats, hf:<model> or openai:<base URL>#<model>"
        )
    spec = spec.strip()
    if spec == "stats":
        return "stats", "", ""
    kind, sep, rest = spec.partition(":")
    if kind == "hf" and sep and rest.strip():
        return "hf", rest.strip(), rest.strip()
    if kind == "openai" and sep:
        url, hash_, model = rest.rpartition("#") if "#" in rest else (rest, "", "")
        if not url.startswith(("http://", "https://")) or not hash_ or not model.strip():
            raise CrossdiffError(
                f"backend {spec!r}: write openai:<base URL>#<model>, e.g. "
                "openai:http://localhost:8000/v1#Qwen/Qwen3-8B"
            )
        return "openai", url, model.strip()
    raise CrossdiffError(
        f"unknown backend {spec!r}; use stats, hf:<model> (e.g. hf:smollm2-135m-instruct) or "
        "openai:<base URL>#<model>"
    )


def make_backends(
    config: InterpretConfig, cache_dir: Path | None
) -> tuple[Explainer, Judge, list[Any]]:
    """The explainer and judge of ``config`` (a shared model/client when both name the same
    LLM), and the LLM callers behind them (for counters)."""
    from crossdiff.interpret import llm, stats

    callers: dict[str, llm.Caller] = {}

    def caller(spec: str) -> llm.Caller:
        if spec not in callers:
            kind, target, model = parse_spec(spec)
            backend = (
                llm.HFBackend(target, device=config.device, dtype=config.dtype)
                if kind == "hf"
                else llm.OpenAIBackend(target, model, config.api_key_env, config.timeout_s)
            )
            callers[spec] = llm.Caller(backend, cache_dir if config.cache else None, config)
        return callers[spec]

    ex_spec, judge_spec = config.explainer, config.judge_spec
    parse_spec(ex_spec)
    parse_spec(judge_spec)
    explainer: Explainer = (
        stats.StatsExplainer()
        if ex_spec == "stats"
        else llm.LLMExplainer(caller(ex_spec), config.max_new_tokens)
    )
    judge: Judge = (
        stats.StatsJudge()
        if judge_spec == "stats"
        else llm.LLMJudge(caller(judge_spec), config.judge_batch, config.seed)
    )
    return explainer, judge, list(callers.values())
