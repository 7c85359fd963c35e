"""Reading steering prompts from a file.

- ``.jsonl``: one prompt per line, either a JSON string, an object with ``"prompt"`` (a string),
  or an object with ``"messages"`` (a chat: ``[{"role": "user", "content": "..."}, ...]``, the
  model answers after its last message);
- anything else: plain text, one prompt per non-blank line.
"""

from __future__ import annotations

import json
from pathlib import Path

from crossdiff.errors import CrossdiffError
from crossdiff.steering.generation import Prompt


def read_prompts(path: str | Path) -> list[Prompt]:
    """The prompts in ``path`` (format in the module docstring)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CrossdiffError(f"prompts file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise CrossdiffError(f"cannot read prompts file {path}: {error}") from error
    prompts: list[Prompt] = []
    if path.suffix.lower() != ".jsonl":
        prompts = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as error:
                raise CrossdiffError(f"{path}:{number} is not valid JSON: {error}") from error
            if isinstance(item, dict) and "prompt" in item:
                item = item["prompt"]
            elif isinstance(item, dict) and "messages" in item:
                item = item["messages"]
            if isinstance(item, str) or (
                isinstance(item, list) and item and all(isinstance(m, dict) for m in item)
            ):
                prompts.append(item)
            else:
                raise CrossdiffError(
                    f'{path}:{number}: expected a string, {{"prompt": ...}} or '
                    f'{{"messages": [...]}}, got {line[:80]!r}'
                )
    if not prompts:
        raise CrossdiffError(f"prompts file {path} holds no prompts")
    return prompts
