"""Training loop: Adam with warm-up and decay, k annealing, AuxK, checkpoints, exact resume.

Choices the paper leaves open, made here and documented (docs/METHOD.md §3):

- *High-norm filter*: a pair is dropped from the step when either model's vector has norm
  above ``high_norm_factor`` x that model's batch median (Qwen's first tokens reach 10x).
  Dropped before encoding, so outliers neither enter the loss nor use BatchTopK's budget.
- *Inference threshold*: set from the first batch directly (never a placeholder such as -1),
  then an exponential moving average with bias correction; reset when k annealing ends, so
  short runs do not carry thresholds from the annealing phase.
- *Dead window*: default ``min(10M, max(10 x batch, 5% of all training samples))`` so AuxK also
  acts in short runs (the published code hard-coded 10M tokens).
- *Decay*: linear to zero over the last ``decay_fraction`` of steps.

Exact resume: the source is deterministic given (batch size, seed) and can skip batches, the
schedule is a function of the step, and a checkpoint holds the weights, the optimizer state,
the dead-feature counters and the threshold state, so a resumed run ends bit-identical to an
uninterrupted one (on CPU; CUDA index_add is not deterministic).

No host round trips: on an accelerator an ordinary step (not a log, checkpoint, resample or
first step) reads nothing from the device on the host; the filter, BatchTopK, AuxK, the
counters and the threshold EMA stay on the device and the metrics are read at log steps
(crosscoder/hostsync.py, which also holds the check that tests and ``crossdiff bench gpu``
run). A batch a source yields on the device is checked for NaN/inf on the device and the
error is raised at the next log or checkpoint step (host batches are checked at once).

Size: TrainConfig, the loop, checkpoints and resume share the loop's state (_Run, _Step);
the checkpoint format and the static step could move out next (issue 11 leaves this open).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from crossdiff.crosscoder import hostsync
from crossdiff.crosscoder.config import CrosscoderConfig
from crossdiff.crosscoder.global_batch import GlobalBatch
from crossdiff.crosscoder.model import Crosscoder, LossOutput
from crossdiff.crosscoder.sources import PairSource, rank_batches, source_moments
from crossdiff.errors import CrossdiffError, reject_unknown_fields
from crossdiff.runtime.device import resolve_device
from crossdiff.store.moments import Moments, moments_of_arrays
from crossdiff.store.stats import HIGH_NORM_FACTOR

if TYPE_CHECKING:
    from crossdiff.runtime.distributed import DistInfo

CHECKPOINT_PREFIX = "step-"
TRAIN_STATE_FILE = "train_state.safetensors"
TRAIN_META_FILE = "train_state.json"
LOG_FILE = "train_log.jsonl"
NORMALIZATIONS = ("centered", "median", "none")
LOSS_SHARE_WARNING = 0.25
"""Warn when one model carries less than this share of the loss weight (its variation is too
light for its features to win anything; the cure is the 'centered' normalization)."""


@dataclass
class TrainConfig:
    """How to train (the paper's values as defaults, docs/METHOD.md §3)."""

    steps: int = 100_000
    """Optimizer steps."""
    batch_size: int = 2048
    """Aligned pairs per step (before the high-norm filter)."""
    lr: float = 1e-4
    """Adam learning rate after warm-up."""
    warmup_steps: int = 1000
    """Linear warm-up from 0 to lr."""
    decay_fraction: float = 0.2
    """Linear decay to 0 over this last fraction of the steps (0 = constant lr)."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""
    k_anneal_from: int | None = 1000
    """Start k here and lower it linearly to the crosscoder's k (None: no annealing)."""
    k_anneal_steps: int = 5000
    """Steps over which k is annealed."""
    aux_alpha: float = 0.03
    """Weight of the AuxK loss (0 disables it)."""
    aux_k: int | None = None
    """Dead features used by AuxK per sample; None = min(512, max(d_a, d_b) // 2)."""
    dead_window_tokens: int | None = None
    """A feature is dead after this many training samples without firing; None = auto:
    min(10M, max(10 x batch_size, 5% of all training samples)), so AuxK also acts in short
    runs (the published code hard-coded 10M tokens)."""
    l1_coeff: float = 1.0
    """ReLU mode only: weight of the decoder-norm-weighted L1 penalty."""
    resample_every: int | None = None
    """Every N steps, re-initialise features dead for a whole dead window at directions of
    high reconstruction error (crosscoder/resample.py); None = never (the paper). The presets
    of ``crossdiff run`` turn it on: at their short budgets it is what keeps the exclusive
    blocks alive (BatchTopK's norm-weighted ranking otherwise locks out features whose
    decoder shrank)."""
    resample_until: float = 0.7
    """No resampling after this fraction of the steps (resampled features need time to settle
    before the learning-rate decay)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 disables)."""
    high_norm_factor: float = HIGH_NORM_FACTOR
    """Drop pairs whose norm exceeds this x the batch median (0 disables)."""
    normalization: str = "centered"
    """How both models' activations are put on one scale before training (set from the
    source, or estimated from a sample): 'centered' (default: subtract each model's mean,
    then scale its root mean squared centred norm to sqrt((d_a + d_b) / 2), so both models'
    variation weighs equally in the loss; store/moments.py), 'median' (the paper: one scalar
    per model bringing its median norm there, no centring) or 'none'."""
    scale_estimate_batches: int = 8
    """Batches used to estimate the normalization when the source does not provide it."""
    exclusive_init: str = "residual"
    """How exclusive features start: 'residual' (at directions of what one model has and the
    other does not linearly predict; crosscoder/init.py) or 'random' (the paper). On the toy
    benchmark 'residual' lifts the DFC's exclusive recall from ~0.2 to ~0.7 (BENCHMARKS.md)."""
    init_samples: int | None = None
    """Pairs drawn (beyond the training stream) for the 'residual' initialisation; None =
    max(16,384, 32 x the larger exclusive block), so every exclusive feature has candidates."""
    seed: int = 0
    """Seeds the weights' initialisation and the data order."""
    device: str = "auto"
    """'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ..."""
    compute_dtype: str = "auto"
    """Dtype of the encoder matmul: 'float32', 'bfloat16', or 'auto' (bf16 on CUDA, else fp32).
    Weights and optimizer state stay float32."""
    checkpoint_every: int = 1000
    """Write a resumable checkpoint every N steps (when a checkpoint folder is given)."""
    keep_checkpoints: int = 2
    """How many recent checkpoints to keep."""
    log_every: int = 50
    """Append metrics to train_log.jsonl and refresh the progress bar every N steps."""

    def validate(self) -> None:
        positive = ("steps", "batch_size", "k_anneal_steps", "checkpoint_every", "log_every")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise CrossdiffError(f"train {name}={value!r} must be a positive integer")
        if not self.lr > 0:
            raise CrossdiffError(f"train lr={self.lr!r} must be positive")
        if not 0 <= self.decay_fraction <= 1:
            raise CrossdiffError(f"train decay_fraction={self.decay_fraction!r} must be in [0, 1]")
        if self.warmup_steps < 0:
            raise CrossdiffError(f"train warmup_steps={self.warmup_steps!r} must be >= 0")
        if self.exclusive_init not in ("random", "residual"):
            raise CrossdiffError(
                f"train exclusive_init={self.exclusive_init!r}: use 'random' or 'residual'"
            )
        if self.init_samples is not None and (
            not isinstance(self.init_samples, int) or self.init_samples < 2
        ):
            raise CrossdiffError(f"train init_samples={self.init_samples!r} must be an int >= 2")
        if self.resample_every is not None and (
            not isinstance(self.resample_every, int) or self.resample_every < 1
        ):
            raise CrossdiffError(
                f"train resample_every={self.resample_every!r} must be a positive integer or None"
            )
        if not 0.0 <= self.resample_until <= 1.0:
            raise CrossdiffError(f"train resample_until={self.resample_until!r} must be in [0, 1]")
        if self.normalization not in NORMALIZATIONS:
            raise CrossdiffError(
                f"train normalization={self.normalization!r}: use one of "
                f"{', '.join(map(repr, NORMALIZATIONS))}"
            )
        if self.compute_dtype not in ("auto", "float32", "bfloat16"):
            raise CrossdiffError(
                f"compute_dtype={self.compute_dtype!r}: use 'auto', 'float32' or 'bfloat16'"
            )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = dict(data)
        if "adam_betas" in data:
            data["adam_betas"] = tuple(data["adam_betas"])
        if "normalize" in data and "normalization" not in data:  # saved before 'centered'
            data["normalization"] = "median" if data.pop("normalize") else "none"
        reject_unknown_fields(cls, data, "train config fields")
        return cls(**data)


# ---- helpers ---------------------------------------------------------------------------------
def resolve_compute_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def geometric_median(x: torch.Tensor, iters: int = 50, eps: float = 1e-6) -> torch.Tensor:
    """Weiszfeld's algorithm: the point minimizing the summed distance to the rows of x."""
    y = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - y).norm(dim=1).clamp_min(eps)
        y_new = (w[:, None] * x).sum(0) / w.sum()
        if (y_new - y).norm() < eps * max(1.0, float(y.norm())):
            return y_new
        y = y_new
    return y


