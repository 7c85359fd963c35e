"""The ``interpret`` stage of ``crossdiff run``: interpret unless RUN/interpret already holds
the result of the same settings.

Here rather than beside the views of the explanations because a stage drives the interpret
pipeline, while the views (the report package's) only read its results.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crossdiff.interpret.results import has_interpretations, load_interpretations


def stage(cfg_dict: dict[str, Any] | None, run_root: str | Path, progress: bool) -> str:
    """A ``crossdiff run`` stage: interpret with these settings unless RUN/interpret already
    holds the result of the same settings (LLM replies are cached either way)."""
    import json

    from crossdiff.interpret.config import InterpretConfig
    from crossdiff.interpret.pipeline import interpret

    data = dict(cfg_dict or {})
    data.setdefault("progress", progress)
    data["progress"] = bool(progress and data["progress"])
    config = InterpretConfig.from_dict(data)
    if has_interpretations(run_root):
        old = load_interpretations(run_root).meta.get("config", {})
        new = json.loads(json.dumps(config.to_dict()))
        old.pop("progress", None)
        new.pop("progress", None)
        if old == new:
            return "skipped (complete)"
    res = interpret(run_root, config)
    c = res.meta["counts"]
    return (
        f"done ({c['features']} features, {c['interpretable']} interpretable, "
        f"{c['flagged']} flagged)"
    )
