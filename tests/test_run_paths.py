"""The run folder is one contract (docs/ARCHITECTURE.md "A run folder"): ``RunPaths`` names
every folder and hands out each stage's own typed loader, a missing stage is that stage's clear
error, and no module spells another stage's file names.

The fixture is a complete tiny run: a synthetic store (the real store writer), a reference
crosscoder and one further seed (``crossdiff train --seeds 2``), their comparison, the
analysis, the offline interpretation, one saved steering result and the report.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from crossdiff.analysis import AnalysisConfig, analyze
from crossdiff.analysis.results import AnalysisResult
from crossdiff.cli import main
from crossdiff.crosscoder import Crosscoder
from crossdiff.errors import CrossdiffError
from crossdiff.interpret import InterpretConfig, interpret
from crossdiff.interpret.results import InterpretResult
from crossdiff.paths import RunPaths
from crossdiff.recurrence import compare
from crossdiff.recurrence.comparison import RecurrenceResult
from crossdiff.report import build_report, steering_html
from crossdiff.steering.result import SteeringResult
from crossdiff.store import ActivationStore
from crossdiff_bench.synthetic import planted_activations, write_synthetic_store
from test_report import steering_result as report_steering

SRC = Path(__file__).resolve().parents[1] / "src" / "crossdiff"

TRAIN = [
    "--n-features", "32", "--k", "4", "--steps", "12", "--batch-size", "128", "--lr", "3e-3",
    "--warmup-steps", "2", "--k-anneal-from", "0", "--dead-window", "256",
    "--checkpoint-every", "5", "--device", "cpu", "--no-progress",
]  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_thread")


def steering_result(run: Path, feature: int) -> SteeringResult:
    """A steering result with markup in its prompt and generations (test_report's builder)."""
    return report_steering(run, feature, prompt="Tell me <script>", says="<b>", notes=("a note",))


def listed_feature(result: AnalysisResult) -> int:
    """A feature the report lists (ranked), so its detail view shows the steering section."""
    t = result.features.to_pydict()
    ranked = [f for f, r in zip(t["feature"], t["rank"]) if r]
    assert ranked, "the tiny run ranks no candidate"
    return int(ranked[0])


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("run-paths") / "run"
    root.mkdir()
    write_synthetic_store(
        RunPaths(root).store,
        n_docs=60,
        words_per_doc=20,
        d_a=16,
        d_b=12,
        activations=planted_activations(16, 12),
        shard_rows=600,
    )
    assert main(["train", str(root), "--seeds", "2", "--exclusive", "0.125", *TRAIN]) == 0
    compare(root, progress=False)
    analyze(root, config=AnalysisConfig(probe_split="all", progress=False, device="cpu"))
    interpret(root, InterpretConfig(progress=False, max_features=4))
    paths = RunPaths(root)
    feature = listed_feature(paths.load_analysis())
    steering_result(root, feature).save(paths.steering_file(feature))
    (paths.steering / "s_max.json").write_text("{}")  # steering's cache: not a result
    build_report(root)
    return root


def test_every_loader_reads_its_stage(run: Path) -> None:
    paths = RunPaths(run)
    assert paths.has_store() and isinstance(paths.open_store(), ActivationStore)
    assert paths.open_store().n_rows == ActivationStore.open(paths.store).n_rows > 0
    cc = paths.load_crosscoder()
    assert isinstance(cc, Crosscoder) and cc.config.n_features == 32 and not cc.training
    assert paths.has_analysis()
    analysis = paths.load_analysis()
    assert isinstance(analysis, AnalysisResult) and analysis.folder == paths.analysis
    assert analysis.features.num_rows == 32
    some = paths.load_feature_columns(("feature", "s_max", "no such column"))
    assert some is not None and some.column_names == ["feature", "s_max"]
    assert some["s_max"].to_pylist() == analysis.features["s_max"].to_pylist()
    assert paths.has_interpretations()
    explained = paths.load_interpretations()
    assert isinstance(explained, InterpretResult) and explained.table.num_rows > 0
    rec = paths.load_recurrence()
    assert isinstance(rec, RecurrenceResult) and rec.meta["n_others"] == 1
    feature = listed_feature(analysis)
    assert paths.steering_file(feature) == paths.steering / f"feature-{feature}.json"
    assert paths.steered_features() == [feature]
    steered = paths.load_steering(feature)
    assert isinstance(steered, SteeringResult) and steered.feature == feature
    assert steered.path == paths.steering_file(feature)
    assert paths.load_steering(feature + 1) is None
    assert paths.recorded_config() is None  # made by the commands, not by `crossdiff run`


def test_a_stage_folder_names_its_run(run: Path) -> None:
    paths = RunPaths(run)
    for folder in (run, paths.analysis, paths.interpret):
        assert RunPaths.containing(folder).root == run
    assert RunPaths.containing(paths.steering).root == paths.steering  # holds no stage meta


def test_the_report_shows_steering_as_the_loader_reads_it(run: Path) -> None:
    paths = RunPaths(run)
    feature = paths.steered_features()[0]
    loaded = paths.load_steering(feature)
    assert loaded is not None
    section = steering_html(loaded)
    saved = json.loads(paths.steering_file(feature).read_text(encoding="utf-8"))
    assert steering_html(saved) == section  # a saved mapping reads through the same loader
    page = paths.report.read_text(encoding="utf-8")
    assert section in page and "&lt;script&gt;" in section and "B (mapped from a)" in section


def test_missing_stages_are_their_owners_errors(tmp_path: Path) -> None:
    paths = RunPaths(tmp_path)
    assert not paths.has_store() and not paths.has_analysis() and not paths.has_interpretations()
    with pytest.raises(CrossdiffError, match=r"not an activation store.*crossdiff harvest"):
        paths.open_store()
    with pytest.raises(CrossdiffError, match="no crosscoder at"):
        paths.load_crosscoder()
    with pytest.raises(CrossdiffError, match="crossdiff analyze"):
        paths.load_analysis()
    with pytest.raises(CrossdiffError, match="crossdiff interpret"):
        paths.load_interpretations()
    assert paths.load_feature_columns(("s_max",)) is None
    assert paths.load_recurrence() is None
    assert paths.load_steering(3) is None and paths.steered_features() == []
    assert paths.recorded_config() is None
    paths.config.write_text("train:\n  steps: 5\n")
    assert paths.recorded_config() == {"train": {"steps": 5}}


def test_a_damaged_steering_file_is_named(tmp_path: Path) -> None:
    paths = RunPaths(tmp_path)
    paths.steering.mkdir()
    paths.steering_file(2).write_text("{not json")
    with pytest.raises(CrossdiffError, match=r"feature-2\.json is not valid JSON"):
        paths.load_steering(2)
    data = steering_result(tmp_path, 4).to_dict()
    del data["models"][0]["generations"]
    paths.steering_file(4).write_text(json.dumps(data))
    with pytest.raises(CrossdiffError, match=r"feature-4\.json: not a complete"):
        paths.load_steering(4)
    paths.steering_file(5).write_text("[1, 2]")
    with pytest.raises(CrossdiffError, match="not a mapping"):
        paths.load_steering(5)
    assert paths.steered_features() == [2, 4, 5]


def test_a_damaged_steering_file_shows_as_a_note_in_the_report(run: Path, tmp_path: Path) -> None:
    from crossdiff.report import render_report

    paths = RunPaths(run)
    feature = paths.steered_features()[0]
    steering = tmp_path / "steering"
    steering.mkdir()
    (steering / paths.steering_file(feature).name).write_text("{not json")
    page = render_report(paths.load_analysis(), steering_dir=steering)
    assert f"feature-{feature}.json could not be read" in page


# ---- one owner per file name ---------------------------------------------------------------
OWNERS: dict[str, set[str]] = {
    "config.yaml": {"paths.py"},
    "checkpoints": {"paths.py"},
    "index.html": {"paths.py"},
    "features.parquet": {"analysis/results.py"},
    "examples.parquet": {"analysis/results.py"},
    "analysis.json": {"analysis/results.py"},
    "explanations.parquet": {"interpret/results.py"},
    "interpret.json": {"interpret/results.py"},
    "recurrence.parquet": {"recurrence/comparison.py"},
    "recurrence.json": {"recurrence/comparison.py"},
    "feature-": {"steering/result.py"},
    "model.safetensors": {"crosscoder/model.py"},
    "train_summary.json": {"crosscoder/fit.py"},
    "manifest.json": {"store/manifest.py"},
    "moments.safetensors": {"store/moments.py"},
    # a transformers model folder's config.json (models/), not the crosscoder's
    "config.json": {"crosscoder/model.py", "models/gguf.py", "models/loading.py"},
}


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the module, class and function docstrings (prose may name any file)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def _names_file(value: str, name: str) -> bool:
    """Whether a string literal (or an f-string's literal part) spells file name ``name`` as
    a path: ``"analysis.json"``, ``root + "/analysis.json"``, ``f"feature-{i}.json"``;
    messages and help text that mention a file are prose, not paths."""
    if name == "feature-":
        return bool(re.search(r"(^|/)feature-(\d|$)", value))
    return bool(re.fullmatch(rf"(.*/)?{re.escape(name)}", value)) and " " not in value


def file_name_literals() -> dict[str, set[str]]:
    """{file name: modules of src/crossdiff with a string literal that spells it}."""
    found: dict[str, set[str]] = {}
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = _docstrings(tree)
        module = path.relative_to(SRC).as_posix()
        for node in ast.walk(tree):
            if not isinstance(node, ast.Constant) or not isinstance(node.value, str):
                continue
            if id(node) in skip:
                continue
            for name in OWNERS:
                if _names_file(node.value, name):
                    found.setdefault(name, set()).add(module)
    return found


def test_each_file_name_is_spelled_by_its_owner_only() -> None:
    found = file_name_literals()
    strays = {name: sorted(mods - OWNERS[name]) for name, mods in found.items()}
    assert not {k: v for k, v in strays.items() if v}, (
        f"run-folder file names spelled outside their owning module: {strays}; use the "
        "owner's constant or RunPaths' loader"
    )
    for name, owners in OWNERS.items():  # the scan sees the owners, so it would see a stray
        assert found.get(name, set()) & owners, f"{name} not found in {sorted(owners)}"
