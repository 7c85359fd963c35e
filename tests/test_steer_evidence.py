"""Steering evidence (issue 14): coherence, the random-feature null, effects and the verdict.

Run-level checks reuse test_steer.py's tiny run folder (two tiny random models, a tiny DFC);
the null features are fixed by patching the draw (that run has no analysis table), and the
draw itself is tested on a small fake table. The verdict logic is tested on synthetic
per-(prompt, alpha) scores, where "a planted direction that moves a keyword's rate while random
ones do not" can be written down exactly.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
import torch

import crossdiff.steering.api as api
from crossdiff.paths import RunPaths
from crossdiff.steering import SteerConfig, SteeringResult
from crossdiff.steering import evidence as ev
from crossdiff.steering.context import RunContext
from crossdiff.steering.generation import GenerationSettings, generate_rows, prompt_ids
from crossdiff.steering.hooks import add_fn
from crossdiff.steering.result import ModelSteering
from test_steer import (  # noqa: F401 (fixtures)
    A_EXCL,
    ARCHS,
    PROMPTS,
    SPEC_A,
    SPEC_B,
    _steer,
    greedy,
    run_dir,
)

pytestmark = pytest.mark.usefixtures("one_thread_module")

NULLS = [0, 2, 3]  # A-exclusive features of the tiny DFC, as the fixed null draw


# ---- per-generation measures -----------------------------------------------------------------
def test_repetition_and_nonword_rate():
    assert ev.repetition([1, 2, 3, 4, 5, 6]) == 0.0
    assert ev.repetition([7] * 20) > 0.9
    assert ev.repetition([1, 2]) == 0.0
    assert ev.nonword_rate("The quick brown fox, it's well-known: 1989.") == 0.0
    assert ev.nonword_rate("AkindioTdDDDD") == 1.0
    assert ev.nonword_rate("DDDD xQz") == 1.0
    assert ev.nonword_rate("") == 0.0
    assert ev.nonword_rate("NASA and Paris") == 0.0


@pytest.mark.parametrize("spec", ARCHS)
def test_continuation_loss_matches_a_direct_forward_and_padding(tiny_loaded, spec):
    lm = tiny_loaded(*spec)
    prompts = [prompt_ids(lm, p, chat=True) for p in PROMPTS]
    conts = [greedy(lm, ids, 5) for ids in prompts]
    conts[1] = conts[1][:2]  # rows of different lengths: padding must not change a row's loss
    batched = ev.continuation_loss(lm, prompts, conts, batch_size=8)
    for p, c, got in zip(prompts, conts, batched):
        ids = torch.tensor([p + c])
        with torch.no_grad():
            logp = torch.log_softmax(lm.model(input_ids=ids).logits[0].float(), -1)
        want = -float(sum(logp[len(p) - 1 + i, t] for i, t in enumerate(c))) / len(c)
        assert got == pytest.approx(want, abs=1e-4)
    assert ev.continuation_loss(lm, prompts[:1], [[]]) == [None]


def test_coherence_flags_a_broken_generation_not_the_models_own(tiny_loaded):
    lm = tiny_loaded(*SPEC_A)
    ids = prompt_ids(lm, PROMPTS[0], chat=True)
    own = lm.tokenizer.decode(greedy(lm, ids, 12), skip_special_tokens=True)
    own_c = ev.text_coherence(lm, ids, own)
    broken = ev.text_coherence(lm, ids, " ".join(["fox"] * 16))
    assert broken["repetition"] > ev.MAX_REPETITION
    assert ev.judge_broken(broken["loss"], own_c["loss"], broken["repetition"], broken["nonword"])
    noise = ev.text_coherence(lm, ids, "AkindioTdDDDD QqXzW zzZzz")
    assert noise["nonword"] > ev.MAX_NONWORD
    assert ev.judge_broken(noise["loss"], own_c["loss"], noise["repetition"], noise["nonword"])
    # the loss rule: far above the alpha-0 reference is broken, at the reference it is not
    assert ev.judge_broken(own_c["loss"] + ev.LOSS_MARGIN + 0.1, own_c["loss"], 0.0, 0.0)
    assert not ev.judge_broken(own_c["loss"], own_c["loss"], 0.0, 0.0)
    # the model's own greedy tokens are likelier under it than random tokens
    toks = greedy(lm, ids, 12)
    g = torch.Generator().manual_seed(0)
    noise_ids = torch.randint(0, len(lm.tokenizer), (len(toks),), generator=g).tolist()
    loss_own, loss_shuffled = ev.continuation_loss(lm, [ids, ids], [toks, noise_ids])
    assert loss_own < loss_shuffled
    # alpha-0 cells are coherent by definition, whatever their measures
    grid = ev.coherence_grid([0.0, 2.0], [[9.0, 9.0]], [[0.9, 0.9]], [[0.0, 0.0]], [1.0])
    assert grid["broken"] == [[False, True]]


# ---- the run: nulls in the same batch, alpha 0, JSON -----------------------------------------
@pytest.fixture
def fixed_nulls(monkeypatch):
    monkeypatch.setattr(api, "pick_nulls", lambda run, feature, n, seed=0: (NULLS[:n], None))


def test_steer_with_nulls(run_dir, tiny_loaded, fixed_nulls):  # noqa: F811
    lm = tiny_loaded(*SPEC_A)
    plain = _steer(run_dir, tiny_loaded, A_EXCL, save=False)
    result = _steer(run_dir, tiny_loaded, A_EXCL, nulls=3, score="regex:e")
    m = result.model("a")
    # the feature's own rows do not change when null rows share the batch
    assert m.generations == plain.model("a").generations
    # alpha = 0 reproduces the unsteered model
    for p, prompt in enumerate(PROMPTS[:2]):
        text = lm.tokenizer.decode(
            greedy(lm, prompt_ids(lm, prompt, True), 6), skip_special_tokens=True
        )
        assert m.generations[p][1] == text
    assert [n["feature"] for n in m.nulls] == NULLS
    cc = RunContext.open(run_dir).crosscoder
    dec = cc.decoder_weight("a", raw_scale=True).detach().float()
    push = [a * result.s_max * float(dec[A_EXCL].norm()) for a in result.alphas]
    settings = GenerationSettings(max_new_tokens=6)
    layer = m.layer
    for null in m.nulls:
        j = null["feature"]
        assert null["vector_norm"] == pytest.approx(float(dec[j].norm()), rel=1e-6)
        # same added-vector norm as the feature at every alpha
        got = [abs(c) * null["vector_norm"] for c in null["coefs"]]
        assert got == pytest.approx([abs(x) for x in push], rel=1e-5)
        assert [row[1] for row in null["generations"]] == [row[1] for row in m.generations]
        # a null row equals steering that null direction alone
        ids = prompt_ids(lm, PROMPTS[0], True)
        alone = generate_rows(
            lm, layer, [ids], lambda idx, c=null["coefs"][2], v=dec[j]: add_fn(v, [c]), settings
        )
        assert null["generations"][0][2] == alone.texts[0]
        assert len(null["scores"]) == 2 and len(null["coherence"]["broken"]) == 2
    coh = m.coherence
    assert set(coh) == {"loss", "repetition", "nonword", "broken"}
    assert all(row[1] is False for row in coh["broken"])  # alpha 0
    evid = m.evidence
    assert evid["null_features"] == NULLS and len(evid["null_low"]) == 3
    assert evid["verdict"] in (ev.VERDICT_BEATS, ev.VERDICT_NULL)
    assert result.verdict == evid["verdict"] and evid["coherent"][1] is True
    # saved and loaded back
    path = RunPaths(run_dir).steering / f"feature-{A_EXCL}.json"
    data = json.loads(path.read_text())
    assert data["version"] == 2 and data["verdict"] == result.verdict
    assert data["models"][0]["nulls"][0]["feature"] == NULLS[0]
    assert data["coherence_rule"]["loss_margin"] == ev.LOSS_MARGIN
    back, now = SteeringResult.load(path).to_dict(), result.to_dict()
    back.pop("plot"), now.pop("plot")  # the plot's name is not read back (as before)
    assert back == now
    assert "evidence A:" in result.table(width=100)
    from crossdiff.report import steering_html

    html = steering_html(data)
    assert f"Verdict A: {result.verdict}" in html
    assert "null band A" in html and "coherent A" in html and "effect A (95% CI)" in html
    assert "nats/token" in html and ("⚠ broken" in html or "coherent ·" in html)
    # without a scorer (and no interpret folder): coherence but no behaviour verdict
    unscored = _steer(run_dir, tiny_loaded, A_EXCL, nulls=1, save=False)
    assert unscored.verdict == ev.VERDICT_NO_SCORER
    assert unscored.model("a").evidence["coherent_range"] is not None
    # clamp mode sweeps no nulls, and says so
    clamped = _steer(run_dir, tiny_loaded, A_EXCL, nulls=2, mode="clamp", save=False)
    assert clamped.model("a").nulls is None
    assert any("add mode only" in n for n in clamped.notes)


def test_cross_nulls_off_leaves_the_other_model_without_nulls(run_dir, tiny_loaded, fixed_nulls):  # noqa: F811
    kw = dict(nulls=2, cross_model=True, score="regex:e", save=False)
    both = _steer(run_dir, tiny_loaded, A_EXCL, **kw)
    own = _steer(run_dir, tiny_loaded, A_EXCL, cross_nulls=False, **kw)
    assert [n["feature"] for n in both.model("b").nulls] == NULLS[:2]
    assert not own.model("b").nulls  # the mapped side: the feature's own rows only
    assert [n["feature"] for n in own.model("a").nulls] == NULLS[:2]
    # the rows that are swept are the same generations either way
    assert own.model("b").generations == both.model("b").generations
    assert own.model("a").nulls[0]["generations"] == both.model("a").nulls[0]["generations"]
    assert own.model("b").evidence["verdict"] == ev.VERDICT_NO_NULL
    assert both.model("b").evidence["verdict"] != ev.VERDICT_NO_NULL


def test_version_1_files_still_load(run_dir, tiny_loaded, tmp_path):  # noqa: F811
    data = _steer(run_dir, tiny_loaded, A_EXCL, save=False).to_dict()
    data["version"] = 1
    for key in ("verdict", "coherence_rule", "null_settings"):
        data.pop(key)
    for m in data["models"]:
        for key in ("coherence", "nulls", "evidence"):
            m.pop(key)
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    old = SteeringResult.load(path)
    assert old.verdict is None and old.model("a").coherence is None
    assert "evidence" not in old.table(width=100)
    from crossdiff.report import steering_html

    assert "verdict" not in steering_html(data)


# ---- the null draw and the explanation scorer ------------------------------------------------
class _FakeAnalysis:
    def __init__(self, table):
        self.features = table


def test_pick_nulls_same_class_alive_seeded(monkeypatch, tmp_path):
    n = 40
    table = pa.table(
        {
            "feature": list(range(n)),
            "klass": ["A" if i < 20 else "S" for i in range(n)],
            "dead": [i % 5 == 0 for i in range(n)],
            "s_max": [0.0 if i == 3 else 1.0 for i in range(n)],
        }
    )
    import crossdiff.analysis

    monkeypatch.setattr(crossdiff.analysis, "load_analysis", lambda run: _FakeAnalysis(table))
    chosen, note = ev.pick_nulls(tmp_path, 7, 3, seed=0)
    assert len(chosen) == 3 and note is None and 7 not in chosen
    assert all(c < 20 and c % 5 and c != 3 for c in chosen)
    assert ev.pick_nulls(tmp_path, 7, 3, seed=0)[0] == chosen  # seeded
    many, note = ev.pick_nulls(tmp_path, 7, 50)
    assert len(many) == 14 and "only 14" in note  # 20 A, 4 dead, 1 with s_max 0, not 7
    assert ev.pick_nulls(tmp_path, 7, 0) == ([], None)


def test_explanation_scorer_from_top_terms(tmp_path):
    from crossdiff.interpret.results import META_FILE, SCHEMA, TABLE_FILE

    folder = RunPaths(tmp_path).interpret
    folder.mkdir(parents=True)
    row = {name: None for name in SCHEMA.names}
    row.update(feature=5, top_terms=["ottoman", "the ottoman", "ctx:empire", "–"])
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([row], schema=SCHEMA), folder / TABLE_FILE)
    (folder / META_FILE).write_text(json.dumps({"format": "crossdiff-interpret"}))
    scorer = ev.explanation_scorer(tmp_path, 5)
    assert scorer.name == "keywords:ottoman,the ottoman,empire"
    assert scorer("", "The Ottoman Empire") == 1.0 and scorer("", "a sultan") == 0.0
    assert ev.explanation_scorer(tmp_path, 6) is None
    assert ev.explanation_scorer(tmp_path / "nothing", 5) is None


# ---- effects and the verdict on synthetic scores -----------------------------------------------
ALPHAS = [-4.0, -2.0, 0.0, 2.0, 4.0]


def _model(scores, null_scores, broken=None) -> ModelSteering:
    n_p = len(scores)
    broken = broken or [[False] * len(ALPHAS) for _ in range(n_p)]
    return ModelSteering(
        model="a",
        model_id="tiny",
        layer=1,
        direction="decoder",
        vector_norm=1.0,
        median_norm=None,
        rendering="plain text",
        generations=[[""] * len(ALPHAS) for _ in range(n_p)],
        batched=True,
        scores=scores,
        coherence={"broken": broken},
        nulls=[{"feature": 100 + k, "scores": s} for k, s in enumerate(null_scores)],
    )


def test_planted_direction_beats_the_null_random_ones_do_not():
    # the planted direction turns the keyword on in every prompt at alpha >= 2; random
    # directions pushed as hard leave it at its base rate (1 prompt in 6)
    base = [1.0, 0, 0, 0, 0, 0]
    planted = [[b, b, b, 1.0, 1.0] for b in base]
    nulls = [[[b] * 5 for b in base], [[b, 0.0, b, b, b] for b in base], [[b] * 5 for b in base]]
    out = ev.evaluate(_model(planted, nulls), ALPHAS, "keywords:x")
    assert out["verdict"] == ev.VERDICT_BEATS and out["beats_null_at"] == [2.0, 4.0]
    assert out["effects"][3] == 1.0 and out["ci_low"][3] == 1.0
    # the band is the envelope of the nulls' 95% CIs (CIs apart), not of their point effects
    null_ci = ev.bootstrap_ci(base, seed=2)
    assert out["null_low"][2] == pytest.approx(null_ci[1]) and out["null_low"][2] < 1 / 6
    assert out["null_high"][2] == pytest.approx(null_ci[2]) and out["null_high"][2] > 1 / 6
    assert out["coherent_range"] == [-4.0, 4.0] and out["max_coherent_alpha"] == 4.0
    # a "random" direction evaluated the same way against the others does not beat them
    fake = ev.evaluate(_model(nulls[0], nulls[1:]), ALPHAS, "k")
    assert fake["verdict"] == ev.VERDICT_NULL and fake["beats_null_at"] == []
    # the push only works where the model is broken: no verdict from incoherent alphas
    broken = [[False, False, False, True, True] for _ in base]
    out = ev.evaluate(_model(planted, nulls, broken), ALPHAS, "keywords:x")
    assert out["verdict"] == ev.VERDICT_NULL
    assert out["coherent"] == [True, True, True, False, False]
    assert out["coherent_range"] == [-4.0, 0.0] and out["max_coherent_alpha"] == 4.0
    # one broken prompt in six keeps the alpha coherent
    few = [[False, False, False, p == 0, False] for p in range(6)]
    assert ev.evaluate(_model(planted, nulls, few), ALPHAS, "k")["verdict"] == ev.VERDICT_BEATS
    # no scorer, no null
    assert ev.evaluate(_model(planted, nulls), ALPHAS, None)["verdict"] == ev.VERDICT_NO_SCORER
    assert ev.evaluate(_model(planted, []), ALPHAS, "k")["verdict"] == ev.VERDICT_NO_NULL


def test_bootstrap_ci_is_seeded_and_brackets_the_mean():
    vals = [0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0]
    mean, lo, hi = ev.bootstrap_ci(vals, seed=3)
    assert lo <= mean <= hi and 0 <= lo < hi <= 1
    assert ev.bootstrap_ci(vals, seed=3) == (mean, lo, hi)
    assert ev.bootstrap_ci([None, 0.5]) == (0.5, 0.5, 0.5)
    assert ev.bootstrap_ci([]) is None


# ---- a real planted direction in a tiny model beats the null -----------------------------------
KEYWORD = "dog"
"""The planted behaviour: the whole word "dog" (token ``▁dog``) appears in the answer. Pushed
into its text, the tiny model carries on with its own lines about dogs, so a moderate push
leaves the answer coherent."""
PLANTED_PROMPTS = [
    "SELECT name, age",
    "The weather today",
    "Doctors recommend",
    "She asked the",
    "When we compare two",
    "It's a long way",
    "Governments, elections and",
    "Numbers like",
    "I love pizza",
    "Bonjour, comment",
]
TRAIN_STEPS = 40
PLANTED_ALPHAS = [-1.0, 0.0, 0.6, 0.8, 1.0, 1.2, 1.4]
PLANTED_PUSH = 1.0
"""Norm of the planted decoder row (raw scale), with s_max = 1. Measured dose-response on these
10 prompts: the word appears in 0/10 answers at alpha <= 0.8, 5/10 at 1.2 (3 broken), 6/10 at
1.4 (5 broken: "dog dog dog dog"), so alpha 1.2 is the push that is strong and still coherent."""


@pytest.fixture(scope="module")
def word_model(tmp_path_factory):
    """SPEC_A's tiny Llama, trained for a few seconds until it recites ``tiny.TRAINING_TEXT``.

    A random model's own text is byte soup ("lps is��202"), which the coherence rule rightly
    calls non-words at every alpha, and a random model restricted to words loops ("is is is"),
    which it rightly calls repetition: no alpha could count as coherent. Trained on the text its
    tokenizer was trained on (40 full-batch AdamW steps, loss 6.5 -> ~0.1), greedy decoding
    continues a line's opening with the rest of the line, so the coherence rule has text to judge.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from crossdiff.models import load_model
    from tiny import TRAINING_TEXT, make_tiny_model

    folder = make_tiny_model(tmp_path_factory.mktemp("word_model"), *SPEC_A)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    lines = [line for line in TRAINING_TEXT.splitlines() if line.strip()]
    seqs = [[*tok(line).input_ids, tok.eos_token_id] for line in lines]
    width = max(map(len, seqs))
    ids = torch.tensor([s + [tok.pad_token_id] * (width - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    labels = ids.masked_fill(mask == 0, -100)
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(TRAIN_STEPS):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    final = loss.item()
    assert final < 0.5, f"the tiny model did not learn its text (loss {final:.2f})"
    model.eval().save_pretrained(folder)
    return load_model(str(folder), dtype="float32", device="cpu")


def _planted_direction(lm) -> torch.Tensor:
    """The residual direction that raises ``▁model``'s logit: its unembedding row through the
    final RMSNorm's gain (the hook sits after the last decoder layer, right before that norm)."""
    tid = lm.tokenizer.convert_tokens_to_ids("▁" + KEYWORD)
    row = lm.model.get_output_embeddings().weight[tid].detach().float()
    gain = lm.model.model.norm.weight.detach().float()
    d = row * gain
    return d / d.norm()


@pytest.fixture
def planted_run(run_dir, tmp_path, word_model):  # noqa: F811
    """A copy of the tiny run whose A-exclusive feature A_EXCL writes the planted direction."""
    import shutil

    from crossdiff.crosscoder import Crosscoder

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    paths = RunPaths(run)
    cc = Crosscoder.from_pretrained(paths.crosscoder)
    target = _planted_direction(word_model) * PLANTED_PUSH
    with torch.no_grad():
        cc.W_dec_a[int(cc.local_a[A_EXCL])] = target * cc.scale("a")
    torch.testing.assert_close(cc.decoder_weight("a", raw_scale=True)[A_EXCL], target)
    cc.save_pretrained(paths.crosscoder)
    return run


def _planted_steer(run, lm, feature, nulls):
    config = SteerConfig(
        alphas=PLANTED_ALPHAS,
        s_max=1.0,
        score=f"keywords:{KEYWORD}",
        nulls=len(nulls),
        dtype="float32",
        device="cpu",
        max_new_tokens=8,
        chat=False,
    )
    return api.steer(
        run, feature, config, prompts=PLANTED_PROMPTS, loaded_models={"a": lm}, save=False
    )


def test_planted_direction_in_a_tiny_model_beats_the_null(planted_run, word_model, monkeypatch):
    """The product's steer() (generation, coherence, nulls at matched norm, bootstrap, verdict)
    on a real tiny model: pushing along the planted direction makes the word appear in coherent
    answers; random features pushed as hard do not, and a random feature is not called."""
    others = [f for f in range(4) if f != A_EXCL]  # the tiny DFC's other A-exclusive features
    monkeypatch.setattr(api, "pick_nulls", lambda run, feature, n, seed=0: (others[:n], None))
    result = _planted_steer(planted_run, word_model, A_EXCL, others)
    m = result.model("a")
    evid = m.evidence
    assert result.verdict == ev.VERDICT_BEATS, evid
    assert evid["beats_null_at"] and all(a > 0 for a in evid["beats_null_at"])
    zero = PLANTED_ALPHAS.index(0.0)
    for alpha in evid["beats_null_at"]:
        i = PLANTED_ALPHAS.index(alpha)
        assert evid["coherent"][i]
        assert evid["ci_low"][i] > evid["null_high"][i]  # CIs apart, above the null band
    assert evid["effects"][zero] == 0.0  # the unsteered model never says the word
    # alpha = 0 reproduces the unsteered model, token for token
    for p, prompt in enumerate(PLANTED_PROMPTS):
        ids = prompt_ids(word_model, prompt, False)
        text = word_model.tokenizer.decode(greedy(word_model, ids, 8), skip_special_tokens=True)
        assert m.generations[p][zero] == text
    # every null was pushed with the planted row's norm at every alpha
    for null in m.nulls:
        got = [abs(c) * null["vector_norm"] for c in null["coefs"]]
        assert got == pytest.approx([abs(a) * PLANTED_PUSH for a in PLANTED_ALPHAS], rel=1e-5)
    # a random feature swept the same way, against the others, does not beat its null
    rest = others[1:]  # its null: the other random features (not the planted one)
    monkeypatch.setattr(api, "pick_nulls", lambda run, feature, n, seed=0: (rest[:n], None))
    random_feature = _planted_steer(planted_run, word_model, others[0], rest)
    assert random_feature.verdict == ev.VERDICT_NULL


def test_subset_evaluates_part_of_the_prompts():
    """``ModelSteering.subset`` feeds the same evidence code a part of the prompt set (the
    planted benchmark's suppression is measured on the prompts where the behaviour occurs)."""
    base = [1.0, 0, 0, 0, 0, 0]
    planted = [[b, b, b, 1.0, 1.0] for b in base]
    nulls = [[[b] * 5 for b in base], [[b] * 5 for b in base]]
    m = _model(planted, nulls)
    part = m.subset([1, 2, 3])
    assert part.scores == planted[1:4] and len(part.generations) == 3
    assert [n["scores"] for n in part.nulls] == [s[1:4] for s in nulls]
    assert part.coherence["broken"] == m.coherence["broken"][1:4] and part.evidence is None
    direct = ev.evaluate(_model(planted[1:4], [s[1:4] for s in nulls]), ALPHAS, "k")
    assert ev.evaluate(part, ALPHAS, "k") == direct
    assert direct["null_high"][3] == 0.0 and direct["beats_null_at"] == [2.0, 4.0]


def test_null_band_leaves_out_nulls_that_break_the_model():
    """A random feature that breaks the model at an alpha lowers the behaviour by breakage;
    the band holds only the nulls coherent there, so a coherent suppression can beat it."""
    n_p = 6
    on = [[0.0, 0.0, 1.0, 1.0, 1.0] for _ in range(n_p)]  # suppressed at alpha -4 and -2
    ok = [[1.0] * 5 for _ in range(n_p)]
    broke_scores = [[0.0, 0.0, 1.0, 1.0, 1.0] for _ in range(n_p)]  # rate 0 ... because broken
    broke = [[True, True, False, False, False] for _ in range(n_p)]
    fine = [[False] * 5 for _ in range(n_p)]
    m = _model(on, [ok, broke_scores])
    m.nulls[0]["coherence"] = {"broken": fine}
    m.nulls[1]["coherence"] = {"broken": broke}
    out = ev.evaluate(m, ALPHAS, "k")
    assert out["null_coherent"][1] == [False, False, True, True, True]
    assert out["null_low"][:2] == [1.0, 1.0]  # the broken null is left out at -4 and -2
    assert out["verdict"] == ev.VERDICT_BEATS and out["beats_null_at"] == [-4.0, -2.0]
    # every null broken at an alpha: no band there, so nothing to beat
    m.nulls[0]["coherence"] = {"broken": broke}
    out = ev.evaluate(m, ALPHAS, "k")
    assert out["null_low"][:2] == [None, None] and out["verdict"] == ev.VERDICT_NULL


def test_no_band_where_most_nulls_break_and_cis_must_be_apart():
    """At an alpha where only one of three nulls stays coherent there is no band (the planted
    benchmark's random control 'beat' such a one-null band at alpha -4); and an effect whose CI
    overlaps a null's CI does not beat it even when the point effects differ."""
    n_p = 8
    on = [[0.0, 0.0, 1.0, 1.0, 1.0] for _ in range(n_p)]
    ok = [[1.0] * 5 for _ in range(n_p)]
    fine = [[False] * 5 for _ in range(n_p)]
    broke = [[True, False, False, False, False] for _ in range(n_p)]
    m = _model(on, [ok, ok, ok])
    m.nulls[0]["coherence"] = {"broken": fine}
    m.nulls[1]["coherence"] = {"broken": broke}
    m.nulls[2]["coherence"] = {"broken": broke}
    out = ev.evaluate(m, ALPHAS, "k")
    assert out["null_low"][0] is None and out["null_low"][1] == 1.0  # 1 of 3 coherent at -4
    assert out["beats_null_at"] == [-2.0]
    # half the prompts keep the behaviour under the feature; a null that lost it on 2 of 8:
    # point effects 0.5 vs 0.75, but the CIs overlap, so no claim
    half = [[b, b, 1.0, 1.0, 1.0] for b in [0.0] * 4 + [1.0] * 4]
    weak = [[b, b, 1.0, 1.0, 1.0] for b in [0.0] * 2 + [1.0] * 6]
    out = ev.evaluate(_model(half, [weak, weak]), ALPHAS, "k")
    assert out["effects"][1] == 0.5 and out["null_low"][1] < 0.5 < out["ci_high"][1]
    assert out["beats_null_at"] == [] and out["verdict"] == ev.VERDICT_NULL
