"""No product function over MAX_LINES lines (issue 11): a long function is split into named
steps, so that each can be read, and tested, on its own.

Lines run from ``def`` to the function's last line, docstring and nested functions included.
A function that must stay longer is listed in ALLOWED with a one-line reason.
"""

from __future__ import annotations

import ast
from pathlib import Path

import crossdiff

MAX_LINES = 80
PACKAGE = Path(crossdiff.__file__).parent

# "path/inside/the/package.py:function" -> why it may be longer
ALLOWED: dict[str, str] = {}


def function_lengths() -> dict[str, int]:
    """Every function and method of the package (nested ones too) and its length in lines."""
    out: dict[str, int] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        for node in ast.walk(ast.parse(path.read_text("utf-8"), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                key = f"{rel}:{node.name}"
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                out[key] = max(length, out.get(key, 0))
    return out


def test_no_product_function_is_longer_than_the_limit() -> None:
    lengths = function_lengths()
    assert lengths, f"no functions found under {PACKAGE}"
    too_long = sorted(
        f"{key} ({n} lines)" for key, n in lengths.items() if n > MAX_LINES and key not in ALLOWED
    )
    assert not too_long, (
        f"functions over {MAX_LINES} lines: {', '.join(too_long)}; split them into named steps "
        f"(or, if one must stay long, add it to ALLOWED in {Path(__file__).name} with a reason)"
    )


def test_every_allowed_entry_is_still_needed_and_gives_a_reason() -> None:
    """The list only shrinks: an entry whose function is gone or now short is removed."""
    lengths = function_lengths()
    stale = sorted(key for key in ALLOWED if lengths.get(key, 0) <= MAX_LINES)
    assert not stale, (
        f"ALLOWED lists functions that no longer exist or are now at most {MAX_LINES} lines: "
        f"{stale}; remove them from ALLOWED in {Path(__file__).name}"
    )
    assert all(reason.strip() for reason in ALLOWED.values())


MAX_FILE_LINES = 500


def test_long_product_files_say_why_in_their_docstring() -> None:
    """A product file over ~500 lines states its reason: a paragraph starting "Size:" in its
    module docstring (issue 11: no file over about 500 lines without a reason stated)."""
    unexplained = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text("utf-8")
        if text.count("\n") <= MAX_FILE_LINES:
            continue
        doc = ast.get_docstring(ast.parse(text)) or ""
        if not any(par.startswith("Size: ") for par in doc.split("\n\n")):
            unexplained.append(path.relative_to(PACKAGE).as_posix())
    assert not unexplained, (
        f"files over {MAX_FILE_LINES} lines without a 'Size: ...' paragraph in their module "
        f"docstring: {unexplained}; split them, or say there why they stay one file"
    )
