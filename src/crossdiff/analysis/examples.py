"""Where an example came from, and its text in each model's own rendering.

The streaming pass keeps only store row numbers (8 bytes per example). Afterwards
:func:`lookup_rows` reads the provenance columns (document, window, offsets, token positions and
spans; never the activations) of just the shards that hold those rows, and
:func:`cut_contexts` reads just the documents files that hold the examples' documents, cutting
each example's context out of each model's rendered window text: the characters before the
activating token, the token itself (the span the model's tokenizer gave it), and some after.
So the analysis folder can be read (report, ``crossdiff show``) without the store.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import torch

from crossdiff.analysis.config import AnalysisConfig
from crossdiff.analysis.streaming import PerFeatureTopK, quantile_band_picks
from crossdiff.errors import CrossdiffError

if TYPE_CHECKING:
    from crossdiff.store import ActivationStore

PROVENANCE = ("doc_index", "window", "content_end", "pos_a", "pos_b", "span_a", "span_b")
CONTEXT_COLUMNS = ("pre_a", "tok_a", "post_a", "pre_b", "tok_b", "post_b")


def lookup_rows(store: ActivationStore, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Provenance columns for store rows ``rows`` (any order, repeats allowed)."""
    from crossdiff.store.shard import read_columns

    rows = np.asarray(rows, dtype=np.int64)
    shards = [s for s in store.manifest.shards]
    ends = np.cumsum([s.rows for s in shards]) if shards else np.zeros(0, dtype=np.int64)
    total = int(ends[-1]) if len(ends) else 0
    if rows.size and (rows.min() < 0 or rows.max() >= total):
        raise CrossdiffError(
            f"row {int(rows.max())} is not in store {store.path} ({total} rows): the analysis "
            "was made on another store; rerun `crossdiff analyze`"
        )
    out: dict[str, np.ndarray] = {
        "doc_index": np.zeros(rows.size, np.int64),
        "window": np.zeros(rows.size, np.int32),
        "content_end": np.zeros(rows.size, np.int64),
        "pos_a": np.zeros(rows.size, np.int32),
        "pos_b": np.zeros(rows.size, np.int32),
        "span_a": np.zeros((rows.size, 2), np.int32),
        "span_b": np.zeros((rows.size, 2), np.int32),
    }
    shard_of = np.searchsorted(ends, rows, side="right")
    for k in np.unique(shard_of):
        sel = np.flatnonzero(shard_of == k)
        start = int(ends[k] - shards[k].rows)
        cols = read_columns(store.path / shards[k].file, list(PROVENANCE))
        local = rows[sel] - start
        for name in PROVENANCE:
            out[name][sel] = cols[name].numpy()[local]
    return out


def iter_documents(store: ActivationStore, wanted: Iterable[int]) -> Iterable[dict[str, Any]]:
    """The records of documents ``wanted``, reading only the documents files that hold them."""
    shards = store.manifest.shards
    starts = [s.doc_start for s in shards]
    by_shard: dict[int, set[int]] = {}
    for d in sorted(set(int(x) for x in wanted)):
        k = bisect.bisect_right(starts, d) - 1
        if k < 0 or d >= shards[k].doc_end:
            raise CrossdiffError(
                f"document {d} is not in store {store.path}; rerun `crossdiff analyze`"
            )
        by_shard.setdefault(k, set()).add(d)
    for k, docs in sorted(by_shard.items()):
        with open(store.path / shards[k].docs_file, encoding="utf-8") as fh:
            for i, line in enumerate(fh):
                if shards[k].doc_start + i in docs:
                    yield json.loads(line)


def cut_context(
    text: str, span: np.ndarray | tuple[int, int], before: int, after: int
) -> tuple[str, str, str]:
    """(before, token, after) of ``text`` around the character ``span``, clipped to the text:
    the one way the analysis examples, ``show`` and the interpret negatives cut a context."""
    s, e = int(span[0]), int(span[1])
    s = max(0, min(s, len(text)))
    e = max(s, min(e, len(text)))
    return text[max(0, s - before) : s], text[s:e], text[e : e + after]


