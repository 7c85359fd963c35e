"""The HTML report: self-contained, escaped, and rendered by a real headless browser.

Browser tests drive Debian's ``chromium`` (``apt-get install -y chromium``): ``--dump-dom``
gives the DOM after the page's script ran (the script marks ``<body data-ready="1">``, which
also proves the Content Security Policy lets *our* script run), and ``--screenshot`` must show
a non-blank page. A corpus document holds ``<script>`` and ``onerror=`` payloads that would
change ``document.title``; the title must stay the report's own and the payload must be text.
Without chromium these tests skip, except under CI=true, where they fail.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

from crossdiff.analysis import AnalysisConfig, analyze
from crossdiff.analysis.results import load_analysis
from crossdiff.cli import main as cli_main
from crossdiff.errors import CrossdiffError
from crossdiff.paths import RunPaths
from crossdiff.report import build_report, render_report
from crossdiff.steering.result import ModelSteering, SteeringResult
from crossdiff_bench.synthetic import make_planted_run

HOSTILE_PROMPT = "<script>document.title='steered'</script>Tell me"
HOSTILE_GENERATION = "</td><b>bold?</b><img src=x onerror=\"document.title='gen'\">"
CHROMIUM_INSTALL = "apt-get update && apt-get install -y chromium"


def chromium() -> str:
    """The chromium binary, or skip (fail under CI=true) with the install command."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    message = f"chromium is not installed; install it with `{CHROMIUM_INSTALL}`"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def run_chromium(page: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp / 'chrome-profile'}",
        "--virtual-time-budget=5000",
        *args,
        page.resolve().as_uri(),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def read_png(path: Path) -> np.ndarray:
    """Decode an 8-bit, non-interlaced RGB/RGBA PNG (what chromium writes) to (h, w, c)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert header is not None
    width, height, depth, color, _, _, interlace = header
    assert depth == 8 and color in (2, 6) and interlace == 0, header
    ch = 3 if color == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * ch
    out = np.zeros((height, stride), dtype=np.int64)
    prev = np.zeros(stride, dtype=np.int64)
    for y in range(height):
        start = y * (stride + 1)
        ftype = raw[start]
        line = np.frombuffer(raw[start + 1 : start + 1 + stride], dtype=np.uint8).astype(np.int64)
        if ftype == 0:
            cur = line
        elif ftype == 2:
            cur = (line + prev) % 256
        else:
            cur = np.zeros(stride, dtype=np.int64)
            for x in range(stride):
                left = cur[x - ch] if x >= ch else 0
                up = prev[x]
                ul = prev[x - ch] if x >= ch else 0
                if ftype == 1:
                    pred = left
                elif ftype == 3:
                    pred = (left + up) // 2
                else:  # Paeth
                    p = left + up - ul
                    pa, pb, pc = abs(p - left), abs(p - up), abs(p - ul)
                    pred = left if pa <= pb and pa <= pc else up if pb <= pc else ul
                cur[x] = (line[x] + pred) % 256
        out[y] = cur
        prev = cur
    return out.reshape(height, width, ch).astype(np.uint8)


def steering_result(
    run: Path, feature: int, *, prompt: str, says: str, notes: tuple[str, ...] = ()
) -> SteeringResult:
    """A steering result in the steering package's own format (no model is run): both models
    steered on ``prompt``, each generation saying ``says`` (tests put hostile text in both)."""
    models = [
        ModelSteering(
            model=m,
            model_id=f"synthetic/model-{m}",
            layer=1,
            direction="decoder" if m == "a" else "mapped from a",
            vector_norm=1.0,
            median_norm=3.0,
            rendering="plain text",
            generations=[[f"{m} says {says} at {a}" for a in (-2.0, 0.0, 2.0)]],
            batched=True,
            rates=[0.0, 0.5, 1.0],
            notes=list(notes),
        )
        for m in ("a", "b")
    ]
    return SteeringResult(
        run=str(run),
        feature=feature,
        partition="A-exclusive",
        s_max=5.0,
        s_max_source="analysis table",
        mode="add",
        alphas=[-2.0, 0.0, 2.0],
        prompts=[prompt],
        models=models,
        settings={},
        scorer="keyword",
    )


def write_steering(run: Path, feature: int) -> None:
    """A saved steering result with hostile text in its prompt and generations."""
    result = steering_result(run, feature, prompt=HOSTILE_PROMPT, says=HOSTILE_GENERATION)
    result.save(RunPaths(run).steering_file(feature))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict[str, int]]]:
    out = {}
    for kind in ("dfc", "standard"):
        root = tmp_path_factory.mktemp(f"report-{kind}")
        roles = make_planted_run(root, kind=kind)
        analyze(root, config=AnalysisConfig(probe_split="all", progress=False, device="cpu"))
        write_steering(root, roles["a_only"])
        build_report(root)
        out[kind] = (root, roles)
    return out


def test_report_is_self_contained_and_escaped(runs) -> None:
    root, roles = runs["dfc"]
    html = RunPaths(root).report.read_text(encoding="utf-8")
    assert html.count("<script") == 1  # only the page's own script
    assert "<img" not in html and 'onerror="document' not in html
    assert "&lt;script&gt;document.title=&#x27;pwned&#x27;&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=&quot;document.title=" in html
    # nothing is fetched: no external URLs other than the SVG namespace name
    urls = set(re.findall(r"https?://[^\s\"'<>)]+", html))
    assert urls <= {"http://www.w3.org/2000/svg"}, urls
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html)
    # the CSP admits exactly the inline script that is there
    script = re.search(r"<script>(.*)</script>", html, re.S).group(1)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src &#x27;sha256-{digest}&#x27;" in html
    # the detail view of the A-only feature, with its steering section
    assert f'id="f-{roles["a_only"]}"' in html
    assert "Steering" in html and "&lt;script&gt;document.title=&#x27;steered&#x27;" in html
    assert "&lt;/td&gt;&lt;b&gt;bold?&lt;/b&gt;" in html
    assert "Partition activity" in html and "<svg" in html


def test_standard_report_plots_relative_norms(runs) -> None:
    root, _ = runs["standard"]
    html = RunPaths(root).report.read_text(encoding="utf-8")
    assert "Relative decoder norm" in html
    assert "latent scaling" in html


def test_report_renders_in_chromium(runs, tmp_path: Path) -> None:
    root, _ = runs["dfc"]
    page = RunPaths(root).report
    dom = run_chromium(page, tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    text = dom.stdout
    assert 'data-ready="1"' in text, "the report's script did not run (CSP or JS error)"
    title = re.search(r"<title>(.*?)</title>", text, re.S).group(1)
    assert title == "crossdiff: synthetic/model-a vs synthetic/model-b"
    for name in ("list-a", "list-b"):
        table = re.search(rf'<table class="sortable" id="{name}">(.*?)</table>', text, re.S)
        assert table and table.group(1).count("<tr data-verdict=") >= 2, name
    assert re.search(r'<span class="count">\d+ of \d+ shown</span>', text)
    # hostile corpus text is in the DOM as text, and nothing of it became an element
    assert "&lt;script&gt;document.title='pwned'&lt;/script&gt;" in text
    assert "<img" not in text and text.count("<script") == 1
    assert "&lt;script&gt;document.title='steered'" in text

    shot = tmp_path / "report.png"
    res = run_chromium(page, tmp_path, f"--screenshot={shot}", "--window-size=1200,1600")
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    img = read_png(shot)
    assert img.shape[0] >= 1000 and img.shape[1] >= 1000
    rgb = img[..., :3].reshape(-1, 3)
    dark = (rgb.sum(1) < 200).mean()  # text, lines
    assert dark > 0.003, f"the page looks blank ({dark:.4%} dark pixels)"
    assert len(np.unique(rgb[::7], axis=0)) > 20  # plot colours, highlights, text


def test_detail_view_opens_by_fragment(runs, tmp_path: Path) -> None:
    """The detail view is CSS :target; with #f-N in the URL it is displayed."""
    root, roles = runs["dfc"]
    page = RunPaths(root).report
    f = roles["a_only"]
    uri = page.resolve().as_uri() + f"#f-{f}"
    cmd = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'p2'}",
        f"--screenshot={tmp_path / 'detail.png'}",
        "--window-size=1200,900",
        uri,
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    img = read_png(tmp_path / "detail.png")
    # the detail view scrolled into place shows the highlighted token (the mark's yellow)
    rgb = img[..., :3].astype(int)
    yellow = (rgb[..., 0] > 240) & (rgb[..., 1] > 220) & (rgb[..., 2] < 160)
    assert yellow.sum() > 50


def test_report_cli_and_errors(runs, tmp_path: Path, capsys) -> None:
    root, _ = runs["standard"]
    out = tmp_path / "r.html"
    assert cli_main(["report", str(root), "--out", str(out), "--max-features", "1"]) == 0
    assert "report written" in capsys.readouterr().out
    html = out.read_text(encoding="utf-8")
    concept_rows = sum(
        html.split(f'id="list-{m}"')[1].split("</table>")[0].count('<tr data-verdict="')
        for m in "ab"
    )
    assert concept_rows == 2  # one per model (flagged candidates have their own tables)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CrossdiffError, match="crossdiff analyze"):
        build_report(empty)
    assert cli_main(["report", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(CrossdiffError, match="must be positive"):
        render_report(load_analysis(root), max_features=0)
