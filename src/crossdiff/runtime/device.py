"""Choosing dtype and device: bf16 where the hardware runs it fast, float32 elsewhere.

bf16 halves memory and, on GPUs and on CPUs with bf16 units (AVX512-BF16 or AMX), runs
2.6-3x faster than float32 (measured on this project's 2-core AMD EPYC CPU, see issue 3) at
about 1% relative error in the residual stream. On CPUs without those units PyTorch emulates
bf16 and is slower than float32, so "auto" picks float32 there.
"""

from __future__ import annotations

from pathlib import Path

import torch

from crossdiff.errors import CrossdiffError

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}

# /proc/cpuinfo flags of CPUs with native bf16 arithmetic.
_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 units (AVX512-BF16 or AMX-BF16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace").split()
    except OSError:
        flags = []
    if flags:
        return any(flag in flags for flag in _BF16_CPU_FLAGS)
    try:  # no /proc/cpuinfo (macOS, Windows): ask oneDNN; private API, so guarded
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """ "auto" is CUDA when available, else CPU; anything else is passed to torch.device."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise CrossdiffError(
            f"device {device!r} is not a torch device (try 'cpu' or 'cuda')"
        ) from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise CrossdiffError(f"device {device!r} asked for, but CUDA is not available; use 'cpu'")
    return resolved


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> tuple[torch.dtype, str]:
    """The torch dtype to run in, and a short reason (for run summaries).

    "auto": bf16 on CUDA GPUs that support it and on CPUs with bf16 units, else float32.
    """
    if isinstance(dtype, torch.dtype):
        return dtype, "asked for"
    name = str(dtype).lower()
    if name in DTYPES:
        return DTYPES[name], "asked for"
    if name != "auto":
        raise CrossdiffError(
            f"dtype {dtype!r} is not supported; use 'auto', 'float32', 'bfloat16' or 'float16'"
        )
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "auto: GPU supports bf16"
        return torch.float32, "auto: GPU without bf16"
    if device.type == "cpu":
        if cpu_has_fast_bf16():
            return torch.bfloat16, "auto: CPU has bf16 units (avx512_bf16/amx)"
        return torch.float32, "auto: CPU without bf16 units"
    return torch.float32, f"auto: float32 on {device.type}"
