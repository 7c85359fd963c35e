"""Tiny random transformers configs (2 layers, width 64) of every architecture crossdiff is
tested on, in one place: the unit tests' tiny models (tests/tiny.py) and ``crossdiff bench
gpu``'s CUDA checks build their models from these, so both exercise the same shapes
(GPT-OSS's sliding and full attention with sinks and YaRN RoPE, the mixture-of-experts
routing)."""

from __future__ import annotations

from typing import Any

ARCHS: tuple[str, ...] = ("gpt2", "llama", "gemma3", "qwen2", "qwen3", "gpt_oss", "qwen3_moe")
N_LAYERS = 2
D_MODEL = 64
# Mixture-of-experts shape: more experts than layers (so no expert list could be mistaken for the
# decoder layer list) and top-2 routing, so every token mixes two experts as the real models do.
N_EXPERTS = 4
EXPERTS_PER_TOKEN = 2


def tiny_config(arch: str, tokenizer: Any) -> Any:
    """A real transformers config of ``arch`` with 2 layers and width 64."""
    from transformers import (
        Gemma3TextConfig,
        GPT2Config,
        GptOssConfig,
        LlamaConfig,
        Qwen2Config,
        Qwen3Config,
        Qwen3MoeConfig,
    )

    ids = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if arch == "gpt2":
        return GPT2Config(n_embd=D_MODEL, n_layer=N_LAYERS, n_head=4, n_positions=512, **ids)
    common = {
        "hidden_size": D_MODEL,
        "intermediate_size": 2 * D_MODEL,
        "num_hidden_layers": N_LAYERS,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        **ids,
    }
    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "qwen2":
        return Qwen2Config(**common)
    if arch == "qwen3":
        return Qwen3Config(head_dim=16, **common)
    if arch == "gemma3":
        return Gemma3TextConfig(head_dim=16, sliding_window=16, **common)
    if arch == "gpt_oss":
        # layer 0 slides over 16 tokens, layer 1 attends fully (GPT-OSS alternates them); every
        # head has its learned sink logit; YaRN RoPE scaled 32x from 16 positions to the 512
        return GptOssConfig(
            head_dim=16,
            sliding_window=16,
            rope_parameters={
                "rope_type": "yarn",
                "rope_theta": 150000.0,
                "factor": 32.0,
                "beta_fast": 32.0,
                "beta_slow": 1.0,
                "truncate": False,
                "original_max_position_embeddings": 16,
            },
            num_local_experts=N_EXPERTS,
            num_experts_per_tok=EXPERTS_PER_TOKEN,
            **common,
        )
    if arch == "qwen3_moe":
        return Qwen3MoeConfig(
            head_dim=16,
            moe_intermediate_size=D_MODEL,
            num_experts=N_EXPERTS,
            num_experts_per_tok=EXPERTS_PER_TOKEN,
            norm_topk_prob=True,
            **common,
        )
    raise ValueError(f"unknown arch {arch!r}; choose one of {ARCHS}")
