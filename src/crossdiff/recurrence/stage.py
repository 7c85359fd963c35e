"""The ``recurrence`` stage of ``crossdiff run``: the further crosscoders and their matching.

Why a stage: the evidence that a feature recurs is only worth having when it is there by
default for the run that the auditor reads; running ``crossdiff train RUN --seeds N`` and
``crossdiff compare RUN`` by hand after ``crossdiff run`` works too, but then the analysis
(its ``recurs`` column and review order) must be redone. The stage sits between ``train``
and ``analyze`` so the first analysis already has the counts.

The run config's ``recurrence`` section::

    recurrence:
      seeds: 5                # crosscoders in all, the run's own included (0 or 1: off)
      exclusive: 0.01,0.03,0.05   # optional: fractions for the further crosscoders
      min_cosine: 0.7         # optional: any crossdiff.recurrence.MatchConfig field
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from crossdiff.errors import CrossdiffError

SECTION_KEYS = ("seeds", "exclusive")


def split_section(section: dict[str, Any] | None) -> tuple[int, Any, Any]:
    """(seeds, exclusive, MatchConfig) from the run config's ``recurrence`` section; unknown
    keys and bad values are errors naming them."""
    from crossdiff.errors import reject_unknown_fields
    from crossdiff.recurrence.config import MatchConfig

    data = dict(section or {})
    seeds = data.pop("seeds", 0)
    exclusive = data.pop("exclusive", None)
    if seeds is None:
        seeds = 0
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 0:
        raise CrossdiffError(
            f"recurrence.seeds={seeds!r} must be a whole number >= 0 (crosscoders in all, the "
            f"run's own included; 0 or 1 turns the stage off)"
        )
    reject_unknown_fields(
        MatchConfig,
        data,
        "recurrence config keys",
        suffix=f" (and {', '.join(SECTION_KEYS)})",
        list_known=True,
    )
    match = MatchConfig(**data)
    match.validate()
    return seeds, exclusive, match


def stage(section: dict[str, Any] | None, run_root: str | Path, progress: bool) -> str:
    """Train (or resume, or keep) the members, then match them unless RUN/recurrence already
    holds a current result over the same members with the same settings."""
    from crossdiff.recurrence.comparison import compare, load_recurrence
    from crossdiff.recurrence.members import train_members

    seeds, exclusive, match = split_section(section)
    if seeds <= 1 and not exclusive:
        return "skipped (disabled)"
    done = train_members(
        run_root,
        seeds=max(seeds, 1),
        exclusive=exclusive,
        progress=progress,
        log=print if progress else (lambda *_: None),
    )
    names = [m.name for m in done[1:]]
    if not names:
        return "skipped (no further crosscoder)"
    old = load_recurrence(run_root)
    if old is not None:
        same_members = [m["name"] for m in old.meta.get("members", [])] == names
        same_config = old.meta.get("config") == json.loads(json.dumps(match.to_dict()))
        if same_members and same_config:
            return "skipped (complete)"
    res = compare(run_root, members=names, config=match, progress=progress)
    counts = {
        klass: hist.get(str(res.meta["n_others"]), 0)
        for klass, hist in res.meta["histogram"].items()
    }
    where = ", ".join(f"{k} {v}" for k, v in counts.items())
    return f"done ({len(names)} further crosscoders; in all of them: {where})"


__all__ = ["split_section", "stage"]
