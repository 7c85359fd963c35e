"""`crossdiff run` end to end on tiny models: interrupting it after any stage (or in the middle
of training) and running it again ends with the same outputs as a run never stopped."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from crossdiff.crosscoder.fit import train_on_store
from crossdiff.crosscoder.train_config import TrainConfig
from crossdiff.errors import CrossdiffError
from crossdiff.paths import RunPaths
from crossdiff.run import STAGES, RunConfig, load_config, run_pipeline, summarize

TEXTS = [
    "The river runs past the old mill and the children watch the boats.",
    "Who made you? I was made by a small team of engineers.",
    "def add(a, b):\n    return a + b\n",
    "Paris is the capital of France; Berlin is the capital of Germany.",
    "Le chat dort sur le canapé pendant que la pluie tombe.",
    "Numbers: 3.14159, 2.71828 and 1.41421 are famous constants.",
]


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(tmp_path: Path, tiny_model) -> RunConfig:
    corpus = tmp_path / "corpus.jsonl"
    with corpus.open("w", encoding="utf-8") as fh:
        for i in range(30):
            text = " ".join(TEXTS[(i + j) % len(TEXTS)] for j in range(3))
            fh.write(json.dumps({"text": text}) + "\n")
        fh.write(json.dumps({"messages": [{"role": "user", "content": "Who made you?"}]}) + "\n")
    return RunConfig(
        model_a=str(tiny_model("gpt2", "bpe")),
        model_b=str(tiny_model("llama", "sentencepiece")),
        corpus=str(corpus),
        harvest={
            "max_seq_len": 48,
            "batch_size": 4,
            "shard_rows": 300,
            "dtype": "float32",
            "device": "cpu",
        },
        crosscoder={"n_features": 64, "k": 4, "exclusive": 0.1},
        train={
            "steps": 24,
            "batch_size": 64,
            "lr": 3e-3,
            "warmup_steps": 2,
            "k_anneal_from": None,
            "checkpoint_every": 8,
            "device": "cpu",
        },
        analysis={"device": "cpu", "batch_size": 256},
        steer={
            "top_features": 1,
            "prompts": ["Who made you?"],
            "alphas": [-2.0, 0.0, 2.0],
            "max_new_tokens": 4,
            "device": "cpu",
            "dtype": "float32",
        },
    )


def outputs(run: Path) -> dict[str, object]:
    """Everything a run produces that must not depend on interruptions."""
    from safetensors.torch import load_file

    paths = RunPaths(run)
    weights = load_file(str(paths.crosscoder / "model.safetensors"))
    features = pq.read_table(paths.analysis / "features.parquet").to_pydict()
    steering = {
        p.name: json.loads(p.read_text())["models"] if "models" in p.read_text() else p.read_text()
        for p in sorted(paths.steering.glob("feature-*.json"))
    }
    return {"weights": weights, "features": features, "steering": steering}


def assert_same(o1, o2) -> None:
    assert o1["weights"].keys() == o2["weights"].keys()
    for name in o1["weights"]:
        t1, t2 = o1["weights"][name], o2["weights"][name]
        assert torch.equal(t1.nan_to_num(0), t2.nan_to_num(0)), name
    f1, f2 = o1["features"], o2["features"]
    assert f1.keys() == f2.keys()
    for col in f1:
        a = [None if isinstance(v, float) and v != v else v for v in f1[col]]
        b = [None if isinstance(v, float) and v != v else v for v in f2[col]]
        assert a == b, col
    assert o1["steering"] == o2["steering"]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("run_ref")
    cfg = tiny_config(root, tiny_model)
    records = run_pipeline(root / "run", cfg, progress=False, log=lambda *_: None)
    return root, cfg, records


def test_run_produces_every_output(reference_run):
    root, _, records = reference_run
    assert [r.name for r in records] == [name for name, _ in STAGES]
    paths = RunPaths(root / "run")
    assert paths.config.is_file()
    assert (paths.store / "manifest.json").is_file()
    assert (paths.crosscoder / "model.safetensors").is_file()
    assert (paths.analysis / "features.parquet").is_file()
    assert list(paths.steering.glob("feature-*.json"))
    html = paths.report.read_text()
    assert "<html" in html.lower()
    text = summarize(root / "run")
    assert "report:" in text and "A-exclusive" in text


@pytest.mark.parametrize("stop_after", ["harvest", "train", "analyze", "steer"])
def test_interrupted_after_a_stage_then_resumed_equals_uninterrupted(
    reference_run, tmp_path, stop_after
):
    ref_root, cfg, _ = reference_run
    run = tmp_path / "run"
    run_pipeline(run, cfg, progress=False, stop_after=stop_after, log=lambda *_: None)
    records = run_pipeline(run, cfg, progress=False, log=lambda *_: None)
    done = [r.name for r in records if r.status.startswith("skipped (complete)")]
    stages = [name for name, _ in STAGES]
    for name in stages[1 : stages.index(stop_after) + 1]:
        if name in ("train", "analyze"):
            assert name in done, (name, records)
    assert_same(outputs(ref_root / "run"), outputs(run))


def test_interrupted_in_the_middle_of_training_resumes(reference_run, tmp_path):
    ref_root, cfg, _ = reference_run
    run = tmp_path / "run"
    paths = RunPaths(run)
    run_pipeline(run, cfg, progress=False, stop_after="harvest", log=lambda *_: None)

    class Killed(Exception):
        pass

    def kill(step, metrics):
        if step >= 12:
            raise Killed

    with pytest.raises(Killed):
        train_on_store(
            paths.store,
            paths.crosscoder,
            train=TrainConfig(**{**cfg.train, "log_every": 1}),
            progress=False,
            callback=kill,
            **cfg.crosscoder,
        )
    assert (paths.checkpoints).is_dir()
    records = run_pipeline(run, cfg, progress=False, log=lambda *_: None)
    assert records[1].status == "resumed"
    assert_same(outputs(ref_root / "run"), outputs(run))


def test_run_folder_refuses_other_settings(reference_run):
    root, cfg, _ = reference_run
    other = RunConfig(**{**cfg.to_dict(), "crosscoder": {**cfg.crosscoder, "k": 8}})
    with pytest.raises(CrossdiffError, match="other settings"):
        run_pipeline(root / "run", other, progress=False, log=lambda *_: None)


def test_config_file_presets_and_errors(tmp_path):
    quick = load_config(preset="quick")
    default = load_config()
    assert quick.harvest["tokens"] < default.harvest["tokens"]
    f = tmp_path / "c.yaml"
    f.write_text("model_a: some/model\ntrain:\n  steps: 7\n")
    cfg = load_config(f, preset="quick", overrides={"harvest.tokens": 123})
    assert cfg.model_a == "some/model" and cfg.train["steps"] == 7
    assert cfg.train["batch_size"] == quick.train["batch_size"]  # merged, not replaced
    assert cfg.harvest["tokens"] == 123
    f.write_text("modle_a: typo\n")
    with pytest.raises(CrossdiffError, match="unknown run config keys"):
        load_config(f)
    with pytest.raises(CrossdiffError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(CrossdiffError, match="unknown preset"):
        load_config(preset="huge")


def test_train_command_on_a_store(reference_run, tmp_path, capsys):
    from crossdiff.cli import main

    root, _, _ = reference_run
    store = RunPaths(root / "run").store
    out = tmp_path / "cc"
    args = ["train", "--store", str(store), "--out", str(out), "--n-features", "64", "--k", "4"]
    args += ["--steps", "6", "--batch-size", "64", "--device", "cpu", "--no-progress"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "FVE" in text and "A-exclusive" in text
    assert (out / "model.safetensors").is_file() and (out / "train_summary.json").is_file()
    assert main(args) == 0  # complete: loaded, not retrained
    other = [a if a != "6" else "12" for a in args]  # more steps: other settings
    assert main(other) == 2
    assert "other settings" in capsys.readouterr().err
    assert main(["train"]) == 2


def test_no_progress_reaches_the_analysis(tmp_path, monkeypatch):
    """`crossdiff run --no-progress` (progress=False) turns the analysis bars off too."""
    import crossdiff.analysis
    from crossdiff.run import _stage_analyze

    seen = []
    monkeypatch.setattr(crossdiff.analysis, "analyze", lambda run, config: seen.append(config))
    for progress in (False, True):
        assert _stage_analyze(RunConfig(), RunPaths(tmp_path / "run"), progress) == "done"
    assert [c.progress for c in seen] == [False, True]


def test_a_broken_command_module_fails_loudly(monkeypatch):
    """A command whose module does not import stops the CLI with its name, never skipped."""
    from crossdiff import cli

    monkeypatch.setattr(cli, "COMMAND_MODULES", [*cli.COMMAND_MODULES, "no_such_command"])
    with pytest.raises(ImportError, match=r"crossdiff\.commands\.no_such_command failed"):
        cli.build_parser()


def test_bench_without_the_benchmarks_says_what_to_install(monkeypatch, capsys):
    """`crossdiff bench ...` without the crossdiff_bench package: one line, exit 2."""
    import sys

    from crossdiff.cli import main

    monkeypatch.setitem(sys.modules, "crossdiff_bench", None)  # as if not installed
    assert main(["bench", "toy", "--quick"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "pip install -e benchmarks/" in err and err.startswith("crossdiff bench: error:")


def test_run_with_seeds_trains_members_and_counts_recurrence(tmp_path, tiny_model):
    """recurrence: {seeds: 2} trains RUN/crosscoders/s1-x0.1 beside the run's crosscoder,
    matches them before the analysis (whose recurs column then holds k of 1), and a rerun
    keeps both."""
    from crossdiff.recurrence import load_recurrence

    cfg = tiny_config(tmp_path, tiny_model)
    cfg.recurrence = {"seeds": 2, "rows": 512}
    run = tmp_path / "run"
    records = run_pipeline(run, cfg, progress=False, stop_after="analyze", log=lambda *_: None)
    status = {r.name: r.status for r in records}
    assert status["recurrence"].startswith("done (1 further crosscoders")
    paths = RunPaths(run)
    assert (paths.crosscoders / "s1-x0.1" / "model.safetensors").is_file()
    res = load_recurrence(run)
    assert res is not None and res.meta["n_others"] == 1
    table = pq.read_table(paths.analysis / "features.parquet").to_pydict()
    recurs = dict(zip(table["feature"], table["recurs"], strict=True))
    klass = dict(zip(table["feature"], table["klass"], strict=True))
    assert recurs and all(
        (recurs[f] in (0, 1)) if klass[f] in ("A", "B") else recurs[f] == -1 for f in recurs
    )
    assert {f: recurs[f] for f in res.recurs()} == res.recurs()
    again = run_pipeline(run, cfg, progress=False, stop_after="recurrence", log=lambda *_: None)
    assert {r.name: r.status for r in again}["recurrence"] == "skipped (complete)"


def test_recurrence_section_errors_name_the_value():
    from crossdiff.recurrence.stage import split_section

    with pytest.raises(CrossdiffError, match=r"recurrence\.seeds=-1"):
        split_section({"seeds": -1})
    with pytest.raises(CrossdiffError, match="unknown recurrence config keys \\['sedes'\\]"):
        split_section({"sedes": 5})
    with pytest.raises(CrossdiffError, match="min_cosine=2"):
        split_section({"seeds": 3, "min_cosine": 2})
    assert split_section(None)[0] == 0
