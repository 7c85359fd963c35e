"""The analysis folder's files and how to read them back.

```
RUN/analysis/
  features.parquet   one row per feature (FEATURE_COLUMNS)
  examples.parquet   one row per (feature, example) (EXAMPLE_COLUMNS)
  analysis.json      metadata: models, layers, rows, FVE, dead %, partitions, check, settings
```
Parquet because it is columnar, compressed, typed and read by every data tool (pandas,
polars, DuckDB, Arrow); JSON for the small metadata a person may want to read.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from crossdiff.errors import CrossdiffError
from crossdiff.paths import RunPaths

FEATURES_FILE = "features.parquet"
EXAMPLES_FILE = "examples.parquet"
META_FILE = "analysis.json"
FORMAT_NAME = "crossdiff-analysis"
FORMAT_VERSION = 1

FEATURE_COLUMNS: dict[str, str] = {
    "feature": "feature index (stable; A-exclusive block, B-exclusive block, then shared)",
    "partition": "'A-exclusive', 'B-exclusive', 'shared' or 'designated shared' (DFC layout)",
    "klass": "'A'/'B' (exclusive candidate of that model) or 'S': the DFC partition, or for a "
    "standard crosscoder the relative-norm class",
    "dec_norm_a": "decoder norm into model A (normalized space; 0 if it does not write A)",
    "dec_norm_b": "decoder norm into model B",
    "rel_norm": "|d_A| / (|d_A| + |d_B|)",
    "count": "activations (rows where it fired) over the analysed rows",
    "frequency": "count / analysed rows",
    "mean_act": "mean activation when active",
    "std_act": "standard deviation of the activation when active",
    "s_max": "largest activation seen (steering's unit: alpha = 1 adds s_max x direction)",
    "dead": "never fired",
    "near_dead": "fired, but fewer than min_count times or below min_frequency",
    "cross_r2": "held-out R^2 of the activation predicted from the other model alone "
    "(cross-fitted by document: each row scored by maps fitted on other documents; exclusive "
    "candidates and sampled shared controls; NaN otherwise)",
    "test_active": "activations among the check's scored rows (all rows when cross-fitted)",
    "check_side": "'a': the A-part was predicted from B; 'b': the B-part from A",
    "ls_beta_own": "latent scaling beta for the model it is exclusive to (standard crosscoders; "
    "DFC on a pair sharing one residual basis: the output check)",
    "ls_beta_other": "latent scaling beta for the other model",
    "ls_ratio": "ls_beta_other / ls_beta_own",
    "tok_r2": "R^2 of the activation on descriptors of the tokenization alone (token lengths, "
    "word-internal end, pieces of the word so far, same start, gap; analysis/tokenization.py)",
    "cross_tok_r2": "R^2 on those descriptors plus the other model's prediction: 'exclusive "
    "beyond tokenization' means this stays below exclusive_max_r2",
    "internal_top_share": "share of the top examples at word-internal positions (the shared "
    "token end falls inside a word)",
    "internal_mass_share": "share of the activation mass at word-internal positions",
    "later_top_share": "share of the top examples where the feature's own model's token is a "
    "later piece of a word its tokenizer split (the token starts inside a word: S|inking); "
    "shared features: model A's",
    "chat_share": "share of the activation mass in chats (vs plain text); compare with the "
    "store's share of chat rows (analysis.json where.chat_rows_share)",
    "user_share": "of the mass in chats, the share in user messages (base rate: where."
    "user_rows_share_of_chat)",
    "assistant_share": "of the mass in chats, the share in assistant messages (base rate: "
    "where.assistant_rows_share_of_chat)",
    "decision_share": "of the mass in chats, the share at prompts' decision pairs (the last "
    "generation-prompt token, where a model decides its answer; a store harvested with "
    "decision_pairs, else 0; base rate: where.decision_rows_share_of_chat)",
    "twin_of": "the other exclusive block's feature firing on the same rows (activation "
    "correlation >= twin_min_corr), or -1",
    "twin_corr": "the largest activation correlation with a feature of the other exclusive block",
    "exclusivity": "1 - max(cross_r2, ls_ratio) clipped to [0, 1]; NaN when untested",
    "verdict": "exclusive candidates: 'confirmed' (not predicted by the other model, not "
    "tokenization), 'conditional' (DFC, one residual basis: the other model predicts when it "
    "fires but does not carry its output), 'untested' (too rare to judge), 'twin', "
    "'tokenization' or 'refuted'; '' otherwise",
    "recurs": "how many of the run's other crosscoders found this exclusive feature again "
    "(crossdiff compare, run before analyze; -1: unknown)",
    "rank": "review order within the model's exclusive list (1 = first; 0 = not ranked)",
}

EXAMPLE_COLUMNS: dict[str, str] = {
    "feature": "feature index",
    "kind": "'top' (strongest activations, by rank) or 'band' (quantile band sample)",
    "order": "rank among the top examples, or the band number (0 = weakest quarter)",
    "activation": "the feature's activation",
    "row": "store row",
    "doc_index": "document number in the store",
    "window": "window of the document",
    "content_end": "characters of document content read at this position",
    "pos_a": "token position in A's window",
    "pos_b": "token position in B's window",
    "span_a_start": "the token's character span in A's rendered window text",
    "span_a_end": "",
    "span_b_start": "the token's character span in B's rendered window text",
    "span_b_end": "",
    "pre_a": "A's rendered text before the token (null: not copied, see contexts_for)",
    "tok_a": "the token's text in A",
    "post_a": "A's text after the token",
    "pre_b": "likewise for B",
    "tok_b": "",
    "post_b": "",
}


@dataclass
class AnalysisResult:
    """An analysis loaded from (or just written to) a folder."""

    folder: Path
    features: pa.Table
    examples: pa.Table
    meta: dict[str, Any]

    def feature(self, index: int) -> dict[str, Any]:
        """One feature's row as a dict (raises a clear error when out of range)."""
        n = self.features.num_rows
        if not 0 <= int(index) < n:
            raise CrossdiffError(
                f"feature {index} out of range: the crosscoder has {n} features (0-{n - 1})"
            )
        return {k: v[0] for k, v in self.features.slice(int(index), 1).to_pydict().items()}

    def feature_examples(self, index: int) -> list[dict[str, Any]]:
        """The examples of one feature: top ones by rank, then band samples by band."""
        import pyarrow.compute as pc

        rows = self.examples.filter(pc.equal(self.examples["feature"], int(index)))
        out = rows.to_pylist()
        out.sort(key=lambda r: (r["kind"] != "top", r["order"], -r["activation"]))
        return out


