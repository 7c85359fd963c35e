"""Does the fine-tuned behaviour become findable at another layer? (BENCHMARKS.md, issue 16)

Usage: python scripts/finetune_layer.py WORK_DIR LAYER [RESAMPLE_EVERY]

WORK_DIR is a `crossdiff bench finetune` work folder holding the fine-tuned model (run the bench
once first). For the `self` diff at the `--quick` sizes, at LAYER in both models, this harvests
the store and the evaluation store (cached under WORK_DIR/layer-LAYER), prints the difference
facts (ridge probes on A, B and A - B at the decision positions, the behaviour's share of the
difference), trains one DFC (800 steps; with RESAMPLE_EVERY, dead features are resampled every
that many steps) and prints, per behaviour, the best A-exclusive feature's held-out AUROC,
its AUROC among decision positions, its rank in A's review order and its verdict.
"""

import json
import sys
from pathlib import Path

from crossdiff.crosscoder.fit import train_on_store
from crossdiff.crosscoder.train_config import TrainConfig
from crossdiff.models import load_model
from crossdiff_bench.finetune import (
    DIFFS,
    FinetuneBenchConfig,
    difference_facts,
    eval_questions,
    harvest_store,
    load_eval_rows,
    score_crosscoder,
    store_questions,
    write_chats,
)

work, layer = Path(sys.argv[1]), int(sys.argv[2])
resample = int(sys.argv[3]) if len(sys.argv) > 3 else None
tuned = sorted(work.glob("finetune-*/model"))
if not tuned:
    sys.exit(f"no fine-tuned model under {work}; run crossdiff bench finetune --work-dir {work}")
cfg = FinetuneBenchConfig.quick()
cfg.progress = False
cfg.layer_a = cfg.layer_b = layer
data = work / f"layer-{layer}"
models = tuple(load_model(str(m), dtype="float32", device="cpu") for m in (tuned[0], DIFFS["self"]))
questions = data / "questions.jsonl"
write_chats(store_questions(cfg), questions)
corpus = f"{cfg.corpus},{questions}={cfg.prompt_share}"
store = harvest_store(cfg, corpus, data / "store", models, cfg.store_tokens)
prompts = eval_questions(cfg, cfg.eval_prompts)
write_chats(prompts, data / "eval.jsonl")
eval_store = harvest_store(cfg, str(data / "eval.jsonl"), data / "eval_store", models, None)
rows, x_a, x_b = load_eval_rows(eval_store, prompts)
print(json.dumps(difference_facts(rows, x_a, x_b)))
run = data / f"dfc-resample{resample or 0}"
train = TrainConfig(
    steps=cfg.steps,
    batch_size=cfg.batch_size,
    lr=cfg.lr,
    warmup_steps=80,
    k_anneal_from=None,
    seed=0,
    device="cpu",
    checkpoint_every=200,
    log_every=100,
    high_norm_factor=cfg.high_norm_factor,
    resample_every=resample,
)
train_on_store(
    store.path,
    run / "crosscoder",
    train=train,
    n_features=cfg.n_features,
    k=cfg.k,
    exclusive=cfg.exclusive,
    progress=False,
)
scored = score_crosscoder(cfg, run, store.path, rows, x_a, x_b)
for b in ("praise", "refusal"):
    s = scored[b]
    print(
        b,
        f"#{s['feature']}",
        f"AUROC {s['auroc_test']:.3f} (decisions {s.get('auroc_decisions', float('nan')):.3f})",
        f"rank {s['rank']}/{s['n_ranked']}",
        s["verdict"],
        "best of any label",
        s["best_any"],
    )
print("A-exclusive alive:", scored["n_alive_a"])
