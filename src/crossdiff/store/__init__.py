"""The activation store: paired, aligned activations of two models, sharded on disk.

``ActivationStore`` (store.py) opens, creates and reads a store; ``StoreWriter`` (writer.py)
appends crash-safely; ``StoreSource`` (reader.py) is the shuffled training source; the manifest
format is in manifest.py, the shard layout in shard.py, integrity checks in verify.py (full)
and check.py (cheap, at open and first read); pending.py holds the shards a distributed harvest
has written but not yet listed (and lists or removes those a killed one left).
"""

from __future__ import annotations

from crossdiff.store.check import StoreDamagedError
from crossdiff.store.manifest import Manifest, ManifestError, ModelInfo, ShardInfo, TokenizerInfo
from crossdiff.store.reader import StoreSource, eval_mask
from crossdiff.store.shard import Rows, make_rows
from crossdiff.store.store import ActivationStore
from crossdiff.store.verify import VerifyReport
from crossdiff.store.writer import StoreWriter

__all__ = [
    "ActivationStore",
    "Manifest",
    "ManifestError",
    "ModelInfo",
    "Rows",
    "ShardInfo",
    "StoreDamagedError",
    "StoreSource",
    "StoreWriter",
    "TokenizerInfo",
    "VerifyReport",
    "eval_mask",
    "make_rows",
]
