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

The config and schedule live in crosscoder/train_config.py, the normalization in
crosscoder/normalization.py, the checkpoint format in crosscoder/checkpoint.py.

Size: the start, the ordinary step, its static accelerator variant, the log and the resampling
all read one run's state (:class:`_Run`, :class:`_Step`), so they are kept in one file.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from crossdiff.crosscoder import hostsync
from crossdiff.crosscoder.checkpoint import (
    TrainState,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from crossdiff.crosscoder.config import CrosscoderConfig
from crossdiff.crosscoder.global_batch import GlobalBatch
from crossdiff.crosscoder.model import Crosscoder, LossOutput
from crossdiff.crosscoder.normalization import normalization_for
from crossdiff.crosscoder.sources import PairSource, rank_batches
from crossdiff.crosscoder.train_config import (
    TrainConfig,
    annealed_k,
    default_aux_k,
    default_dead_window,
    lr_at,
    resolve_compute_dtype,
)
from crossdiff.errors import CrossdiffError
from crossdiff.runtime.device import resolve_device

if TYPE_CHECKING:
    from crossdiff.runtime.distributed import DistInfo

LOG_FILE = "train_log.jsonl"


# ---- helpers ---------------------------------------------------------------------------------
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
    state: TrainState
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
) -> TrainState:
    """The newest checkpoint's state, loaded into model and optimizer (with ``resume`` and a
    checkpoint to resume), else a fresh one: counters at zero, step 0."""
    state = TrainState()
    if ckpt_dir is not None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        latest = latest_checkpoint(ckpt_dir) if resume else None
        if latest is not None:
            state = load_checkpoint(latest, model, opt, tc, device)
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
        save_checkpoint(run.ckpt_dir, run.model, run.opt, state, tc)
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
    state: TrainState,
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
    state: TrainState,
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
