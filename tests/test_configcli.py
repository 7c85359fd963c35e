"""Options generated from the config dataclasses (crossdiff.configcli): each command offers
exactly its configs' fields (less the documented exclusions), with the dataclass defaults and
the field docstrings as help, and keeps every flag it had."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Literal

import pytest

from crossdiff import configcli
from crossdiff.cli import build_parser, main
from crossdiff.commands import analyze, compare, harvest, interpret, run, steer, train
from crossdiff.configcli import CommandParser, ConfigOptions, Flag, field_docs

# command -> (its ConfigOptions, the dests of its options that are no config field)
COMMANDS = {
    "harvest": ([harvest.options], set()),
    "train": (
        [train.crosscoder_options, train.training_options],
        {"run", "store", "out", "expansion", "exclusive", "seeds", "force", "no_progress"},
    ),
    "analyze": ([analyze.options], {"run", "store", "crosscoder", "out"}),
    "interpret": ([interpret.options], {"run"}),
    "compare": ([compare.options], {"run", "members", "device", "no_progress"}),
    "run": (
        [run.options],
        {"config", "out", "quick", "tokens", "steps", "device", "seeds", "no_progress"},
    ),
    "steer": (
        [steer.options],
        {"run", "feature", "prompt", "prompts", "json", "no_save", "no_progress"}
        | {"model_a", "model_b"},
    ),
}

# Every option each command had before its options were generated, with its choices (and the
# ones added since: harvest's --no-pack, --decision-pairs; analyze's --mapped-output).
FLAGS_BEFORE = {
    "harvest": "--batch-size --cache-dir --corpus --decision-pairs --device --dtype --layer-a "
    "--layer-b --literal-specials --max-documents --max-seq-len --model-a --model-b --no-pack "
    "--out --pair-positions --quiet --shard-rows --tokens --trust-remote-code",
    "train": "--activation --aux-alpha --batch-size --checkpoint-every --compute-dtype "
    "--dead-window --designated --device --exclusive --exclusive-init --expansion --force --k "
    "--k-anneal-from --k-anneal-steps --l1-coeff --lr --n-features --no-progress "
    "--normalization --out --seed --seeds --selection-norm --steps --store --warmup-steps",
    "analyze": "--batch-size --contexts --crosscoder --device --eval-fraction --map-sources "
    "--mapped-output --max-r2 --max-rows --no-progress --out --probe-split --rel-hi --rel-lo "
    "--seed --store --top",
    "interpret": "--concurrency --device --explainer --features --judge --judge-batch "
    "--max-features --max-new-tokens --negatives --no-cache --no-progress --price-per-mtok "
    "--retries --seed --shared --timeout",
    "compare": "--batch-size --device --members --min-correlation --min-cosine --no-progress "
    "--rows --rule",
    "run": "--config --corpus --device --layer-a --layer-b --model-a --model-b --no-progress "
    "--out --quick --seeds --steps --threads --tokens",
    "steer": "--alphas --batch-size --clamp --cross-model --cross-norm --device --dtype "
    "--feature --judge-key-env --judge-model --judge-url --json --map-ridge --map-rows "
    "--max-new-tokens --mode --model --model-a --model-b --no-batch --no-chat "
    "--no-cross-nulls --no-explanation-score --no-progress --no-save --null-seed --nulls "
    "--prompt --prompts --refit-map --s-max --sample --score --seed --temperature --top-p",
}
CHOICES_BEFORE = {
    ("harvest", "--literal-specials"): ["cut", "keep"],
    ("harvest", "--pair-positions"): ["all", "word_end"],
    ("train", "--activation"): ["batchtopk", "topk", "relu"],
    ("train", "--compute-dtype"): ["auto", "float32", "bfloat16"],
    ("train", "--exclusive-init"): ["residual", "random"],
    ("train", "--normalization"): ["centered", "median", "none"],
    ("train", "--selection-norm"): ["l2", "sum", "none"],
    ("analyze", "--contexts"): ["exclusive", "all", "none"],
    ("analyze", "--probe-split"): ["eval", "all"],
    ("interpret", "--negatives"): ["random", "hard", "mixed"],
    ("compare", "--rule"): ["both", "either", "cosine", "correlation"],
    ("steer", "--model"): ["auto", "a", "b", "both"],
    ("steer", "--mode"): ["add", "clamp"],
    ("steer", "--cross-norm"): ["relative", "map"],
}
HARVEST_ARGS = ["--model-a", "a", "--model-b", "b", "--corpus", "c", "--out", "o"]
MINIMAL = {
    "harvest": HARVEST_ARGS,
    "train": ["RUN"],
    "analyze": ["RUN"],
    "interpret": ["RUN"],
    "compare": ["RUN"],
    "run": [],
    "steer": ["RUN", "--feature", "1"],
}


@pytest.fixture(scope="module")
def parsers() -> dict[str, argparse.ArgumentParser]:
    root = build_parser()
    sub = next(a for a in root._actions if isinstance(a, argparse._SubParsersAction))
    for p in sub.choices.values():
        if isinstance(p, CommandParser):
            p.populate()
    return dict(sub.choices)


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if not isinstance(a, argparse._HelpAction)}


def _parse(parsers, command: str, argv: list[str]) -> argparse.Namespace:
    return parsers[command].parse_args([*MINIMAL[command], *argv])


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_options_are_the_config_fields_less_documented_exclusions(parsers, command):
    """A field added to a config gets its option (or the parser fails to build, for a type
    with no command-line form) unless excluded with a reason; nothing else appears."""
    makers, others = COMMANDS[command]
    expected = set(others)
    for make in makers:
        opts = make()
        names = [f.name for f in dataclasses.fields(opts.config_class)]
        assert set(opts.exclude) <= set(names)
        assert all(reason.strip() for reason in opts.exclude.values())
        expected |= {n for n in names if n not in opts.exclude}
    assert set(_actions(parsers[command])) == expected


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_flag_and_choice_of_before_stays(parsers, command):
    actions = _actions(parsers[command]).values()
    strings = {s for a in actions for s in a.option_strings}
    assert set(FLAGS_BEFORE[command].split()) == strings
    for (cmd, flag), choices in CHOICES_BEFORE.items():
        if cmd == command:
            (action,) = [a for a in actions if flag in a.option_strings]
            assert list(action.choices) == choices


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_defaults_are_the_dataclass_defaults(parsers, command):
    args = _parse(parsers, command, [])
    for make in COMMANDS[command][0]:
        opts = make()
        if opts.given_only:  # nothing given: nothing set, the config's own defaults apply
            assert opts.values(args) == {}
            continue
        required = {}
        for f in opts.fields():
            if opts.default(f) is dataclasses.MISSING:
                required[f.name] = getattr(args, f.name)
            else:
                assert _actions(parsers[command])[f.name].default == opts.default(f)
        assert opts.build(args) == opts.config_class(**required)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_is_the_field_docstring(parsers, command):
    actions = _actions(parsers[command])
    for make in COMMANDS[command][0]:
        opts = make()
        docs = field_docs(opts.config_class)
        for f in opts.fields():
            flag = opts.flags.get(f.name)
            if flag is not None and flag.help is not None:
                continue
            assert docs.get(f.name), f"{opts.config_class.__name__}.{f.name} has no docstring"
            words = configcli._terminal(docs[f.name]).replace("%", "%%")
            if actions[f.name].const is False:  # --no-x: "turn off: <doc>"
                words = words[1:]
            assert words in actions[f.name].help
            if opts.default(f) not in (None, dataclasses.MISSING, True, False):
                default = configcli.default_text(opts.default(f))
                assert actions[f.name].help.endswith(f"(default: {default})")


def test_harvest_help_shows_the_docstrings(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["harvest", "--help"])
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--max-seq-len" in out and "longer texts are split into windows" in out
    assert "(default: 512)" in out


@pytest.mark.parametrize(
    ("command", "argv", "expected"),
    [
        ("harvest", ["--quiet", "--tokens", "50k"], {"progress": False, "tokens": 50_000}),
        ("harvest", ["--layer-a", "3", "--trust-remote-code"], {"layer_a": "3"}),
        ("harvest", ["--pair-positions", "word_end"], {"pair_positions": "word_end"}),
        ("analyze", ["--top", "5", "--max-r2", "0.3"], {"top_n": 5, "exclusive_max_r2": 0.3}),
        ("analyze", ["--contexts", "all", "--no-progress"], {"contexts_for": "all"}),
        ("interpret", ["--timeout", "3", "--no-cache"], {"timeout_s": 3.0, "cache": False}),
        ("interpret", ["--features", "3,17"], {"features": [3, 17], "progress": True}),
        ("compare", ["--rule", "either", "--rows", "10"], {"rule": "either", "rows": 10}),
        ("steer", [], {"alphas": (-4.0, -2.0, 0.0, 2.0, 4.0), "clamp_value": None}),
        (
            "steer",
            ["--alphas", "-4,-2", "0", "--sample"],  # negative numbers are values
            {"alphas": (-4.0, -2.0, 0.0), "do_sample": True},
        ),
        ("steer", ["--clamp", "0,5", "--no-batch"], {"clamp_value": [0.0, 5.0], "batched": False}),
        (
            "steer",
            ["--no-chat", "--no-explanation-score"],
            {"chat": False, "explanation_score": False},
        ),
        ("steer", ["--model", "b", "--map-rows", "9"], {"model": "b", "map_rows": 9}),
    ],
)
def test_flags_mean_what_they_meant(parsers, command, argv, expected):
    (make,) = COMMANDS[command][0]
    config = make().build(_parse(parsers, command, argv))
    assert {k: getattr(config, k) for k in expected} == expected


def test_given_only_commands_pass_what_was_given(parsers):
    args = _parse(parsers, "train", ["--k-anneal-from", "0", "--dead-window", "7", "--k", "4"])
    assert train.training_options().values(args) == {
        "k_anneal_from": None,  # 0 disables annealing, as before
        "dead_window_tokens": 7,
    }
    args = _parse(parsers, "train", ["--designated", "0.1", "--activation", "topk"])
    assert train.crosscoder_options().values(args) == {
        "frac_designated_shared": 0.1,
        "activation": "topk",
    }
    args = _parse(parsers, "run", ["--layer-a", "3", "--layer-b", "middle", "--threads", "1"])
    assert run.options().values(args) == {"layer_a": 3, "layer_b": "middle", "threads": 1}


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["harvest", *HARVEST_ARGS, "--max-seq-len", "abc"], ["--max-seq-len", "'abc'"]),
        (["harvest", *HARVEST_ARGS, "--tokens", "5x"], ["--tokens", "'5x'"]),
        (["harvest", *HARVEST_ARGS, "--pair-positions", "odd"], ["--pair-positions", "'odd'"]),
        (["harvest", "--model-a", "a"], ["required", "--model-b"]),
        (["analyze", "RUN", "--probe-split", "crossfit"], ["--probe-split", "'crossfit'"]),
        (["train", "--lr", "fast"], ["--lr", "'fast'"]),
        (["steer", "RUN", "--feature", "1", "--mode", "scale"], ["--mode", "'scale'"]),
        (["steer", "RUN", "--feature", "1", "--nulls", "two"], ["--nulls", "'two'"]),
        (["steer", "RUN", "--alphas", "1"], ["required", "--feature"]),
    ],
)
def test_a_bad_value_is_named_by_argparse(argv, words, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err


def test_a_bad_value_found_by_the_config_is_named(capsys):
    """Values of the right type that the config rejects: exit 2 with the config's message."""
    assert main(["analyze", "RUN", "--rel-hi", "2"]) == 2
    assert "rel_hi=2.0" in capsys.readouterr().err
    assert main(["interpret", "RUN", "--features", "3,x"]) == 2
    assert "--features '3,x'" in capsys.readouterr().err
    steer_run = ["steer", "RUN", "--feature", "1", "--prompt", "Hi"]
    assert main([*steer_run, "--clamp", ","]) == 2
    assert "--clamp needs a value" in capsys.readouterr().err
    assert main([*steer_run, "--alphas", "1,x"]) == 2
    assert "'x' in '1,x' is not a number" in capsys.readouterr().err


