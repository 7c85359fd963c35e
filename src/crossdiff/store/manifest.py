"""``manifest.json``: what a store holds, and the single source of truth for what is committed.

A shard or documents file exists for readers only once the manifest lists it; the manifest is
rewritten atomically after each shard, so a crash between the two leaves an unlisted file that
the next writer overwrites. Everything here is JSON-serializable dataclasses (no pickles).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from crossdiff.errors import CrossdiffError
from crossdiff.store.fileio import atomic_write_bytes

MANIFEST_NAME = "manifest.json"
FORMAT_NAME = "crossdiff-activation-store"
FORMAT_VERSION = 1
STORE_DTYPE = "bfloat16"


class ManifestError(CrossdiffError):
    """A manifest that cannot be trusted: missing or mistyped fields, inconsistent values."""


# -- validation ----------------------------------------------------------------------------------
# A manifest is read before anything else in a store, and a hand-edited or damaged one must fail
# here with the field and the value, not later as a TypeError deep in a reader.
def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _pos_int(v: Any) -> bool:
    return _int(v) and v > 0


def _str(v: Any) -> bool:
    return isinstance(v, str)


def _name(v: Any) -> bool:  # a file inside the store folder: no paths, no hidden files
    return isinstance(v, str) and bool(v) and "/" not in v and "\\" not in v and v[0] != "."


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _dict(v: Any) -> bool:
    return isinstance(v, dict)


def _scales(v: Any) -> bool:
    return isinstance(v, dict) and all(_number(x) for x in v.values())


def _opt(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


Rule = tuple[Callable[[Any], bool], str]
INT: Rule = (_int, "a non-negative integer")
POS_INT: Rule = (_pos_int, "a positive integer")
STR: Rule = (_str, "a string")
NAME: Rule = (_name, "a file name inside the store folder")
DICT: Rule = (_dict, "a JSON object")


def _show(v: Any) -> str:
    text = repr(v)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{text} ({type(v).__name__})"


def _validate(cls: type, d: Any, where: str, rules: dict[str, Rule]) -> dict[str, Any]:
    """Check ``d`` holds the fields of the dataclass ``cls`` with the types ``rules`` name."""
    if not isinstance(d, dict):
        raise ManifestError(f"{where} is {_show(d)}, expected a JSON object")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ManifestError(f"{where} has unknown field(s) {unknown}")
    required = [
        f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
    ]
    missing = [name for name in required if name not in d]
    if missing:
        raise ManifestError(f"{where} lacks the field(s) {missing}")
    for name, (check, expected) in rules.items():
        if name in d and not check(d[name]):
            raise ManifestError(f"{where}.{name} is {_show(d[name])}, expected {expected}")
    return dict(d)


@dataclass
class TokenizerInfo:
    """Identifies a tokenizer: a store's positions only mean something for this exact one."""

    name: str
    vocab_size: int
    hash: str  # sha256 of the tokenizer's JSON serialization

    @classmethod
    def from_dict(cls, d: Any, where: str = "tokenizer") -> TokenizerInfo:
        return cls(**_validate(cls, d, where, {"name": STR, "vocab_size": INT, "hash": STR}))


@dataclass
class ModelInfo:
    """One side (A or B) of the pair: which model, which layer, how wide."""

    spec: str  # as the user gave it (alias, hub id, folder, GGUF file)
    model_id: str
    revision: str | None
    layer: int  # resolved index of the decoder layer whose output is stored
    layer_spec: str  # as asked ("middle", "-1", "12")
    n_layers: int
    d_model: int
    dtype: str  # dtype the model ran in
    tokenizer: TokenizerInfo
    has_chat_template: bool = True

    @classmethod
    def from_dict(cls, d: Any, where: str = "model") -> ModelInfo:
        rules = {
            "spec": STR,
            "model_id": STR,
            "revision": (_opt(_str), "a string or null"),
            "layer": INT,
            "layer_spec": STR,
            "n_layers": POS_INT,
            "d_model": POS_INT,
            "dtype": STR,
            "has_chat_template": (lambda v: isinstance(v, bool), "true or false"),
        }
        d = _validate(cls, d, where, rules)
        if d["layer"] >= d["n_layers"]:
            raise ManifestError(
                f"{where}.layer is {d['layer']}, but the model has n_layers {d['n_layers']}"
            )
        d["tokenizer"] = TokenizerInfo.from_dict(d["tokenizer"], f"{where}.tokenizer")
        return cls(**d)


