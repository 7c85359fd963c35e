"""Loading a tokenizer the way crossdiff reads it: ``tokenizer.json`` verbatim where the folder
says so.

Its own module because both model loading (:mod:`crossdiff.models.loading`) and the GGUF
converter's round-trip check (:mod:`crossdiff.models.gguf`) need it, and the loader already
depends on the converter.
"""

from __future__ import annotations

import json
from pathlib import Path

# tokenizer_config classes meaning "use tokenizer.json verbatim" (transformers 5 would otherwise
# substitute a model-type specific class that can rebuild the pipeline differently).
_VERBATIM_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")


def load_tokenizer(source: str | Path, trust_remote_code: bool = False, **kwargs):
    """The tokenizer of a folder or hub id; tokenizer.json verbatim where the folder says so."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    config_path = Path(source) / "tokenizer_config.json"
    if config_path.is_file():
        declared = json.loads(config_path.read_text(encoding="utf-8")).get("tokenizer_class")
        if declared in _VERBATIM_TOKENIZER_CLASSES and (Path(source) / "tokenizer.json").is_file():
            return PreTrainedTokenizerFast.from_pretrained(str(source), **kwargs)
    return AutoTokenizer.from_pretrained(str(source), trust_remote_code=trust_remote_code, **kwargs)