def write_parquet(table: pa.Table, path: Path) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
    tmp.replace(path)


def write_meta(meta: dict[str, Any], path: Path) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=False, default=_json_default) + "\n")
    tmp.replace(path)


def _json_default(obj: Any) -> Any:
    try:
        return obj.item()  # numpy scalars
    except AttributeError:
        return str(obj)


def analysis_folder(path: str | Path) -> Path:
    """Accept a run folder or an analysis folder; return the analysis folder."""
    p = Path(path)
    if (p / META_FILE).is_file():
        return p
    return RunPaths(p).analysis


def _missing(folder: Path) -> list[str]:
    return [f for f in (META_FILE, FEATURES_FILE, EXAMPLES_FILE) if not (folder / f).is_file()]


def has_analysis(path: str | Path) -> bool:
    """Whether ``crossdiff analyze`` wrote all its files there (run or analysis folder)."""
    return not _missing(analysis_folder(path))


def read_feature_columns(path: str | Path, columns: Sequence[str]) -> pa.Table | None:
    """Those of ``columns`` that the feature table has (run or analysis folder), without
    reading the examples; None when there is no feature table. For a stage that needs a few
    numbers per feature (steering's s_max) from an analysis that may be large or partial."""
    table = analysis_folder(path) / FEATURES_FILE
    if not table.is_file():
        return None
    names = pq.read_schema(table).names
    return pq.read_table(table, columns=[c for c in columns if c in names])


def load_analysis(path: str | Path) -> AnalysisResult:
    """Read an analysis written by :func:`crossdiff.analysis.analyze` (run or analysis folder)."""
    folder = analysis_folder(path)
    missing = _missing(folder)
    if missing:
        raise CrossdiffError(
            f"no analysis at {folder} (missing {', '.join(missing)}); run "
            f"`crossdiff analyze {Path(path)}` first"
        )
    from crossdiff.formats import read_meta

    meta = read_meta(folder / META_FILE, FORMAT_NAME, FORMAT_VERSION, "crossdiff analyze")
    features = pq.read_table(folder / FEATURES_FILE)
    examples = pq.read_table(folder / EXAMPLES_FILE)
    return AnalysisResult(folder, features, examples, meta)