@dataclass
class ShardInfo:
    """One committed shard file and the documents file that goes with it.

    Shards close on document boundaries: shard k holds every pair of documents
    ``[doc_start, doc_end)`` and nothing else, and its documents file holds those documents.
    """

    file: str
    rows: int
    sha256: str
    bytes: int
    doc_start: int
    doc_end: int
    docs_file: str
    docs_sha256: str
    content_tokens_a: int = 0
    content_tokens_b: int = 0
    docs_skipped: int = 0
    pairs_dropped_a: int = 0  # pairs the alignment's self-check removed (model A's offsets)
    pairs_dropped_b: int = 0
    docs_repaired: int = 0  # documents with invalid Unicode replaced by U+FFFD

    @classmethod
    def from_dict(cls, d: Any, where: str = "shard") -> ShardInfo:
        rules = {name: INT for name in _SHARD_COUNTS}
        rules.update(file=NAME, docs_file=NAME, sha256=STR, docs_sha256=STR)
        d = _validate(cls, d, where, rules)
        if d["doc_end"] < d["doc_start"]:
            raise ManifestError(
                f"{where} ends at document {d['doc_end']}, before its start {d['doc_start']}"
            )
        return cls(**d)


_SHARD_COUNTS = (
    "rows",
    "bytes",
    "doc_start",
    "doc_end",
    "content_tokens_a",
    "content_tokens_b",
    "docs_skipped",
    "pairs_dropped_a",
    "pairs_dropped_b",
    "docs_repaired",
)


@dataclass
class Manifest:
    """The whole manifest; see docs/harvest-store.md for the meaning of every field."""

    model_a: ModelInfo
    model_b: ModelInfo
    corpus: dict[str, Any]  # {"spec": ..., "limit": ...}
    harvest: dict[str, Any]  # settings that shaped the rows (max_seq_len, batch_size, ...)
    shards: list[ShardInfo] = field(default_factory=list)
    norm_stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    norm_scales: dict[str, float] | None = None
    status: str = "in_progress"  # or "complete"
    complete_reason: str | None = None
    tokens_target: int | None = None
    created: str = ""
    updated: str = ""
    crossdiff_version: str = ""
    store_dtype: str = STORE_DTYPE
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    # -- derived -------------------------------------------------------------------------
    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def documents_consumed(self) -> int:
        return self.shards[-1].doc_end if self.shards else 0

    @property
    def d_a(self) -> int:
        return self.model_a.d_model

    @property
    def d_b(self) -> int:
        return self.model_b.d_model

    def coverage(self) -> dict[str, float | int]:
        """Aligned pairs over content tokens of each model, over the whole store."""
        ta = sum(s.content_tokens_a for s in self.shards)
        tb = sum(s.content_tokens_b for s in self.shards)
        rows = self.rows
        return {
            "pairs": rows,
            "content_tokens_a": ta,
            "content_tokens_b": tb,
            "coverage_a": rows / ta if ta else 0.0,
            "coverage_b": rows / tb if tb else 0.0,
            "docs_skipped": sum(s.docs_skipped for s in self.shards),
            "pairs_dropped_a": sum(s.pairs_dropped_a for s in self.shards),
            "pairs_dropped_b": sum(s.pairs_dropped_b for s in self.shards),
            "docs_repaired": sum(s.docs_repaired for s in self.shards),
        }

    def target_norm(self) -> float:
        """sqrt((d_a + d_b) / 2): the median norm both models are scaled to (docs/METHOD.md §2)."""
        return math.sqrt((self.d_a + self.d_b) / 2)

    # -- (de)serialization ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rows"] = self.rows
        d["documents_consumed"] = self.documents_consumed
        d["coverage"] = self.coverage()
        # Put the identifying fields first so `cat manifest.json` reads well.
        order = ["format", "format_version", "crossdiff_version", "status", "complete_reason"]
        return {**{k: d.pop(k) for k in order}, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        """Parse a manifest, checking every field's type (:class:`ManifestError` names the
        field and its value)."""
        if not isinstance(d, dict):
            raise ManifestError(f"the manifest is {_show(d)}, expected a JSON object")
        d = dict(d)
        derived = {k: d.pop(k) for k in ("rows", "documents_consumed", "coverage") if k in d}
        if d.get("format") != FORMAT_NAME:
            raise ManifestError(
                f"not a crossdiff activation store manifest (format {d.get('format')!r})"
            )
        if d.get("format_version") != FORMAT_VERSION:
            raise ManifestError(
                f"store format version {d.get('format_version')} is not supported by this "
                f"crossdiff (version {FORMAT_VERSION}); harvest the store again or upgrade"
            )
        rules: dict[str, Rule] = {
            "corpus": DICT,
            "harvest": DICT,
            "shards": (lambda v: isinstance(v, list), "a list"),
            "norm_stats": DICT,
            "norm_scales": (_opt(_scales), "null or an object of numbers"),
            "status": (lambda v: v in ("in_progress", "complete"), "'in_progress' or 'complete'"),
            "complete_reason": (_opt(_str), "a string or null"),
            "tokens_target": (_opt(_int), "a non-negative integer or null"),
            "created": STR,
            "updated": STR,
            "crossdiff_version": STR,
            "store_dtype": (lambda v: v == STORE_DTYPE, repr(STORE_DTYPE)),
        }
        d = _validate(cls, d, "manifest", rules)
        d["model_a"] = ModelInfo.from_dict(d["model_a"], "model_a")
        d["model_b"] = ModelInfo.from_dict(d["model_b"], "model_b")
        d["shards"] = [ShardInfo.from_dict(s, f"shards[{k}]") for k, s in enumerate(d["shards"])]
        if d["norm_scales"] is not None and not {"a", "b"} <= set(d["norm_scales"]):
            raise ManifestError(f"manifest.norm_scales is {_show(d['norm_scales'])}, lacks a or b")
        m = cls(**d)
        # The derived totals are written for readers of the file; when present they must agree
        # with the shards (a mismatch means the file was edited or damaged).
        for key, value in (("rows", m.rows), ("documents_consumed", m.documents_consumed)):
            if key in derived and derived[key] != value:
                raise ManifestError(
                    f"manifest.{key} is {_show(derived[key])}, but the shards add up to {value}"
                )
        return m

    def save(self, folder: Path) -> None:
        data = json.dumps(self.to_dict(), indent=2, sort_keys=False).encode("utf-8")
        atomic_write_bytes(folder / MANIFEST_NAME, data + b"\n")

    @classmethod
    def load(cls, folder: Path) -> Manifest:
        path = folder / MANIFEST_NAME
        if not path.is_file():
            raise CrossdiffError(
                f"{folder} is not an activation store: it has no {MANIFEST_NAME} "
                "(create one with `crossdiff harvest`)"
            )
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ManifestError(f"cannot read {path}: {exc}") from None
        try:
            return cls.from_dict(raw)
        except ManifestError as exc:
            raise ManifestError(
                f"{path} is malformed: {exc}; the store cannot be used as it is"
            ) from None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, CrossdiffError):  # format / version: already says what to do
                raise
            raise ManifestError(
                f"{path} is malformed ({type(exc).__name__}: {exc}); the store cannot be used"
            ) from exc