def test_building_the_cli_imports_no_config_package():
    """Options are added when their command is parsed, so `crossdiff --help` stays light."""
    code = (
        "import sys; sys.modules['crossdiff_bench'] = None\n"  # the benchmarks import torch
        "from crossdiff.cli import build_parser; build_parser()\n"
        "print(sorted(m for m in ('torch', 'crossdiff.harvest', 'crossdiff.analysis') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---- the generator on its own ------------------------------------------------------------------
@dataclass
class Toy:
    """A config with one field of each kind."""

    name: str
    """The name (required)."""
    size: int = 3
    """How big (100% of it)."""
    rate: float | None = None
    """A rate; None: none."""
    layer: int | str = "middle"
    mode: Literal["a", "b"] = "a"
    """The mode."""
    loud: bool = False
    """Say more."""
    cache: bool = True
    """Keep a cache."""
    tags: list[str] = field(default_factory=list)
    """Free tags."""


def _toy_parser(**kw) -> tuple[argparse.ArgumentParser, ConfigOptions]:
    kw.setdefault("exclude", {"tags": "a list"})
    opts = ConfigOptions(Toy, **kw)
    parser = argparse.ArgumentParser(prog="toy")
    opts.add_to(parser)
    return parser, opts


def test_generator_maps_types_names_and_defaults():
    parser, opts = _toy_parser()
    args = parser.parse_args(["--name", "x", "--rate", "0.5", "--layer", "-1", "--no-cache"])
    assert opts.build(args) == Toy("x", rate=0.5, layer=-1, cache=False)
    assert opts.build(parser.parse_args(["--name", "x", "--loud", "--mode", "b"])) == Toy(
        "x", mode="b", loud=True
    )
    actions = _actions(parser)
    assert actions["mode"].choices == ("a", "b")
    assert actions["name"].required and not actions["size"].required
    assert actions["size"].help == "How big (100%% of it). (default: 3)"  # % escaped
    assert actions["cache"].option_strings == ["--no-cache"]
    assert actions["cache"].help == "turn off: keep a cache."
    assert actions["layer"].help == "(default: middle)"  # no docstring: the default alone
    assert "100% of it" in parser.format_help()


def test_generator_overrides_and_given_only():
    flags = {
        "name": Flag(positional=True, name="NAME"),
        "size": Flag(name="--n", type=lambda t: int(t) * 2, help="twice"),
        "mode": Flag(choices=("b",)),
        "loud": Flag(name="--verbose"),
    }
    parser, opts = _toy_parser(flags=flags)
    args = parser.parse_args(["x", "--n", "4", "--verbose"])
    assert opts.build(args) == Toy("x", size=8, loud=True)
    with pytest.raises(SystemExit):
        parser.parse_args(["x", "--mode", "a"])
    parser, opts = _toy_parser(given_only=True)
    assert opts.values(parser.parse_args([])) == {}
    assert opts.values(parser.parse_args(["--size", "2", "--loud"])) == {"size": 2, "loud": True}


def test_a_list_field_with_nargs():
    flags = {"tags": Flag(type=str, nargs="+", convert=lambda v: [t.upper() for t in v])}
    parser, opts = _toy_parser(exclude={}, flags=flags)
    assert opts.build(parser.parse_args(["--name", "x", "--tags", "a", "b"])).tags == ["A", "B"]
    assert opts.build(parser.parse_args(["--name", "x"])).tags == []  # the default, converted


def test_one_config_over_several_groups():
    """``add_to(container, fields)``: those fields, in that order; each field once."""
    opts = ConfigOptions(Toy, exclude={"tags": "a list"})
    parser = argparse.ArgumentParser(prog="toy")
    opts.add_to(parser, ["size", "name"])
    opts.add_to(parser.add_argument_group("more"), ["mode", "rate"])
    assert [a.dest for a in parser._actions[1:]] == ["size", "name", "mode", "rate"]
    with pytest.raises(ValueError, match="already has that option"):
        opts.add_to(parser, ["size"])
    with pytest.raises(ValueError, match=r"Toy has no option \['tags'\]"):
        opts.add_to(parser, ["tags"])  # excluded


def test_a_metavar_and_a_sequence_default():
    flags = {
        "size": Flag(name="--n", metavar="COUNT"),
        "tags": Flag(type=str, nargs="+", metavar="TAG"),
    }
    parser, _ = _toy_parser(exclude={}, flags=flags)
    actions = _actions(parser)
    assert actions["size"].metavar == "COUNT" and actions["tags"].metavar == "TAG"
    assert configcli.default_text((-4.0, 0.0, 2.0)) == "-4.0,0.0,2.0"
    assert configcli.default_text([]) == "" and configcli.default_text(0.5) == "0.5"


def test_a_field_without_a_command_line_form_must_be_flagged_or_excluded():
    with pytest.raises(TypeError, match=r"Toy\.tags: type list\[str\].*exclude it"):
        _toy_parser(exclude={})
    parser, opts = _toy_parser(exclude={}, flags={"tags": Flag(type=str, convert=str.split)})
    assert opts.build(parser.parse_args(["--name", "x", "--tags", "a b"])).tags == ["a", "b"]


def test_flags_and_exclusions_must_name_fields():
    with pytest.raises(ValueError, match="names no field of Toy: nope"):
        ConfigOptions(Toy, exclude={"nope": "gone"})
    with pytest.raises(ValueError, match="both flagged and excluded"):
        ConfigOptions(Toy, flags={"tags": Flag()}, exclude={"tags": "x"})
    parser = argparse.ArgumentParser()
    parser.add_argument("--size")
    with pytest.raises(ValueError, match="already has that option"):
        ConfigOptions(Toy, exclude={"tags": "a list"}).add_to(parser)


def test_a_command_parser_adds_deferred_options_on_first_use():
    parser = CommandParser(prog="x")
    configcli.defer(parser, lambda p: p.add_argument("--late", type=int))
    assert not any(a.dest == "late" for a in parser._actions)
    assert parser.parse_args(["--late", "2"]).late == 2
    plain = argparse.ArgumentParser()
    configcli.defer(plain, lambda p: p.add_argument("--now"))  # a plain parser: at once
    assert any(a.dest == "now" for a in plain._actions)