def annealed_k(step: int, k: int, tc: TrainConfig) -> int:
    """k at this step: linear from k_anneal_from down to k over k_anneal_steps."""
    if tc.k_anneal_from is None or tc.k_anneal_from <= k or step >= tc.k_anneal_steps:
        return k
    frac = step / tc.k_anneal_steps
    return round(tc.k_anneal_from + (k - tc.k_anneal_from) * frac)


def lr_at(step: int, tc: TrainConfig) -> float:
    if tc.warmup_steps and step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    decay_start = tc.steps * (1 - tc.decay_fraction)
    if tc.decay_fraction > 0 and step >= decay_start:
        return tc.lr * max(0.0, (tc.steps - step) / (tc.steps - decay_start))
    return tc.lr


def default_aux_k(cfg: CrosscoderConfig) -> int:
    return min(512, max(cfg.d_a, cfg.d_b) // 2)


def default_dead_window(tc: TrainConfig) -> int:
    return min(10_000_000, max(10 * tc.batch_size, tc.steps * tc.batch_size // 20))


def check_finite(x: torch.Tensor, model: str, step: int) -> None:
    if not torch.isfinite(x).all():
        _raise_nonfinite(int((~torch.isfinite(x)).sum()), model, step)


def _raise_nonfinite(bad: int, model: str, step: int) -> None:
    raise CrossdiffError(
        f"batch at step {step} has {bad} NaN/inf values in model {model.upper()}'s "
        f"activations; check the data (for a store: crossdiff store verify PATH)"
    )


class _NonFinite:
    """The NaN/inf check of raw batches: at once for a batch on the host (no device read);
    for one a source made on the device, counted there and raised at the next log or
    checkpoint step (:meth:`raise_if_any`), naming the first bad step."""

    def __init__(self) -> None:
        self.first: torch.Tensor | None = None  # (2,) first bad step per model, -1: none
        self.count: torch.Tensor | None = None  # (2,) its NaN/inf count

    def check(self, x_a: torch.Tensor, x_b: torch.Tensor, step: int) -> None:
        if x_a.device.type == "cpu" and x_b.device.type == "cpu":
            check_finite(x_a, "a", step)
            check_finite(x_b, "b", step)
            return
        bad = torch.stack([(~torch.isfinite(x)).sum().to(x_a.device) for x in (x_a, x_b)])
        if self.first is None or self.count is None:
            self.first = torch.full_like(bad, -1)
            self.count = torch.zeros_like(bad)
        new = (self.first < 0) & (bad > 0)
        self.first = torch.where(new, step, self.first)
        self.count = torch.where(new, bad, self.count)

    def raise_if_any(self) -> None:
        if self.first is None or self.count is None:
            return
        for m, first, count in zip("ab", self.first.tolist(), self.count.tolist()):
            if first >= 0:
                _raise_nonfinite(count, m, first)


def estimate_moments(source: PairSource, tc: TrainConfig) -> Moments:
    """Activation moments from ``scale_estimate_batches`` batches (a source without exact ones)."""
    it = source.batches(tc.batch_size, seed=tc.seed + 10_007)
    xs_a, xs_b = [], []
    for _, (xa, xb) in zip(range(tc.scale_estimate_batches), it):
        xs_a.append(xa.float())
        xs_b.append(xb.float())
    return moments_of_arrays(torch.cat(xs_a), torch.cat(xs_b))


def normalization_for(
    source: PairSource, config: CrosscoderConfig, tc: TrainConfig
) -> tuple[CrosscoderConfig, tuple[torch.Tensor, torch.Tensor] | None]:
    """The crosscoder config with its scales (and the means, when centred) for ``tc``."""
    if tc.normalization == "none":
        return dataclasses.replace(config, scale_a=1.0, scale_b=1.0, centered=False), None
    if tc.normalization == "median":
        scales = source.norm_scales() or estimate_scales(source, tc)
        config = dataclasses.replace(
            config, scale_a=float(scales[0]), scale_b=float(scales[1]), centered=False
        )
        return config, None
    moments = source_moments(source) or estimate_moments(source, tc)
    sa, sb = moments.centered_scales()
    config = dataclasses.replace(config, scale_a=float(sa), scale_b=float(sb), centered=True)
    return config, moments.as_tensors()


def estimate_scales(source: PairSource, tc: TrainConfig) -> tuple[float, float]:
    """Scales bringing each model's median norm to sqrt((d_a + d_b) / 2), from a sample."""
    it = source.batches(tc.batch_size, seed=tc.seed + 10_007)
    norms_a, norms_b = [], []
    for _, (xa, xb) in zip(range(tc.scale_estimate_batches), it):
        norms_a.append(xa.float().norm(dim=1))
        norms_b.append(xb.float().norm(dim=1))
    target = math.sqrt((source.d_a + source.d_b) / 2)
    med_a = float(torch.cat(norms_a).median())
    med_b = float(torch.cat(norms_b).median())
    if not (med_a > 0 and med_b > 0):
        raise CrossdiffError(
            f"median activation norms are {med_a} (A) and {med_b} (B); the data looks empty/zero"
        )
    return target / med_a, target / med_b


# ---- checkpoints -----------------------------------------------------------------------------
def _checkpoint_paths(folder: Path) -> list[tuple[int, Path]]:
    out = []
    for p in folder.glob(f"{CHECKPOINT_PREFIX}*"):
        if p.is_dir() and (p / TRAIN_META_FILE).is_file():
            try:
                out.append((int(p.name[len(CHECKPOINT_PREFIX) :]), p))
            except ValueError:
                continue
    return sorted(out)


def _checkpoint_damage(path: Path) -> str | None:
    """Why the checkpoint at ``path`` cannot be loaded, or None: a cheap check (its four files
    present, the JSON ones parse, each safetensors header agrees with its file's size, so a
    truncated file is caught) that reads no tensor data."""
    from crossdiff.crosscoder.model import CONFIG_FILE, WEIGHTS_FILE
    from crossdiff.store.fileio import safetensors_header

    for name in (CONFIG_FILE, TRAIN_META_FILE):
        try:
            data = json.loads((path / name).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            return f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if not isinstance(data, dict):
            return f"{name} is not a JSON object"
        if name == TRAIN_META_FILE and not (
            isinstance(data.get("step"), int) and isinstance(data.get("train_config"), dict)
        ):
            return f"{name} lacks its step or train_config"
    for name in (WEIGHTS_FILE, TRAIN_STATE_FILE):
        try:
            safetensors_header(path / name)
        except FileNotFoundError:
            return f"{name} is missing"
        except (OSError, ValueError) as exc:
            return f"{name}: {exc}"
    return None


def _warn_skipped(path: Path, why: str, using: Path | None) -> None:
    import warnings

    then = f"resuming from {using.name} instead" if using is not None else "trying older ones"
    warnings.warn(
        f"checkpoint {path} cannot be loaded ({why}); {then} (it is left in place)",
        stacklevel=3,
    )


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The newest complete checkpoint in ``folder`` that passes a cheap load check (None if
    there is none).

    A damaged newer checkpoint (e.g. a file truncated by a full disk) is skipped with a warning
    naming it, and left in place; if every checkpoint is damaged this raises a
    :class:`CrossdiffError` rather than silently starting over."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    paths = _checkpoint_paths(folder)
    skipped: list[tuple[Path, str]] = []
    for _, path in reversed(paths):
        why = _checkpoint_damage(path)
        if why is None:
            for bad, reason in skipped:
                _warn_skipped(bad, reason, path)
            return path
        skipped.append((path, why))
    if skipped:
        raise CrossdiffError(
            f"no checkpoint in {folder} can be loaded ("
            + "; ".join(f"{p.name}: {why}" for p, why in skipped)
            + f"); nothing was deleted: move {folder} aside to train from the start"
        )
    return None


def _set_aside(path: Path) -> Path:
    """Rename a damaged checkpoint out of the ``step-*`` numbering (kept, never deleted)."""
    n = 0
    while True:
        target = path.with_name(f"{path.name}.damaged" + (f"-{n}" if n else ""))
        if not target.exists():
            path.rename(target)
            return target
        n += 1


@dataclass
class _State:
    """Running training state beyond weights and optimizer."""

    step: int = 0
    since_fired: torch.Tensor | None = None  # (F,) samples since each feature last fired
    thr_updates: torch.Tensor | None = None  # (2,) EMA update counts per threshold group
    samples: int | torch.Tensor = 0  # kept samples trained on (a device count between
    # checkpoints on the static path)


def _save_checkpoint(
    folder: Path,
    model: Crosscoder,
    opt: torch.optim.Optimizer,
    state: _State,
    tc: TrainConfig,
) -> Path:
    from safetensors.torch import save_file

    final = folder / f"{CHECKPOINT_PREFIX}{state.step:08d}"
    tmp = folder / f".tmp-{CHECKPOINT_PREFIX}{state.step:08d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    tensors: dict[str, torch.Tensor] = {
        "since_fired": state.since_fired.cpu(),
        "thr_updates": state.thr_updates.cpu(),
    }
    names = dict(model.named_parameters())
    param_name = {id(p): n for n, p in names.items()}
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state.get(p, {})
            for key, val in st.items():
                tensors[f"opt.{param_name[id(p)]}.{key}"] = torch.as_tensor(val).cpu().contiguous()
    save_file(tensors, str(tmp / TRAIN_STATE_FILE))
    meta = {"step": state.step, "samples": int(state.samples), "train_config": tc.to_dict()}
    (tmp / TRAIN_META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    if final.exists():
        why = _checkpoint_damage(final)
        if why is not None:  # a damaged checkpoint at this step: keep it, under another name
            import warnings

            kept = _set_aside(final)
            warnings.warn(
                f"checkpoint {final} was damaged ({why}); kept as {kept.name}", stacklevel=3
            )
        else:
            shutil.rmtree(final)
    tmp.rename(final)
    for _, old in _checkpoint_paths(folder)[: -tc.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _read_checkpoint(path: Path) -> dict[str, Any]:
    """Every file of a checkpoint, read into memory (raises whatever a damaged file raises)."""
    from safetensors.torch import load_file

    from crossdiff.crosscoder.model import CONFIG_FILE, WEIGHTS_FILE

    meta = json.loads((path / TRAIN_META_FILE).read_text())
    state = {
        "config": CrosscoderConfig.load(path / CONFIG_FILE),
        "step": int(meta["step"]),
        "samples": int(meta.get("samples", 0)),
        "train_config": dict(meta["train_config"]),
        "weights": load_file(str(path / WEIGHTS_FILE)),
        "tensors": load_file(str(path / TRAIN_STATE_FILE)),
    }
    for key in ("since_fired", "thr_updates"):
        if key not in state["tensors"]:
            raise KeyError(f"{TRAIN_STATE_FILE} lacks {key}")
    return state


def _load_checkpoint(
    path: Path,
    model: Crosscoder,
    opt: torch.optim.Optimizer,
    tc: TrainConfig,
    device: torch.device,
) -> _State:
    """Load the checkpoint at ``path`` into model and optimizer. If its files cannot be read
    (damage the cheap check of :func:`latest_checkpoint` misses), the next older checkpoint of
    the same folder is tried, with a warning; nothing is deleted. A checkpoint written with
    another config or other training settings is an error, not a fallback."""
    step = int(path.name[len(CHECKPOINT_PREFIX) :])
    older = [p for s, p in reversed(_checkpoint_paths(path.parent)) if s < step]
    tried: list[str] = []
    for candidate in [path, *older]:
        try:
            saved = _read_checkpoint(candidate)
        except Exception as exc:  # damaged: safetensors, JSON, missing keys, missing files
            why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            _warn_skipped(candidate, why, None)
            tried.append(f"{candidate.name}: {why}")
            continue
        _check_resumable(candidate, saved, model, tc)
        try:
            model.load_checked_state(saved["weights"], source=str(candidate))
        except CrossdiffError as exc:  # same config, other tensors: the file is damaged
            _warn_skipped(candidate, str(exc), None)
            tried.append(f"{candidate.name}: {exc}")
            continue
        return _apply_checkpoint(saved, model, opt, device)
    raise CrossdiffError(
        f"no checkpoint in {path.parent} can be loaded ({'; '.join(tried)}); nothing was "
        f"deleted: move {path.parent} aside to train from the start"
    )


def _check_resumable(path: Path, saved: dict[str, Any], model: Crosscoder, tc: TrainConfig) -> None:
    saved_cfg = saved["config"]
    if saved_cfg.to_dict() != model.config.to_dict():
        diff = {
            k: (v, model.config.to_dict().get(k))
            for k, v in saved_cfg.to_dict().items()
            if model.config.to_dict().get(k) != v
        }
        raise CrossdiffError(
            f"checkpoint {path} was written for a different crosscoder config "
            f"(checkpoint vs now: {diff}); use another checkpoint folder or the same config"
        )
    saved_tc = saved["train_config"]
    now_tc = tc.to_dict()
    # steps/checkpointing/logging may change between runs; everything else must match
    free = {"steps", "checkpoint_every", "keep_checkpoints", "log_every", "device"}
    diff = {
        k: (saved_tc.get(k), v) for k, v in now_tc.items() if k not in free and saved_tc.get(k) != v
    }
    if diff:
        raise CrossdiffError(
            f"checkpoint {path} was written with different training settings "
            f"(checkpoint vs now: {diff}); resume with the same settings or a new folder"
        )


def _apply_checkpoint(
    saved: dict[str, Any], model: Crosscoder, opt: torch.optim.Optimizer, device: torch.device
) -> _State:
    model.to(device)
    tensors = saved["tensors"]
    names = dict(model.named_parameters())
    for name, p in names.items():
        st = {}
        for key in ("step", "exp_avg", "exp_avg_sq"):
            t = tensors.get(f"opt.{name}.{key}")
            if t is not None:
                st[key] = t.to(device) if key != "step" else t
        if st:
            opt.state[p] = st
    return _State(
        step=saved["step"],
        since_fired=tensors["since_fired"].to(device),
        thr_updates=tensors["thr_updates"].to(device),
        samples=saved["samples"],
    )


# ---- the loop --------------------------------------------------------------------------------
def train_crosscoder(
    source: PairSource,
    config: CrosscoderConfig,
    train: TrainConfig | None = None,
    *,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    callback: Callable[[int, dict[str, float]], None] | None = None,
) -> Crosscoder:
    """Train a crosscoder on a paired source and return it (on the training device).

    With ``checkpoint_dir``, writes resumable checkpoints there every
    ``train.checkpoint_every`` steps and at the end; with ``resume`` (default), continues
    from the newest checkpoint found there. ``callback(step, metrics)`` is called at every
    log step (e.g. to stop early or record curves).
    """
    tc = train or TrainConfig()
    tc.validate()
    config.validate()
    if (source.d_a, source.d_b) != (config.d_a, config.d_b):
        raise CrossdiffError(
            f"width mismatch: the data has d_a={source.d_a}, d_b={source.d_b} but the crosscoder "
            f"config says d_a={config.d_a}, d_b={config.d_b}; fix the config (or swap A and B)"
        )
    run = _start(source, config, tc, checkpoint_dir, resume)
    if run.state.step >= tc.steps:
        return run.model
    _first_weights(run, source)
    _train_steps(run, source, progress, callback)
    run.model.eval()
    return run.model


@dataclass
class _Run:
    """What every step of one training run reads, set up once by :func:`_start`: the model,
    its optimizer and running state, and the settings derived from the configs and the
    device, so that the steps themselves take one argument instead of a dozen."""

    tc: TrainConfig
    model: Crosscoder
    opt: torch.optim.Optimizer
    state: _State
    device: torch.device
    dinfo: DistInfo | None
    """This rank under torchrun; None in a single process."""
    cdtype: torch.dtype
    """The dtype the loss is computed in (:func:`resolve_compute_dtype`)."""
    aux_k: int
    final_k: int
    """The crosscoder's k, which k annealing ends at."""
    dead_window: int
    """Samples without firing after which a feature counts as dead (AuxK, resampling)."""
    ckpt_dir: Path | None
    static: bool
    """The static-shape step (crosscoder/hostsync.py)."""
    params: list[torch.nn.Parameter]

    @property
    def main(self) -> bool:
        """Whether this process writes (the only one, or rank 0)."""
        return self.dinfo is None or self.dinfo.is_main


def _start(
    source: PairSource,
    config: CrosscoderConfig,
    tc: TrainConfig,
    checkpoint_dir: str | Path | None,
    resume: bool,
) -> _Run:
    """Device and process group, the normalization (it fixes the model's config), the model
    and its optimizer, and the state of the newest checkpoint when resuming: everything that
    is decided once, before the first step."""
    from crossdiff.runtime import distributed

    device = resolve_device(tc.device)
    dinfo = distributed.setup(device.type)
    device = distributed.rank_device(device, dinfo)
    cdtype = resolve_compute_dtype(tc.compute_dtype, device)
    config, offsets = normalization_for(source, config, tc)
    model = Crosscoder(config, seed=tc.seed)
    if offsets is not None:
        model.set_offsets(*offsets)
    model = model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=tc.lr, betas=tc.adam_betas)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    state = _resumed_state(model, opt, tc, device, ckpt_dir, resume)
    return _Run(
        tc=tc,
        model=model,
        opt=opt,
        state=state,
        device=device,
        dinfo=dinfo,
        cdtype=cdtype,
        aux_k=tc.aux_k if tc.aux_k is not None else default_aux_k(config),
        final_k=config.k,
        dead_window=tc.dead_window_tokens or default_dead_window(tc),
        ckpt_dir=ckpt_dir,
        static=hostsync.static_shapes(device),
        params=list(model.parameters()),
    )


def _resumed_state(
    model: Crosscoder,
    opt: torch.optim.Optimizer,
    tc: TrainConfig,
    device: torch.device,
    ckpt_dir: Path | None,
    resume: bool,
) -> _State:
    """The newest checkpoint's state, loaded into model and optimizer (with ``resume`` and a
    checkpoint to resume), else a fresh one: counters at zero, step 0."""
    state = _State()
    if ckpt_dir is not None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        latest = latest_checkpoint(ckpt_dir) if resume else None
        if latest is not None:
            state = _load_checkpoint(latest, model, opt, tc, device)
    if state.since_fired is None:
        state.since_fired = torch.zeros(model.config.n_features, dtype=torch.long, device=device)
        state.thr_updates = torch.zeros(2, dtype=torch.long, device=device)
    return state


def _first_weights(run: _Run, source: PairSource) -> None:
    """On a fresh start, rank 0 starts the exclusive features at residual directions; then
    every rank gets rank 0's weights, so that all ranks start identical."""
    p = run.model.partition
    if run.main and run.state.step == 0 and run.tc.exclusive_init == "residual" and p.n_a + p.n_b:
        _residual_init(run.model, source, run.tc, run.device)
    if run.dinfo is not None:
        from crossdiff.runtime import distributed

        distributed.broadcast_module(run.model)


class _Step(NamedTuple):
    """What one step leaves for its log: the loss, the rows and the schedule it used."""

    out: LossOutput
    n_rows: int | torch.Tensor
    """This rank's rows in the loss (a device count on the static path)."""
    n_kept: int | torch.Tensor
    """The global batch's kept rows."""
    batch: GlobalBatch | None
    k: int
    dead_mask: torch.Tensor
    resampled: int


def _train_steps(
    run: _Run,
    source: PairSource,
    progress: bool,
    callback: Callable[[int, dict[str, float]], None] | None,
) -> None:
    """The steps from the state's step to ``tc.steps``. An ordinary step (not a first, log,
    checkpoint or resample step) only trains, inside :func:`hostsync.step`, and reads nothing
    on the host; the others also log and save, after checking the batch for NaN/inf."""
    tc, state = run.tc, run.state
    rank, world = (run.dinfo.rank, run.dinfo.world_size) if run.dinfo is not None else (0, 1)
    stream = rank_batches(source, tc.batch_size, seed=tc.seed, skip=state.step, part=(rank, world))
    report = _Report.start(run, progress, callback)
    nonfinite = _NonFinite()
    # a feature can be dead only once its counter can have reached the window (it grows by at
    # most a batch a step): until then AuxK gets no dead mask, on the static path too
    since_max = int(state.since_fired.max())
    s0 = state.step
    run.model.train()
    try:
        for step in range(state.step, tc.steps):
            done = step + 1
            ordinary = not (
                step == 0
                or done % tc.log_every == 0
                or done == tc.steps
                or (run.ckpt_dir is not None and done % tc.checkpoint_every == 0)
                or _resample_due(done, tc, run.model)
            )
            raw_a, raw_b = next(stream)
            nonfinite.check(raw_a, raw_b, step)
            with hostsync.step(ordinary):
                may_be_dead = since_max + (step - s0) * tc.batch_size >= run.dead_window
                result = _train_step(run, raw_a, raw_b, step, may_be_dead)
            if not ordinary:
                nonfinite.raise_if_any()  # before anything trained on it is logged or saved
                if state.step % tc.log_every == 0 or state.step == tc.steps:
                    report.log(_step_metrics(run, step, result, report))
                _maybe_checkpoint(run)
            report.advance()
    finally:
        report.close()


def _train_step(
    run: _Run, raw_a: torch.Tensor, raw_b: torch.Tensor, step: int, may_be_dead: bool
) -> _Step:
    """One optimizer step on a raw batch: normalize and filter, the loss at this step's k and
    lr, backward (gradients summed over ranks), clipping, Adam, then the threshold EMA, the
    dead-feature counters and, when due, resampling."""
    model, opt, tc, state = run.model, run.opt, run.tc, run.state
    x_a, x_b, keep, batch = _prepare(model, raw_a, raw_b, tc, run.device, run.dinfo, run.static)
    n_rows = x_a.shape[0] if keep is None else keep.sum()  # this rank's, kept
    n_kept = n_rows if batch is None else batch.n_total  # the global batch's
    if step == 0:  # fresh run: decoder bias at the geometric median (paper init)
        _init_decoder_bias(model, x_a, x_b, batch, keep)
    k_now = annealed_k(step, run.final_k, tc)
    for group in opt.param_groups:
        group["lr"] = lr_at(step, tc)
    dead_mask = state.since_fired >= run.dead_window
    out = model.loss(
        x_a,
        x_b,
        k=k_now,
        dead_mask=dead_mask if may_be_dead else None,
        aux_k=run.aux_k,
        aux_alpha=tc.aux_alpha,
        l1_coeff=tc.l1_coeff,
        compute_dtype=run.cdtype,
        batch=batch,
        keep=keep,
        static=run.static,
    )
    opt.zero_grad(set_to_none=True)
    out.total.backward()
    fired, min_score = out.fired, out.min_score
    if run.dinfo is not None:
        from crossdiff.runtime import distributed

        fired = distributed.sum_gradients(run.params, fired) > 0
        if min_score is not None:
            min_score = distributed.min_over_ranks(min_score)
    if tc.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(run.params, tc.grad_clip)
    opt.step()
    with torch.no_grad():
        _update_threshold(model, state, min_score, step, tc, run.final_k)
        state.since_fired += n_kept
        state.since_fired.masked_fill_(fired, 0)
    state.samples = state.samples + n_kept
    state.step = step + 1
    resampled = _maybe_resample(model, opt, state, tc, run.dead_window, x_a, x_b, batch, keep)
    return _Step(out, n_rows, n_kept, batch, k_now, dead_mask, resampled)


@dataclass
class _Report:
    """Where a run's log steps go (the progress bar, RUN/crosscoder/train_log.jsonl on rank
    0, the caller's callback) and the clock behind its samples per second."""

    bar: Any | None
    log_path: Path | None
    callback: Callable[[int, dict[str, float]], None] | None
    t0: float
    s0: int
    """The step the clock started at (the resumed step)."""

    @classmethod
    def start(
        cls,
        run: _Run,
        progress: bool,
        callback: Callable[[int, dict[str, float]], None] | None,
    ) -> _Report:
        bar = None
        if progress and run.main:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=run.tc.steps,
                initial=run.state.step,
                desc="train",
                unit="step",
                dynamic_ncols=True,
            )
        log_path = run.ckpt_dir / LOG_FILE if run.ckpt_dir is not None and run.main else None
        return cls(bar, log_path, callback, time.perf_counter(), run.state.step)

    def samples_per_s(self, step: int, batch_size: int) -> float:
        return (step - self.s0) * batch_size / max(time.perf_counter() - self.t0, 1e-9)

    def log(self, metrics: dict[str, Any]) -> None:
        """One log step: the bar's postfix, a line of the log file, the callback."""
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{metrics['loss']:.3g}",
                fve_a=f"{metrics['fve_a']:.3f}",
                fve_b=f"{metrics['fve_b']:.3f}",
                l0=f"{metrics['l0']:.1f}",
                dead=f"{metrics['dead']:.1%}",
                B_share=f"{metrics['loss_share_b']:.2f}",
                refresh=False,
            )
        if self.log_path is not None:
            with self.log_path.open("a") as fh:
                fh.write(json.dumps(metrics) + "\n")
        if self.callback is not None:
            self.callback(metrics["step"], metrics)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _step_metrics(run: _Run, step: int, result: _Step, report: _Report) -> dict[str, Any]:
    """The log line of the step that just ran (``step``: its index, one less than the state's
    step): the loss metrics over the global batch, k, the dead share, resampled features, lr
    and throughput."""
    return {
        "step": run.state.step,
        **_loss_metrics(result.out, result.n_rows, result.n_kept, result.batch),
        "k": result.k,
        "dead": float(result.dead_mask.float().mean()),
        "resampled": result.resampled,
        "lr": lr_at(step, run.tc),
        "samples_per_s": report.samples_per_s(run.state.step, run.tc.batch_size),
    }


def _maybe_checkpoint(run: _Run) -> None:
    """At checkpoint steps and the last step: rank 0 saves, the others wait for it."""
    tc, state = run.tc, run.state
    if run.ckpt_dir is None or not (
        state.step % tc.checkpoint_every == 0 or state.step == tc.steps
    ):
        return
    from crossdiff.runtime import distributed

    if run.main:
        _save_checkpoint(run.ckpt_dir, run.model, run.opt, state, tc)
    distributed.barrier(run.dinfo)


def _prepare(
    model: Crosscoder, x_a, x_b, tc: TrainConfig, device, dinfo, static: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, GlobalBatch | None]:
    """A raw batch -> this rank's normalized rows as the step sees them, the high-norm
    filter's kept rows (static path: a mask, every row stays; else None, the others dropped)
    and, under torchrun, where the rows sit in the global batch (the filter is then the
    global batch's)."""
    x_a, x_b = _to_device(model, x_a, x_b, device, static)
    if dinfo is None:
        keep = _high_norm_keep(x_a, x_b, tc.high_norm_factor)
        if keep is not None and not static:
            return x_a[keep], x_b[keep], None, None
        return x_a, x_b, keep, None
    batch, x_a, x_b = GlobalBatch.filtered(
        x_a, x_b, tc.high_norm_factor, tc.batch_size, dinfo, static=static
    )
    return x_a, x_b, batch.keep, batch


@torch.no_grad()
def _init_decoder_bias(
    model: Crosscoder, x_a, x_b, batch: GlobalBatch | None, keep: torch.Tensor | None
) -> None:
    """Decoder biases at the geometric median of the first (whole, global) batch."""
    x_a, x_b = _whole_batch(x_a, x_b, batch, keep)
    model.b_dec_a.copy_(geometric_median(x_a))
    model.b_dec_b.copy_(geometric_median(x_b))


def _whole_batch(x_a, x_b, batch: GlobalBatch | None, keep: torch.Tensor | None) -> tuple:
    """The step's kept rows of the whole (global) batch, for the steps that need them all."""
    if batch is not None:
        return batch.gather(x_a), batch.gather(x_b)
    if keep is not None:
        return x_a[keep], x_b[keep]
    return x_a, x_b


def _loss_metrics(out, n_rows, n_total, batch: GlobalBatch | None) -> dict[str, float]:
    """The step's loss, FVE, L0 and loss shares; over the global batch under torchrun (one
    all-reduce of seven numbers, at log steps only; the variances are summed within ranks).
    ``n_rows`` (this rank's rows in the loss) and ``n_total`` may be device counts."""
    n_rows, n_total = int(n_rows), int(n_total)
    nnz = out.l0 * n_rows
    vals = torch.stack(
        [
            out.total.detach(),
            out.recon_a.detach(),
            out.recon_b.detach(),
            out.aux.detach(),
            out.var_a.detach(),
            out.var_b.detach(),
            nnz.to(out.var_a.dtype) if torch.is_tensor(nnz) else out.var_a.new_tensor(nnz),
        ]
    ).float()
    if batch is not None:
        vals = batch.sum(vals)
    total, ra, rb, aux, va, vb, nnz = (float(v) for v in vals)
    return {
        "loss": total,
        "fve_a": 1 - ra * n_total / max(va, 1e-12),
        "fve_b": 1 - rb * n_total / max(vb, 1e-12),
        "l0": nnz / max(n_total, 1),
        # each model's share of the loss weight (its variation in the scaled batch) and of
        # the remaining reconstruction error
        "loss_share_b": vb / max(va + vb, 1e-12),
        "error_share_b": rb / max(ra + rb, 1e-12),
        "aux": aux,
    }


def _resample_due(step: int, tc: TrainConfig, model: Crosscoder) -> bool:
    """Whether the step that ends at ``step`` resamples dead features."""
    return bool(
        tc.resample_every
        and model.config.activation != "relu"
        and step % tc.resample_every == 0
        and step <= tc.resample_until * tc.steps
        and step < tc.steps
    )


def _maybe_resample(
    model: Crosscoder,
    opt,
    state: _State,
    tc: TrainConfig,
    dead_window: int,
    x_a,
    x_b,
    batch: GlobalBatch | None,
    keep: torch.Tensor | None = None,
) -> int:
    """Resample the features dead for a whole window, at ``resample_every`` steps (see
    crosscoder/resample.py); under torchrun every rank resamples from the whole global batch
    (gathered: resampling draws rows of it), then rank 0's result is broadcast."""
    if not _resample_due(state.step, tc, model):
        return 0
    from crossdiff.crosscoder.resample import resample_dead

    dead = state.since_fired >= dead_window
    x_a, x_b = _whole_batch(x_a, x_b, batch, keep)
    n = resample_dead(model, opt, dead, x_a, x_b, seed=tc.seed, step=state.step)
    state.since_fired[dead] = 0
    if batch is not None:
        from crossdiff.runtime import distributed

        distributed.broadcast_module(model)
    return n


def _to_device(model: Crosscoder, x_a, x_b, device, static: bool) -> tuple:
    """A raw batch -> normalized, on the training device (on the static path a copy from the
    host does not wait for the device's queue: a blocking copy would)."""
    non_blocking = static and torch.device(device).type == "cuda"
    x_a = model.normalize(x_a.to(device, torch.float32, non_blocking=non_blocking), "a")
    x_b = model.normalize(x_b.to(device, torch.float32, non_blocking=non_blocking), "b")
    return x_a, x_b


def _normalized(model: Crosscoder, x_a, x_b, device, step: int) -> tuple:
    """A raw batch -> finite-checked and normalized, on the training device."""
    check_finite(x_a, "a", step)
    check_finite(x_b, "b", step)
    return _to_device(model, x_a, x_b, device, False)


def _high_norm_keep(x_a, x_b, factor: float) -> torch.Tensor | None:
    """The pairs whose norms are both within ``factor`` x the batch's median (None: 0, no
    filter)."""
    if factor <= 0:
        return None
    na, nb = x_a.norm(dim=1), x_b.norm(dim=1)
    return (na <= factor * na.median()) & (nb <= factor * nb.median())


def _filtered(model: Crosscoder, x_a, x_b, tc: TrainConfig, device, step: int) -> tuple:
    """A raw batch -> finite-checked, normalized, high-norm-filtered, as the step sees it."""
    x_a, x_b = _normalized(model, x_a, x_b, device, step)
    keep = _high_norm_keep(x_a, x_b, tc.high_norm_factor)
    if keep is not None:
        x_a, x_b = x_a[keep], x_b[keep]
    return x_a, x_b


def _residual_init(model: Crosscoder, source: PairSource, tc: TrainConfig, device) -> None:
    """Exclusive features start at cross-model residual directions (crosscoder/init.py), from
    a sample drawn with its own seed so the training stream is untouched (exact resume holds:
    this runs only on a fresh start and its result is in every checkpoint)."""
    from crossdiff.crosscoder.init import init_exclusive_from_residuals

    p = model.partition
    n_samples = tc.init_samples or max(16_384, 32 * max(p.n_a, p.n_b))
    n_batches = -(-n_samples // tc.batch_size)
    stream = source.batches(tc.batch_size, seed=tc.seed + 7_919)
    xs_a, xs_b = [], []
    for _ in range(n_batches):
        try:
            x_a, x_b = next(stream)
        except StopIteration:
            break
        x_a, x_b = _filtered(model, x_a, x_b, tc, device, 0)
        xs_a.append(x_a)
        xs_b.append(x_b)
    if xs_a:
        init_exclusive_from_residuals(model, torch.cat(xs_a), torch.cat(xs_b))


def _update_threshold(
    model: Crosscoder,
    state: _State,
    min_score: torch.Tensor | None,
    step: int,
    tc: TrainConfig,
    final_k: int,
) -> None:
    """EMA of the smallest selected score per group, bias-corrected, reset after annealing.

    On the device, with the arithmetic of the per-group host loop it replaces (so the CPU
    result is bit-identical): beta = min(threshold_beta, (1 + n) / (10 + n)) in float64, the
    first update sets the threshold, later ones are ``fl32(beta) x thr + fl32((1 - beta) x
    value)`` in float32; a group without a selected score (NaN) is left alone."""
    if min_score is None or model.config.activation != "batchtopk":
        return
    if tc.k_anneal_from is not None and step == tc.k_anneal_steps:
        state.thr_updates.zero_()  # annealing just ended: forget the large-k thresholds
    groups = min_score.numel()
    thr = model.threshold[:groups]
    n = state.thr_updates[:groups]
    value = min_score.to(thr.dtype)
    seen = ~torch.isnan(value)
    nd = n.double()
    beta = ((1 + nd) / (10 + nd)).clamp(max=model.config.threshold_beta)
    ema = beta.to(thr.dtype) * thr + ((1 - beta) * value.double()).to(thr.dtype)
    thr.copy_(torch.where(seen, torch.where(n == 0, value, ema), thr))
    n.add_(seen.to(n.dtype))
