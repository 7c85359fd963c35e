"""Several crosscoders on one store: the members that rediscovery is measured over.

The published method's strongest evidence for a model-exclusive feature is that it comes back:
"CCP alignment" was found in 5 of 5 crosscoders (1%, 3% and 5% exclusive blocks, several
seeds; docs/METHOD.md §4). A feature that only one seed learns may be an accident of its
initialisation or batch order. So besides the run's main crosscoder (``RUN/crosscoder/``,
the *reference*: the base seed at the configured fraction) we train members that differ from
it only in the training seed and, optionally, the exclusive fraction, each in its own folder
``RUN/crosscoders/s<seed>-x<fraction>/`` laid out like ``RUN/crosscoder/``.

Every member goes through :func:`crossdiff.crosscoder.fit.train_on_store`, so each one resumes
from its own checkpoints, a complete one is not retrained, and all of them read the store's
normalization statistics (moments / scales), i.e. they work in one space. Members train one
after another; under ``torchrun`` each member is trained data-parallel over all ranks in turn.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossdiff.errors import CrossdiffError
from crossdiff.paths import RunPaths


@dataclass(frozen=True)
class Member:
    """One crosscoder of a run's ensemble."""

    name: str
    """Folder name: ``s<seed>-x<fraction>``; the reference is ``crosscoder``."""
    seed: int
    exclusive: float
    """Fraction of F exclusive to each model (the reference's own when it is asymmetric)."""
    path: Path
    reference: bool = False


def member_name(seed: int, exclusive: float) -> str:
    """``s1-x0.05``: the folder name of the member with this seed and exclusive fraction."""
    return f"s{int(seed)}-x{float(exclusive):g}"


def parse_fractions(text: str | float | Sequence[float] | None) -> list[float] | None:
    """'0.01,0.03,0.05' -> [0.01, 0.03, 0.05] (None stays None); each in (0, 0.5)."""
    if text is None:
        return None
    if isinstance(text, str):
        try:
            values = [float(t) for t in text.split(",") if t.strip()]
        except ValueError:
            raise CrossdiffError(
                f"--exclusive {text!r}: give a fraction or comma-separated fractions, "
                f"e.g. 0.05 or 0.01,0.03,0.05"
            ) from None
    elif isinstance(text, (int, float)):
        values = [float(text)]
    else:
        values = [float(v) for v in text]
    if not values:
        raise CrossdiffError(f"--exclusive {text!r}: no fraction given; e.g. 0.01,0.03,0.05")
    return list(dict.fromkeys(values))


def _check_member_fraction(x: float) -> None:
    if not (math.isfinite(x) and 0.0 < x < 0.5):
        raise CrossdiffError(
            f"exclusive fraction {x:g} for a member: rediscovery compares exclusive features, "
            f"so each fraction must be in (0, 0.5), e.g. 0.01,0.03,0.05"
        )


def plan_members(
    run: str | Path,
    *,
    seeds: int,
    base_seed: int,
    reference_exclusive: float,
    exclusive: Sequence[float] | None = None,
) -> list[Member]:
    """The members besides the reference: seeds ``base_seed .. base_seed + seeds - 1`` times
    the fractions (default: the reference's), less the pair the reference already is."""
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise CrossdiffError(f"--seeds {seeds!r} must be a positive integer (1 = the reference)")
    fractions = list(exclusive) if exclusive else [reference_exclusive]
    for x in fractions:
        _check_member_fraction(x)
    paths = RunPaths(run)
    out = []
    for seed in range(base_seed, base_seed + seeds):
        for x in fractions:
            if seed == base_seed and math.isclose(x, reference_exclusive):
                continue
            name = member_name(seed, x)
            out.append(Member(name, seed, x, paths.member(name)))
    return out


def reference_member(run: str | Path) -> Member:
    """The run's main crosscoder as a :class:`Member` (needs a complete ``RUN/crosscoder``)."""
    from crossdiff.crosscoder.fit import is_complete

    paths = RunPaths(run)
    if not is_complete(paths.crosscoder):
        raise CrossdiffError(
            f"{paths.crosscoder} holds no complete crosscoder; train it first "
            f"(crossdiff train {paths.root})"
        )
    seed, x = _summary_seed_fraction(paths.crosscoder)
    return Member("crosscoder", seed, x, paths.crosscoder, reference=True)


def _summary_seed_fraction(folder: Path) -> tuple[int, float]:
    from crossdiff.crosscoder.fit import load_summary

    s = load_summary(folder)
    return s.seed, s.frac_exclusive_a


def list_members(run: str | Path) -> list[Member]:
    """The complete crosscoders in ``RUN/crosscoders/`` (incomplete ones are left out: their
    training was interrupted; rerun ``crossdiff train RUN --seeds N`` to finish them)."""
    from crossdiff.crosscoder.fit import is_complete

    paths = RunPaths(run)
    if not paths.crosscoders.is_dir():
        return []
    out = []
    for folder in sorted(p for p in paths.crosscoders.iterdir() if p.is_dir()):
        if is_complete(folder):
            seed, x = _summary_seed_fraction(folder)
            out.append(Member(folder.name, seed, x, folder))
    return out


