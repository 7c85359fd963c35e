"""Score crosscoder features against the planted ground truth: AUROC per feature and concept.

The evaluation documents (:mod:`crossdiff_bench.planted_data`) are harvested into their own
store, so each row carries the document index and the character offset where its token ends;
:func:`row_label_matrix` turns that into a label per row and concept (1 present, 0 absent,
-1 ambiguous, left out). Every feature's activation on those rows is then scored by AUROC: the
probability that a random positive row has a higher activation than a random negative one
(ties count half). A feature that fires on exactly the concept scores 1; one unrelated to it
about 0.5.

Choosing the best of thousands of features on the same rows that score it would flatter it,
so the evaluation documents are split in two by document index: the feature is *chosen* on
one half (``select``) and its AUROC *reported* on the other (``test``).

Probes (:func:`probe_auroc`, :func:`split_probe_auroc`) are diagnostics of the ground truth
rather than of a crosscoder: can a linear read-out of a model's raw activations tell the
planted positions apart, and does it still when tested on questions about *other subjects*
than it was fitted on? Run on both models, they say whether a concept is the owner's alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from crossdiff.errors import CrossdiffError
from crossdiff.ridge import ridge_solve
from crossdiff_bench.planted_data import (
    CATEGORY,
    CONCEPTS,
    NEUTRAL_SUBJECTS,
    SUBJECT_HALF,
    PlantedDoc,
    check_concept,
    row_decisions,
    row_labels,
)


# ------------------------------------------------------------------------------------------
# AUROC
# ------------------------------------------------------------------------------------------
def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` with ties given the mean of the ranks they span."""
    x = np.asarray(x)
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    # boundaries of runs of equal values
    change = np.flatnonzero(np.diff(sorted_x)) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [len(x)]])
    mean_rank = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks_sorted = np.repeat(mean_rank, ends - starts)
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = ranks_sorted
    return ranks


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for ``labels`` (1 positive, 0 negative; any other
    label is ignored). Ties count half (the Mann-Whitney U statistic / (P x N)).

    Raises :class:`CrossdiffError` when there are no positives or no negatives.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if scores.shape != labels.shape:
        raise CrossdiffError(f"auroc: {scores.shape[0]} scores but {labels.shape[0]} labels")
    keep = (labels == 0) | (labels == 1)
    s, y = scores[keep], labels[keep] == 1
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise CrossdiffError(
            f"auroc needs positives and negatives, got {n_pos} positives and {n_neg} negatives"
        )
    ranks = average_ranks(s)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def sparse_column_aurocs(
    rows: np.ndarray,
    feats: np.ndarray,
    vals: np.ndarray,
    labels: np.ndarray,
    candidates: Sequence[int] | np.ndarray,
) -> np.ndarray:
    """AUROC of each candidate feature's activation over all rows (absent = 0).

    ``rows``, ``feats``, ``vals``: the nonzero activations (row index into ``labels``).
    Features that never fire on a labelled row score 0.5 (all ties).
    """
    candidates = np.asarray(candidates, dtype=np.int64)
    out = np.full(len(candidates), 0.5)
    keep = (labels == 0) | (labels == 1)
    lab = labels[keep]
    if not (lab == 1).any() or not (lab == 0).any():
        raise CrossdiffError("no positive or no negative rows to score against")
    new_index = np.cumsum(keep) - 1  # row -> index among kept rows
    mask = keep[rows]
    rows_k, feats_k, vals_k = new_index[rows[mask]], feats[mask], vals[mask]
    order = np.argsort(feats_k, kind="stable")
    rows_k, feats_k, vals_k = rows_k[order], feats_k[order], vals_k[order]
    bounds = np.searchsorted(feats_k, candidates), np.searchsorted(feats_k, candidates, "right")
    dense = np.zeros(len(lab), dtype=np.float64)
    for i, (lo, hi) in enumerate(zip(*bounds)):
        if hi == lo:
            continue
        dense[:] = 0.0
        dense[rows_k[lo:hi]] = vals_k[lo:hi]
        out[i] = auroc(dense, lab)
    return out


