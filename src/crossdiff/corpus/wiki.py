"""General English text for the built-in corpus: the Wikipedia sample in gensim's test data.

gensim (a dependency of the project's ``models`` extra) ships a 1.7 MB bz2 excerpt of an
English Wikipedia dump (about 200 pages, e.g. Anarchism, Autism, Albedo) for its own tests. It is
read at run time, never copied into this repository: its wiki markup is stripped (templates,
tables, references, files, categories, formatting; links keep their text), reference sections
are dropped, and every article is cut into chunks of whole paragraphs of at most
:data:`CHUNK_WORDS` words (long paragraphs split at sentence ends).
"""

from __future__ import annotations

import bz2
import functools
import html
import importlib.util
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from crossdiff.errors import CrossdiffError

WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
CHUNK_WORDS = 300  # a chunk holds whole paragraphs up to this many words
MIN_CHUNK_WORDS = 40  # shorter leftovers (stubs, captions) are dropped
MIN_PARAGRAPH_WORDS = 8  # shorter lines are list remnants or headings
# Sections after which an article is only references and links.
_END_SECTIONS = re.compile(
    r"^==+\s*(see also|references|notes|footnotes|further reading|external links|"
    r"bibliography|sources|citations)\s*==+\s*$",
    re.IGNORECASE | re.MULTILINE,
)
_NON_ARTICLE_LINK = re.compile(
    r"^(file|image|media|category|wikipedia|wp|template|help|portal|special|[a-z]{2,3}(-[a-z]+)?):",
    re.IGNORECASE,
)


def wiki_sample_path() -> Path:
    """Where gensim's Wikipedia sample is installed (found without importing gensim)."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise CrossdiffError(
            "the built-in corpus reads its English text from gensim's test data, but gensim is "
            "not installed; install it with: pip install 'gensim>=4.3' (or pass --corpus FILE)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "test" / "test_data" / WIKI_FILE
    if not path.is_file():
        raise CrossdiffError(
            f"gensim is installed but its Wikipedia sample {WIKI_FILE} is missing at {path}; "
            "reinstall gensim with: pip install --force-reinstall 'gensim>=4.3'"
        )
    return path


def _sub_until_stable(pattern: re.Pattern[str], repl, text: str) -> str:
    while True:
        new = pattern.sub(repl, text)
        if new == text:
            return text
        text = new


_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_REF = re.compile(r"<ref[^>]*/>|<ref[^>]*>.*?</ref>", re.DOTALL | re.IGNORECASE)
_BLOCK_TAGS = re.compile(
    r"<(math|gallery|timeline|syntaxhighlight|source|score|imagemap)[^>]*>.*?</\1>",
    re.DOTALL | re.IGNORECASE,
)
_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_TABLE = re.compile(r"\{\|(?:(?!\{\|)(?!\|\}).)*\|\}", re.DOTALL)
_LINK = re.compile(r"\[\[([^\[\]]*)\]\]")
_EXTERNAL = re.compile(r"\[(?:https?:)?//[^\s\]]+(?:\s([^\]]*))?\]")
_TAG = re.compile(r"</?[a-zA-Z][^>]*>")
_QUOTES = re.compile(r"'{2,}")
_HEADING = re.compile(r"^=+.*=+\s*$", re.MULTILINE)


def _link_text(match: re.Match[str]) -> str:
    inner = match.group(1)
    target, _, label = inner.partition("|")
    if _NON_ARTICLE_LINK.match(target.strip()):
        return ""
    return (label or target).strip()


def strip_markup(raw: str) -> str:
    """Plain text of one article's wikitext: paragraphs separated by blank lines."""
    end = _END_SECTIONS.search(raw)
    text = raw[: end.start()] if end else raw
    text = _COMMENT.sub("", text)
    text = _REF.sub("", text)
    text = _BLOCK_TAGS.sub("", text)
    text = _sub_until_stable(_TEMPLATE, "", text)
    text = _sub_until_stable(_TABLE, "", text)
    text = _sub_until_stable(_LINK, _link_text, text)
    text = _EXTERNAL.sub(lambda m: m.group(1) or "", text)
    text = _TAG.sub("", text)
    text = _QUOTES.sub("", text)
    text = _HEADING.sub("", text)
    text = html.unescape(text).replace("\u00a0", " ")
    paragraphs = []
    for block in re.split(r"\n\s*\n", text):
        lines = []
        for line in block.splitlines():
            line = re.sub(r"^[*#:;]+\s*", "", line.strip())
            if not line or line[0] in "|!{}" or line.startswith("__"):
                continue
            lines.append(re.sub(r"[ \t]{2,}", " ", line))
        paragraph = " ".join(lines).strip()
        paragraph = re.sub(r"\(\s*[,;]?\s*\)", "", paragraph)  # "( )" left by removed templates
        paragraph = re.sub(r" +([,.;:])", r"\1", paragraph)
        paragraph = re.sub(r" {2,}", " ", paragraph)
        if len(paragraph.split()) >= MIN_PARAGRAPH_WORDS:
            paragraphs.append(paragraph)
    return "\n\n".join(paragraphs)


def _split_long(paragraph: str) -> list[str]:
    """A paragraph cut at sentence ends into pieces of at most CHUNK_WORDS words (if it can)."""
    if len(paragraph.split()) <= CHUNK_WORDS:
        return [paragraph]
    pieces: list[str] = []
    current: list[str] = []
    count = 0
    for sentence in re.split(r"(?<=[.!?])\s+", paragraph):
        words = len(sentence.split())
        if current and count + words > CHUNK_WORDS:
            pieces.append(" ".join(current))
            current, count = [], 0
        current.append(sentence)
        count += words
    if current:
        pieces.append(" ".join(current))
    return pieces


def chunk_article(text: str) -> list[str]:
    """Whole paragraphs packed into chunks of at most CHUNK_WORDS words (in order)."""
    chunks: list[str] = []
    current: list[str] = []
    count = 0
    for paragraph in text.split("\n\n"):
        for piece in _split_long(paragraph):
            words = len(piece.split())
            if current and count + words > CHUNK_WORDS:
                chunks.append("\n\n".join(current))
                current, count = [], 0
            current.append(piece)
            count += words
    if current:
        chunks.append("\n\n".join(current))
    return [c for c in chunks if len(c.split()) >= MIN_CHUNK_WORDS]


def _articles(path: Path):
    """(title, wikitext) of the main-namespace, non-redirect pages, in file order."""
    with bz2.open(path, "rb") as handle:
        for _, element in ET.iterparse(handle, events=("end",)):
            if not element.tag.endswith("}page") and element.tag != "page":
                continue
            ns = title = text = None
            for child in element.iter():
                tag = child.tag.rsplit("}", 1)[-1]
                if tag == "ns":
                    ns = child.text
                elif tag == "title":
                    title = child.text
                elif tag == "text":
                    text = child.text
            element.clear()
            if ns == "0" and text and not text.lstrip().upper().startswith("#REDIRECT"):
                yield title or "", text


@functools.cache
def wiki_chunks() -> tuple[tuple[str, str], ...]:
    """All chunks of the sample as (article title, chunk text), in file order (cached)."""
    chunks = []
    for title, raw in _articles(wiki_sample_path()):
        chunks.extend((title, chunk) for chunk in chunk_article(strip_markup(raw)))
    return tuple(chunks)
