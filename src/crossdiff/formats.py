"""Reading a stage's metadata file: the one check every stage's loader makes.

Each stage that writes a folder (analysis, interpret, recurrence) marks it with a small JSON
file naming its format and version; readers must refuse a file that is not JSON, is another
stage's, or is newer than this crossdiff, each with a message that says what to rerun.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from crossdiff.errors import CrossdiffError


def read_meta(path: Path, format_name: str, format_version: int, rerun: str) -> dict[str, Any]:
    """The JSON at ``path`` if it is ``format_name`` at a version <= ``format_version``;
    ``rerun`` names the command that rewrites it (for the error messages)."""
    try:
        meta = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CrossdiffError(f"{path} is not valid JSON ({exc}); rerun {rerun}") from None
    if not isinstance(meta, dict) or meta.get("format") != format_name:
        raise CrossdiffError(f"{path} is not a {format_name} file; rerun {rerun}")
    try:
        version = int(meta.get("format_version", 0))
    except (TypeError, ValueError):
        raise CrossdiffError(f"{path} has no readable format_version; rerun {rerun}") from None
    if version > format_version:
        raise CrossdiffError(
            f"{path}: {format_name} version {version} is newer than this crossdiff reads "
            f"({format_version}); upgrade crossdiff"
        )
    return meta