# Harvest settings that change speed, not what a row means: a store may be resumed with others
# (rows then stay valid, though not bit-identical to an uninterrupted run's).
RUNTIME_SETTINGS = frozenset({"batch_size", "block_documents"})


# Fields that must agree for rows to be appended to an existing store (what makes two rows
# comparable). The token budget is deliberately absent: raising it extends a store.
def _model_key(m: ModelInfo) -> dict[str, Any]:
    return {
        "model_id": m.model_id,
        "revision": m.revision,
        "layer": m.layer,
        "d_model": m.d_model,
        "dtype": m.dtype,
        "tokenizer": m.tokenizer.hash,
    }


def incompatibilities(existing: Manifest, wanted: Manifest) -> list[str]:
    """Human-readable differences that forbid appending ``wanted``'s rows to ``existing``."""
    problems: list[str] = []
    for side in ("a", "b"):
        old = _model_key(getattr(existing, f"model_{side}"))
        new = _model_key(getattr(wanted, f"model_{side}"))
        for key, value in old.items():
            if new[key] != value:
                problems.append(
                    f"model {side.upper()} {key}: store has {value!r}, asked {new[key]!r}"
                )
    if existing.corpus != wanted.corpus:
        problems.append(f"corpus: store has {existing.corpus!r}, asked {wanted.corpus!r}")
    return problems + harvest_differences(existing.harvest, wanted.harvest)


def harvest_differences(existing: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """The row-shaping harvest settings on which a store and a request differ (runtime
    settings aside). Compared both ways: a setting written only when it is not its default
    (``pair_positions``, ``decision_pairs``) is absent from a store made without it."""
    problems = []
    for key in dict.fromkeys([*existing, *wanted]):
        value, asked = existing.get(key), wanted.get(key)
        if key not in RUNTIME_SETTINGS and asked != value:
            problems.append(f"harvest {key}: store has {value!r}, asked {asked!r}")
    return problems