def _run_config_sections(paths: RunPaths) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(train, crosscoder) sections of RUN/config.yaml when `crossdiff run` made the folder."""
    data = paths.recorded_config()
    if data is None:
        return None
    return dict(data.get("train") or {}), dict(data.get("crosscoder") or {})


_PROVENANCE = ("d_a", "d_b", "model_a", "model_b", "layer_a", "layer_b", "extra")


def reference_settings(
    run: str | Path,
    store: Any,
    *,
    train: Any = None,
    config_overrides: dict[str, Any] | None = None,
) -> tuple[Any, Any]:
    """(CrosscoderConfig, TrainConfig) of the reference, so that members differ from it only
    in seed and fraction.

    The base is a complete reference's own settings (``train_summary.json``), else
    ``RUN/config.yaml``'s ``train`` / ``crosscoder`` sections (a folder made by ``crossdiff
    run``), else the defaults; explicit settings go on top: ``train`` as a dict of TrainConfig
    fields (a ``TrainConfig`` replaces the base whole), ``config_overrides`` as for
    :func:`crossdiff.crosscoder.fit.crosscoder_config_for_store` (``exclusive``,
    ``expansion``, ``n_features``, ``k``, ...). So ``crossdiff train RUN --seeds 5`` after
    ``crossdiff run`` trains members exactly like the run's crosscoder.
    """
    from crossdiff.crosscoder.fit import crosscoder_config_for_store, is_complete, load_summary
    from crossdiff.crosscoder.train_config import TrainConfig

    paths = RunPaths(run)
    base_train: dict[str, Any] = {}
    base_cc: dict[str, Any] = {}
    if is_complete(paths.crosscoder):
        s = load_summary(paths.crosscoder)
        base_train = s.train_config
        base_cc = {k: v for k, v in s.requested_config.items() if k not in _PROVENANCE}
    else:
        sections = _run_config_sections(paths)
        if sections is not None:
            base_train, base_cc = sections
    over = {k: v for k, v in (config_overrides or {}).items() if v is not None}
    if "exclusive" in over:
        base_cc.pop("frac_exclusive_a", None)
        base_cc.pop("frac_exclusive_b", None)
    if "expansion" in over and "n_features" not in over:
        base_cc.pop("n_features", None)
    if "n_features" in over:
        base_cc.pop("expansion", None)
    cc_config = crosscoder_config_for_store(store, **{**base_cc, **over})
    if isinstance(train, TrainConfig):
        tc = train
    else:
        tc = TrainConfig.from_dict({**base_train, **dict(train or {})})
    return cc_config, tc


def train_members(
    run: str | Path,
    *,
    seeds: int,
    exclusive: str | Sequence[float] | None = None,
    train: Any = None,
    store: str | Path | None = None,
    progress: bool = True,
    force: bool = False,
    log: Callable[[str], None] = print,
    **config_overrides: Any,
) -> list[Member]:
    """Train (or resume, or keep) the reference ``RUN/crosscoder`` and the members of
    :func:`plan_members`, one after another; return [reference, *members].

    ``exclusive``: fractions for the members ('0.01,0.03,0.05' or a list); one value is also
    the reference's fraction (as ``crossdiff train --exclusive``), several leave the
    reference at its configured one. ``train`` (a dict of TrainConfig fields, or a whole
    ``TrainConfig``) and ``config_overrides`` go over the reference's settings
    (:func:`reference_settings`); a complete reference trained otherwise is an error, not
    silently retrained. ``force`` retrains the reference and every member.
    """
    from crossdiff.crosscoder.fit import train_on_store
    from crossdiff.runtime import distributed
    from crossdiff.store import ActivationStore

    paths = RunPaths(run)
    store_path = Path(store) if store else paths.store
    fractions = parse_fractions(exclusive)
    if fractions and len(fractions) == 1:
        config_overrides["exclusive"] = fractions[0]
    st = ActivationStore.open(store_path)
    ref_cfg, ref_train = reference_settings(run, st, train=train, config_overrides=config_overrides)
    main = distributed.rank() == 0
    if main and progress:
        log(f"reference: {paths.crosscoder}")
    train_on_store(
        store_path,
        paths.crosscoder,
        config=ref_cfg,
        train=ref_train,
        progress=progress,
        force=force,
    )
    ref_x = float(ref_cfg.frac_exclusive_a)
    if ref_x <= 0 and not (ref_cfg.frac_exclusive_b > 0):
        raise CrossdiffError(
            f"the reference {paths.crosscoder} is a standard crosscoder (no exclusive "
            f"features), so there is nothing to find again; train a DFC (--exclusive 0.05)"
        )
    members = plan_members(
        run,
        seeds=seeds,
        base_seed=ref_train.seed,
        reference_exclusive=ref_x,
        exclusive=fractions,
    )
    done = [Member("crosscoder", ref_train.seed, ref_x, paths.crosscoder, reference=True)]
    for i, m in enumerate(members, start=1):
        cfg = ref_cfg
        if not math.isclose(m.exclusive, ref_x):
            cfg = dataclasses.replace(
                ref_cfg, frac_exclusive_a=m.exclusive, frac_exclusive_b=m.exclusive
            )
        tc = dataclasses.replace(ref_train, seed=m.seed)
        if main and progress:
            log(f"member {i}/{len(members)}: {m.path}")
        train_on_store(store_path, m.path, config=cfg, train=tc, progress=progress, force=force)
        done.append(m)
    return done
