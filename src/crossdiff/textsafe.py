"""Text from the corpus or from a model, made safe to print on a terminal.

Corpus documents and LLM replies are hostile input: an escape sequence in one could drive the
terminal that shows it. Every command that prints such text (``crossdiff show``,
``crossdiff interpret``) and every prompt that quotes it (the interpret stage's marked
contexts) passes it through :func:`safe_text`. It lives apart from both the analysis and the
report so that the stages that print text and the report that renders it need not import
each other.
"""

from __future__ import annotations


def safe_text(text: str) -> str:
    """Replace control characters (ESC, CR, ...) by visible symbols; keep newlines as ⏎."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch == "\n":
            out.append("⏎")
        elif ch == "\t":
            out.append("⇥")
        elif code < 32 or code == 127 or 0x80 <= code < 0xA0:
            out.append(f"\\x{code:02x}")
        else:
            out.append(ch)
    return "".join(out)
