"""SteerConfig: bad values are errors naming the value and the fix, before any model loads;
``crossdiff steer``'s options and their defaults come from it (crossdiff.configcli; the
generic checks are in test_configcli.py); a run config's ``steer`` section is checked."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import itertools

import pytest

from crossdiff.cli import build_parser
from crossdiff.commands.steer import steer_config
from crossdiff.errors import CrossdiffError
from crossdiff.steering import DEFAULT_ALPHAS, GenerationSettings, SteerConfig
from crossdiff.steering.api import CROSS_NORMS, MODEL_CHOICES, MODES


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"mode": "scale"}, r"mode 'scale' is not one of add, clamp"),
        ({"cross_norm": "unit"}, r"cross_norm 'unit' is not one of relative, map"),
        ({"model": "c"}, r"model 'c' is not one of auto, a, b, both"),
        ({"alphas": []}, r"give at least one alpha, e\.g\. alphas=\[-4, -2, 0, 2, 4\]"),
        ({"alphas": [1, float("nan")]}, r"alphas must be finite numbers, got \[nan\]"),
        ({"alphas": ["x"]}, r"alphas must be numbers, got \['x'\]"),
        ({"clamp_value": [0, float("inf")]}, r"finite numbers, got \[inf\]"),
        ({"nulls": -1}, r"nulls must be a whole number >= 0, got -1"),
        ({"nulls": True}, r"nulls must be a whole number >= 0, got True"),
        ({"batch_size": 0}, r"batch_size must be at least 1, got 0"),
        ({"s_max": 0.0}, r"s_max must be a positive number, got 0\.0"),
        ({"s_max": "big"}, r"s_max must be a positive number, got big"),
        ({"max_new_tokens": 0}, r"max_new_tokens must be a positive integer, got 0"),
        ({"do_sample": True, "temperature": 0.0}, r"temperature must be > 0, got 0\.0"),
        ({"do_sample": True, "top_p": 1.5}, r"top_p must be in \(0, 1\], got 1\.5"),
        ({"mode": "clamp", "cross_model": True}, r"clamp mode.*use mode='add'"),
    ],
)
def test_bad_values_are_clear_errors(changes, message):
    with pytest.raises(CrossdiffError, match=message):
        SteerConfig(**changes)
    with pytest.raises(CrossdiffError, match=message):  # and when changed later
        SteerConfig().replace(**changes)


def test_good_values_pass_and_clamp_values_replace_alphas():
    assert SteerConfig(model="B").model == "B"  # model names are case-insensitive
    assert SteerConfig(alphas=[float("nan")], clamp_value=2).clamp_values() == [2.0]
    assert SteerConfig(clamp_value=[0, 1.5]).clamp_values() == [0.0, 1.5]
    assert SteerConfig().clamp_values() is None
    gen = SteerConfig(max_new_tokens=7, chat=False).generation()
    assert gen == GenerationSettings(max_new_tokens=7, chat=False)


def test_defaults_are_written_once():
    cfg = SteerConfig()
    assert tuple(cfg.alphas) == DEFAULT_ALPHAS
    for name in ("max_new_tokens", "do_sample", "temperature", "top_p", "seed", "chat"):
        assert getattr(cfg, name) == getattr(GenerationSettings(), name)
    assert (cfg.mode, cfg.cross_norm, cfg.model) == (MODES[0], CROSS_NORMS[0], MODEL_CHOICES[0])
    # every field says what it controls (a docstring right below it)
    tree = ast.parse(inspect.getsource(SteerConfig))
    body = tree.body[0].body
    documented = {
        node.target.id
        for node, after in itertools.pairwise(body)
        if isinstance(node, ast.AnnAssign)
        and isinstance(after, ast.Expr)
        and isinstance(after.value, ast.Constant)
    }
    assert documented == {f.name for f in dataclasses.fields(SteerConfig)}


def test_cli_defaults_are_the_config():
    """``crossdiff steer RUN --feature 1`` with no other flag asks for SteerConfig(), and the
    help shows the config's defaults (the CLI writes none of its own)."""
    parser = build_parser()
    args = parser.parse_args(["steer", "runs/x", "--feature", "1"])
    assert steer_config(args, None) == SteerConfig()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    text = " ".join(sub.choices["steer"].format_help().split())
    assert f"(default: {GenerationSettings.max_new_tokens})" in text
    assert "(default: -4.0,-2.0,0.0,2.0,4.0)" in text


def test_cli_flags_reach_the_config():
    argv = ["steer", "runs/x", "--feature", "1", "--alphas", "-1,0", "3", "--clamp", "0,5"]
    argv += ["--model", "b", "--no-chat", "--sample", "--temperature", "0.5", "--no-batch"]
    argv += ["--map-rows", "100", "--map-ridge", "0.1", "--model-a", "here", "--nulls", "2"]
    cfg = steer_config(build_parser().parse_args(argv), "regex:x")
    assert cfg.alphas == (-1.0, 0.0, 3.0) and cfg.clamp_value == [0.0, 5.0]
    assert (cfg.model, cfg.chat, cfg.do_sample, cfg.temperature) == ("b", False, True, 0.5)
    assert (cfg.batched, cfg.map_rows, cfg.map_ridge, cfg.nulls) == (False, 100, 0.1, 2)
    assert cfg.model_specs == {"a": "here"} and cfg.score == "regex:x"


def test_from_dict_rejects_unknown_keys():
    assert SteerConfig.from_dict({"nulls": 2, "alphas": [0, 1]}).nulls == 2
    with pytest.raises(CrossdiffError, match=r"unknown steer config keys \['nul'\]; known keys"):
        SteerConfig.from_dict({"nul": 2})


def test_the_run_steer_section_rejects_unknown_keys(tmp_path):
    import crossdiff.run as run_mod
    from crossdiff.paths import RunPaths

    cfg = run_mod.RunConfig(steer={"top_features": 1, "prompts": ["Hi"], "alpha": [1]})
    with pytest.raises(CrossdiffError, match=r"unknown steer config keys \['alpha'\].*prompts"):
        run_mod._stage_steer(cfg, RunPaths(tmp_path / "run"), progress=False)
    bad = run_mod.RunConfig(steer={"top_features": 1, "prompts": ["Hi"], "nulls": -2})
    with pytest.raises(CrossdiffError, match="nulls must be a whole number"):
        run_mod._stage_steer(bad, RunPaths(tmp_path / "run"), progress=False)
