"""Training checkpoints: the format (weights, optimizer state, dead-feature counters, threshold
state, step), atomic writes, a cheap damage check, and loading for an exact resume.

A damaged checkpoint is never deleted: the newest one that loads is used, with a warning
naming the others, and a damaged one at the step being written is renamed aside.
"""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from crossdiff.crosscoder.config import CrosscoderConfig
from crossdiff.crosscoder.model import CONFIG_FILE, WEIGHTS_FILE, Crosscoder
from crossdiff.crosscoder.train_config import TrainConfig
from crossdiff.errors import CrossdiffError

CHECKPOINT_PREFIX = "step-"
TRAIN_STATE_FILE = "train_state.safetensors"
TRAIN_META_FILE = "train_state.json"


def _checkpoint_paths(folder: Path) -> list[tuple[int, Path]]:
    out = []
    for p in folder.glob(f"{CHECKPOINT_PREFIX}*"):
        if p.is_dir() and (p / TRAIN_META_FILE).is_file():
            try:
                out.append((int(p.name[len(CHECKPOINT_PREFIX) :]), p))
            except ValueError:
                continue
    return sorted(out)


def _first_line(exc: BaseException) -> str:
    """``Type: first line of the message``: why a file could not be read, in one line."""
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _checkpoint_damage(path: Path) -> str | None:
    """Why the checkpoint at ``path`` cannot be loaded, or None: a cheap check (its four files
    present, the JSON ones parse, each safetensors header agrees with its file's size, so a
    truncated file is caught) that reads no tensor data."""
    from crossdiff.store.fileio import safetensors_header

    for name in (CONFIG_FILE, TRAIN_META_FILE):
        try:
            data = json.loads((path / name).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            return f"{name}: {_first_line(exc)}"
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
class TrainState:
    """Running training state beyond weights and optimizer."""

    step: int = 0
    since_fired: torch.Tensor | None = None  # (F,) samples since each feature last fired
    thr_updates: torch.Tensor | None = None  # (2,) EMA update counts per threshold group
    samples: int | torch.Tensor = 0  # kept samples trained on (a device count between
    # checkpoints on the static path)


def save_checkpoint(
    folder: Path,
    model: Crosscoder,
    opt: torch.optim.Optimizer,
    state: TrainState,
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


def load_checkpoint(
    path: Path,
    model: Crosscoder,
    opt: torch.optim.Optimizer,
    tc: TrainConfig,
    device: torch.device,
) -> TrainState:
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
            why = _first_line(exc)
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
) -> TrainState:
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
    return TrainState(
        step=saved["step"],
        since_fired=tensors["since_fired"].to(device),
        thr_updates=tensors["thr_updates"].to(device),
        samples=saved["samples"],
    )
