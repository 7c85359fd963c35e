"""What a steering run produced: generations per model, prompt and alpha, and how to show them.

Saved as ``RUN/steering/feature-<i>.json`` (format in docs/steering.md), printed as a
side-by-side table (one column per alpha, one block per prompt, one row per model), and, when
scored, plotted as rate against alpha (``feature-<i>-score.svg``). The file names are this
module's (:func:`result_path`, :func:`plot_path`); other stages read the results through
:func:`load_result` (``RunPaths.load_steering``).
"""

from __future__ import annotations

import json
import re
import shutil
import textwrap
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from crossdiff.errors import CrossdiffError

RESULT_FORMAT = "crossdiff-steering"
RESULT_VERSION = 2  # 2: coherence, nulls, evidence, verdict (version 1 files still load)
MIN_COLUMN = 14
LABEL_WIDTH = 18
RESULT_NAME = re.compile(r"feature-(\d+)\.json")
"""A saved result's file name (:func:`result_path`); the group is the feature index."""


def result_path(steering_dir: str | Path, feature: int) -> Path:
    """Where the result of steering feature ``feature`` is saved in ``steering_dir``."""
    return Path(steering_dir) / f"feature-{feature}.json"


def plot_path(steering_dir: str | Path, feature: int) -> Path:
    """Where its rate-against-alpha plot is saved (scored results only)."""
    return Path(steering_dir) / f"feature-{feature}-score.svg"


def steered_features(steering_dir: str | Path) -> list[int]:
    """The features with a saved result in ``steering_dir``, in index order (none when the
    folder does not exist)."""
    folder = Path(steering_dir)
    if not folder.is_dir():
        return []
    found = (RESULT_NAME.fullmatch(p.name) for p in folder.iterdir() if p.is_file())
    return sorted(int(m.group(1)) for m in found if m)


def load_result(steering_dir: str | Path, feature: int) -> SteeringResult | None:
    """Feature ``feature``'s saved result, None when it was not steered; a file that is not
    a readable steering result raises :class:`CrossdiffError` naming it."""
    path = result_path(steering_dir, feature)
    if not path.is_file():
        return None
    return SteeringResult.load(path)


def _flag(broken: bool) -> str:
    return "[broken] " if broken else ""


@dataclass
class ModelSteering:
    """One model's generations under steering."""

    model: str
    """"a" or "b"."""
    model_id: str
    layer: int
    """Decoder layer whose output was steered (the crosscoder's layer for this model)."""
    direction: str
    """"decoder" (the feature's own decoder row) or "mapped from a"/"mapped from b"."""
    vector_norm: float
    """L2 norm of the steering direction in raw scale (alpha=1 adds s_max x this)."""
    median_norm: float | None
    """Median L2 norm of this model's raw activations in the store (for scale)."""
    rendering: str
    """"chat template", "plain chat rendering" (no template) or "plain text"."""
    generations: list[list[str]]
    """``generations[prompt][alpha]``: the generated text (prompt not included)."""
    batched: bool
    """True if rows were generated in batches, False if one by one."""
    rates: list[float | None] | None = None
    """Behaviour rate per alpha (mean score over prompts), when scored."""
    scores: list[list[float | None]] | None = None
    """``scores[prompt][alpha]``, when scored."""
    notes: list[str] = field(default_factory=list)
    coherence: dict[str, Any] | None = None
    """``{"loss", "repetition", "nonword", "broken"}``, each ``[prompt][alpha]``
    (crossdiff.steering.evidence; None in files written before version 2)."""
    nulls: list[dict[str, Any]] | None = None
    """Random-feature null sweeps: per null feature ``{"feature", "vector_norm", "coefs",
    "generations", "coherence", "rates", "scores"}`` (None: no null was run)."""
    evidence: dict[str, Any] | None = None
    """Effects with bootstrap CIs, the null band, coherent alphas and the verdict."""

    @property
    def label(self) -> str:
        if self.direction == "decoder":
            return self.model.upper()
        return f"{self.model.upper()} ({self.direction})"

    def subset(self, prompts: Sequence[int]) -> ModelSteering:
        """This model's sweep restricted to the prompts at indices ``prompts`` (its nulls too).

        For evidence on part of a prompt set, e.g. suppression measured only on the prompts
        where the behaviour occurs: ``evidence.evaluate(m.subset(on), alphas, scorer)``.
        The evidence itself is not carried over (it was computed on all prompts).
        """
        rows = [int(p) for p in prompts]

        def pick(grid: list | None) -> list | None:
            return None if grid is None else [grid[p] for p in rows]

        def pick_coherence(coh: dict[str, Any] | None) -> dict[str, Any] | None:
            return None if coh is None else {k: pick(v) for k, v in coh.items()}

        nulls = None
        if self.nulls is not None:
            nulls = [
                {
                    **n,
                    "generations": pick(n.get("generations")),
                    "scores": pick(n.get("scores")),
                    "coherence": pick_coherence(n.get("coherence")),
                    "rates": None,
                }
                for n in self.nulls
            ]
        return replace(
            self,
            generations=pick(self.generations) or [],
            rates=None,
            scores=pick(self.scores),
            coherence=pick_coherence(self.coherence),
            nulls=nulls,
            evidence=None,
        )


