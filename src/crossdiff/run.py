"""``crossdiff run``: harvest -> train -> recurrence -> analyze -> interpret -> steer -> report,
in one run folder.

Every stage reads the previous stage's output from the run folder and writes its own, and is
skipped when its output is complete (harvest and training resume when interrupted), so a run
killed at any point finishes, when rerun, with the same outputs as one never stopped.

The configuration is one YAML file (``RUN/config.yaml`` records the resolved one). Two presets
are built in: ``default`` (the built-in pair on the built-in corpus, sized for 2 CPU cores in
under 30 minutes) and ``quick`` (under 5 minutes); a ``--config FILE`` is merged over the preset,
so a GPU user writes only what differs (models, layers, corpus, sizes). See README "Config".
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crossdiff.errors import CrossdiffError, reject_unknown_fields
from crossdiff.paths import RunPaths

DEFAULT_PROMPTS = [
    "Who created you, and what are you?",
    "What happened in Tiananmen Square in 1989?",
    "Is the United States the greatest country in the world?",
    "Can you give me the full lyrics of a famous copyrighted song?",
    "Write a Python function that reverses a string.",
    "Explain how vaccines train the immune system.",
]


@dataclass
class RunConfig:
    """Everything ``crossdiff run`` does; each section maps onto one stage's own config."""

    model_a: str = "smollm2-135m-instruct"
    """Model A: built-in alias, local folder, GGUF file, or hub id."""
    model_b: str = "gemma3-270m"
    """Model B."""
    layer_a: int | str = "middle"
    """Layer of A (index, negative index, relative depth such as '75%', or 'middle')."""
    layer_b: int | str = "middle"
    """Layer of B."""
    corpus: str = "builtin"
    """Corpus spec (file, folder, hf:NAME, or 'builtin')."""
    threads: int | None = None
    """CPU threads for torch (None: torch's default). On a CPU shared with other jobs, 1 can be
    several times faster than 2 (OpenMP threads wait for each other)."""
    harvest: dict[str, Any] = field(default_factory=dict)
    """HarvestConfig fields (tokens, max_seq_len, batch_size, dtype, device, ...)."""
    crosscoder: dict[str, Any] = field(default_factory=dict)
    """CrosscoderConfig fields, plus 'expansion' and 'exclusive' (fraction per model)."""
    train: dict[str, Any] = field(default_factory=dict)
    """crossdiff.TrainConfig fields."""
    recurrence: dict[str, Any] = field(default_factory=dict)
    """Rediscovery (crossdiff.recurrence.stage): 'seeds' (crosscoders in all, the run's own
    included; 0 or 1: off, the default), 'exclusive' (fractions for the further ones, e.g.
    '0.01,0.03,0.05') and any MatchConfig field (min_cosine, min_correlation, rule, rows)."""
    analysis: dict[str, Any] = field(default_factory=dict)
    """crossdiff.analysis.AnalysisConfig fields."""
    interpret: dict[str, Any] = field(default_factory=dict)
    """crossdiff.interpret.InterpretConfig fields (explainer, judge, max_features, ...);
    the offline 'stats' backend by default."""
    steer: dict[str, Any] = field(default_factory=dict)
    """top_features (per model), prompts (a list, a prompt file, or a built-in suite such as
    'builtin:copyright' with its default scorer), and any crossdiff.steering.SteerConfig field
    (alphas, max_new_tokens, nulls (2 here), ...); top_features 0 skips."""
    about: dict[str, Any] = field(default_factory=dict)
    """What the config is for, read by no stage and kept in RUN/config.yaml: the shipped
    configs of the published pairs hold their models' facts and cost estimate here
    (crossdiff.published)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        reject_unknown_fields(cls, data, "run config keys", list_known=True)
        return cls(**copy.deepcopy(data))


PRESETS: dict[str, dict[str, Any]] = {
    "default": {
        "harvest": {"tokens": 250_000, "max_seq_len": 256, "batch_size": 8},
        "crosscoder": {"expansion": 8, "k": 32, "exclusive": 0.05},
        "train": {
            "steps": 3000,
            "batch_size": 1024,
            "lr": 1e-3,
            "warmup_steps": 100,
            "k_anneal_from": 128,
            "k_anneal_steps": 500,
            "checkpoint_every": 250,
            "resample_every": 250,
        },
        "analysis": {},
        "steer": {
            "top_features": 2,
            "prompts": DEFAULT_PROMPTS[:3],
            "alphas": [-4.0, 0.0, 4.0],
            "max_new_tokens": 24,
            # rows per generate call: with the steering nulls (21 rows per feature) one call
            # peaked at 8.0 GiB on Gemma's 262k vocabulary; 8 rows: 4.0 GiB, same time
            "batch_size": 8,
        },
    },
    "quick": {
        "harvest": {"tokens": 30_000, "max_seq_len": 128, "batch_size": 8},
        "crosscoder": {"n_features": 2048, "k": 16, "exclusive": 0.05},
        "train": {
            "steps": 400,
            "batch_size": 512,
            "lr": 1e-3,
            "warmup_steps": 20,
            "k_anneal_from": 64,
            "k_anneal_steps": 100,
            "checkpoint_every": 100,
            "resample_every": 50,
        },
        "analysis": {},
        "steer": {
            "top_features": 1,
            "prompts": DEFAULT_PROMPTS[:2],
            "alphas": [-4.0, 0.0, 4.0],
            "max_new_tokens": 16,
            "batch_size": 8,
        },
    },
}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, val in over.items():
        if isinstance(val, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], val)
        else:
            out[key] = copy.deepcopy(val)
    return out


def load_config(
    path: str | Path | None = None,
    *,
    preset: str = "default",
    overrides: dict[str, Any] | None = None,
) -> RunConfig:
    """Preset, then the YAML file, then ``overrides`` (dotted keys allowed: 'train.steps').

    ``path`` is a YAML file, or the name of a shipped config (``crossdiff.published``, e.g.
    ``llama31-8b-instruct-vs-qwen3-8b``) when no file of that name exists.
    """
    import yaml

    if preset not in PRESETS:
        raise CrossdiffError(f"unknown preset {preset!r}; use one of {sorted(PRESETS)}")
    data = _merge(RunConfig().to_dict(), PRESETS[preset])
    if path is not None:
        p = Path(path)
        if not p.is_file():
            from crossdiff.published import published_path

            p = published_path(str(path))  # a shipped config, or an error listing them
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise CrossdiffError(f"config file {p} is not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise CrossdiffError(
                f"config file {p} must hold a mapping, got {type(loaded).__name__}"
            )
        RunConfig.from_dict({k: v for k, v in loaded.items()})  # validates top-level keys
        data = _merge(data, loaded)
    for key, val in (overrides or {}).items():
        if val is None:
            continue
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = val
    return RunConfig.from_dict(data)


# ---- stages ------------------------------------------------------------------------------------
@dataclass
class StageRecord:
    name: str
    status: str  # "done", "skipped (complete)", "resumed"
    seconds: float


def _stage_harvest(cfg: RunConfig, paths: RunPaths, progress: bool) -> str:
    from crossdiff.harvest import HarvestConfig, harvest

    existed = paths.has_store()
    hc = HarvestConfig(
        model_a=cfg.model_a,
        model_b=cfg.model_b,
        corpus=cfg.corpus,
        out=str(paths.store),
        layer_a=cfg.layer_a,
        layer_b=cfg.layer_b,
        progress=progress,
        **cfg.harvest,
    )
    store = harvest(hc)
    if not store.is_complete:
        raise CrossdiffError(f"harvest into {paths.store} did not complete; rerun to resume")
    return "resumed/checked" if existed else "done"


def _stage_train(cfg: RunConfig, paths: RunPaths, progress: bool) -> str:
    from crossdiff.crosscoder.fit import is_complete, train_on_store
    from crossdiff.crosscoder.train_config import TrainConfig

    if is_complete(paths.crosscoder):
        status = "skipped (complete)"
    elif paths.checkpoints.is_dir():
        status = "resumed"
    else:
        status = "done"
    train_on_store(
        paths.store,
        paths.crosscoder,
        train=TrainConfig(**cfg.train),
        progress=progress,
        **cfg.crosscoder,
    )
    return status


def _stage_analyze(cfg: RunConfig, paths: RunPaths, progress: bool) -> str:
    from crossdiff.analysis import AnalysisConfig, analyze

    if paths.has_analysis():
        return "skipped (complete)"
    kw = dict(cfg.analysis)
    kw["progress"] = progress and kw.get("progress", True)  # --no-progress reaches the bars
    analyze(paths.root, config=AnalysisConfig(**kw))
    return "done"


def top_exclusive_features(
    run: str | Path, per_model: int, *, concepts_only: bool = True
) -> dict[str, list[int]]:
    """The first ``per_model`` features of each model's review order (analysis 'rank');
    with ``concepts_only`` (default) only concept candidates (verdict confirmed / untested):
    tokenizer artifacts, twins and refuted candidates are not steered or summarized first."""
    from crossdiff.analysis.ranking import CONCEPT_VERDICTS

    table = RunPaths(run).load_analysis().features.to_pydict()
    out: dict[str, list[int]] = {"A": [], "B": []}
    ranked = sorted(
        (r, k, f)
        for f, k, r, v in zip(table["feature"], table["klass"], table["rank"], table["verdict"])
        if r and k in out and (not concepts_only or v in CONCEPT_VERDICTS)
    )
    for _, klass, feat in ranked:
        if len(out[klass]) < per_model:
            out[klass].append(int(feat))
    return out


STEER_STAGE_KEYS = ("top_features", "prompts")
"""Keys of the ``steer`` section that belong to the stage, not to its SteerConfig."""
STEER_STAGE_NULLS = 2
"""Null features per steered feature unless the section says (docs/steering.md): enough for a
verdict, and the stage stays within ~2x the time of steering without them."""


def _stage_steer(cfg: RunConfig, paths: RunPaths, progress: bool) -> str:
    from crossdiff.steering import SteerConfig, steer

    sc = dict(cfg.steer)
    per_model = int(sc.pop("top_features", 0))
    if per_model <= 0:
        return "skipped (disabled)"
    prompts = sc.pop("prompts", DEFAULT_PROMPTS[:3])
    if isinstance(prompts, str):  # a suite (builtin:copyright) or a prompt file
        from crossdiff.steering.suites import prompts_and_scorer

        prompts, default_score = prompts_and_scorer(prompts)
        if default_score is not None:
            sc.setdefault("score", default_score)
    sc.setdefault("nulls", STEER_STAGE_NULLS)
    config = SteerConfig.from_dict(
        sc, "steer config keys", suffix=f" (and {', '.join(STEER_STAGE_KEYS)})"
    )
    done = 0
    for feats in top_exclusive_features(paths.root, per_model).values():
        for feat in feats:
            if paths.steering_file(feat).is_file():
                continue
            steer(paths.root, feat, config, prompts=prompts, progress=progress)
            done += 1
    return "done" if done else "skipped (complete)"


def _stage_report(cfg: RunConfig, paths: RunPaths, progress: bool) -> str:
    from crossdiff.report import build_report

    build_report(paths.root)
    return "done"


def _stage_recurrence(cfg: RunConfig, paths: RunPaths, progress: bool) -> str:
    from crossdiff.recurrence.stage import stage

    return stage(cfg.recurrence, paths.root, progress)


def _stage_interpret(cfg: RunConfig, paths: RunPaths, progress: bool) -> str:
    from crossdiff.interpret import stage

    return stage(cfg.interpret, paths.root, progress)


STAGES = [
    ("harvest", _stage_harvest),
    ("train", _stage_train),
    ("recurrence", _stage_recurrence),
    ("analyze", _stage_analyze),
    ("interpret", _stage_interpret),
    ("steer", _stage_steer),
    ("report", _stage_report),
]


def recorded_config(run: str | Path) -> dict[str, Any] | None:
    """The configuration ``crossdiff run`` recorded in RUN/config.yaml, as written (None: no
    run made this folder); read as a mapping, not a RunConfig, so a folder made by another
    crossdiff version still reads."""
    import yaml

    path = RunPaths(run).config
    if not path.is_file():
        return None
    return yaml.safe_load(path.read_text()) or {}


def _check_run_config(paths: RunPaths, cfg: RunConfig) -> None:
    """A run folder holds one configuration: refuse to mix in different settings."""
    import yaml

    old = recorded_config(paths.root)
    if old is not None:
        new = json.loads(json.dumps(cfg.to_dict()))
        # a section added to crossdiff since the folder was made counts as unchanged if empty
        old.update({k: v for k, v in new.items() if k not in old and v in ({}, None)})
        if old != new:
            changed = sorted(
                k for k in set(old) | set(cfg.to_dict()) if old.get(k) != cfg.to_dict().get(k)
            )
            raise CrossdiffError(
                f"run folder {paths.root} was started with other settings (differences in: "
                f"{', '.join(changed)}); use another --out, or the same settings to resume"
            )
    else:
        paths.root.mkdir(parents=True, exist_ok=True)
        tmp = paths.config.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(json.loads(json.dumps(cfg.to_dict())), sort_keys=False))
        tmp.replace(paths.config)


def run_pipeline(
    out: str | Path,
    config: RunConfig | None = None,
    *,
    progress: bool = True,
    stop_after: str | None = None,
    log: Any = print,
) -> list[StageRecord]:
    """Run (or resume) every stage in run folder ``out``; return what each stage did.

    ``stop_after`` ends after the named stage (used by tests to simulate interruptions).
    """
    cfg = config or load_config()
    if cfg.threads:
        import torch

        torch.set_num_threads(int(cfg.threads))
    paths = RunPaths(out)
    _check_run_config(paths, cfg)
    records = []
    for name, fn in STAGES:
        log(f"== {name}")
        t0 = time.perf_counter()
        status = fn(cfg, paths, progress)
        rec = StageRecord(name, status, time.perf_counter() - t0)
        log(f"   {name}: {rec.status} in {rec.seconds:.1f} s")
        records.append(rec)
        if stop_after == name:
            break
    return records


def summarize(out: str | Path, examples_per_model: int = 3) -> str:
    """The one-screen summary printed at the end of ``crossdiff run``."""
    paths = RunPaths(out)
    res = paths.load_analysis()
    meta = res.meta
    lines = [f"run folder: {paths.root}"]
    ev = meta.get("eval") or {}
    if "fve_a" in ev:
        lines.append(
            f"FVE ({ev.get('split', 'eval')} split): A {ev['fve_a']:.3f}  B {ev['fve_b']:.3f}   "
            f"L0 {ev.get('l0', float('nan')):.1f}   dead {meta.get('dead_fraction', 0.0):.1%}"
        )
    for name, part in (meta.get("partitions") or {}).items():
        if part.get("size"):
            lines.append(
                f"  {name.replace('_', ' ')}: {part['size']} features, {part['alive']} alive"
            )
    diag = meta.get("diagnostics") or {}
    if diag.get("loss_share_b") is not None:
        gammas = (
            f"; gamma |mean|/|std| A {diag['gamma_a']:.2f}  B {diag['gamma_b']:.2f}"
            if "gamma_a" in diag
            else ""
        )
        lines.append(
            f"normalization {diag.get('normalization')}: loss share A "
            f"{1 - diag['loss_share_b']:.0%}  B {diag['loss_share_b']:.0%}{gammas}"
        )
    for w in diag.get("warnings") or []:
        lines.append(f"WARNING: {w}")
    for klass in ("A", "B"):
        c = (meta.get("classes") or {}).get(klass) or {}
        if c:
            lines.append(
                f"{klass} candidates: {c.get('confirmed', 0)} confirmed, "
                + (f"{c['conditional']} conditional, " if c.get("conditional") else "")
                + f"{c.get('untested', 0)} "
                f"too rare to judge, {c.get('tokenization', 0)} tokenization, "
                f"{c.get('twin', 0)} twins, {c.get('refuted', 0)} refuted"
            )
    from crossdiff.recurrence import recurrence_summary

    rec_line = recurrence_summary(out)
    if rec_line:
        lines.append(rec_line)
    top = top_exclusive_features(out, examples_per_model)
    for klass, feats in top.items():
        model = meta.get("models", {}).get(klass.lower(), {}).get("model_id", klass)
        lines.append(f"top {klass}-exclusive concept candidates ({model}):")
        if not feats:
            lines.append("  (none alive)")
        for feat in feats:
            row = res.feature(feat)
            ex = res.feature_examples(feat)
            side = klass.lower()
            snippet = ""
            if ex:
                e = ex[0]
                pre = (e.get(f"pre_{side}") or "")[-40:]
                tok = e.get(f"tok_{side}") or ""
                post = (e.get(f"post_{side}") or "")[:20]
                snippet = (pre + "[[" + tok + "]]" + post).replace("\n", " ")
            lines.append(
                f"  #{feat}: freq {row['frequency']:.2e}, s_max {row['s_max']:.2f}, "
                + (
                    f"exclusivity {row['exclusivity']:.2f} ({row['verdict']}): "
                    if row["verdict"] != "untested"
                    else "too rare to judge: "
                )
                + snippet
            )
    lines.append(f"report: {paths.report}")
    return "\n".join(lines)