def cut_contexts(
    store: ActivationStore,
    prov: dict[str, np.ndarray],
    which: np.ndarray,
    before: int,
    after: int,
) -> dict[str, list[str | None]]:
    """Context pieces (pre, token, post) per model for the examples where ``which`` is True;
    None elsewhere."""
    n = len(prov["doc_index"])
    out: dict[str, list[str | None]] = {c: [None] * n for c in CONTEXT_COLUMNS}
    idx = np.flatnonzero(which)
    if idx.size == 0:
        return out
    docs = prov["doc_index"][idx]
    order = idx[np.argsort(docs, kind="stable")]
    pos = 0
    for record in iter_documents(store, docs):
        d = int(record["index"])
        windows = record.get("windows") or []
        while pos < len(order) and int(prov["doc_index"][order[pos]]) == d:
            i = int(order[pos])
            w = int(prov["window"][i])
            if 0 <= w < len(windows):
                for m in ("a", "b"):
                    text = windows[w].get(m, {}).get("text", "")
                    pre, tok, post = cut_context(text, prov[f"span_{m}"][i], before, after)
                    out[f"pre_{m}"][i], out[f"tok_{m}"][i], out[f"post_{m}"][i] = pre, tok, post
            pos += 1
    return out


def examples_table(
    top: PerFeatureTopK,
    sample: PerFeatureTopK,
    store: ActivationStore,
    config: AnalysisConfig,
    with_context: np.ndarray,
) -> pa.Table:
    """One row per (feature, example): the top activations and the quantile-band picks of
    the uniform sample (band picks that are also top examples are dropped), with provenance,
    and texts for the features where ``with_context`` is True."""
    fi, slot = torch.nonzero(top.filled(), as_tuple=True)
    t_feat = fi.cpu().numpy()
    t_row = top.row[fi, slot].cpu().numpy()
    t_val = top.value[fi, slot].cpu().numpy()
    t_order = slot.cpu().numpy()
    picks, bands = quantile_band_picks(
        sample.value, (-sample.score), sample.filled(), config.quantile_bands, config.per_band
    )
    bi, bc = torch.nonzero(picks >= 0, as_tuple=True)
    bslot = picks[bi, bc]
    b_feat = bi.cpu().numpy()
    b_row = sample.row[bi, bslot].cpu().numpy()
    b_val = sample.value[bi, bslot].cpu().numpy()
    b_order = bands[bi, bc].cpu().numpy()
    # a band example that is also a top example adds nothing
    stride = np.int64(max(store.n_rows, 1))
    dup = np.isin(
        b_feat.astype(np.int64) * stride + b_row, t_feat.astype(np.int64) * stride + t_row
    )
    b_feat, b_row, b_val, b_order = b_feat[~dup], b_row[~dup], b_val[~dup], b_order[~dup]
    feat = np.concatenate([t_feat, b_feat]).astype(np.int64)
    kind = np.array(["top"] * len(t_feat) + ["band"] * len(b_feat), dtype=object)
    order = np.concatenate([t_order, b_order]).astype(np.int64)
    act = np.concatenate([t_val, b_val]).astype(np.float32)
    row = np.concatenate([t_row, b_row]).astype(np.int64)
    srt = np.lexsort((order, kind != "top", feat))
    feat, kind, order, act, row = feat[srt], kind[srt], order[srt], act[srt], row[srt]
    uniq, inverse = np.unique(row, return_inverse=True)
    prov_u = lookup_rows(store, uniq)
    prov = {k: v[inverse] for k, v in prov_u.items()}
    ctx = cut_contexts(store, prov, with_context[feat], config.context_before, config.context_after)
    columns: dict[str, Any] = {
        "feature": feat,
        "kind": kind.tolist(),
        "order": order,
        "activation": act,
        "row": row,
        "doc_index": prov["doc_index"],
        "window": prov["window"],
        "content_end": prov["content_end"],
        "pos_a": prov["pos_a"],
        "pos_b": prov["pos_b"],
        "span_a_start": prov["span_a"][:, 0],
        "span_a_end": prov["span_a"][:, 1],
        "span_b_start": prov["span_b"][:, 0],
        "span_b_end": prov["span_b"][:, 1],
    }
    for c in CONTEXT_COLUMNS:
        columns[c] = pa.array(ctx[c], type=pa.string())
    return pa.table(columns)