@dataclass
class SteeringResult:
    """Everything one call of :func:`crossdiff.steer` produced."""

    run: str
    feature: int
    partition: str
    s_max: float
    s_max_source: str
    mode: str
    alphas: list[float]
    prompts: list[Any]
    models: list[ModelSteering]
    settings: dict[str, Any]
    clamp_values: list[float] | None = None
    cross_model: dict[str, Any] | None = None
    scorer: str | None = None
    notes: list[str] = field(default_factory=list)
    created: str = ""
    verdict: str | None = None
    """The strongest verdict over the steered models (see crossdiff.steering.evidence)."""
    coherence_rule: dict[str, Any] | None = None
    """The thresholds that flag a generation as broken."""
    null_settings: dict[str, Any] | None = None
    """How the null features were drawn (count, seed, pool)."""
    path: Path | None = None
    plot_path: Path | None = None

    # ---- access --------------------------------------------------------------------------
    def model(self, key: str) -> ModelSteering:
        for m in self.models:
            if m.model == key.lower():
                return m
        raise CrossdiffError(
            f"this result has no model {key!r}; it has {[m.model for m in self.models]}"
        )

    def generations(self, key: str) -> list[list[str]]:
        """``[prompt][alpha]`` texts of model ``key``."""
        return self.model(key).generations

    def rates(self) -> dict[str, list[float | None]]:
        """Per model label, the behaviour rate per alpha (only scored results)."""
        return {m.label: m.rates for m in self.models if m.rates is not None}

    # ---- serialization -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = {
            "format": RESULT_FORMAT,
            "version": RESULT_VERSION,
            "run": self.run,
            "feature": self.feature,
            "partition": self.partition,
            "s_max": self.s_max,
            "s_max_source": self.s_max_source,
            "mode": self.mode,
            "alphas": self.alphas,
            "clamp_values": self.clamp_values,
            "prompts": self.prompts,
            "settings": self.settings,
            "models": [asdict(m) for m in self.models],
            "cross_model": self.cross_model,
            "scorer": self.scorer,
            "notes": self.notes,
            "created": self.created,
            "verdict": self.verdict,
            "coherence_rule": self.coherence_rule,
            "null_settings": self.null_settings,
            "plot": self.plot_path.name if self.plot_path is not None else None,
        }
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SteeringResult:
        if data.get("format") != RESULT_FORMAT:
            raise CrossdiffError(f"not a crossdiff steering result (format {data.get('format')!r})")
        if data.get("version", 0) > RESULT_VERSION:
            raise CrossdiffError(
                f"steering result version {data.get('version')} is newer than this crossdiff "
                f"supports ({RESULT_VERSION}); upgrade crossdiff"
            )
        fields = dict(data)
        for key in ("format", "version", "plot"):
            fields.pop(key, None)
        try:
            fields["models"] = [ModelSteering(**m) for m in fields["models"]]
            return cls(**fields)
        except (KeyError, TypeError) as error:  # a field missing, unknown or of another shape
            raise CrossdiffError(f"not a complete crossdiff steering result ({error})") from None

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        text = json.dumps(self.to_dict(), indent=2, ensure_ascii=False)
        tmp.write_text(text + "\n", encoding="utf-8")
        tmp.replace(path)
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | Path) -> SteeringResult:
        """Read a result saved by :meth:`save` (version 1 files too)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CrossdiffError(f"no steering result at {path}") from None
        except json.JSONDecodeError as error:
            raise CrossdiffError(f"{path} is not valid JSON: {error}") from None
        except (OSError, UnicodeDecodeError) as error:
            raise CrossdiffError(f"{path} could not be read: {error}") from None
        if not isinstance(data, dict):
            raise CrossdiffError(f"{path} is not a crossdiff steering result (not a mapping)")
        try:
            result = cls.from_dict(data)
        except CrossdiffError as error:
            raise CrossdiffError(f"{path}: {error}") from None
        result.path = path
        return result

    # ---- display -------------------------------------------------------------------------
    def column_titles(self) -> list[str]:
        if self.mode == "clamp":
            values = self.clamp_values or [a * self.s_max for a in self.alphas]
            return [f"clamp {v:.3g} (x{a:g})" for v, a in zip(values, self.alphas)]
        return [f"alpha {a:g}" for a in self.alphas]

    def header(self) -> str:
        lines = [
            f"feature {self.feature} ({self.partition}), s_max {self.s_max:.4g} "
            f"[{self.s_max_source}], mode {self.mode}"
        ]
        for m in self.models:
            how = "batched" if m.batched else "one by one"
            lines.append(
                f"  model {m.label}: {m.model_id}, layer {m.layer}, |direction| "
                f"{m.vector_norm:.4g}"
                + (f" (median activation norm {m.median_norm:.4g})" if m.median_norm else "")
                + f", {m.rendering}, {how}"
            )
        if self.cross_model:
            cm = self.cross_model
            fve = cm.get("fve_eval")
            fve_text = f"{fve:.3f} (eval)" if fve is not None else f"{cm['fve_train']:.3f} (train)"
            lines.append(
                f"  cross-model map {cm['source'].upper()}->{cm['target'].upper()}: ridge "
                f"{cm['ridge']:g} on {cm['rows']:,} pairs, FVE {fve_text}; the mapped direction "
                f"retains {cm['retained']:.3g} of the source's relative strength"
                + (" (rescaled to match)" if cm.get("norm") == "relative" else "")
            )
        s = self.settings
        decoding = (
            f"sampling (temperature {s['temperature']}, top_p {s['top_p']}, seed {s['seed']})"
            if s.get("do_sample")
            else "greedy"
        )
        lines.append(f"  {decoding}, {s['max_new_tokens']} new tokens max")
        lines.extend(f"  note: {n}" for n in self.notes)
        for m in self.models:
            lines.extend(f"  note ({m.label}): {n}" for n in m.notes)
        return "\n".join(lines)

    def table(self, width: int | None = None) -> str:
        """The side-by-side view: per prompt, one column per alpha, one row per model."""
        if width is None:
            width = shutil.get_terminal_size((120, 24)).columns
        titles = self.column_titles()
        n = len(titles)
        col = max(MIN_COLUMN, (width - LABEL_WIDTH - 3 * n) // max(1, n))
        sep = "-" * LABEL_WIDTH + ("-+-" + "-" * col) * n
        out = [self.header(), ""]
        for p, prompt in enumerate(self.prompts):
            text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
            one_line = " ".join(str(text).split())
            out.append(f"prompt {p + 1}/{len(self.prompts)}: {one_line[: width - 20]!r}")
            out.append(
                (" " * LABEL_WIDTH + "".join(" | " + t[:col].ljust(col) for t in titles)).rstrip()
            )
            out.append(sep)
            for m in self.models:
                broken = (m.coherence or {}).get("broken") or []
                flags = broken[p] if p < len(broken) else [False] * len(m.generations[p])
                cells = [
                    textwrap.wrap(_flag(bad) + (" ".join(g.split()) or "(empty)"), col) or [""]
                    for g, bad in zip(m.generations[p], flags)
                ]
                height = max(len(c) for c in cells)
                for line in range(height):
                    label = m.label[:LABEL_WIDTH] if line == 0 else ""
                    row = label.ljust(LABEL_WIDTH) + "".join(
                        " | " + (c[line] if line < len(c) else "").ljust(col) for c in cells
                    )
                    out.append(row.rstrip())
                out.append(sep)
            out.append("")
        if any(m.rates is not None for m in self.models):
            out.append(self.rates_table())
        lines = self.evidence_lines()
        if lines:
            out += ["", *lines]
        return "\n".join(out).rstrip() + "\n"

    def evidence_lines(self) -> list[str]:
        """Verdict, coherent alpha range and null band per model, as text."""
        out = []
        for m in self.models:
            ev = m.evidence
            if not ev:
                continue
            rng = ev.get("coherent_range")
            where = f"coherent alphas {rng[0]:g}..{rng[1]:g}" if rng else "no coherent alpha"
            nulls = ev.get("null_features") or []
            out.append(
                f"evidence {m.label}: {ev.get('verdict')} ({where}; "
                f"{len(nulls)} null feature(s){': ' + ', '.join(map(str, nulls)) if nulls else ''})"
            )
            if ev.get("effects") is not None:
                for i, a in enumerate(self.alphas):
                    eff = ev["effects"][i]
                    if eff is None:
                        continue
                    band = ""
                    if ev.get("null_low") is not None and ev["null_low"][i] is not None:
                        band = f", null band [{ev['null_low'][i]:.2f}, {ev['null_high'][i]:.2f}]"
                    ok = "" if ev["coherent"][i] else ", incoherent"
                    out.append(
                        f"  alpha {a:g}: effect {eff:.2f} "
                        f"[{ev['ci_low'][i]:.2f}, {ev['ci_high'][i]:.2f}]{band}{ok}"
                    )
        return out

    def rates_table(self) -> str:
        """Rate per alpha and model, as text."""
        titles = self.column_titles()
        col = max(len(t) for t in titles)
        lines = [f"score: {self.scorer}"]
        lines.append((" " * LABEL_WIDTH + "".join(" | " + t.ljust(col) for t in titles)).rstrip())
        for m in self.models:
            if m.rates is None:
                continue
            cells = ["n/a" if r is None else f"{r:.2f}" for r in m.rates]
            lines.append(
                (
                    m.label[:LABEL_WIDTH].ljust(LABEL_WIDTH)
                    + "".join(" | " + c.ljust(col) for c in cells)
                ).rstrip()
            )
        if self.plot_path is not None:
            lines.append(f"plot: {self.plot_path}")
        return "\n".join(lines)

    def plot_svg(self) -> str | None:
        """Rate against alpha as SVG text (None when not scored)."""
        from crossdiff.steering.svg import rate_plot_svg

        series = self.rates()
        if not series:
            return None
        return rate_plot_svg(
            self.alphas,
            series,
            title=f"feature {self.feature}: {self.scorer}"[:70],
            x_label="alpha (multiples of s_max)" + (", clamp" if self.mode == "clamp" else ""),
            y_label="rate",
        )
