"""Shared test fixtures: offline mode and session-cached tiny models.

Tests never touch the network: the hub is switched off before transformers is imported. Tiny
models (see ``tests/tiny.py``) are built once per session under one temporary folder and handed
out by path, so any test module can ask for ``tiny_model("gemma3", "sentencepiece")`` for free
after the first call.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from collections.abc import Callable
from pathlib import Path

import pytest

from tiny import make_tiny_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Factory ``tiny_model(arch="llama", tokenizer="bpe", *, chat_template=True) -> Path``.

    Returns the folder of a tiny random model saved with its tokenizer (see ``tiny.py``); each
    combination is built once per session and shared by every test that asks for it.
    """
    root = tmp_path_factory.mktemp("tiny_models")

    def get(arch: str = "llama", tokenizer: str = "bpe", *, chat_template: bool = True) -> Path:
        return make_tiny_model(root, arch, tokenizer, chat_template=chat_template)

    return get


@pytest.fixture(scope="session")
def tiny_loaded(tiny_model: Callable[..., Path]) -> Callable[..., object]:
    """Factory ``tiny_loaded(arch, tokenizer, *, chat_template=True)`` -> a float32 CPU
    ``crossdiff.models.LoadedModel`` of that tiny model, loaded once per session.

    Shared between tests: don't modify the model's weights; hooks must be removed (they are, by
    ``capture`` and ``steering``).
    """
    from crossdiff.models import load_model

    cache: dict[tuple[str, str, bool], object] = {}

    def get(arch: str = "llama", tokenizer: str = "bpe", *, chat_template: bool = True):
        key = (arch, tokenizer, chat_template)
        if key not in cache:
            folder = tiny_model(arch, tokenizer, chat_template=chat_template)
            cache[key] = load_model(str(folder), dtype="float32", device="cpu")
        return cache[key]

    return get


def _single_thread():
    """Run torch on one thread, then restore the setting.

    Tiny models and tensors are latency-bound: on a busy 2-core machine every small kernel
    otherwise waits for the second OpenMP thread (up to 50x slower). One thread is also what
    torchrun workers use (OMP_NUM_THREADS=1), so the same kernels on the same shapes give the
    same bits in-process and under torchrun.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def one_thread():
    """One torch thread for a test (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    yield from _single_thread()


@pytest.fixture(scope="module")
def one_thread_module():
    """One torch thread for a whole module, module-scoped fixtures included (bit-exact
    comparisons between stores built by module fixtures need it)."""
    yield from _single_thread()
