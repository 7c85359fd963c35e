"""``crossdiff bench analysis`` (crossdiff_bench.analysis) runs end to end at tiny settings."""

from __future__ import annotations

import json
from pathlib import Path


def test_bench_analysis_smoke(tmp_path: Path, capsys) -> None:
    from crossdiff_bench.analysis import main

    out = tmp_path / "bench.json"
    args = ["--threads", "1", "--no-progress", "--json-out", str(out)]
    check = ["--part", "check", "--small", "--steps", "20", "--models", "dfc"]
    check += ["--fit-rows", "4096", "--test-rows", "4096"]
    assert main(check + args) == 0
    text = capsys.readouterr().out
    assert "published labels" in text and "confirmed: cross_r2<0.5" in text
    row = json.loads(out.read_text())["check"][0]
    assert row["model"] == "dfc" and "candidates_detail" in row
    scale = ["--part", "scale", "--pairs", "1500", "4000", "--d-a", "16", "--d-b", "12"]
    scale += ["--n-features", "64", "--k", "4", "--batch-size", "512"]
    assert main(scale + args) == 0
    text = capsys.readouterr().out
    assert "time per million pairs" in text and "10M pairs" in text
    rows = json.loads(out.read_text())["scale"]
    assert [r["rows"] for r in rows] == [r["pairs"] for r in rows]
    assert rows[1]["pairs"] > rows[0]["pairs"] >= 1500