# ------------------------------------------------------------------------------------------
# Rows, labels and activations
# ------------------------------------------------------------------------------------------
@dataclass
class EvalRows:
    """The evaluation store's rows: document index, labels per concept, and the split."""

    doc_index: np.ndarray  # (n,)
    labels: dict[str, np.ndarray]  # concept -> (n,) int8
    select: np.ndarray  # (n,) bool: rows used to choose a feature (the rest test it)
    decision: np.ndarray | None = None  # (n,) bool: the row ends on a prompt's final marker
    half: np.ndarray | None = None  # (n,) int8: SUBJECT_HALF of the doc's final subject, or -1
    alternatives: dict[str, EvalRows] = field(default_factory=dict)
    """The same rows labelled at other candidate decision positions (the fine-tune bench:
    the question's last token beside its decision pair); scoring may pick one per feature."""

    @property
    def n(self) -> int:
        return int(self.doc_index.shape[0])


def _rows_by_document(
    docs: list[PlantedDoc], doc_index: np.ndarray
) -> Iterator[tuple[int, np.ndarray]]:
    """(document, indices of its rows) for every document with rows; one sort, not a scan of
    all rows per document. Rows naming a document that does not exist raise."""
    doc_index = np.asarray(doc_index, dtype=np.int64)
    if doc_index.size and (doc_index.min() < 0 or doc_index.max() >= len(docs)):
        raise CrossdiffError(
            f"rows name documents up to {int(doc_index.max())} but only {len(docs)} evaluation "
            "documents exist; the evaluation store was not harvested from them"
        )
    order = np.argsort(doc_index, kind="stable")
    sorted_docs = doc_index[order]
    starts = np.searchsorted(sorted_docs, np.arange(len(docs)))
    ends = np.searchsorted(sorted_docs, np.arange(len(docs)), "right")
    for d, (lo, hi) in enumerate(zip(starts, ends)):
        if lo < hi:
            yield d, order[lo:hi]


def row_label_matrix(
    docs: list[PlantedDoc], doc_index: np.ndarray, content_end: np.ndarray
) -> dict[str, np.ndarray]:
    """Label of every row for every concept (see :func:`planted_data.row_labels`)."""
    content_end = np.asarray(content_end, dtype=np.int64)
    out = {c: np.zeros(len(doc_index), dtype=np.int8) for c in CONCEPTS}
    for d, idx in _rows_by_document(docs, doc_index):
        for c in CONCEPTS:
            out[c][idx] = row_labels(docs[d], c, content_end[idx])
    return out


