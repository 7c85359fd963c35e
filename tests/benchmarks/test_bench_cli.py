"""``crossdiff bench`` lists every benchmark of the installed crossdiff_bench package."""

from __future__ import annotations

import pytest

from crossdiff.cli import main
from crossdiff_bench import BENCHMARKS


def test_bench_lists_every_benchmark(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for name in BENCHMARKS:
        assert name in text
