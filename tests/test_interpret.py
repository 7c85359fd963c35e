"""crossdiff.interpret: explanations, detection/fuzzing scores, harm screen, backends.

The fixture is a real run folder: a synthetic store (the real store writer) whose documents
are random words with planted ones, activations that carry a signal exactly where a planted
word is, the planted hand-built DFC of ``crossdiff_bench.synthetic`` (feature 0 reads A's
dim 0, the first B-exclusive feature reads B's dim 1), and the real analysis. So feature 0 is
the concept "refuse" of model A, the first B feature the concept "weapon" of model B, and
feature 1 reads a signal that is random with respect to the text.
LLM backends are tested against a fake OpenAI-compatible server on 127.0.0.1 (good, garbage,
slow, HTML/script replies) and a tiny random transformers model.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from crossdiff.analysis import AnalysisConfig, analyze
from crossdiff.cli import main as cli_main
from crossdiff.errors import CrossdiffError
from crossdiff.interpret import (
    InterpretConfig,
    interpret,
    interpret_html,
    interpret_lines,
    parse_spec,
    stage,
)
from crossdiff.interpret.llm import parse_categories, parse_explanation, parse_probabilities
from crossdiff.interpret.samples import Context, decoy
from crossdiff.interpret.scores import auroc, score, wilson
from crossdiff.paths import RunPaths
from crossdiff_bench.synthetic import WORDS, planted_crosscoder, write_synthetic_store

D_A, D_B = 16, 12
N_DOCS, N_WORDS = 100, 30
HOSTILE = "<script>document.title='x'</script>"


def _texts(seed: int = 0) -> dict[int, list[str]]:
    rng = np.random.default_rng(seed)
    docs = {}
    for d in range(N_DOCS):
        words = [WORDS[i] for i in rng.integers(len(WORDS), size=N_WORDS)]
        for j in range(N_WORDS):
            u = rng.random()
            if u < 0.06:
                words[j] = "refuse"
            elif u < 0.12:
                words[j] = "weapon"
        docs[d] = words
    docs[3][5] = HOSTILE  # hostile text in a document (shown as text everywhere)
    return docs


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("interpret-run")
    docs = _texts()

    def acts(doc: int, n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        words = docs[doc]
        x_a = rng.normal(0.0, 0.3, size=(n, D_A))
        x_b = rng.normal(0.0, 0.3, size=(n, D_B))
        refuse = np.array([w == "refuse" for w in words], dtype=float)
        weapon = np.array([w == "weapon" for w in words], dtype=float)
        x_a[:, 0] += refuse * rng.uniform(1.5, 3.0, size=n)
        x_b[:, 1] += weapon * rng.uniform(1.5, 3.0, size=n)
        noise = (rng.random(n) < 0.15) * rng.uniform(1.0, 2.0, size=n)
        x_a[:, 1] += noise  # feature 1: a signal unrelated to the words
        x_b[:, 0] += noise
        return torch.from_numpy(x_a).float(), torch.from_numpy(x_b).float()

    paths = RunPaths(root)
    write_synthetic_store(
        paths.store,
        n_docs=N_DOCS,
        words_per_doc=N_WORDS,
        d_a=D_A,
        d_b=D_B,
        activations=acts,
        texts={d: " ".join(w) for d, w in docs.items()},
        shard_rows=700,
    )
    cc, _ = planted_crosscoder("dfc", D_A, D_B)
    cc.save_pretrained(paths.crosscoder)
    analyze(root, config=AnalysisConfig(probe_split="all", progress=False, device="cpu"))
    return root


def b_feature(run: Path) -> int:
    from crossdiff.analysis import load_analysis

    t = load_analysis(run).features.to_pydict()
    return min(f for f, k in zip(t["feature"], t["klass"]) if k == "B")


def quiet(**kw) -> InterpretConfig:
    return InterpretConfig(progress=False, **kw)


# ---- small pieces ------------------------------------------------------------------------------
def test_scores_intervals_and_auroc() -> None:
    s = score([True] * 10 + [False] * 10, [0.9] * 9 + [0.1] + [0.1] * 10)
    assert s.value == pytest.approx(0.95) and s.n == 20
    assert s.ci_low < 0.95 < s.ci_high <= 1.0
    lo, hi = wilson(0.5, 20)
    assert lo == pytest.approx(0.299, abs=1e-3) and hi == pytest.approx(0.701, abs=1e-3)
    assert auroc([True, True, False], [0.9, 0.5, 0.5]) == pytest.approx(0.75)
    unanswered = score([True, False, True], [None, 0.2, 0.8])
    assert unanswered.n == 2 and unanswered.unanswered == 1 and unanswered.value == 1.0
    assert np.isnan(score([True], [0.9]).value)  # one class only: no score


def test_parsers_treat_model_output_as_data() -> None:
    assert parse_explanation("Thinking...\nEXPLANATION: the word refuse").text == "the word refuse"
    junk = parse_explanation("<script>alert(1)</script>\x1b[31m")
    assert junk.status == "unparsed" and "\x1b" not in junk.text
    assert parse_explanation("   \n ").status == "empty"
    assert parse_probabilities("sure: [1, 0, 0.5]", 3) == [1.0, 0.0, 0.5]
    assert parse_probabilities("[1, 0]", 3) is None
    assert parse_probabilities("[1, 7, 0]", 3) is None
    assert parse_probabilities('[true, "x", 0]', 3) is None
    assert parse_categories('["Violence", "jailbreak", "cats"]') == ["jailbreaks", "violence"]
    assert parse_categories("none") is None and parse_categories("[]") == []


def test_decoy_marks_another_chunk() -> None:
    rng = np.random.default_rng(0)
    c = Context("we will ", "refuse", " that, friend", 2.0)
    d = decoy(c, rng)
    assert d is not None and d.tok != "refuse"
    assert d.pre + d.tok + d.post == c.pre + c.tok + c.post
    assert decoy(Context("", "refuse", ""), rng) is None


def test_specs_name_the_fix() -> None:
    assert parse_spec("openai:http://h:1/v1#m") == ("openai", "http://h:1/v1", "m")
    assert parse_spec("hf:smollm2-135m-instruct")[0] == "hf"
    for bad in ("gpt4", "openai:h#m", "openai:http://h/v1", "hf:", ""):
        with pytest.raises(CrossdiffError, match=r"openai:<base URL>#<model>|stats"):
            parse_spec(bad)
    with pytest.raises(CrossdiffError, match="judge_batch"):
        interpret(".", quiet(judge_batch=0))


# ---- the stats backend on the planted run ------------------------------------------------------
def test_stats_names_the_planted_concepts(run: Path) -> None:
    res = interpret(run, quiet())
    rows = {r["feature"]: r for r in res.rows()}
    refuse, weapon, random_feature = rows[0], rows[b_feature(run)], rows[1]
    assert "refuse" in refuse["explanation"] and "refuse" in refuse["top_terms"]
    assert refuse["detection"] >= 0.8 and refuse["interpretable"]
    assert refuse["detection_n"] >= 10 and refuse["fuzzing_n"] >= 10
    assert refuse["detection_ci_low"] <= refuse["detection"] <= refuse["detection_ci_high"]
    assert refuse["fuzzing"] >= 0.8 and refuse["auroc"] >= 0.8
    assert weapon["side"] == "b" and "weapon" in weapon["explanation"]
    assert weapon["detection"] >= 0.8
    assert not np.isfinite(random_feature["detection"]) or (
        random_feature["detection"] < refuse["detection"]
    )
    assert not random_feature["interpretable"]
    # the harm screen's lexicon: refusal -> censorship, weapon -> violence; flagged go first
    assert refuse["harm_categories"] == ["censorship"]
    assert weapon["harm_categories"] == ["violence"]
    assert res.review_first[0] == 0 and b_feature(run) in res.review_first
    flags = [r["harm_flagged"] for r in res.rows()]
    assert flags == sorted(flags, reverse=True)  # flagged features first
    assert {r["klass"] for r in res.rows()} >= {"A", "B", "S"}
    meta = json.loads((RunPaths(run).interpret / "interpret.json").read_text())
    assert meta["samples"]["non_activating"].startswith("random store rows where")
    assert meta["counts"]["features"] == len(res.rows()) and meta["calls"] == {}
    table = pq.read_table(RunPaths(run).interpret / "explanations.parquet")
    assert table.num_rows == len(res.rows()) and "harm_categories" in table.column_names
    # deterministic: a rerun gives the same table
    again = interpret(run, quiet())
    assert again.table.drop(["explainer"]).equals(res.table.drop(["explainer"]))


def test_views_escape_and_stage_skips(run: Path, capsys) -> None:
    res = interpret(run, quiet())
    html = interpret_html(run)
    assert 'id="list-interpret"' in html and 'class="sortable"' in html
    assert "<script" not in html
    lines = interpret_lines(run, 0)
    assert any("refuse" in line for line in lines) and any("censorship" in x for x in lines)
    explained = {r["feature"] for r in res.rows()}
    assert interpret_lines(run, next(i for i in range(64) if i not in explained)) == []
    assert interpret_html(run.parent / "nowhere") == ""
    assert stage({"progress": False}, run, False) == "skipped (complete)"
    assert stage({"shared": 2}, run, False).startswith("done")
    assert cli_main(["interpret", str(run), "--no-progress", "--max-features", "2"]) == 0
    assert "features explained" in capsys.readouterr().out
    assert cli_main(["interpret", str(run), "--explainer", "gpt4"]) == 2
    assert "unknown backend 'gpt4'" in capsys.readouterr().err


# ---- the openai backend against a fake server ---------------------------------------------------
class FakeServer:
    """An OpenAI-compatible /chat/completions on 127.0.0.1 with a chosen behaviour."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                outer.requests += 1
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if outer.mode == "slow":
                    time.sleep(1.5)
                if outer.mode == "garbage":
                    return self._send(b"\x00not json {{{", "text/plain")
                content = outer.answer(body["messages"])
                reply = {
                    "id": "x",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": content},
                        }
                    ],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
                }
                self._send(json.dumps(reply).encode(), "application/json")

            def _send(self, data: bytes, kind: str) -> None:
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", kind)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def answer(self, messages: list[dict[str, str]]) -> str:
        if self.mode == "html":
            return "<script>document.title='pwned'</script><b>bold</b>"
        system, user = messages[0]["content"], messages[-1]["content"]
        if system.startswith("You help audit"):
            return "Looking at these...\nEXPLANATION: the word refuse"
        if system.startswith("You screen"):
            return '["censorship"]' if "refuse" in user else "[]"
        examples = re.findall(r"^Example \d+: (.*)$", user, re.MULTILINE)
        return json.dumps([1 if "<<refuse>>" in x else 0 for x in examples])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> FakeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def llm_config(url: str, **kw) -> InterpretConfig:
    base = dict(
        explainer=f"openai:{url}#fake-model",
        features=[0, 1],
        score_examples=6,
        concurrency=2,
        retries=1,
        backoff_s=0.01,
        timeout_s=5.0,
        progress=False,
    )
    base.update(kw)
    return InterpretConfig(**base)


