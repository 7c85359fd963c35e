"""The shard file layout: one safetensors file per shard, one row per aligned pair.

=============  ============  ========  ==================================================
tensor         dtype         shape     meaning
=============  ============  ========  ==================================================
x_a            bfloat16      (n, d_a)  model A's residual stream after the stored layer
x_b            bfloat16      (n, d_b)  model B's, same aligned position
norm_a/norm_b  float32       (n,)      L2 norm of the stored (bf16) row, for statistics
doc_index      int64         (n,)      document number in corpus order (``store.document(i)``)
window         int32         (n,)      which window of the document (long texts are split)
content_end    int64         (n,)      characters of the document's content read so far
pos_a/pos_b    int32         (n,)      token index in that model's window tokenization
span_a/span_b  int32         (n, 2)    the token's [start, end) in that model's rendered
                                       window text (to mark it when showing an example)
=============  ============  ========  ==================================================

Rows are in corpus order (document, window, position). safetensors is used because it is
memory-mappable, reads one tensor without the others, and cannot execute code on load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save

# name -> (torch dtype, trailing shape: "a"/"b" for the model width, or a fixed tuple)
COLUMNS: dict[str, tuple[torch.dtype, tuple[int | str, ...]]] = {
    "x_a": (torch.bfloat16, ("a",)),
    "x_b": (torch.bfloat16, ("b",)),
    "norm_a": (torch.float32, ()),
    "norm_b": (torch.float32, ()),
    "doc_index": (torch.int64, ()),
    "window": (torch.int32, ()),
    "content_end": (torch.int64, ()),
    "pos_a": (torch.int32, ()),
    "pos_b": (torch.int32, ()),
    "span_a": (torch.int32, (2,)),
    "span_b": (torch.int32, (2,)),
}
META_COLUMNS: tuple[str, ...] = tuple(c for c in COLUMNS if not c.startswith("x_"))
SHARD_FORMAT = "crossdiff-shard-v1"


def shard_file_name(k: int) -> str:
    return f"shard-{k:05d}.safetensors"


def docs_file_name(k: int) -> str:
    return f"docs-{k:05d}.jsonl"


def expected_shape(name: str, rows: int, d_a: int, d_b: int) -> tuple[int, ...]:
    _, trailing = COLUMNS[name]
    dims = tuple(d_a if t == "a" else d_b if t == "b" else int(t) for t in trailing)
    return (rows, *dims)


@dataclass
class Rows:
    """A block of rows in memory, columns as in :data:`COLUMNS` (x in bf16 torch)."""

    x_a: torch.Tensor
    x_b: torch.Tensor
    meta: dict[str, np.ndarray]

    @property
    def n(self) -> int:
        return int(self.x_a.shape[0])

    @classmethod
    def empty(cls, d_a: int, d_b: int) -> Rows:
        meta = {
            name: np.zeros(expected_shape(name, 0, d_a, d_b), dtype=_np_dtype(name))
            for name in META_COLUMNS
        }
        return cls(
            torch.zeros(0, d_a, dtype=torch.bfloat16),
            torch.zeros(0, d_b, dtype=torch.bfloat16),
            meta,
        )

    @classmethod
    def concat(cls, parts: list[Rows], d_a: int, d_b: int) -> Rows:
        if not parts:
            return cls.empty(d_a, d_b)
        return cls(
            torch.cat([p.x_a for p in parts]),
            torch.cat([p.x_b for p in parts]),
            {k: np.concatenate([p.meta[k] for p in parts]) for k in META_COLUMNS},
        )


def _np_dtype(name: str) -> np.dtype:
    return {
        torch.float32: np.dtype(np.float32),
        torch.int64: np.dtype(np.int64),
        torch.int32: np.dtype(np.int32),
    }[COLUMNS[name][0]]


def make_rows(
    x_a: torch.Tensor,
    x_b: torch.Tensor,
    *,
    doc_index: np.ndarray | int,
    window: np.ndarray | int,
    content_end: np.ndarray,
    pos_a: np.ndarray,
    pos_b: np.ndarray,
    span_a: np.ndarray,
    span_b: np.ndarray,
) -> Rows:
    """Build rows from activations (any float dtype; stored as bf16) and their provenance.

    The norms are computed from the bf16-rounded values, i.e. from exactly what readers get.
    """
    xa = x_a.detach().to(device="cpu", dtype=torch.bfloat16).contiguous()
    xb = x_b.detach().to(device="cpu", dtype=torch.bfloat16).contiguous()
    n = xa.shape[0]
    if xb.shape[0] != n:
        raise ValueError(f"x_a has {n} rows but x_b has {xb.shape[0]}")
    meta = {
        "norm_a": xa.float().norm(dim=-1).numpy().astype(np.float32),
        "norm_b": xb.float().norm(dim=-1).numpy().astype(np.float32),
        "doc_index": np.broadcast_to(np.asarray(doc_index, dtype=np.int64), (n,)).copy(),
        "window": np.broadcast_to(np.asarray(window, dtype=np.int32), (n,)).copy(),
        "content_end": np.asarray(content_end, dtype=np.int64).reshape(n),
        "pos_a": np.asarray(pos_a, dtype=np.int32).reshape(n),
        "pos_b": np.asarray(pos_b, dtype=np.int32).reshape(n),
        "span_a": np.asarray(span_a, dtype=np.int32).reshape(n, 2),
        "span_b": np.asarray(span_b, dtype=np.int32).reshape(n, 2),
    }
    return Rows(xa, xb, meta)


def shard_bytes(rows: Rows, doc_start: int, doc_end: int) -> bytes:
    """Serialize rows to safetensors bytes (hashed and written atomically by the writer)."""
    tensors = {"x_a": rows.x_a, "x_b": rows.x_b}
    for name in META_COLUMNS:
        tensors[name] = torch.from_numpy(np.ascontiguousarray(rows.meta[name]))
    # One metadata key: safetensors writes its metadata map in hash order, so several keys
    # would make identical shards differ byte for byte (and in checksum).
    info = {"format": SHARD_FORMAT, "doc_start": doc_start, "doc_end": doc_end}
    return save(tensors, metadata={"crossdiff": json.dumps(info, sort_keys=True)})


def read_columns(path: Path, names: list[str] | tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Read only the named tensors of a shard (safetensors reads them without the others)."""
    with safe_open(str(path), framework="pt") as fh:
        return {name: fh.get_tensor(name) for name in names}