def row_decision_info(
    docs: list[PlantedDoc], doc_index: np.ndarray, content_end: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per row: whether it ends on its document's decision span (the final answer marker),
    and the subject half (:data:`SUBJECT_HALF`) of that document's final question (-1: none)."""
    content_end = np.asarray(content_end, dtype=np.int64)
    decision = np.zeros(len(doc_index), dtype=bool)
    half = np.full(len(doc_index), -1, dtype=np.int8)
    for d, idx in _rows_by_document(docs, doc_index):
        doc = docs[d]
        if doc.decision is not None:
            decision[idx] = row_decisions(doc, content_end[idx])
        if doc.subject is not None:
            half[idx] = SUBJECT_HALF[doc.subject]
    return decision, half


def read_rows(store) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
    """Every row of a (small) store: raw activations of A and B, doc_index, content_end and
    pos_a (which orders a decision pair after the content pair it shares content_end with)."""
    xs_a, xs_b, di, ce, pa = [], [], [], [], []
    for x_a, x_b, meta in store.iter_rows(8192):
        xs_a.append(x_a)
        xs_b.append(x_b)
        di.append(meta["doc_index"])
        ce.append(meta["content_end"])
        pa.append(meta["pos_a"])
    return (
        torch.cat(xs_a),
        torch.cat(xs_b),
        np.concatenate(di).astype(np.int64),
        np.concatenate(ce).astype(np.int64),
        np.concatenate(pa).astype(np.int64),
    )


def load_eval_rows(store, docs: list[PlantedDoc]) -> tuple[EvalRows, torch.Tensor, torch.Tensor]:
    """All rows of the evaluation store with their labels, and their raw activations."""
    x_a, x_b, doc_index, content_end, _ = read_rows(store)
    for i, record in enumerate(store.documents()):
        if i >= len(docs) or record.get("text") != docs[i].text:
            raise CrossdiffError(
                f"evaluation store document {i} is not the generated document {i}; delete "
                f"{store.path} so that it is harvested again"
            )
    labels = row_label_matrix(docs, doc_index, content_end)
    decision, half = row_decision_info(docs, doc_index, content_end)
    rows = EvalRows(doc_index, labels, doc_index % 2 == 0, decision, half)
    return rows, x_a, x_b


@torch.no_grad()
def encode_rows(
    cc, x_a: torch.Tensor, x_b: torch.Tensor, batch_size: int = 4096
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparse activations (rows, feats, vals) of raw activation rows, in inference mode."""
    from crossdiff.analysis.encoding import encode_batch

    cc.eval()
    rows, feats, vals = [], [], []
    for start in range(0, x_a.shape[0], batch_size):
        xa = cc.normalize(x_a[start : start + batch_size].float(), "a")
        xb = cc.normalize(x_b[start : start + batch_size].float(), "b")
        enc = encode_batch(cc, xa, xb)
        rows.append(enc.rows.cpu().numpy() + start)
        feats.append(enc.feats.cpu().numpy())
        vals.append(enc.vals.float().cpu().numpy())
    return np.concatenate(rows), np.concatenate(feats), np.concatenate(vals)


@dataclass
class ConceptMatch:
    """The feature chosen for a concept among ``candidates`` and how well it tracks it."""

    concept: str
    feature: int | None  # None when there was no candidate
    auroc_select: float
    auroc_test: float
    n_candidates: int
    n_pos_test: int
    n_neg_test: int
    fires_on_pos: float  # fraction of positive test rows where the feature is active
    fires_on_neg: float  # fraction of negative test rows where it is active

    def found(self, threshold: float = 0.9) -> bool:
        return self.feature is not None and self.auroc_test >= threshold

    def to_dict(self) -> dict:
        return dict(vars(self))


def match_concept(
    concept: str,
    acts: tuple[np.ndarray, np.ndarray, np.ndarray],
    rows: EvalRows,
    candidates: Sequence[int] | np.ndarray,
) -> ConceptMatch:
    """Choose the candidate with the best AUROC on the select half; score it on the test half."""
    check_concept(concept)
    candidates = np.asarray(candidates, dtype=np.int64)
    labels = rows.labels[concept]
    r, f, v = acts
    test_labels = np.where(rows.select, -1, labels)
    n_pos = int((test_labels == 1).sum())
    n_neg = int((test_labels == 0).sum())
    select_labels = np.where(rows.select, labels, -1)
    scorable = all((lab == v).any() for lab in (select_labels, test_labels) for v in (0, 1))
    if len(candidates) == 0 or not scorable:
        # nothing to choose from, or a split without positives or negatives to score on
        nan = float("nan")
        return ConceptMatch(concept, None, nan, nan, len(candidates), n_pos, n_neg, 0.0, 0.0)
    sel = sparse_column_aurocs(r, f, v, select_labels, candidates)
    best = int(candidates[int(np.argmax(sel))])
    test = sparse_column_aurocs(r, f, v, test_labels, [best])[0]
    active = np.zeros(rows.n, dtype=bool)
    active[r[f == best]] = True
    return ConceptMatch(
        concept,
        best,
        float(sel.max()),
        float(test),
        len(candidates),
        n_pos,
        n_neg,
        float(active[test_labels == 1].mean()),
        float(active[test_labels == 0].mean()),
    )


def probe_auroc(
    x: torch.Tensor, labels: np.ndarray, select: np.ndarray, ridge: float = 1e-2
) -> float:
    """Held-out AUROC of a ridge linear probe for ``labels`` on activations ``x``.

    Fitted on the ``select`` rows, scored on the others (labels other than 0/1 ignored). A
    diagnostic of the labels rather than of any crosscoder: if a probe on a model's raw
    activations cannot separate the positives, no single feature of a dictionary over them
    will; if a probe on the model that never learned the concept separates them as well, the
    labels mark something both models read in the input, which a crosscoder rightly puts in
    shared features. NaN when a split lacks positives or negatives.
    """
    y = np.asarray(labels)
    fit = select & ((y == 0) | (y == 1))
    test = ~select & ((y == 0) | (y == 1))
    if len(set(y[fit].tolist())) < 2 or len(set(y[test].tolist())) < 2:
        return float("nan")
    xf = x.double()
    fit_rows = torch.from_numpy(fit)
    mean = xf[fit_rows].mean(0)
    std = xf[fit_rows].std(0).clamp_min(1e-6)
    z = (xf - mean) / std
    zf = z[fit_rows]
    t = torch.from_numpy(y[fit].astype(np.float64)) - float(y[fit].mean())
    w, _ = ridge_solve(zf.T @ zf, zf.T @ t, ridge)
    scores = (z[torch.from_numpy(test)] @ w).numpy()
    return auroc(scores, y[test])


def split_probe_auroc(x: torch.Tensor, labels: np.ndarray, half: np.ndarray) -> float:
    """:func:`probe_auroc` fitted on the rows of one subject half and tested on the other, both
    ways round, averaged: a read-out that generalizes to questions about subjects it never saw
    labelled. For an arbitrary category of subjects, only a model that represents the category
    itself (one state shared by its subjects) scores well above 0.5. NaN when a half lacks
    positives or negatives. Rows with ``half`` -1 are left out."""
    half = np.asarray(half)
    keep = half >= 0
    scores = []
    for fit_half in (0, 1):
        y = np.where(keep, labels, -1)
        scores.append(probe_auroc(x, y, half == fit_half))
    return float(np.mean(scores))


@torch.no_grad()
def decision_probe_by_layer(lm, docs: list[PlantedDoc]) -> dict[str, list[float]]:
    """Per concept, :func:`split_probe_auroc` of the category (against the neutral subjects) at
    the final answer marker after each decoder layer (entry ``i`` = after layer ``i``; the
    embeddings are left out).

    Read from the model directly on the prompt documents (the last token of each ends on the
    marker), so it shows at which depth a model holds its decision, and whether the layer the
    crosscoder reads holds it at all.
    """
    prompts = [d for d in docs if d.decision is not None and d.subject is not None]
    if not prompts:
        raise CrossdiffError("no prompt documents to probe the decision on")
    states = []
    for doc in prompts:
        enc = lm.tokenizer(doc.text, add_special_tokens=True, return_tensors="pt").to(lm.device)
        out = lm.model(**enc, output_hidden_states=True)
        states.append(torch.stack([h[0, -1].float().cpu() for h in out.hidden_states[1:]]))
    x = torch.stack(states)  # (docs, layers, width)
    half = np.array([SUBJECT_HALF[d.subject] for d in prompts], dtype=np.int8)
    result: dict[str, list[float]] = {}
    for concept in CONCEPTS:
        # negatives: the neutral subjects (the other concept's subjects are left out, since
        # a model that holds *that* category would separate them from these for free)
        y = np.array(
            [
                1 if d.subject in CATEGORY[concept] else 0 if d.subject in NEUTRAL_SUBJECTS else -1
                for d in prompts
            ],
            dtype=np.int8,
        )
        result[concept] = [split_probe_auroc(x[:, layer], y, half) for layer in range(x.shape[1])]
    return result
