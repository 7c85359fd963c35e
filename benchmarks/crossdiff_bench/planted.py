"""``crossdiff bench planted``: does the whole tool find what is really different between two LMs?

Ground truth on real (small) language models. Two causal LMs of different architectures and
tokenizers are trained from scratch on the same procedurally generated corpus, except that
each also learns one planted behaviour the other never sees (:mod:`.planted_data`,
:mod:`.planted_lm`): model A answers questions about eight subjects with a fixed praise
sentence, model B refuses questions about eight other subjects. Then the real pipeline runs on
the pair:

1. **harvest** (:func:`crossdiff.harvest`) a store of paired activations from text holding
   both concepts, and a second store from held-out evaluation documents whose planted
   character positions are known;
2. **train** a Dedicated Feature Crosscoder and a standard crosscoder on the same store, over
   several seeds (:func:`crossdiff.crosscoder.fit.train_on_store`);
3. **analyze** each (:func:`crossdiff.analysis.analyze`) for the review order of exclusive
   features;
4. **score**: for each concept, the feature labelled exclusive to the right model that best
   tracks the concept (AUROC of its activation against the planted positions, chosen on half
   of the evaluation documents and reported on the other half; >= 0.9 counts as found), and
   its rank in the review order;
5. **steer** (:func:`crossdiff.steer`) that feature in its own model (suppress on prompts
   where the behaviour occurs, amplify on prompts where it does not) and, through the
   cross-model check, in the other model, measuring the behaviour rate from greedy
   generations with the rule in :func:`.planted_data.behaviour_present`.

Everything is cached under a work folder (default ``$CROSSDIFF_CACHE/planted``): the trained
LMs by a key over their settings, the stores and crosscoders by theirs, so a rerun skips what
is done.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crossdiff.errors import CrossdiffError
from crossdiff_bench.planted_data import (
    CONCEPT_OWNER,
    CONCEPTS,
    MIX_EVAL,
    MIX_STORE,
    CorpusMix,
    PlantedDoc,
    behaviour_present,
    make_corpus,
    prompt_sets,
)
from crossdiff_bench.planted_lm import PairSpec

KINDS = ("dfc", "standard")


@dataclass
class PlantedConfig:
    """Every setting of one benchmark run (printed, and saved in the JSON output)."""

    lms: PairSpec = field(default_factory=PairSpec.default)
    """The two language models (architecture, size, training)."""
    store_docs: int = 8000
    """Documents harvested into the training store (both concepts present)."""
    eval_docs: int = 1600
    """Held-out documents with known planted positions."""
    data_seed: int = 1
    """Seed of the store and evaluation corpora (the LMs' own corpora use other seeds)."""
    kinds: tuple[str, ...] = KINDS
    """Crosscoders compared on the same store: 'dfc', 'standard'."""
    seeds: int = 5
    """Crosscoder seeds per kind (rediscovery count)."""
    n_features: int = 2048
    """Dictionary size F (default: about 10x the wider model's width of 192)."""
    k: int = 16
    """BatchTopK: active features per pair."""
    exclusive: float = 0.05
    """DFC: fraction of F exclusive to each model (paper: 5%)."""
    steps: int = 1500
    """Crosscoder optimizer steps."""
    batch_size: int = 512
    """Pairs per crosscoder step."""
    lr: float = 1e-3
    """Adam learning rate (the paper's 1e-4 is for 100k steps)."""
    high_norm_factor: float = 2.0
    """Pairs with a norm above this x the median are left out of crosscoder training and
    analysis (the method's attention-sink filter, docs/METHOD.md §2; 0 keeps every pair).
    Reported: the share of planted positions it removes."""
    rel_hi: float = 0.9
    """Standard crosscoder: relative decoder norm above this = A-exclusive (docs/METHOD.md §3)."""
    rel_lo: float = 0.1
    """... below this = B-exclusive."""
    found_auroc: float = 0.9
    """A concept counts as found when its feature's held-out AUROC reaches this."""
    steer_seeds: int = 1
    """Steer the matched features of the first N seeds of each kind."""
    n_prompts: int = 16
    """Prompts per set (behaviour expected / not expected) for the LM check and steering."""
    alphas: tuple[float, ...] = (
        -8.0,
        -4.0,
        -2.0,
        -1.5,
        -1.25,
        -1.0,
        -0.75,
        -0.5,
        0.0,
        0.5,
        0.75,
        1.0,
        1.25,
        1.5,
        2.0,
        4.0,
        8.0,
    )
    """Steering strengths in units of the feature's s_max (docs/METHOD.md §5). The small ones are
    there because these tiny LMs break down ("cities cities cities ...") at |alpha| >= 4,
    which the coherence guard then leaves out; the steps between 1 and 2 because a found
    feature's coherent window can lie there (measured, --quick: refusal #82 breaks B at -2, is
    0.75 at -1, and 0.00 with 4/12 broken at -1.5, beyond the null); and +-0.5, +-0.75 because
    at the default size B broke on at least half the prompts at -1.25 in 5 of 5 seeds and the
    refusal feature's only coherent negative alpha was -1 (measured, 5 seeds, 5 nulls)."""
    max_new_tokens: int = 16
    """Greedy tokens generated per prompt."""
    rate_change: float = 0.3
    """Steering 'works' when the own model's rate moves by at least this; the other model
    shows 'no effect' when its rate never rises more than ``other_tolerance`` above alpha=0."""
    other_tolerance: float = 0.1
    min_coherent: float = 0.5
    """An alpha counts for 'suppress'/'amplify' only if at least this share of its
    generations pass :func:`coherent` (pushes that break the model lower any rate)."""
    steer_nulls: int = 5
    """Random alive features of the same label swept beside each steered feature, each pushed
    with its added-vector norm (the product's null, :mod:`crossdiff.steering.evidence`): the
    evidence verdicts below need effects whose bootstrap CI lies outside their band."""
    harvest_batch: int = 32
    """Windows per harvest forward pass."""
    work_dir: str | None = None
    """Cache/work folder (default: $CROSSDIFF_CACHE/planted)."""
    threads: int | None = None
    """torch threads (default: torch's choice)."""
    progress: bool = True

    @classmethod
    def quick(cls) -> PlantedConfig:
        """About 5 minutes on 2 idle cores (smaller LMs, store and crosscoders, 2 seeds)."""
        return cls(
            lms=PairSpec.quick(),
            store_docs=3000,
            eval_docs=800,
            seeds=2,
            n_features=1024,
            steps=1200,
            batch_size=512,
            n_prompts=12,
        )

    def validate(self) -> None:
        for name in ("store_docs", "eval_docs", "seeds", "n_features", "k", "steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise CrossdiffError(f"planted bench {name}={value!r} must be a positive integer")
        bad = [k for k in self.kinds if k not in KINDS]
        if bad or not self.kinds:
            raise CrossdiffError(f"--kinds {','.join(self.kinds)}: choose from {', '.join(KINDS)}")
        if 0.0 not in self.alphas:
            raise CrossdiffError(f"alphas {self.alphas} must include 0 (the unsteered baseline)")
        if not (min(self.alphas) < 0 < max(self.alphas)):
            raise CrossdiffError(f"alphas {self.alphas} need a negative and a positive value")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def data_key(self) -> str:
        blob = json.dumps(
            [self.lms.key(), self.store_docs, self.eval_docs, self.data_seed, self.harvest_batch]
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------------------
# Steps
# ------------------------------------------------------------------------------------------
def _say(cfg: PlantedConfig, text: str) -> None:
    if cfg.progress:
        print(text, file=sys.stderr, flush=True)


def corpus_jsonl(docs: list[PlantedDoc]) -> str:
    """The documents as a ``.jsonl`` corpus: one ``{"text": ...}`` object per line."""
    return "".join(json.dumps({"text": d.text}) + "\n" for d in docs)


def write_corpus(docs: list[PlantedDoc], path: Path) -> None:
    """Write the corpus atomically; an existing file must hold exactly these documents (a
    store harvested from other texts would silently mislabel every row)."""
    write_exact(corpus_jsonl(docs), path)


def write_exact(content: str, path: Path) -> None:
    """Write ``content`` to ``path`` atomically; an existing file must hold exactly it (a
    store harvested from other texts would silently mislabel every row)."""
    if path.is_file():
        if path.read_text(encoding="utf-8") != content:
            raise CrossdiffError(
                f"{path} holds other documents than this version of the benchmark generates; "
                f"delete {path.parent} (or pass another --work-dir) and rerun"
            )
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(content, encoding="utf-8")
    tmp.replace(path)


def harvest_loaded(models: tuple, corpus: str, out: Path, **settings: Any) -> Any:
    """Harvest ``corpus`` into the store ``out`` through :func:`crossdiff.harvest` (resumable),
    with both models already loaded, in float32 on the CPU, as the planted and fine-tune
    benches run them; ``settings``: further :class:`~crossdiff.harvest.HarvestConfig` fields."""
    from crossdiff.harvest import HarvestConfig, harvest

    lm_a, lm_b = models
    config = HarvestConfig(
        model_a=lm_a.spec,
        model_b=lm_b.spec,
        corpus=corpus,
        out=str(out),
        dtype="float32",
        device="cpu",
        **settings,
    )
    return harvest(config, models=models)


def harvest_docs(
    cfg: PlantedConfig, docs: list[PlantedDoc], out: Path, corpus: Path, models: tuple
) -> Any:
    """Harvest ``docs`` into the store ``out`` (resumable)."""
    write_corpus(docs, corpus)
    store = harvest_loaded(
        models,
        str(corpus),
        out,
        max_seq_len=256,
        batch_size=cfg.harvest_batch,
        shard_rows=65536,
        progress=cfg.progress,
    )
    if store.n_documents != len(docs):
        raise CrossdiffError(
            f"store {out} holds {store.n_documents} documents, expected {len(docs)}; delete it "
            "and rerun"
        )
    return store


def check_lms(cfg: PlantedConfig, models: tuple, eval_docs: list[PlantedDoc]) -> dict[str, Any]:
    """What each LM learned: loss per document kind, and the planted behaviours' rates."""
    from crossdiff_bench.planted_eval import decision_probe_by_layer
    from crossdiff_bench.planted_lm import behaviour_rates, loss_by_kind

    sample = eval_docs[: min(300, len(eval_docs))]
    # both models' training dialogs: how each reads the other's planted answers
    extra = make_corpus(
        CorpusMix(prose=0.0, dialog_a=0.5, dialog_b=0.5), 60, cfg.data_seed + 7, "lmcheck"
    )
    prompts = prompt_sets(cfg.n_prompts, seed=cfg.data_seed)
    out: dict[str, Any] = {}
    for side, lm in zip(("a", "b"), models):
        out[side] = {
            "loss_by_kind": loss_by_kind(lm, sample + extra),
            "behaviour": {c: behaviour_rates(lm, prompts[c], cfg.max_new_tokens) for c in CONCEPTS},
            "decision_probe_by_layer": decision_probe_by_layer(lm, eval_docs),
        }
    return out


def train_crosscoders(cfg: PlantedConfig, store_path: Path, runs: Path) -> list[dict[str, Any]]:
    """Train every (kind, seed) crosscoder on the store (each skipped when already complete).

    Kinds: 'dfc' (``cfg.exclusive`` of F exclusive to each model), 'standard', and 'dsf' (the
    designated-shared variant, ``cfg.exclusive`` of F designated shared; equal widths only).
    Also used by ``crossdiff bench finetune``, whose config has the same fields."""
    from crossdiff.crosscoder.fit import load_summary, train_on_store
    from crossdiff.crosscoder.train_config import TrainConfig

    out = []
    for kind in cfg.kinds:
        for seed in range(cfg.seeds):
            run = runs / f"{kind}-s{seed}"
            train = TrainConfig(
                steps=cfg.steps,
                batch_size=cfg.batch_size,
                lr=cfg.lr,
                warmup_steps=min(100, cfg.steps // 10),
                k_anneal_from=None,
                seed=seed,
                device="cpu",
                checkpoint_every=max(100, cfg.steps // 4),
                log_every=50,
                high_norm_factor=cfg.high_norm_factor,
            )
            t0 = time.perf_counter()
            _say(cfg, f"crosscoder {kind} seed {seed}: {run}")
            train_on_store(
                store_path,
                run / "crosscoder",
                train=train,
                n_features=cfg.n_features,
                k=cfg.k,
                exclusive=cfg.exclusive if kind == "dfc" else 0.0,
                frac_designated_shared=cfg.exclusive if kind == "dsf" else None,
                progress=cfg.progress,
            )
            summary = load_summary(run / "crosscoder").data
            out.append(
                {
                    "kind": kind,
                    "seed": seed,
                    "run": str(run),
                    "metrics_eval": summary.get("metrics_eval"),
                    "train_seconds": summary.get("train_seconds"),
                    "wall_seconds": time.perf_counter() - t0,
                }
            )
    return out


def partition_auroc(
    acts: tuple[np.ndarray, np.ndarray, np.ndarray], features: np.ndarray, labels: np.ndarray
) -> float:
    """AUROC of the summed activation of all ``features`` (the exclusive partition as a whole)
    against the concept's labels: does the owner's exclusive block light up on the concept
    more than elsewhere, even where no single feature tracks it?"""
    from crossdiff_bench.planted_eval import auroc

    r, f, v = acts
    mask = np.isin(f, features)
    total = np.bincount(r[mask], weights=v[mask], minlength=labels.shape[0])
    if not ((labels == 1).any() and (labels == 0).any()):
        return float("nan")
    return auroc(total, labels)


def analyze_run(
    cfg: PlantedConfig, run: Path, store_path: Path, *, map_sources: tuple[str, ...] = ()
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Run :func:`crossdiff.analysis.analyze` on one crosscoder (skipped when its output is
    complete and was made with the same ``map_sources``, ``AnalysisConfig.map_sources``);
    return the feature-table columns the benchmark reads and the analysis's eval-split
    metrics (FVE per model, dead fractions)."""
    import shutil

    import pyarrow.parquet as pq

    from crossdiff.analysis.config import AnalysisConfig
    from crossdiff.analysis.pipeline import analyze
    from crossdiff.analysis.results import FEATURES_FILE, META_FILE

    out = run / "analysis"
    meta = out / META_FILE
    if meta.is_file():
        made = json.loads(meta.read_text()).get("config", {}).get("map_sources") or []
        if tuple(made) != tuple(map_sources):
            shutil.rmtree(out)  # the bench's own folder, made with other settings
    if not meta.is_file():
        analyze(
            store=store_path,
            crosscoder=run / "crosscoder",
            out=out,
            config=AnalysisConfig(
                rel_hi=cfg.rel_hi,
                rel_lo=cfg.rel_lo,
                device="cpu",
                progress=cfg.progress,
                outlier_factor=cfg.high_norm_factor or None,
                map_sources=tuple(map_sources),
            ),
        )
    table = pq.read_table(
        out / FEATURES_FILE,
        columns=["feature", "klass", "rank", "verdict", "s_max", "frequency", "rel_norm"],
    )
    cols = {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}
    order = np.argsort(cols["feature"])
    columns = {name: np.asarray(values)[order] for name, values in cols.items()}
    return columns, json.loads((out / META_FILE).read_text()).get("eval") or {}


def score_run(
    cfg: PlantedConfig, run: Path, store_path: Path, rows: Any, x_a: Any, x_b: Any
) -> dict[str, Any]:
    """Per concept: the matched exclusive feature (among those the analysis labels exclusive to
    the concept's model), its held-out AUROC and review rank; and the best feature of any label,
    to tell 'not represented' from 'represented but not labelled exclusive'."""
    from crossdiff.crosscoder.model import Crosscoder
    from crossdiff_bench.planted_eval import encode_rows, match_concept

    table, metrics = analyze_run(cfg, run, store_path)
    cc = Crosscoder.from_pretrained(run / "crosscoder")
    acts = encode_rows(cc, x_a, x_b)
    out: dict[str, Any] = {}
    for concept in CONCEPTS:
        owner = CONCEPT_OWNER[concept].upper()
        candidates = np.flatnonzero((table["klass"] == owner) & (table["s_max"] > 0))
        m = match_concept(concept, acts, rows, candidates)
        any_m = match_concept(concept, acts, rows, np.arange(cc.config.n_features))
        entry = m.to_dict()
        entry["found"] = m.found(cfg.found_auroc)
        f = m.feature
        entry["rank"] = int(table["rank"][f]) if f is not None and table["rank"][f] > 0 else None
        entry["n_ranked"] = int(((table["klass"] == owner) & (table["rank"] > 0)).sum())
        entry["verdict"] = str(table["verdict"][f]) if f is not None else None
        entry["frequency"] = float(table["frequency"][f]) if f is not None else None
        entry["partition_auroc"] = partition_auroc(acts, candidates, rows.labels[concept])
        entry["control_feature"] = (
            control_feature(candidates, m.feature, cfg.data_seed) if m.feature is not None else None
        )
        g = any_m.feature
        entry["best_any"] = {
            "feature": g,
            "auroc_test": any_m.auroc_test,
            "klass": str(table["klass"][g]) if g is not None else None,
            "relative_norm": float(table["rel_norm"][g]) if g is not None else None,
        }
        out[concept] = entry
    out["analysis_eval"] = metrics
    return out


def coherent(text: str) -> bool:
    """A crude fluency check for steered generations: at least 4 words, and at least half of
    them distinct ("singers singers singers ..." is not a suppressed behaviour, it is a broken
    model)."""
    words = text.split()
    return len(words) >= 4 and len(set(words)) >= 0.5 * len(words)


def mark_specific(st: dict[str, Any], margin: float) -> None:
    """An effect counts as specific when the matched feature moves the rate by ``margin`` more
    than the random control feature does at the same alphas (big pushes in any direction can
    break generation, which also lowers a rate)."""
    ctl = st["control"]
    for key, sign in (("suppress", -1.0), ("amplify", 1.0)):
        own = sign * (st[key]["rate_best"] - st[key]["rate_unsteered"])
        other = sign * (ctl[key]["rate_best"] - ctl[key]["rate_unsteered"])
        st[key]["specific"] = bool(own - other >= margin)
        st[key]["works"] = bool(st[key]["works"] and st[key]["specific"])


def control_feature(candidates: np.ndarray, matched: int, seed: int) -> int | None:
    """A random other feature with the same label: steering it shows how much of an effect
    is specific to the matched feature rather than any push of that size."""
    others = np.asarray([c for c in candidates if c != matched])
    if len(others) == 0:
        return None
    return int(np.random.default_rng(seed).choice(others))


def steer_feature(
    cfg: PlantedConfig, run: Path, concept: str, feature: int, models: tuple
) -> dict[str, Any]:
    """Steer ``feature`` in its own model and (cross-model check) in the other; behaviour rates
    per alpha on the prompts where the behaviour is expected ('on') and not ('off').

    With ``cfg.steer_nulls`` the product's evidence (:func:`steering_evidence`) is added:
    effects with bootstrap CIs against random features pushed as hard, and whether suppression
    ('on' prompts) and amplification ('off' prompts) beat that null while coherent.

    ``suppress.works``: the own model's 'on' rate drops by at least ``rate_change`` at some
    negative alpha whose generations are mostly coherent; ``amplify.works``: its 'off' rate
    rises by that much at some such positive alpha (both later also required to beat a random
    control feature, :func:`mark_specific`);
    ``other_model.no_effect``: the other model's rates never rise more than
    ``other_tolerance`` above its unsteered rates."""
    prompts = prompt_sets(cfg.n_prompts, seed=cfg.data_seed + 100)[concept]
    return sweep_feature(
        cfg,
        run,
        feature,
        prompts.on,
        prompts.off,
        CONCEPT_OWNER[concept],
        lambda p, g: float(behaviour_present(concept, p, g)),
        models,
        chat=False,
    )


def sweep_feature(
    cfg: Any,
    run: Path,
    feature: int,
    on: list[str],
    off: list[str],
    own: str,
    score: Any,
    models: tuple,
    *,
    chat: bool,
    batch_size: int = 32,
) -> dict[str, Any]:
    """:func:`steer_feature` on any prompts: ``on`` where model ``own`` ('a' or 'b') shows the
    behaviour, ``off`` where it does not, ``score(prompt, generation)`` the behaviour's 0/1
    scorer. ``cfg`` needs the steering fields of :class:`PlantedConfig` (alphas,
    max_new_tokens, steer_nulls, data_seed, min_coherent, rate_change, other_tolerance,
    progress); ``crossdiff bench finetune`` passes its own config.

    Each half is swept only where it is read: the 'on' prompts at the alphas <= 0
    (suppression), the 'off' prompts at the alphas >= 0 (amplification), with the same nulls;
    the per-alpha lists below span every alpha, NaN (None in the evidence) where a half was
    not generated. Amplifying a behaviour that already shows, or suppressing one that does
    not, was generated before and read by nothing: half the generations."""
    from crossdiff.steering import SteerConfig, steer

    alphas = [float(a) for a in cfg.alphas]
    zero = alphas.index(0.0)
    config = SteerConfig(
        alphas=alphas,
        cross_model=True,
        chat=chat,
        max_new_tokens=cfg.max_new_tokens,
        score=score,
        nulls=cfg.steer_nulls,
        null_seed=cfg.data_seed,
        cross_nulls=False,  # only the other model's unsteered-vs-steered change is read
        batch_size=batch_size,
    )
    halves = {}
    for name, prompts, sign in (("on", on, -1.0), ("off", off, 1.0)):
        sub = [a for a in alphas if a * sign >= 0]
        halves[name] = steer(
            run,
            feature,
            dataclasses.replace(config, alphas=sub),
            prompts=list(prompts),
            loaded_models={"a": models[0], "b": models[1]},
            save=False,
            progress=cfg.progress,
        )
    out: dict[str, Any] = {"feature": feature, "alphas": alphas, "models": {}}
    for m_on, m_off in zip(halves["on"].models, halves["off"].models):
        per: dict[str, Any] = {"direction": m_on.direction, "examples": {}}
        for name, m in (("on", m_on), ("off", m_off)):
            sub = halves[name].alphas
            scores = np.array([[np.nan if s is None else s for s in row] for row in m.scores])
            fluent = np.array([[coherent(g) for g in row] for row in m.generations], dtype=float)
            per[f"rate_{name}"] = _on_grid(scores.mean(axis=0).tolist(), sub, alphas, np.nan)
            per[f"coherent_{name}"] = _on_grid(fluent.mean(axis=0).tolist(), sub, alphas, np.nan)
            per["examples"][name] = _on_grid(list(m.generations[0]), sub, alphas, None)
        out["models"][m_on.model] = per
    neg = [i for i, a in enumerate(alphas) if a < 0]
    pos = [i for i, a in enumerate(alphas) if a > 0]
    mine = out["models"][own]
    mine_on, mine_off = np.array(mine["rate_on"]), np.array(mine["rate_off"])
    # only alphas at which most generations are still text count (see coherent())
    neg_ok = [i for i in neg if mine["coherent_on"][i] >= cfg.min_coherent]
    pos_ok = [i for i in pos if mine["coherent_off"][i] >= cfg.min_coherent]
    best_neg = float(mine_on[neg_ok].min()) if neg_ok else float(mine_on[zero])
    best_pos = float(mine_off[pos_ok].max()) if pos_ok else float(mine_off[zero])
    out["suppress"] = {
        "rate_unsteered": float(mine_on[zero]),
        "rate_best": best_neg,
        "rate_best_any": float(mine_on[neg].min()),
        "works": bool(best_neg <= mine_on[zero] - cfg.rate_change),
    }
    out["amplify"] = {
        "rate_unsteered": float(mine_off[zero]),
        "rate_best": best_pos,
        "rate_best_any": float(mine_off[pos].max()),
        "works": bool(best_pos >= mine_off[zero] + cfg.rate_change),
    }
    other = out["models"]["b" if own == "a" else "a"]
    o_on, o_off = np.array(other["rate_on"]), np.array(other["rate_off"])
    rise = max(float(np.nanmax(o_on - o_on[zero])), float(np.nanmax(o_off - o_off[zero])))
    out["other_model"] = {
        "max_rise": rise,
        "rate_on_unsteered": float(o_on[zero]),
        "rate_off_unsteered": float(o_off[zero]),
        "no_effect": bool(rise <= cfg.other_tolerance),
    }
    out["saved"] = None  # two half sweeps: the result lives in this output, not in RUN/steering
    if cfg.steer_nulls:
        out["evidence"] = steering_evidence(halves["on"], halves["off"], alphas)
    return out


def _on_grid(values: list, sub: list[float], alphas: list[float], fill: Any) -> list:
    """Per-alpha ``values`` of a half sweep (its alphas ``sub``) placed on the whole grid."""
    at = dict(zip(sub, values))
    return [at.get(a, fill) for a in alphas]


_PER_ALPHA = ("coherent", "broken_share", "effects", "ci_low", "ci_high", "null_low", "null_high")
_PER_NULL_ALPHA = ("null_effects", "null_coherent")


def steering_evidence(on: Any, off: Any, alphas: list[float]) -> dict[str, Any]:
    """The product's steering evidence (:func:`crossdiff.steering.evidence.evaluate`) per
    steered model: on the sweep of the 'on' prompts (suppression) and on that of the 'off'
    ones (amplification), two :func:`crossdiff.steer` results swept with nulls; each per-alpha
    list is placed on the whole ``alphas`` grid (None where that half has no alpha).

    ``lowers`` / ``raises``: the negative / positive coherent alphas at which the effect's 95%
    CI lies entirely below / above the null band (CIs apart, in the behaviour's direction).
    """
    from crossdiff.steering.evidence import evaluate

    out: dict[str, Any] = {"null_features": None, "models": {}}
    for m_on, m_off in zip(on.models, off.models):
        per: dict[str, Any] = {}
        for name, half, m, sign in (("suppress", on, m_on, -1.0), ("amplify", off, m_off, 1.0)):
            evid = evaluate(m, half.alphas, half.scorer)
            for key in _PER_ALPHA:
                if evid[key] is not None:
                    evid[key] = _on_grid(evid[key], half.alphas, alphas, None)
            for key in _PER_NULL_ALPHA:
                if evid[key] is not None:
                    evid[key] = [_on_grid(row, half.alphas, alphas, None) for row in evid[key]]
            per[name] = _evidence_summary(evid, alphas, sign)
            # the steered model's nulls (the other model is swept without them)
            out["null_features"] = out["null_features"] or evid["null_features"]
        out["models"][m_on.model] = per
    return out


def _evidence_summary(evid: dict[str, Any], alphas: list[float], sign: float) -> dict[str, Any]:
    """One direction's evidence: the coherent alphas of that sign where the effect's CI lies
    beyond the null band, and the alpha with the strongest coherent effect."""
    hits = []
    for i, a in enumerate(alphas):
        if a * sign <= 0 or not evid["coherent"][i] or evid["effects"] is None:
            continue
        lo, hi = evid["ci_low"][i], evid["ci_high"][i]
        nlo, nhi = (
            (evid["null_low"] or [None] * len(alphas))[i],
            (evid["null_high"] or [None] * len(alphas))[i],
        )
        if None in (lo, hi, nlo, nhi):
            continue
        if (sign < 0 and hi < nlo) or (sign > 0 and lo > nhi):
            hits.append(float(a))
    best = None
    if evid["effects"] is not None:
        cand = hits or [a for i, a in enumerate(alphas) if a * sign > 0 and evid["coherent"][i]]
        if cand:
            pick = min if sign < 0 else max
            i = alphas.index(pick(cand, key=lambda a: evid["effects"][alphas.index(a)] or 0.0))
            best = {
                "alpha": float(alphas[i]),
                "effect": evid["effects"][i],
                "ci": [evid["ci_low"][i], evid["ci_high"][i]],
                "null_band": [
                    (evid["null_low"] or [None] * len(alphas))[i],
                    (evid["null_high"] or [None] * len(alphas))[i],
                ],
                "unsteered": evid["effects"][alphas.index(0.0)] if 0.0 in alphas else None,
            }
    return {
        "beats_null": bool(hits),
        "at": hits,
        "best": best,
        "coherent_range": evid["coherent_range"],
        "verdict": evid["verdict"],
        "evidence": evid,
    }


# ------------------------------------------------------------------------------------------
# The benchmark
# ------------------------------------------------------------------------------------------
def run_planted(cfg: PlantedConfig) -> dict[str, Any]:
    """Run the whole benchmark; returns the results (see docs/bench-planted.md)."""

    from crossdiff.models import load_model
    from crossdiff_bench.machine import start_run
    from crossdiff_bench.planted_eval import load_eval_rows
    from crossdiff_bench.planted_lm import build_pair

    cfg.validate()
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    work, results = start_run(cfg, "planted")

    t0 = time.perf_counter()
    pair = build_pair(cfg.lms, work, progress=cfg.progress)
    timings["lms"] = time.perf_counter() - t0
    results["lms"] = pair.report
    models = tuple(
        load_model(str(p), dtype="float32", device="cpu") for p in (pair.model_a, pair.model_b)
    )
    data = pair.folder / f"data-{cfg.data_key()}"
    store_docs = make_corpus(MIX_STORE, cfg.store_docs, cfg.data_seed, "store")
    eval_docs = make_corpus(MIX_EVAL, cfg.eval_docs, cfg.data_seed + 1000, "eval")

    t0 = time.perf_counter()
    results["lm_check"] = check_lms(cfg, models, eval_docs)
    timings["lm_check"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    store = harvest_docs(cfg, store_docs, data / "store", data / "store.jsonl", models)
    eval_store = harvest_docs(cfg, eval_docs, data / "eval_store", data / "eval.jsonl", models)
    timings["harvest"] = time.perf_counter() - t0
    results["store"] = _store_facts(store)
    results["eval_store"] = _store_facts(eval_store)

    t0 = time.perf_counter()
    runs = data / f"runs-{_cc_key(cfg)}"
    results["crosscoders"] = train_crosscoders(cfg, store.path, runs)
    timings["train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    rows, x_a, x_b = load_eval_rows(eval_store, eval_docs)
    results["eval_rows"] = eval_row_facts(cfg, rows, x_a, x_b)
    for entry in results["crosscoders"]:
        scored = score_run(cfg, Path(entry["run"]), store.path, rows, x_a, x_b)
        entry["analysis_eval"] = scored.pop("analysis_eval")
        entry["concepts"] = scored
    timings["score"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    for entry in results["crosscoders"]:
        if entry["seed"] >= cfg.steer_seeds:
            continue
        entry["steering"] = {}
        for concept in CONCEPTS:
            feature = entry["concepts"][concept]["feature"]
            if feature is None:
                continue
            entry["steering"][concept] = steer_feature(
                cfg, Path(entry["run"]), concept, feature, models
            )
            control = entry["concepts"][concept]["control_feature"]
            if control is not None:
                st = entry["steering"][concept]
                st["control"] = steer_feature(cfg, Path(entry["run"]), concept, control, models)
                mark_specific(st, cfg.rate_change)
    timings["steer"] = time.perf_counter() - t0
    results["steering_target"] = steering_target(results["crosscoders"])
    results["steering_seeds"] = steering_seeds(results["crosscoders"])

    t0 = time.perf_counter()
    results["recurrence"] = planted_recurrence(results["crosscoders"], x_a, x_b)
    timings["recurrence"] = time.perf_counter() - t0

    results["rediscovery"] = {
        kind: {
            c: sum(
                1 for e in results["crosscoders"] if e["kind"] == kind and e["concepts"][c]["found"]
            )
            for c in CONCEPTS
        }
        for kind in cfg.kinds
    }
    timings["total"] = time.perf_counter() - t_start
    results["timings"] = timings
    return results


def steering_target(entries: list[dict[str, Any]], kind: str = "dfc") -> dict[str, Any] | None:
    """Issue 14's target on the first steered crosscoder of ``kind``: for both planted features,
    suppression lowers the behaviour beyond the null (CIs apart) at a coherent alpha in their own
    model, and the random control feature's suppression does not. None without evidence."""
    entry = next((e for e in entries if e["kind"] == kind and e.get("steering")), None)
    if entry is None:
        return None
    out: dict[str, Any] = {"kind": kind, "seed": entry["seed"], "concepts": {}}
    for concept in CONCEPTS:
        st = entry["steering"].get(concept)
        if st is None or "evidence" not in st:
            out["concepts"][concept] = {"feature_beats": None, "control_beats": None}
            continue
        own = CONCEPT_OWNER[concept]
        ctl = st.get("control")
        out["concepts"][concept] = {
            "feature_beats": st["evidence"]["models"][own]["suppress"]["beats_null"],
            "control_beats": (
                ctl["evidence"]["models"][own]["suppress"]["beats_null"]
                if ctl is not None and "evidence" in ctl
                else None
            ),
        }
    out["met"] = all(
        c["feature_beats"] is True and c["control_beats"] is False for c in out["concepts"].values()
    )
    return out


def steering_seeds(entries: list[dict[str, Any]], kind: str = "dfc") -> dict[str, Any]:
    """:func:`steering_target` over every steered seed of ``kind``: per seed and concept
    whether the found feature's suppression beats the null and whether the random control's
    does; ``met`` counts the seeds where both features beat and neither control does."""
    per = []
    for e in entries:
        if e["kind"] != kind or not e.get("steering"):
            continue
        t = steering_target([e], kind)
        if t is not None:
            per.append(t)
    return {
        "kind": kind,
        "seeds": per,
        "met": sum(bool(t["met"]) for t in per),
        "feature_beats": {
            c: sum(t["concepts"][c]["feature_beats"] is True for t in per) for c in CONCEPTS
        },
        "control_beats": {
            c: sum(t["concepts"][c]["control_beats"] is True for t in per) for c in CONCEPTS
        },
        "n": len(per),
    }


def planted_recurrence(
    entries: list[dict[str, Any]], x_a: Any, x_b: Any, kind: str = "dfc"
) -> dict[str, Any] | None:
    """Issue 15 on the planted benchmark: the first seed's DFC is the reference; its exclusive
    features are matched one to one against every other seed's (the product's matching,
    :func:`crossdiff.recurrence.match_crosscoders`, default rule, on the held-out eval rows
    minus the reference's huge-norm rows). Per concept: in how many of the others the
    reference's found feature has a match (``recurs`` of ``n_others``), and in how many that
    match is the feature the concept's AUROC found in that seed (``agrees``). None with fewer
    than two crosscoders of ``kind``."""
    from crossdiff.crosscoder.model import Crosscoder
    from crossdiff.recurrence import MatchConfig, match_crosscoders

    mine = [e for e in entries if e["kind"] == kind]
    if len(mine) < 2:
        return None
    ccs = [Crosscoder.from_pretrained(Path(e["run"]) / "crosscoder").eval() for e in mine]
    ref = ccs[0]
    keep = ref.inlier_mask(ref.normalize(x_a.float(), "a"), ref.normalize(x_b.float(), "b"))
    matches = match_crosscoders(ccs[0], ccs[1:], x_a[keep], x_b[keep], MatchConfig())
    out: dict[str, Any] = {
        "kind": kind,
        "reference_seed": mine[0]["seed"],
        "n_others": len(ccs) - 1,
        "rows": int(keep.sum()),
        "concepts": {},
    }
    for concept in CONCEPTS:
        ref_feat = mine[0]["concepts"][concept]["feature"]
        model = CONCEPT_OWNER[concept]
        found_in = []
        agrees = 0
        for e, per in zip(mine[1:], matches):
            mm = per[model]
            idx = np.flatnonzero(mm.ref_features == ref_feat) if ref_feat is not None else []
            hit = int(mm.matched[idx[0]]) if len(idx) else -1
            found_in.append(hit)
            agrees += int(hit >= 0 and hit == e["concepts"][concept]["feature"])
        out["concepts"][concept] = {
            "reference_feature": ref_feat,
            "matched": found_in,
            "recurs": sum(h >= 0 for h in found_in),
            "agrees": agrees,
            "found_per_seed": [e["concepts"][concept]["feature"] for e in mine[1:]],
        }
    return out


def eval_row_facts(cfg: PlantedConfig, rows: Any, x_a: Any, x_b: Any) -> dict[str, Any]:
    """Per concept: labelled rows, the share of positive rows that the high-norm filter
    would leave out in each model (norm above ``high_norm_factor`` x that model's median),
    a linear probe's held-out AUROC on each model's activations (``probe_auroc``: all rows,
    split by document), and the same on the decision rows only, split by subject
    (``split_probe_auroc``: does the model hold the category itself, beyond the subjects it
    was fitted on?)."""
    import torch

    from crossdiff_bench.planted_eval import probe_auroc, split_probe_auroc

    norms = {"a": x_a.float().norm(dim=1).numpy(), "b": x_b.float().norm(dim=1).numpy()}
    out: dict[str, Any] = {}
    for c in CONCEPTS:
        y = rows.labels[c]
        entry: dict[str, Any] = {"positive": int((y == 1).sum()), "negative": int((y == 0).sum())}
        for side, n in norms.items():
            high = n > cfg.high_norm_factor * np.median(n) if cfg.high_norm_factor else n < 0
            entry[f"high_norm_{side}"] = float(high[y == 1].mean()) if (y == 1).any() else 0.0
            entry[f"high_norm_{side}_all"] = float(high.mean())
        for side, x in (("a", x_a), ("b", x_b)):
            entry[f"probe_auroc_{side}"] = probe_auroc(x.float(), y, rows.select)
            if rows.decision is not None and rows.decision.any():
                dec = torch.from_numpy(rows.decision)
                # negatives: neutral subjects only (see decision_probe_by_layer)
                other = rows.labels[next(o for o in CONCEPTS if o != c)]
                y_dec = np.where(other == 1, -1, y)[rows.decision]
                entry[f"probe_decision_{side}"] = split_probe_auroc(
                    x[dec].float(), y_dec, rows.half[rows.decision]
                )
        entry["decision_rows"] = int(rows.decision.sum()) if rows.decision is not None else 0
        out[c] = entry
    return out


def _store_facts(store: Any) -> dict[str, Any]:
    cov = store.manifest.coverage()
    return {
        "path": str(store.path),
        "rows": store.n_rows,
        "documents": store.n_documents,
        "coverage_a": cov["coverage_a"],
        "coverage_b": cov["coverage_b"],
        "d_a": store.d_a,
        "d_b": store.d_b,
        "layer_a": store.manifest.model_a.layer,
        "layer_b": store.manifest.model_b.layer,
    }


def _cc_key(cfg: PlantedConfig) -> str:
    settings = [cfg.n_features, cfg.k, cfg.exclusive, cfg.steps, cfg.batch_size, cfg.lr]
    if cfg.high_norm_factor != 2.0:  # the default stays out, so older caches remain valid
        settings.append(cfg.high_norm_factor)
    from crossdiff.crosscoder.train_config import TrainConfig

    # the trainer's defaults (e.g. exclusive_init) too: a library upgrade gets fresh crosscoders
    # instead of a "trained with other settings" refusal
    settings.append(TrainConfig().to_dict())
    blob = json.dumps(settings, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


# ------------------------------------------------------------------------------------------
# Printing
# ------------------------------------------------------------------------------------------
def format_results(results: dict[str, Any]) -> str:
    """A one-screen summary of a benchmark run."""
    cfg = results["config"]
    lines = [f"machine: {results['machine']}"]
    for side in ("a", "b"):
        r = results["lms"][f"model_{side}"]
        lines.append(
            f"model {side.upper()}: {r['arch']} ({r['tokenizer']} tokenizer, "
            f"vocab {r['vocab_size']}), "
            f"{r['parameters'] / 1e6:.2f}M parameters, train loss {r['train_loss_first']:.2f} -> "
            f"{r['train_loss_final']:.3f} over {r['train_tokens'] / 1e6:.2f}M tokens"
            + (" (cached)" if results["lms"].get("cached") else f" in {r['train_seconds']:.0f}s")
        )
    lines.append("LM check (greedy behaviour rate on prompts where it is expected / not expected):")
    for side in ("a", "b"):
        chk = results["lm_check"][side]
        parts = [
            f"{c} {chk['behaviour'][c]['on']['rate']:.2f}/{chk['behaviour'][c]['off']['rate']:.2f}"
            for c in CONCEPTS
        ]
        losses = ", ".join(f"{k} {v:.2f}" for k, v in chk["loss_by_kind"].items())
        lines.append(f"  {side.upper()}: " + "; ".join(parts) + f"  | loss/token: {losses}")
        probes = chk.get("decision_probe_by_layer")
        if probes:
            lines.append(
                f"     category probe at the answer marker, held-out subjects, after layer "
                f"0..{len(next(iter(probes.values()))) - 1}: "
                + "; ".join(
                    f"{c} " + " ".join(f"{v:.2f}" for v in vals) for c, vals in probes.items()
                )
            )
    for name in ("store", "eval_store"):
        s = results[name]
        lines.append(
            f"{name}: {s['rows']:,} pairs from {s['documents']:,} documents, layers "
            f"{s['layer_a']}/{s['layer_b']}, widths {s['d_a']}/{s['d_b']}, aligned "
            f"{s['coverage_a']:.1%} of A's tokens, {s['coverage_b']:.1%} of B's"
        )
    for c, f in results["eval_rows"].items():
        line = f"eval rows, {c}: {f['positive']:,} positive, {f['negative']:,} negative; "
        if cfg["high_norm_factor"]:
            line += (
                f"above {cfg['high_norm_factor']:g}x median norm (left out of training): "
                f"{f['high_norm_a']:.1%} of positives in A ({f['high_norm_a_all']:.1%} of all "
                f"rows), {f['high_norm_b']:.1%} in B ({f['high_norm_b_all']:.1%})"
            )
        else:
            line += "no high-norm filter"
        if "probe_auroc_a" in f:
            line += (
                f"; linear probe, held-out AUROC: on A's activations {f['probe_auroc_a']:.3f}, "
                f"on B's {f['probe_auroc_b']:.3f}"
            )
        if "probe_decision_a" in f:
            line += (
                f"; on the {f['decision_rows']:,} answer-marker rows, held-out subjects: "
                f"A {f['probe_decision_a']:.3f}, B {f['probe_decision_b']:.3f}"
            )
        lines.append(line)
    lines.append(
        f"crosscoders: F={cfg['n_features']}, k={cfg['k']}, {cfg['steps']} steps x "
        f"{cfg['batch_size']}, DFC exclusive {cfg['exclusive']:.0%} per model; FVE on the "
        "store's eval split without the high-norm pairs (crossdiff analyze)"
    )
    header = f"  {'kind':8} {'seed':>4} {'FVE A':>6} {'FVE B':>6}"
    for c in CONCEPTS:
        header += f" | {c + ' (' + CONCEPT_OWNER[c].upper() + ')':>14} {'AUROC':>6} {'rank':>5}"
    lines.append(header)
    for e in results["crosscoders"]:
        m = e.get("analysis_eval") or e.get("metrics_eval") or {}
        row = f"  {e['kind']:8} {e['seed']:>4} {m.get('fve_a', float('nan')):6.3f} "
        row += f"{m.get('fve_b', float('nan')):6.3f}"
        for c in CONCEPTS:
            s = e["concepts"][c]
            feat = "-" if s["feature"] is None else str(s["feature"])
            mark = "FOUND" if s["found"] else "miss"
            rank = "-" if s["rank"] is None else str(s["rank"])
            row += f" | {mark:>6} #{feat:>6} {s['auroc_test']:6.3f} {rank:>5}"
        lines.append(row)
    for e in results["crosscoders"]:
        parts = []
        for c in CONCEPTS:
            s = e["concepts"][c]
            best = s["best_any"]
            if best["feature"] is None:  # no positives or negatives in a split (tiny runs)
                any_label = "none scorable"
            else:
                any_label = (
                    f"#{best['feature']} ({best['klass']}, rel. norm "
                    f"{best['relative_norm']:.2f}) {best['auroc_test']:.3f}"
                )
            parts.append(
                f"{c}: exclusive block {s['partition_auroc']:.3f}, best feature of any label "
                + any_label
            )
        lines.append(f"  {e['kind']} s{e['seed']} AUROC of " + "; ".join(parts))
    for e in results["crosscoders"]:
        for c, st in e.get("steering", {}).items():
            own = CONCEPT_OWNER[c]
            lines.append(
                f"  steer {e['kind']} s{e['seed']} {c} #{st['feature']} in {own.upper()}: "
                f"suppress {st['suppress']['rate_unsteered']:.2f} -> "
                f"{st['suppress']['rate_best']:.2f}"
                f" ({'works' if st['suppress']['works'] else 'no'}), amplify "
                f"{st['amplify']['rate_unsteered']:.2f} -> {st['amplify']['rate_best']:.2f} "
                f"({'works' if st['amplify']['works'] else 'no'}); other model max rise "
                f"{st['other_model']['max_rise']:+.2f} "
                f"({'no effect' if st['other_model']['no_effect'] else 'EFFECT'})"
            )
            if "evidence" in st:
                lines.extend(evidence_lines(st["evidence"], own, "    evidence"))
            ctl = st.get("control")
            if ctl is not None:
                lines.append(
                    f"    control: random {own.upper()}-exclusive #{ctl['feature']}: suppress "
                    f"{ctl['suppress']['rate_unsteered']:.2f} -> "
                    f"{ctl['suppress']['rate_best']:.2f}, "
                    f"amplify {ctl['amplify']['rate_unsteered']:.2f} -> "
                    f"{ctl['amplify']['rate_best']:.2f}"
                )
                if "evidence" in ctl:
                    lines.extend(evidence_lines(ctl["evidence"], own, "      control evidence"))
    target = results.get("steering_target")
    if target is not None:
        parts = [
            f"{c} feature {_yes(v['feature_beats'])}, control {_yes(v['control_beats'])}"
            for c, v in target["concepts"].items()
        ]
        lines.append(
            f"steering target ({target['kind']} s{target['seed']}: suppression beats the null "
            "while coherent, the random control's does not): "
            + "; ".join(parts)
            + (" -> MET" if target["met"] else " -> NOT MET")
        )
    seeds = results.get("steering_seeds")
    if seeds and seeds["n"] > 1:
        lines.append(
            f"steering target over {seeds['n']} {seeds['kind']} seeds: met in {seeds['met']}; "
            + "; ".join(
                f"{c} feature beats {seeds['feature_beats'][c]}/{seeds['n']}, control beats "
                f"{seeds['control_beats'][c]}/{seeds['n']}"
                for c in CONCEPTS
            )
        )
    rec = results.get("recurrence")
    if rec:
        lines.append(
            f"recurrence ({rec['kind']} s{rec['reference_seed']} against {rec['n_others']} other "
            f"seeds, {rec['rows']:,} rows): "
            + "; ".join(
                f"{c} #{v['reference_feature']} found again in {v['recurs']}/{rec['n_others']} "
                f"(the seed's own found feature in {v['agrees']})"
                for c, v in rec["concepts"].items()
            )
        )
    for kind, counts in results["rediscovery"].items():
        n = cfg["seeds"]
        lines.append(
            f"rediscovered by {kind}: " + ", ".join(f"{c} {counts[c]}/{n}" for c in CONCEPTS)
        )
    t = results["timings"]
    lines.append("timings: " + ", ".join(f"{k} {v:.0f}s" for k, v in t.items()))
    return "\n".join(lines)


def _yes(value: bool | None) -> str:
    return "n/a" if value is None else ("beats" if value else "does not beat")


def evidence_lines(evidence: dict[str, Any], own: str, prefix: str) -> list[str]:
    """One line per steered model: suppression and amplification against the null band."""
    lines = []
    for side, per in evidence["models"].items():
        parts = []
        for name in ("suppress", "amplify"):
            e = per[name]
            b = e["best"]
            if b is None:
                parts.append(f"{name}: no coherent alpha")
                continue
            band = b["null_band"]
            band_text = "no null" if None in band else f"null band [{band[0]:.2f}, {band[1]:.2f}]"
            parts.append(
                f"{name} {'BEATS' if e['beats_null'] else 'no'}"
                + (f" at {e['at']}" if e["at"] else "")
                + f" (alpha {b['alpha']:g}: {b['unsteered']:.2f} -> {b['effect']:.2f} "
                f"CI [{b['ci'][0]:.2f}, {b['ci'][1]:.2f}] vs {band_text}; coherent "
                f"{e['coherent_range']})"
            )
        who = "own" if side == own else "other"
        lines.append(
            f"{prefix} {side.upper()} ({who}, nulls #{evidence['null_features']}): "
            + "; ".join(parts)
        )
    return lines


# ------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------
def register(sub: argparse._SubParsersAction) -> None:
    from crossdiff_bench.machine import add_run_options

    p = sub.add_parser(
        "planted",
        help="train two small LMs with planted differences and check crossdiff finds them",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--quick", action="store_true", help="smaller and fewer: ~5 min on 2 cores")
    p.add_argument("--seeds", type=int, help="crosscoder seeds per kind (default 5; quick 2)")
    p.add_argument("--kinds", help="comma-separated crosscoder kinds (default dfc,standard)")
    p.add_argument("--features", type=int, help="dictionary size F")
    p.add_argument("--k", type=int, help="BatchTopK k")
    p.add_argument("--steps", type=int, help="crosscoder training steps")
    p.add_argument("--steer-seeds", type=int, help="steer the features of the first N seeds")
    p.add_argument(
        "--steer-nulls",
        type=int,
        help="random same-label features swept beside each steered one (default 5; 0: none)",
    )
    p.add_argument(
        "--high-norm-factor",
        type=float,
        help="leave pairs above this x the median norm out of training and analysis "
        "(default 2, the method's; 0 keeps all)",
    )
    add_run_options(p, "planted")
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    cfg = PlantedConfig.quick() if args.quick else PlantedConfig()
    overrides = {
        "seeds": args.seeds,
        "n_features": args.features,
        "k": args.k,
        "steps": args.steps,
        "steer_seeds": args.steer_seeds,
        "steer_nulls": args.steer_nulls,
        "high_norm_factor": args.high_norm_factor,
        "work_dir": args.work_dir,
        "threads": args.threads,
    }
    for name, value in overrides.items():
        if value is not None:
            setattr(cfg, name, value)
    if args.kinds:
        cfg.kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    cfg.progress = not args.no_progress
    cfg.validate()
    print("crossdiff bench planted" + (" --quick" if args.quick else ""))
    print(json.dumps(cfg.to_dict(), indent=None, default=str))
    results = run_planted(cfg)
    print(format_results(results))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"results written to {args.json_out}")
    return 0
