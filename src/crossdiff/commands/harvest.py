"""``crossdiff harvest``: aligned activations of two models on a corpus, into a store."""

from __future__ import annotations

import argparse

from crossdiff.errors import CrossdiffError

_SUFFIXES = {"k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9}


def parse_count(text: str) -> int:
    """``"2000"``, ``"50k"``, ``"1.5M"``, ``"1e6"`` -> int (for --tokens)."""
    raw = text.strip().lower().replace("_", "").replace(",", "")
    scale = 1
    if raw and raw[-1] in _SUFFIXES:
        scale, raw = _SUFFIXES[raw[-1]], raw[:-1]
    try:
        value = float(raw) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a count; use e.g. 20000, 50k or 1.5M"
        ) from None
    if value != int(value) or value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive whole number")
    return int(value)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "harvest",
        help="run two models on a corpus and store their aligned activations",
        description=(
            "Run models A and B on the same documents, pair the token positions where both have "
            "read the same text, and store both models' residual stream at those positions "
            "(bf16, sharded, resumable). Rerun the same command to resume an interrupted "
            "harvest; it reports when the store is complete. Under `torchrun --nproc_per_node "
            "N -m crossdiff harvest ...` the documents are split over the ranks, each writing "
            "its own shards into the one store (docs/harvest-store.md)."
        ),
    )
    p.add_argument("--model-a", required=True, help="built-in alias, local folder, .gguf or hub id")
    p.add_argument("--model-b", required=True, help="the other model, likewise")
    p.add_argument(
        "--corpus",
        required=True,
        help="a .txt/.jsonl/.parquet file, a folder of them, hf:NAME, 'builtin' (web text and "
        "chats, half and half), or a mix by share of pairs: SPEC=SHARE,SPEC=SHARE "
        "(e.g. hf:my/chats=0.5,hf:my/web=0.5)",
    )
    p.add_argument("--out", required=True, help="store folder (created, or resumed if it exists)")
    p.add_argument(
        "--tokens",
        type=parse_count,
        default=None,
        help="stop after this many aligned pairs (e.g. 200k); default: the whole corpus",
    )
    p.add_argument("--layer-a", default="middle", help="layer index, negative index or 'middle'")
    p.add_argument("--layer-b", default="middle", help="layer index, negative index or 'middle'")
    p.add_argument("--max-seq-len", type=int, default=512, help="tokens per window (default 512)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default 8)")
    p.add_argument("--dtype", default="auto", help="auto (bf16 where fast), float32, bfloat16")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument(
        "--shard-rows",
        type=int,
        default=16384,
        help="rows per shard, at least (default 16384; under torchrun each block is a shard)",
    )
    p.add_argument(
        "--pair-positions",
        choices=("all", "word_end"),
        default="all",
        help="which aligned positions become rows: all (default), or word_end: only where the "
        "next character is not a letter or digit (no word-piece positions, where "
        "cross-tokenizer artifacts live)",
    )
    p.add_argument(
        "--literal-specials",
        choices=("cut", "keep"),
        default="cut",
        help="content holding a special token's literal string: cut the document's pairs "
        "there (default) or keep them",
    )
    p.add_argument("--max-documents", type=int, default=None, help="read at most N documents")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from hub")
    p.add_argument("--cache-dir", default=None, help="where built-in/GGUF models are converted")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from crossdiff.crosscoder import distributed
    from crossdiff.harvest import HarvestConfig, harvest

    config = HarvestConfig(
        model_a=args.model_a,
        model_b=args.model_b,
        corpus=args.corpus,
        out=args.out,
        tokens=args.tokens,
        layer_a=args.layer_a,
        layer_b=args.layer_b,
        max_seq_len=args.max_seq_len,
        batch_size=args.batch_size,
        dtype=args.dtype,
        device=args.device,
        shard_rows=args.shard_rows,
        max_documents=args.max_documents,
        trust_remote_code=args.trust_remote_code,
        cache_dir=args.cache_dir,
        progress=not args.quiet,
        pair_positions=args.pair_positions,
        literal_specials=args.literal_specials,
    )
    store = harvest(config)
    distributed.shutdown()  # under torchrun: leave the process group cleanly (no-op otherwise)
    if store.n_rows == 0:
        raise CrossdiffError(
            f"no aligned pairs were found in {store.n_documents} documents of {args.corpus!r}; "
            "check that the corpus holds text both models can read"
        )
    return 0
