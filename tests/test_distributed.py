"""Data-parallel training under torchrun (gloo, 2 CPU processes), as docs/ARCHITECTURE.md
"Scale" asks: both ranks end with identical weights, only rank 0 writes checkpoints, a run
stopped and resumed under torchrun ends where an unstopped one does, and 2 ranks that each
read only their rows end with the weights of one process (BatchTopK, the high-norm filter,
AuxK and resampling all see the global batch)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

TRAIN = dict(steps=20, checkpoint_every=5, init_samples=512, resample_every=6)
"""Short, with resampling at steps 6 and 12 (a feature is dead after 2 steps of 128 rows)."""
F_TIMES, K = 4, 2
"""4 x F features at k = 2: features die, so AuxK and resampling run."""

WORKER = textwrap.dedent(
    """
    import os, sys
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    from test_crosscoder import D_A, D_B, F, paired_data, quick_train
    from crossdiff.crosscoder import ArraySource, CrosscoderConfig, train_crosscoder
    from crossdiff.crosscoder.distributed import shutdown
    from safetensors.torch import save_file

    out = sys.argv[1]
    stop_at = int(sys.argv[2])
    class Stop(Exception):
        pass
    def cb(step, metrics):
        if stop_at and step >= stop_at:
            raise Stop
    cfg = CrosscoderConfig.dfc(D_A, D_B, {n_features} * F, exclusive=0.1, k={k})
    tc = quick_train(**{train!r})
    try:
        cc = train_crosscoder(ArraySource(*paired_data()), cfg, tc, checkpoint_dir=out + "/ckpt",
                              progress=False, callback=cb)
    except Stop:  # a stopped run: leave without interpreter teardown (as a killed rank would)
        shutdown()
        os._exit(0)
    rank = int(os.environ["RANK"])
    state = {{k: v.contiguous() for k, v in cc.state_dict().items()}}
    save_file(state, f"{{out}}/rank{{rank}}.safetensors")
    shutdown()
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(tmp_path: Path, out: Path, stop_at: int = 0) -> None:
    script = tmp_path / "worker.py"
    script.write_text(
        WORKER.format(tests=str(Path(__file__).parent), train=TRAIN, n_features=F_TIMES, k=K)
    )
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        str(script), str(out), str(stop_at),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"stop_at={stop_at}\n" + proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("ddp")
    out = tmp / "full"
    out.mkdir()
    _torchrun(tmp, out)
    return out


def test_ranks_end_identical_and_only_rank0_checkpoints(ddp_run: Path) -> None:
    r0 = load_file(str(ddp_run / "rank0.safetensors"))
    r1 = load_file(str(ddp_run / "rank1.safetensors"))
    for name in r0:
        assert torch.equal(r0[name].nan_to_num(0), r1[name].nan_to_num(0)), name
    steps = sorted(p.name for p in (ddp_run / "ckpt").iterdir())
    assert steps == ["step-00000015", "step-00000020", "train_log.jsonl"]
    log = (ddp_run / "ckpt" / "train_log.jsonl").read_text().splitlines()
    assert len(log) == len({line for line in log})  # one writer: no duplicated lines


def test_stopped_and_resumed_under_torchrun_equals_unstopped(ddp_run: Path, tmp_path) -> None:
    out = tmp_path / "cut"
    out.mkdir()
    _torchrun(tmp_path, out, stop_at=12)  # both ranks stop after the step-10 checkpoint
    assert not (out / "rank0.safetensors").exists()
    _torchrun(tmp_path, out)
    full = load_file(str(ddp_run / "rank0.safetensors"))
    resumed = load_file(str(out / "rank0.safetensors"))
    for name in full:
        assert torch.equal(full[name].nan_to_num(0), resumed[name].nan_to_num(0)), name


def test_two_ranks_give_the_weights_of_one(ddp_run: Path, tmp_path: Path) -> None:
    """The same run in one process: the same weights up to float noise (the ranks sum their
    partial losses in another order), and so the same quality."""
    from crossdiff.crosscoder import ArraySource, Crosscoder, CrosscoderConfig, train_crosscoder
    from crossdiff.crosscoder.metrics import evaluate
    from test_crosscoder import D_A, D_B, F, paired_data, quick_train

    cfg = CrosscoderConfig.dfc(D_A, D_B, F_TIMES * F, exclusive=0.1, k=K)
    source = ArraySource(*paired_data())
    single = train_crosscoder(
        source, cfg, quick_train(**TRAIN), checkpoint_dir=tmp_path / "ckpt", progress=False
    )
    ddp = Crosscoder(single.config)
    ddp.load_state_dict(load_file(str(ddp_run / "rank0.safetensors")))
    for name, t in single.state_dict().items():
        got = ddp.state_dict()[name]
        err = float((got - t).nan_to_num(0).abs().amax()) if t.numel() else 0.0
        assert torch.allclose(got.nan_to_num(0), t.nan_to_num(0), rtol=1e-4, atol=1e-5), (
            name,
            err,
        )
    logs = [(tmp_path / "ckpt" / "train_log.jsonl"), (ddp_run / "ckpt" / "train_log.jsonl")]
    one, two = ([json.loads(x) for x in p.read_text().splitlines()] for p in logs)
    assert [r["resampled"] for r in one] == [r["resampled"] for r in two]
    assert sum(r["resampled"] for r in one) > 0  # the run did resample
    for r1, r2 in zip(one, two):  # global metrics, not rank 0's slice
        for key in ("loss", "l0", "aux"):
            assert r2[key] == pytest.approx(r1[key], rel=1e-3, abs=1e-5), (key, r1, r2)
        for key in ("fve_a", "fve_b"):  # variances centred within each rank: close, not equal
            assert r2[key] == pytest.approx(r1[key], abs=0.02), (key, r1, r2)
    m1 = evaluate(single, source, n_batches=4, batch_size=256)
    m2 = evaluate(ddp, source, n_batches=4, batch_size=256)
    for key in ("fve_a", "fve_b"):
        assert m2[key] == pytest.approx(m1[key], abs=1e-3), (key, m1[key], m2[key])