def test_openai_backend_scores_and_caches(run: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CROSSDIFF_OPENAI_API_KEY", "test-key")
    with FakeServer("good") as server:
        res = interpret(run, llm_config(server.url))
        first = server.requests
        rows = {r["feature"]: r for r in res.rows()}
        assert rows[0]["explanation"] == "the word refuse" and rows[0]["parse_status"] == "ok"
        assert rows[0]["detection"] >= 0.8 and rows[0]["fuzzing"] >= 0.8
        assert rows[0]["harm_categories"] == ["censorship"] and rows[0]["judge_unparsed"] == 0
        assert rows[0]["explainer"].startswith("openai:http://127.0.0.1")
        calls = next(iter(res.meta["calls"].values()))
        assert calls["calls"] == first > 0 and calls["tokens_in"] == 10 * first
        assert list(RunPaths(run).interpret_cache.glob("*/*.json"))
        # a rerun is served from the cache: zero requests
        again = interpret(run, llm_config(server.url))
        assert server.requests == first
        calls = next(iter(again.meta["calls"].values()))
        assert calls["calls"] == 0 and calls["cache_hits"] == first
        assert again.table.equals(res.table)


@pytest.mark.parametrize("mode", ["garbage", "slow", "html"])
def test_openai_backend_survives_bad_servers(run: Path, mode: str) -> None:
    with FakeServer(mode) as server:
        t0 = time.perf_counter()
        cfg = llm_config(server.url, timeout_s=0.3, cache=False, features=[0])
        res = interpret(run, cfg)
        elapsed = time.perf_counter() - t0
    row = res.rows()[0]
    calls = next(iter(res.meta["calls"].values()))
    if mode == "html":
        assert row["parse_status"] == "unparsed" and "<script>" in row["explanation"]
        assert row["judge_unparsed"] > 0 and row["detection_n"] == 0
        assert row["harm_status"] == "unparsed"
        assert "<script>" not in interpret_html(run) and "&lt;script&gt;" in interpret_html(run)
    else:
        assert row["parse_status"].startswith("error:") and calls["errors"] >= 1
        assert calls["first_error"]
        assert not np.isfinite(row["detection"]) and not row["interpretable"]
        if mode == "slow":
            assert calls["retries"] >= 1 and elapsed < 10
    assert res.meta["counts"]["feature_errors"] == 0


# ---- the hf backend with a tiny random model ----------------------------------------------------
def test_hf_backend_with_a_tiny_model(run: Path, tiny_model) -> None:
    folder = tiny_model("llama", "bpe")
    cfg = InterpretConfig(
        explainer=f"hf:{folder}",
        features=[0, 1, b_feature(run)],
        explain_examples=4,
        score_examples=3,
        max_new_tokens=6,
        judge_batch=6,
        device="cpu",
        dtype="float32",
        progress=False,
    )
    res = interpret(run, cfg)
    assert len(res.rows()) == 3
    for row in res.rows():
        assert row["explainer"].startswith("hf:") and row["parse_status"] in (
            "ok",
            "unparsed",
            "empty",
        )
    calls = next(iter(res.meta["calls"].values()))
    assert calls["calls"] > 0 and calls["tokens_out"] > 0 and calls["errors"] == 0
    # the stats judge can score an LLM's explanation too
    mixed = interpret(run, InterpretConfig(**{**cfg.to_dict(), "judge": "stats"}))
    assert next(iter(mixed.meta["calls"].values()))["calls"] == 0  # explanations are cached
    assert {r["judge"] for r in mixed.rows()} == {"stats"}
