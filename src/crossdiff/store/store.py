"""``ActivationStore``: a folder of paired, aligned activations of two models.

Layout (see docs/harvest-store.md)::

    STORE/
      manifest.json            models, layers, widths, tokenizers, shards, checksums, norms
      shard-00000.safetensors  rows of documents [doc_start, doc_end) (see store/shard.py)
      docs-00000.jsonl         those documents: text or messages, each model's rendering
      ...
      moments.safetensors      derived cache: per-model mean and second moments (moments.py)

The manifest is the commit record: readers see only the shards it lists, writers append a shard
and then rewrite it atomically (store/writer.py). Opening never modifies anything; only the
derived moments cache is written on first use by an old store (harvest writes it at the end).
"""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crossdiff.errors import CrossdiffError
from crossdiff.store.check import check_open
from crossdiff.store.manifest import MANIFEST_NAME, Manifest, incompatibilities
from crossdiff.store.moments import Moments, store_moments
from crossdiff.store.reader import DEFAULT_EVAL_FRACTION, StoreSource, iter_rows, rows_at
from crossdiff.store.verify import VerifyReport, verify_store
from crossdiff.store.writer import LOCK_NAME, StoreWriter, now_iso


class ActivationStore:
    """Paired activations on disk. Open with :meth:`open`, create with :meth:`create`."""

    def __init__(self, path: Path, manifest: Manifest) -> None:
        self.path = path
        self.manifest = manifest

    # -- opening / creating ----------------------------------------------------------------
    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        model_a: str | None = None,
        model_b: str | None = None,
        layer_a: int | None = None,
        layer_b: int | None = None,
        d_a: int | None = None,
        d_b: int | None = None,
        check: bool = True,
    ) -> ActivationStore:
        """Open an existing store; the keyword arguments are expectations to check.

        ``model_a``/``model_b`` match the manifest's spec or model id. A mismatch raises a
        :class:`CrossdiffError` that lists every difference; the store is left untouched.

        The manifest's fields are type-checked (a ``ManifestError`` names the bad field), and
        with ``check`` (default) the cheap open-time check of ``store/check.py`` runs: every
        listed file present with its recorded size, the first shard's shapes matching the
        widths. A damaged store raises ``StoreDamagedError`` naming the shard; ``store verify``
        opens with ``check=False`` to report every problem instead.
        """
        path = Path(path)
        store = cls(path, Manifest.load(path))
        if check:
            check_open(store)
        problems = []
        for side, model, layer, width in (
            ("a", model_a, layer_a, d_a),
            ("b", model_b, layer_b, d_b),
        ):
            info = getattr(store.manifest, f"model_{side}")
            if model is not None and model not in (info.spec, info.model_id):
                problems.append(f"model {side.upper()} is {info.model_id!r}, asked {model!r}")
            if layer is not None and layer != info.layer:
                problems.append(f"model {side.upper()} layer is {info.layer}, asked {layer}")
            if width is not None and width != info.d_model:
                problems.append(f"model {side.upper()} width is {info.d_model}, asked {width}")
        if problems:
            raise CrossdiffError(
                f"store {path} does not hold what was asked: "
                + "; ".join(problems)
                + ". Use another store folder, or ask for what it holds."
            )
        return store

    @classmethod
    def create(cls, path: str | Path, manifest: Manifest) -> ActivationStore:
        """Create an empty store (the folder may exist but must not hold a store)."""
        path = Path(path)
        if (path / MANIFEST_NAME).exists():
            raise CrossdiffError(f"{path} already holds a store; open it instead")
        if path.exists() and not path.is_dir():
            raise CrossdiffError(f"{path} exists and is not a folder; choose another --out")
        if path.is_dir() and any(p.name != LOCK_NAME for p in path.iterdir()):
            raise CrossdiffError(
                f"{path} exists, is not empty and holds no store; choose a new or empty folder "
                "for the store (nothing was written)"
            )
        path.mkdir(parents=True, exist_ok=True)
        from crossdiff import __version__

        manifest.created = manifest.updated = now_iso()
        manifest.crossdiff_version = __version__
        manifest.shards = []
        manifest.save(path)
        return cls(path, manifest)

    @classmethod
    def open_or_create(cls, path: str | Path, manifest: Manifest) -> ActivationStore:
        """Open the store at ``path`` if it is compatible with ``manifest``, else create one.

        An existing store that names other models, layers, widths, tokenizers, corpus or
        harvest settings raises :class:`CrossdiffError` listing the differences; nothing in it
        is changed or deleted.
        """
        path = Path(path)
        if not (path / MANIFEST_NAME).exists():
            return cls.create(path, manifest)
        store = cls.open(path)
        problems = incompatibilities(store.manifest, manifest)
        if problems:
            raise CrossdiffError(
                f"the store at {path} was harvested with other settings, so rows cannot be "
                "added to it:\n  " + "\n  ".join(problems) + "\nUse another --out folder, or "
                "rerun with the store's settings (`crossdiff store info` shows them). "
                "Nothing was changed."
            )
        return store

    def reload(self) -> ActivationStore:
        self.manifest = Manifest.load(self.path)
        return self

    # -- facts -------------------------------------------------------------------------------
    @property
    def d_a(self) -> int:
        return self.manifest.d_a

    @property
    def d_b(self) -> int:
        return self.manifest.d_b

    @property
    def n_rows(self) -> int:
        return self.manifest.rows

    def __len__(self) -> int:
        return self.n_rows

    @property
    def n_documents(self) -> int:
        return self.manifest.documents_consumed

    @property
    def is_complete(self) -> bool:
        return self.manifest.status == "complete"

    def norm_scales(self) -> tuple[float, float] | None:
        """(scale_a, scale_b) bringing each model's median norm to sqrt((d_a + d_b) / 2)."""
        s = self.manifest.norm_scales
        return None if not s else (float(s["a"]), float(s["b"]))

    def moments(self, *, progress: bool = False) -> Moments:
        """Per-model mean and second moments over the inlier rows (``store/moments.py``):
        read from ``moments.safetensors`` when current, else streamed once and cached."""
        if not progress:
            mom = store_moments(self, write_cache=_writable(self.path))
        else:
            from tqdm import tqdm

            with tqdm(total=self.n_rows, desc="activation moments", unit="row") as bar:
                mom = store_moments(self, write_cache=_writable(self.path), on_shard=bar.update)
        if not _finite_moments(mom):
            raise _nonfinite_culprit(self)
        return mom

    # -- writing -------------------------------------------------------------------------------
    def writer(self, shard_rows: int = 16384) -> StoreWriter:
        """An appending writer (holds the store's lock until closed)."""
        return StoreWriter(self, shard_rows=shard_rows)

    # -- reading -------------------------------------------------------------------------------
    def source(
        self,
        split: str = "train",
        eval_fraction: float = DEFAULT_EVAL_FRACTION,
        shuffle_buffer_rows: int | None = None,
        *,
        verify_reads: bool = True,
    ) -> StoreSource:
        """A shuffled training source over one split ("train", "eval" or "all").

        With ``verify_reads`` (default), each shard's checksum and finiteness are checked the
        first time the source reads it (``store/check.py``: one SHA-256 pass per shard)."""
        return StoreSource(
            self, split, eval_fraction, shuffle_buffer_rows, verify_reads=verify_reads
        )

    def iter_rows(
        self,
        batch_size: int = 4096,
        *,
        split: str | None = None,
        eval_fraction: float = DEFAULT_EVAL_FRACTION,
        dtype: torch.dtype = torch.float32,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict[str, np.ndarray]]]:
        """(x_a, x_b, meta) in store order; see :func:`crossdiff.store.reader.iter_rows`."""
        return iter_rows(self, batch_size, split=split, eval_fraction=eval_fraction, dtype=dtype)

    def rows_at(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """x_a, x_b (bf16) of the store rows ``rows``, in that order, reading only those rows;
        see :func:`crossdiff.store.reader.rows_at`."""
        return rows_at(self, rows)

    def documents(self) -> Iterator[dict[str, Any]]:
        """Every consumed document's record, in corpus order (index 0, 1, ...)."""
        for shard in self.manifest.shards:
            with open(self.path / shard.docs_file, encoding="utf-8") as fh:
                for line in fh:
                    yield json.loads(line)

    def composition(self) -> dict[str, Any]:
        """What the store's pairs are made of, from the documents files: pairs and documents
        per corpus source, pairs from chats vs plain text, and the pairs the harvest's
        ``pair_positions`` filter removed (``store info``, the report)."""
        sources: dict[str, dict[str, int]] = {}
        kinds = {"chat": 0, "text": 0}
        removed = 0
        for record in self.documents():
            entry = sources.setdefault(str(record.get("source")), {"pairs": 0, "documents": 0})
            pairs = int(record.get("pairs") or 0)
            entry["pairs"] += pairs
            entry["documents"] += 1
            kinds["chat" if record.get("messages") is not None else "text"] += pairs
            removed += int(record.get("pairs_removed") or 0)
        total = max(1, sum(kinds.values()))
        return {
            "sources": sources,
            "chat_pairs": kinds["chat"],
            "text_pairs": kinds["text"],
            "chat_share": kinds["chat"] / total,
            "pair_positions": self.manifest.harvest.get("pair_positions", "all"),
            "pairs_removed": removed,
        }

    def document(self, index: int) -> dict[str, Any]:
        """The record of document ``index`` (``doc_index`` in the rows).

        Keys: ``index``, ``doc_id``, ``source``, ``text`` or ``messages``, ``windows`` (per
        window: ``content_start``, and for ``a``/``b`` the rendered ``text`` and its
        ``content_spans``), coverage counts, and ``skipped`` (a reason, or None).
        """
        shards = self.manifest.shards
        if not 0 <= index < self.n_documents:
            raise CrossdiffError(
                f"document {index} is not in the store (it has documents 0-{self.n_documents - 1})"
            )
        k = bisect.bisect_right([s.doc_start for s in shards], index) - 1
        with open(self.path / shards[k].docs_file, encoding="utf-8") as fh:
            for i, line in enumerate(fh):
                if i == index - shards[k].doc_start:
                    return json.loads(line)
        raise CrossdiffError(f"document {index} is missing from {shards[k].docs_file}; run verify")

    # -- checking ------------------------------------------------------------------------------
    def verify(self, progress: bool = False) -> VerifyReport:
        """Check every checksum, row count, shape and dtype (see store/verify.py)."""
        if not progress:
            return verify_store(self)
        from tqdm import tqdm

        with tqdm(total=len(self.manifest.shards), desc="verify", unit="shard") as bar:
            return verify_store(self, bar.update)

    def summary(self) -> str:
        """A one-screen description (``crossdiff store info``)."""
        m = self.manifest
        lines = [
            f"store {self.path}  ({m.status}"
            + (f": {m.complete_reason}" if m.complete_reason else "")
            + ")"
        ]
        for side in ("a", "b"):
            info = getattr(m, f"model_{side}")
            lines.append(
                f"  model {side.upper()}: {info.model_id} (spec {info.spec!r}"
                + (f", revision {info.revision}" if info.revision else "")
                + f"), layer {info.layer} of {info.n_layers} ({info.layer_spec}), "
                f"d_model {info.d_model}, {info.dtype}, tokenizer {info.tokenizer.name} "
                f"({info.tokenizer.vocab_size} tokens)"
            )
        cov = m.coverage()
        size = sum(s.bytes for s in m.shards)
        lines.append(
            f"  rows: {m.rows:,} in {len(m.shards)} shards ({size / 2**20:.1f} MiB, "
            f"{m.store_dtype}); documents: {m.documents_consumed:,} "
            f"({cov['docs_skipped']} skipped)"
        )
        lines.append(
            f"  coverage: {cov['coverage_a']:.1%} of A's content tokens, "
            f"{cov['coverage_b']:.1%} of B's"
        )
        lines.append(
            f"  alignment self-check: {cov['pairs_dropped_a']:,} pairs dropped for A's offsets, "
            f"{cov['pairs_dropped_b']:,} for B's; {cov['docs_repaired']:,} documents with "
            "invalid Unicode repaired"
        )
        lines.append(f"  corpus: {m.corpus}")
        lines.extend(_composition_lines(self))
        for side in ("a", "b"):
            st = m.norm_stats.get(side, {})
            if st.get("sample_size"):
                q = st["quantiles"]
                lines.append(
                    f"  norms {side.upper()}: median {st['median']:.3g}, 1% {q['0.01']:.3g}, "
                    f"99% {q['0.99']:.3g}, max {st['max']:.3g}, "
                    f"{st['frac_above_2x_median']:.2%} above 2x median"
                )
        scales = self.norm_scales()
        if scales:
            lines.append(
                f"  normalization scales: A x{scales[0]:.4g}, B x{scales[1]:.4g} "
                f"(median norm -> {m.target_norm():.4g})"
            )
        lines.extend(_moments_lines(self))
        lines.append(f"  harvest settings: {m.harvest}")
        return "\n".join(lines)


def _composition_lines(store: ActivationStore) -> list[str]:
    """``store info``'s lines on where the pairs come from (sources, chat vs text) and what the
    ``pair_positions`` filter removed."""
    comp = store.composition()
    total = max(1, comp["chat_pairs"] + comp["text_pairs"])
    parts = [
        f"{name} {v['pairs'] / total:.1%} ({v['pairs']:,} pairs, {v['documents']:,} documents)"
        for name, v in comp["sources"].items()
    ]
    lines = [
        f"  pairs from chats: {comp['chat_share']:.1%} ({comp['chat_pairs']:,}), from plain "
        f"text: {1 - comp['chat_share']:.1%} ({comp['text_pairs']:,})"
    ]
    if len(parts) > 1:
        lines.append("  sources: " + "; ".join(parts))
    if comp["pair_positions"] != "all":
        aligned = total + comp["pairs_removed"]
        lines.append(
            f"  pair positions: {comp['pair_positions']} only; {comp['pairs_removed']:,} of "
            f"{aligned:,} aligned pairs removed ({comp['pairs_removed'] / max(1, aligned):.1%}), "
            f"{total / max(1, aligned):.1%} kept"
        )
    return lines


def _moments_lines(store: ActivationStore) -> list[str]:
    """``store info``'s balance lines: gamma, offset share, loss shares under both scalings."""
    from crossdiff.store.moments import MOMENTS_FILE

    if not store.manifest.rows:
        return []
    if not (store.path / MOMENTS_FILE).is_file() and not _writable(store.path):
        return ["  moments: not computed (read-only store)"]
    try:
        mom = store.moments()
    except CrossdiffError as exc:
        return [f"  moments: {exc}"]
    lines = []
    for side in ("a", "b"):
        lines.append(
            f"  centring {side.upper()}: gamma |mean|/|std| {mom.gamma(side):.2f}, the mean holds "
            f"{mom.offset_share(side):.1%} of the squared norm ({mom.rows:,} inlier rows)"
        )
    scales = store.norm_scales()
    if scales:
        share_med = mom.loss_share(*scales)
        lines.append(
            f"  loss weight A / B: {share_med[0]:.0%} / {share_med[1]:.0%} with 'median' scaling, "
            f"50% / 50% with 'centered' (the default)"
            + ("  <- lopsided: use 'centered'" if min(share_med) < 0.25 else "")
        )
    return lines


def _finite_moments(mom: Moments) -> bool:
    return bool(
        np.isfinite(mom.mean_a).all()
        and np.isfinite(mom.mean_b).all()
        and np.isfinite([mom.msq_a, mom.msq_b, mom.msq_centered_a, mom.msq_centered_b]).all()
    )


def _nonfinite_culprit(store: ActivationStore) -> CrossdiffError:
    """Non-finite moments mean a shard holds NaN/inf: find the first (the failure path only
    pays this full pass) so the error names it."""
    from crossdiff.store.check import damaged
    from crossdiff.store.reader import read_shard

    for k, shard in enumerate(store.manifest.shards):
        if shard.rows:
            try:
                read_shard(store, k, ["x_a", "x_b"], verify=True)
            except CrossdiffError as exc:
                return exc
    return damaged(store, "its activation moments are not finite (NaN or inf)")


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK)
