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
from crossdiff.interpret import InterpretConfig, interpret, parse_spec, stage
from crossdiff.interpret.llm import parse_categories, parse_explanation, parse_probabilities
from crossdiff.interpret.samples import (
    BACKGROUND,
    Context,
    FeatureJob,
    Pool,
    SameToken,
    choose_negatives,
    decoy,
    feature_rng,
)
from crossdiff.interpret.scores import auroc, score, wilson
from crossdiff.paths import RunPaths
from crossdiff.report import interpret_html, interpret_lines
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
    with pytest.raises(CrossdiffError, match="random, hard, mixed"):
        interpret(".", quiet(negatives="neighbours"))


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
    assert {0, b_feature(run)} <= set(res.review_first)
    flags = [(r["harm_flagged"], len(r["harm_categories"])) for r in res.rows()]
    assert flags == sorted(flags, reverse=True)  # flagged features first, most categories first
    # the default negatives are mixed; "refuse" fires on every occurrence: no hard negative
    assert refuse["detection_hard_n"] == 0 and weapon["detection_hard_n"] == 0
    assert random_feature["detection_hard_n"] > 0
    assert {r["klass"] for r in res.rows()} >= {"A", "B", "S"}
    meta = json.loads((RunPaths(run).interpret / "interpret.json").read_text())
    assert meta["samples"]["non_activating"].startswith("random store rows where")
    assert meta["samples"]["negatives"] == "mixed"
    assert meta["samples"]["hard"]["used"] == sum(r["detection_hard_n"] for r in res.rows())
    assert meta["counts"]["features"] == len(res.rows()) and meta["calls"] == {}
    table = pq.read_table(RunPaths(run).interpret / "explanations.parquet")
    assert table.num_rows == len(res.rows()) and "harm_categories" in table.column_names
    # deterministic: a rerun gives the same table
    again = interpret(run, quiet())
    assert again.table.drop(["explainer"]).equals(res.table.drop(["explainer"]))


# ---- hard negatives ----------------------------------------------------------------------------
def _examples_of(run: Path, feature: int) -> set[int]:
    from crossdiff.analysis import load_analysis

    t = load_analysis(run).examples.to_pydict()
    return {r for f, r in zip(t["feature"], t["row"]) if f == feature}


def _activations(run: Path, rows: list[int]) -> dict[int, np.ndarray]:
    """Dense activations of store rows (the planted crosscoder is a ReLU one)."""
    from crossdiff.crosscoder import Crosscoder
    from crossdiff.store import ActivationStore

    cc = Crosscoder.from_pretrained(RunPaths(run).crosscoder).eval()
    x_a, x_b = ActivationStore.open(RunPaths(run).store).rows_at(np.array(sorted(rows)))
    with torch.no_grad():
        f = cc.encode(cc.normalize(x_a.float(), "a"), cc.normalize(x_b.float(), "b"))
    return dict(zip(sorted(rows), f.numpy()))


def test_hard_negatives_share_the_token_and_are_silent(run: Path) -> None:
    from crossdiff.analysis import load_analysis
    from crossdiff.interpret.samples import build_jobs, token_key

    jobs, notes = build_jobs(run, load_analysis(run), quiet(features=[0, 1], negatives="hard"))
    by = {j.feature: j for j in jobs}
    noise = by[1]  # fires on 15% of the rows whatever the word: its words have silent rows
    assert noise.hard_n == noise.hard_wanted == len(noise.held_out) == len(noise.negatives)
    for pos, neg in zip(noise.held_out, noise.negatives):
        assert token_key(neg.tok) == token_key(pos.tok) and neg.activation == 0.0
    neg_rows = {c.row for c in noise.negatives}
    bg_rows = {c.row for c in noise.background}
    assert noise.background_hard_n > 0 and len(noise.background) == BACKGROUND
    assert not neg_rows & bg_rows and not (neg_rows | bg_rows) & _examples_of(run, 1)
    acts = _activations(run, sorted(neg_rows | bg_rows))
    assert all(acts[r][1] == 0.0 for r in neg_rows | bg_rows)  # exactly 0, not just small
    # fallback: feature 0 fires on every "refuse", so its negatives are all random ones
    refuse = by[0]
    assert refuse.hard_wanted == len(refuse.held_out) > 0 and refuse.hard_n == 0
    assert len(refuse.negatives) == len(refuse.held_out) and refuse.background_hard_n == 0
    assert all(token_key(c.tok) != "refuse" for c in refuse.negatives)
    hard = notes["hard"]
    assert hard["wanted"] == noise.hard_wanted + refuse.hard_wanted
    assert hard["used"] == noise.hard_n and hard["features_no_hard"] == 1
    assert hard["features_all_hard"] == 1 and hard["searched_rows"] == N_DOCS * N_WORDS
    # mixed: every other held-out example asks for one
    jobs, notes = build_jobs(run, load_analysis(run), quiet(features=[1], negatives="mixed"))
    (mixed,) = jobs
    assert mixed.hard_wanted == mixed.hard_n == (len(mixed.held_out) + 1) // 2
    assert notes["hard"]["used"] == mixed.hard_n
    res = interpret(run, quiet(features=[0, 1], negatives="hard"))
    rows = {r["feature"]: r for r in res.rows()}
    assert rows[1]["detection_hard_n"] == noise.hard_n and rows[0]["detection_hard_n"] == 0


