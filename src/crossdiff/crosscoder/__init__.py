"""The crosscoder family (standard, DFC, DSF), its training loop and metrics."""

from crossdiff.crosscoder.checkpoint import latest_checkpoint
from crossdiff.crosscoder.config import CrosscoderConfig
from crossdiff.crosscoder.model import Crosscoder, CrosscoderOutput, SparseCodes
from crossdiff.crosscoder.partition import FeaturePartition
from crossdiff.crosscoder.sources import ArraySource, PairSource
from crossdiff.crosscoder.train import train_crosscoder
from crossdiff.crosscoder.train_config import TrainConfig

__all__ = [
    "ArraySource",
    "Crosscoder",
    "CrosscoderConfig",
    "CrosscoderOutput",
    "FeaturePartition",
    "PairSource",
    "SparseCodes",
    "TrainConfig",
    "latest_checkpoint",
    "train_crosscoder",
]
