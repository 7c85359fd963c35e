"""Explain every candidate: automated explanations, detection and fuzzing scores, harm screen.

METHOD.md §5: an explainer writes an explanation of each feature from its top and quantile-band
examples (in the feature's own model's tokenization); a judge scores it on held-out examples
(detection: activating vs non-activating tokens; fuzzing: the right marked token vs a wrongly
marked one), a feature is interpretable at detection >= 0.8, and one screening question per
feature flags harmful concepts for review. Backends: ``stats`` (offline, deterministic),
``hf:<model>`` (local transformers chat model), ``openai:<base URL>#<model>``. See
docs/interpret.md.

```python
from crossdiff.interpret import InterpretConfig, interpret, load_interpretations
interpret("runs/x", InterpretConfig(max_features=20))
load_interpretations("runs/x").table     # pyarrow, one row per explained feature
```

The explanations in the report and in ``crossdiff show`` (``interpret_html``,
``interpret_lines``) belong to the report package, which reads RUN/interpret/: this package
reads the analysis, writes RUN/interpret/ and imports nothing that renders it.
"""

from __future__ import annotations

from crossdiff.interpret.backends import Explanation, parse_spec
from crossdiff.interpret.config import HARM_CATEGORIES, INTERPRETABLE_AT, InterpretConfig
from crossdiff.interpret.pipeline import interpret
from crossdiff.interpret.results import InterpretResult, has_interpretations, load_interpretations
from crossdiff.interpret.stage import stage

__all__ = [
    "HARM_CATEGORIES",
    "INTERPRETABLE_AT",
    "Explanation",
    "InterpretConfig",
    "InterpretResult",
    "has_interpretations",
    "interpret",
    "load_interpretations",
    "parse_spec",
    "stage",
]