def test_random_negatives_are_the_old_selection(run: Path) -> None:
    """negatives=random: the pool's rows where the feature is 0, not among its examples, in
    the feature's seeded order: detection's first, then the background (as before hard
    negatives existed)."""
    from crossdiff.analysis import load_analysis
    from crossdiff.interpret.samples import build_jobs
    from crossdiff.store import ActivationStore

    jobs, notes = build_jobs(run, load_analysis(run), quiet(negatives="random"))
    assert notes["negatives"] == "random" and "hard" not in notes
    total = ActivationStore.open(RunPaths(run).store).n_rows
    pool = np.sort(np.random.default_rng(0).choice(total, size=min(2000, total), replace=False))
    acts = _activations(run, pool.tolist())
    for job in jobs:
        exclude = _examples_of(run, job.feature)
        order = feature_rng(0, job.feature, "pool").permutation(len(pool))
        want = [int(pool[k]) for k in order if pool[k] not in exclude]
        want = [r for r in want if acts[r][job.feature] == 0.0][: len(job.held_out) + BACKGROUND]
        assert [c.row for c in job.negatives + job.background] == want
        assert len(job.negatives) == len(job.held_out) and job.hard_n == job.hard_wanted == 0


def _words(rng: np.random.Generator, n: int) -> list[str]:
    plain = [w for w in WORDS if w not in ("bank", "river", "money", "refuse")]
    return [plain[i] for i in rng.integers(len(plain), size=n)]


def _at(rng: np.random.Generator, before: list[str], tok: str, act: float, row: int) -> Context:
    pre = " ".join(_words(rng, 5) + before)
    return Context(pre + " ", tok, " " + " ".join(_words(rng, 3)), act, row)


def test_hard_negatives_need_the_context_a_token_feature_keeps_its_score() -> None:
    """Synthetic: feature 7 fires on "bank" after "river" and is silent on "bank" after
    "money"; feature 8 fires on every "refuse". Against random negatives a token-level
    explanation of feature 7 looks perfect; against hard ones it is at chance, while the
    explanation written against same-token contexts names the context and keeps its score.
    Feature 8 has no silent occurrence: the same (random) negatives and the same score."""
    from crossdiff.interpret.stats import StatsExplainer, StatsJudge

    rng = np.random.default_rng(0)
    pool_ctx = [_at(rng, [], w, 0.0, r) for r, w in enumerate(_words(rng, 400))]
    pool = Pool(np.arange(400), {"a": pool_ctx, "b": pool_ctx}, [frozenset()] * 400, "test")
    money = [_at(rng, ["money"], "bank", 0.0, 1000 + i) for i in range(150)]
    river = [_at(rng, ["the", "river"], "bank", 5.0, 2000 + i) for i in range(60)]
    refuse = [_at(rng, [], "refuse", 5.0, 3000 + i) for i in range(80)]
    active = {c.row: frozenset() for c in money}
    active.update({c.row: frozenset({7}) for c in river} | {c.row: frozenset({8}) for c in refuse})
    candidates = {("a", "bank"): money + river[:20], ("a", "refuse"): refuse[:40]}
    same = SameToken(candidates, active, 10_000, 290)

    def job(feature: int, positives: list[Context], mode: str) -> FeatureJob:
        explain, held = positives[:12], positives[12:22]
        neg = choose_negatives(feature, "a", explain, held, set(), pool, same, mode, 0)
        return FeatureJob(
            feature, "A", 1, "", "a", 0.01, explain, held, neg.negatives, neg.background,
            neg.hard_n, neg.hard_wanted, neg.background_hard_n,
        )  # fmt: skip

    def detection(exp_job: FeatureJob, negatives: list[Context]) -> float:
        """Detection of exp_job's stats explanation on its held-out examples and negatives."""
        exp = StatsExplainer().explain(exp_job)
        ctxs = exp_job.held_out + negatives
        probs, _ = StatsJudge().probabilities(exp, "detection", ctxs, exp_job.feature)
        return score([True] * len(exp_job.held_out) + [False] * len(negatives), probs).value

    ctx_random, ctx_hard = job(7, river[20:], "random"), job(7, river[20:], "hard")
    assert ctx_hard.hard_n == 10 and ctx_hard.background_hard_n > 0
    assert all(c.tok == "bank" and 1000 <= c.row < 2000 for c in ctx_hard.negatives)  # silent
    assert not {c.row for c in ctx_hard.negatives} & {c.row for c in ctx_hard.background}
    # a token-level explanation: perfect against random text, at chance against hard negatives
    assert StatsExplainer().explain(ctx_random).text.startswith('token "bank"')
    assert detection(ctx_random, ctx_random.negatives) >= 0.9
    assert detection(ctx_random, ctx_hard.negatives) <= 0.6
    # written against same-token contexts, the explanation names the context and holds up
    assert "river" in StatsExplainer().explain(ctx_hard).text
    assert detection(ctx_hard, ctx_hard.negatives) >= 0.8
    # the pure token feature: no silent "refuse", so the hard run is the random run
    tok_random, tok_hard = job(8, refuse[40:], "random"), job(8, refuse[40:], "hard")
    assert tok_hard.hard_n == 0 and tok_hard.hard_wanted == 10
    assert [c.row for c in tok_hard.negatives] == [c.row for c in tok_random.negatives]
    assert detection(tok_hard, tok_hard.negatives) == detection(tok_random, tok_random.negatives)
    assert detection(tok_hard, tok_hard.negatives) >= 0.9


