"""Built-in steering prompt suites (issue 14): they load, their names are checked, their default
scorers score what their docs say, and ``crossdiff steer --prompts builtin:NAME`` uses them."""

from __future__ import annotations

import pytest

import crossdiff.steering
from crossdiff.cli import main as cli_main
from crossdiff.errors import CrossdiffError
from crossdiff.steering import make_scorer
from crossdiff.steering.suites import SUITES, is_builtin, load_suite, suite_names

NAMES = ["copyright", "national", "political", "sycophancy"]


def test_every_suite_loads_about_thirty_distinct_prompts():
    assert suite_names() == NAMES
    for name in NAMES:
        prompts = load_suite(name).prompts()
        assert 25 <= len(prompts) <= 40, name
        assert all(isinstance(p, str) and p.strip() for p in prompts)
        assert len(set(prompts)) == len(prompts), f"{name} repeats a prompt"
    # the prefix and case do not matter; the same object comes back
    assert load_suite("builtin:Political") is SUITES["political"]
    assert is_builtin("builtin:copyright") and not is_builtin("prompts.txt")


@pytest.mark.parametrize("bad", ["politcal", "builtin:nope", ""])
def test_unknown_suite_names_the_value_and_the_valid_ones(bad):
    with pytest.raises(CrossdiffError) as err:
        load_suite(bad)
    message = str(err.value)
    assert repr(bad) in message
    for name in NAMES:
        assert f"builtin:{name}" in message


def test_default_scorers():
    copyright_ = make_scorer("builtin:copyright")
    assert copyright_.name == "builtin:copyright"
    assert copyright_("", "I'm sorry, but I can't provide the full lyrics.") == 1.0
    assert copyright_("", "Those lyrics are protected by copyright; here is a summary.") == 1.0
    assert copyright_("", "Is this the real life? Is this just fantasy?") == 0.0
    political = make_scorer("builtin:political")
    assert political("", "As an AI, I do not have personal opinions on this.") == 1.0
    assert political("", "Let's talk about something else.") == 1.0
    assert political("", "I cannot discuss that.") == 1.0
    assert political("", "In June 1989 the army cleared the square.") == 0.0
    syco = make_scorer("builtin:sycophancy")
    assert syco("", "Yes, that's right!") == 1.0
    assert syco("", "You’re absolutely right about that.") == 1.0
    assert syco("", "Actually, no: 7 times 8 is 56.") == 0.0
    assert syco("", "That is not correct; Canberra is the capital.") == 0.0
    # every suite documents how it is scored; national has no rule, and says what to use
    assert all(s.scoring and s.behaviour for s in SUITES.values())
    assert SUITES["national"].score_rule is None and SUITES["national"].judge
    with pytest.raises(CrossdiffError, match="judge:"):
        make_scorer("builtin:national")
    with pytest.raises(CrossdiffError, match="builtin:political"):
        make_scorer("builtin:nope")


class _Fake:
    path = None

    def table(self) -> str:
        return "table\n"


def test_cli_takes_a_suite_and_its_default_scorer(monkeypatch, capsys):
    calls: list[dict] = []

    def fake_steer(run, feature, config, **kw):
        calls.append({**kw, "score": config.score})
        return _Fake()

    monkeypatch.setattr(crossdiff.steering, "steer", fake_steer)
    base = ["steer", "runs/x", "--feature", "3", "--no-save"]
    assert cli_main([*base, "--prompts", "builtin:political"]) == 0
    assert calls[-1]["prompts"] == load_suite("political").prompts()
    assert calls[-1]["score"] == "builtin:political"
    # --score wins over the suite's default; a suite without a default leaves it unset
    assert cli_main([*base, "--prompts", "builtin:copyright", "--score", "regex:x"]) == 0
    assert calls[-1]["score"] == "regex:x"
    assert cli_main([*base, "--prompts", "builtin:national", "--prompt", "Hi"]) == 0
    assert calls[-1]["score"] is None and calls[-1]["prompts"][0] == "Hi"
    assert len(calls[-1]["prompts"]) == 31
    # a bad name: one line naming it and the valid ones, exit 2, steer never called
    n = len(calls)
    assert cli_main([*base, "--prompts", "builtin:sycophantic"]) == 2
    err = capsys.readouterr().err
    assert "'builtin:sycophantic'" in err and "builtin:sycophancy" in err
    assert len(calls) == n


def test_the_run_steer_stage_takes_a_suite_or_a_prompt_file(monkeypatch, tmp_path):
    """``steer: {prompts: builtin:NAME}`` in a run config: the suite's prompts and scorer."""
    import crossdiff.run as run_mod
    from crossdiff.paths import RunPaths
    from crossdiff.run import RunConfig

    calls: list[dict] = []
    monkeypatch.setattr(run_mod, "top_exclusive_features", lambda root, n: {"A": [3]})
    monkeypatch.setattr(
        crossdiff.steering,
        "steer",
        lambda run, f, config, **kw: calls.append({**kw, "score": config.score}),
    )
    paths = RunPaths(tmp_path / "run")
    for prompts, score in (("builtin:copyright", "builtin:copyright"), ("builtin:national", None)):
        cfg = RunConfig(steer={"top_features": 1, "prompts": prompts})
        assert run_mod._stage_steer(cfg, paths, progress=False) == "done"
        assert calls[-1]["prompts"] == load_suite(prompts).prompts()
        assert calls[-1].get("score") == score
    file = tmp_path / "prompts.txt"
    file.write_text("Who made you?\n\nIs Taiwan a country?\n")
    cfg = RunConfig(steer={"top_features": 1, "prompts": str(file), "score": "regex:x"})
    run_mod._stage_steer(cfg, paths, progress=False)
    assert calls[-1]["prompts"] == ["Who made you?", "Is Taiwan a country?"]
    assert calls[-1]["score"] == "regex:x"
