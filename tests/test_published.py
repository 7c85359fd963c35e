"""The shipped run configs of the paper's two pairs load and are consistent, offline.

Every file in ``crossdiff/data/published/`` must load as a ``crossdiff run --config`` (by name,
through the package data, with the hub switched off), build every stage's config, name layers
that exist in its models, and carry an estimate that agrees with the formulas: the disk as
rows x (d_a + d_b) x 2 bytes, memory at least the weights, training hours from the rate.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from crossdiff.errors import CrossdiffError
from crossdiff.paths import RunPaths
from crossdiff.published import (
    BF16_BYTES,
    GIB,
    PublishedAbout,
    check_published,
    crosscoder_params,
    published_names,
    published_path,
)
from crossdiff.run import RunConfig, _check_run_config, load_config

PAPER_PAIRS = {
    "llama31-8b-instruct-vs-qwen3-8b": (
        "meta-llama/Llama-3.1-8B-Instruct",
        "Qwen/Qwen3-8B",
    ),
    "gpt-oss-20b-vs-deepseek-r1-0528-qwen3-8b": (
        "openai/gpt-oss-20b",
        "deepseek-ai/DeepSeek-R1-0528-Qwen3-8B",
    ),
}


def test_both_published_pairs_are_shipped():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # conftest: nothing here may reach the hub
    assert sorted(published_names()) == sorted(PAPER_PAIRS)
    for name in published_names():
        assert published_path(name).is_file()


@pytest.mark.parametrize("name", sorted(PAPER_PAIRS))
def test_shipped_config_loads_and_validates(name):
    cfg = load_config(name)  # by name: the package data, no file in the working directory
    assert (cfg.model_a, cfg.model_b) == PAPER_PAIRS[name]
    about = check_published(cfg)  # the full check; below, the same facts by hand
    a, b = about.models["a"], about.models["b"]
    assert isinstance(cfg.layer_a, int) and 0 <= cfg.layer_a < a.n_layers
    assert isinstance(cfg.layer_b, int) and 0 <= cfg.layer_b < b.n_layers
    est = about.estimate
    assert cfg.harvest["tokens"] == est.rows == 100_000_000
    assert est.activation_bytes == est.rows * (a.d_model + b.d_model) * 2
    assert est.disk_tb == pytest.approx(est.activation_bytes / 1e12, rel=0.01)
    weights_gib = (a.params_billion + b.params_billion) * 1e9 * BF16_BYTES / GIB
    assert est.harvest_gpu_memory_gib >= weights_gib
    params = crosscoder_params(a.d_model, b.d_model, cfg.crosscoder["n_features"], 0.05)
    assert est.train_gpu_memory_gib >= params * 16 / GIB
    samples = cfg.train["steps"] * cfg.train["batch_size"]
    assert est.train_gpu_hours == pytest.approx(
        samples / est.train_samples_per_second / 3600, rel=0.02
    )
    assert est.harvest_gpu_hours_compute <= est.harvest_gpu_hours_plan
    # the paper's sizes (docs/METHOD.md §3), not the CPU preset's the file is merged over
    assert cfg.crosscoder["n_features"] == 131_072 and cfg.crosscoder["k"] == 200
    assert cfg.train["steps"] == 100_000 and cfg.train["batch_size"] == 2048
    assert cfg.train["lr"] == 1e-4 and cfg.train["resample_every"] is None
    # loading by path gives the same configuration
    assert load_config(published_path(name)) == cfg


def test_paper_layers_where_the_paper_gives_them():
    cfg = load_config("gpt-oss-20b-vs-deepseek-r1-0528-qwen3-8b")
    about = check_published(cfg)
    assert (cfg.layer_a, about.models["a"].n_layers) == (12, 24)
    assert (cfg.layer_b, about.models["b"].n_layers) == (16, 36)
    cfg = load_config("llama31-8b-instruct-vs-qwen3-8b")  # not given: the middle
    about = check_published(cfg)
    assert cfg.layer_a == about.models["a"].n_layers // 2
    assert cfg.layer_b == about.models["b"].n_layers // 2


def _edited(tmp_path: Path, name: str, path: list[str], value: object) -> RunConfig:
    """Shipped config ``name`` with one key changed, loaded from a file as a user would."""
    data = yaml.safe_load(published_path(name).read_text())
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump(data))
    return load_config(edited)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (["layer_b"], 36, r"layer 36 out of range: model 'Qwen/Qwen3-8B' has 36 layers"),
        (["about", "estimate", "activation_bytes"], 10**12, r"rows x \(d_a \+ d_b\) x 2"),
        (["about", "estimate", "disk_tb"], 1.0, "disk_tb is 1.0 but its formula gives"),
        (["about", "estimate", "train_gpu_hours"], 2.0, "train_gpu_hours"),
        (["about", "estimate", "train_gpu_memory_gib"], 10, "at least"),
        (["about", "estimate", "rows"], 5, "harvest.tokens is 100000000"),
        (["about", "models", "a", "hub_id"], "x/y", "make them the same"),
        (["about", "models", "a", "width"], 1, "unknown keys in about.models.a"),
        (["harvest", "tokenz"], 1, r"unknown keys in the 'harvest' section \['tokenz'\]"),
        (["about", "gpu_count"], 1, "unknown keys in the config's 'about' section"),
    ],
)
def test_inconsistent_config_is_refused(tmp_path, path, value, message):
    cfg = _edited(tmp_path, "llama31-8b-instruct-vs-qwen3-8b", path, value)
    with pytest.raises(CrossdiffError, match=message):
        check_published(cfg)


def test_unknown_name_lists_the_shipped_configs():
    with pytest.raises(CrossdiffError, match=r"does not exist.*llama31-8b-instruct-vs-qwen3-8b"):
        load_config("no-such-pair")


def test_about_is_recorded_in_the_run_folder(tmp_path: Path):
    cfg = load_config("gpt-oss-20b-vs-deepseek-r1-0528-qwen3-8b")
    paths = RunPaths(tmp_path / "run")
    _check_run_config(paths, cfg)
    saved = yaml.safe_load(paths.config.read_text())
    assert PublishedAbout.from_dict(saved["about"]).models["a"].hub_id == "openai/gpt-oss-20b"
    _check_run_config(paths, cfg)  # the same settings resume