def test_a_decision_feature_is_explained_by_the_prompt_it_ends() -> None:
    """Synthetic: feature 9 fires at the last template token of prompts about "karvonia" and
    is silent at the same token ending other prompts, whose last words are the same template:
    only words earlier than the near window tell them apart, and the explanation names them
    and keeps its detection against those same-token negatives."""
    from crossdiff.interpret.stats import StatsExplainer, StatsJudge

    rng = np.random.default_rng(1)
    template = ["<", "|", "im_start", "|", ">", "assistant"]

    def prompt(topic: str, act: float, row: int) -> Context:
        words = [*_words(rng, 3), topic, *_words(rng, 2), *template]
        return Context(" ".join(words), "\n", "", act, row)

    pool_ctx = [_at(rng, [], w, 0.0, r) for r, w in enumerate(_words(rng, 400))]
    pool = Pool(np.arange(400), {"a": pool_ctx, "b": pool_ctx}, [frozenset()] * 400, "test")
    other = [prompt("delmora", 0.0, 1000 + i) for i in range(150)]
    on = [prompt("karvonia", 5.0, 2000 + i) for i in range(60)]
    active = {c.row: frozenset() for c in other} | {c.row: frozenset({9}) for c in on}
    same = SameToken({("a", "\n"): other + on[:20]}, active, 10_000, 170)
    explain, held = on[20:32], on[32:42]
    neg = choose_negatives(9, "a", explain, held, set(), pool, same, "hard", 0)
    job = FeatureJob(
        9, "A", 1, "", "a", 0.01, explain, held, neg.negatives, neg.background,
        neg.hard_n, neg.hard_wanted, neg.background_hard_n,
    )  # fmt: skip
    assert job.hard_n == 10
    exp = StatsExplainer().explain(job)
    assert 'earlier "karvonia"' in exp.text and "far:karvonia" in exp.top_terms()
    probs, _ = StatsJudge().probabilities(exp, "detection", held + neg.negatives, 9)
    assert score([True] * len(held) + [False] * len(neg.negatives), probs).value >= 0.9


def test_earlier_words_that_add_nothing_leave_a_token_explanation_alone() -> None:
    """Synthetic, like the planted praise marker: feature 5 fires on every ":" that ends a
    prompt, and most of those prompts also hold the word "many" early on. "many" passes the
    contrast (an earlier ``far`` term), but the token alone already tells the examples from
    the background, so the explanation is written without it; the karvonia test above is the
    other side, where only the earlier words tell."""
    from crossdiff.interpret.stats import StatsExplainer, choose_terms, contrastive_terms

    rng = np.random.default_rng(2)

    def prompt(i: int) -> Context:
        early = ["many"] if i % 6 else _words(rng, 1)
        return Context(" ".join([*_words(rng, 2), *early, *_words(rng, 5)]) + " ", ":", "", 4.0, i)

    pos = [prompt(i) for i in range(22)]
    background = [_at(rng, [], w, 0.0, 500 + r) for r, w in enumerate(_words(rng, 60))]
    job = FeatureJob(5, "A", 1, "", "a", 0.01, pos[:12], pos[12:], [], background)
    assert ("far", "many") in [(k, t) for k, t, *_ in contrastive_terms(pos[:12], background)]
    assert all(kind != "far" for kind, *_ in choose_terms(job))
    exp = StatsExplainer().explain(job)
    assert exp.text.startswith('token ":"') and "earlier" not in exp.text


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
