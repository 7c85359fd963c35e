"""What a harvest tells its user: where the time went, the progress bar, the messages and the
closing summary.

:class:`HarvestTimings` is the account the engine and the ranks keep (seconds and counts); the
progress bar and the one-screen summary are drawn from it and from the store, on stderr and only
when ``config.progress`` is on (under torchrun: on rank 0).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from crossdiff.harvest.config import HarvestConfig
    from crossdiff.harvest.engine import Harvester
    from crossdiff.store import ActivationStore


@dataclass
class HarvestTimings:
    """Where the time went (seconds) and what was done, for the progress bar and the summary."""

    total: float = 0.0
    model: float = 0.0  # forward passes up to the layer (the bare cost)
    write: float = 0.0  # gathering rows, bf16, shard writes
    tokens_a: int = 0  # tokens fed to A (without padding)
    tokens_b: int = 0
    rows: int = 0
    documents: int = 0
    content_tokens_a: int = 0  # content tokens of the windows processed (coverage denominators)
    content_tokens_b: int = 0
    wait: float = 0.0  # several ranks: rank 0 waiting for the others to stop
    skip: float = 0.0  # several ranks: reading (not rendering) the other ranks' documents
    dropped_blocks: int = 0  # several ranks: blocks computed past the store's end, dropped
    dropped_rows: int = 0

    def add(self, counts: dict[str, int]) -> None:
        """Add a block's counts (:func:`~crossdiff.harvest.engine._block_counts`, named like
        these fields)."""
        for name, value in counts.items():
            setattr(self, name, getattr(self, name) + value)


def _progress(config: HarvestConfig, store: ActivationStore):
    if not config.progress:
        return None
    from tqdm import tqdm

    return tqdm(
        total=config.tokens,
        initial=store.n_rows,
        unit="pair",
        unit_scale=True,
        desc="harvest",
        file=sys.stderr,
        dynamic_ncols=True,
    )


def _postfix(tm: HarvestTimings, documents: int, elapsed: float) -> str:
    """tokens/s of both models, the share of content tokens aligned so far, documents done."""
    ca, cb = tm.content_tokens_a, tm.content_tokens_b
    rate = (tm.tokens_a + tm.tokens_b) / elapsed if elapsed > 0 else 0.0
    cov = f"aligned A {tm.rows / ca:.1%} B {tm.rows / cb:.1%}" if ca and cb else "aligned -"
    return f"{rate:,.0f} tok/s, {cov}, docs {documents:,}"


def _say(config: HarvestConfig, text: str) -> None:
    if config.progress:
        print(text, file=sys.stderr)


def _complete_message(store: ActivationStore) -> str:
    return (
        f"store {store.path} is complete ({store.manifest.complete_reason}): "
        f"{store.n_rows:,} pairs from {store.n_documents:,} documents; nothing to do"
    )


def harvest_summary(store: ActivationStore, harvester: Harvester) -> str:
    """The one-screen summary printed at the end of a harvest."""
    tm = harvester.timings
    m = store.manifest
    cov = m.coverage()
    lm_a, lm_b = harvester.lm_a, harvester.lm_b
    wall = harvester.wall_seconds if harvester.wall_seconds is not None else tm.total
    rate = (tm.tokens_a + tm.tokens_b) / wall if wall > 0 else 0.0
    overhead = (tm.total - tm.wait - tm.model) / tm.model if tm.model > 0 else math.nan
    lines = [
        f"harvest {m.status} ({m.complete_reason or 'interrupted'}): {m.rows:,} pairs from "
        f"{m.documents_consumed:,} documents in {store.path}",
        f"  A: {lm_a.model_id} layer {harvester.layer_a}/{lm_a.n_layers}, d={lm_a.d_model}, "
        f"{str(lm_a.dtype).removeprefix('torch.')} ({lm_a.dtype_reason}) on {lm_a.device}",
        f"  B: {lm_b.model_id} layer {harvester.layer_b}/{lm_b.n_layers}, d={lm_b.d_model}, "
        f"{str(lm_b.dtype).removeprefix('torch.')} ({lm_b.dtype_reason}) on {lm_b.device}",
        f"  coverage: {cov['coverage_a']:.1%} of A's content tokens paired, "
        f"{cov['coverage_b']:.1%} of B's; {cov['docs_skipped']} documents skipped",
        f"  alignment self-check: {cov['pairs_dropped_a']:,} pairs dropped for A's offsets, "
        f"{cov['pairs_dropped_b']:,} for B's; {cov['docs_repaired']:,} documents with invalid "
        "Unicode repaired (lone surrogates -> U+FFFD)",
        f"  this run{f' ({harvester.world_size} ranks)' if harvester.world_size > 1 else ''}: "
        f"{tm.rows:,} pairs, {tm.documents:,} documents, "
        f"{tm.tokens_a + tm.tokens_b:,} tokens in {wall:.1f}s ({rate:,.0f} tokens/s); "
        f"models {tm.model:.1f}s, everything else {overhead:+.1%} on top",
    ]
    if harvester.world_size > 1:
        lines.append(
            f"  ranks: {tm.wait:.1f}s waiting for the others to stop, {tm.skip:.1f}s reading "
            "the others' documents"
            + (
                f"; {tm.dropped_blocks} block(s) computed past the store's end and dropped "
                f"({tm.dropped_rows:,} pairs)"
                if tm.dropped_blocks
                else ""
            )
        )
    scales = store.norm_scales()
    if scales:
        lines.append(f"  normalization scales: A x{scales[0]:.4g}, B x{scales[1]:.4g}")
    return "\n".join(lines)
