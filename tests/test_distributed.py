"""Data-parallel training under torchrun (gloo, 2 CPU processes), as docs/ARCHITECTURE.md
"Scale" asks: both ranks end with identical weights, only rank 0 writes checkpoints, a run
stopped and resumed under torchrun ends where an unstopped one does, and 2 ranks that each
read only their rows end with the weights of one process (BatchTopK, the high-norm filter,
AuxK and resampling all see the global batch), and the static path (what a GPU runs,
crosscoder/hostsync.py) reads nothing on the host in an ordinary step under torchrun either
and trains the same weights."""

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
TIMEOUT_S = 1200
"""Per torchrun: two gloo ranks on a shared, loaded machine took up to ~5 minutes."""

WORKER = textwrap.dedent(
    """
    import os, sys
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    from test_crosscoder import D_A, D_B, F, paired_data, quick_train
    import contextlib, json
    from crossdiff.crosscoder import ArraySource, CrosscoderConfig, hostsync, train_crosscoder
    from crossdiff.runtime.distributed import shutdown
    from safetensors.torch import save_file

    out = sys.argv[1]
    stop_at = int(sys.argv[2])
    static = sys.argv[3] == "static"
    class Stop(Exception):
        pass
    def cb(step, metrics):
        if stop_at and step >= stop_at:
            raise Stop
    cfg = CrosscoderConfig.dfc(D_A, D_B, {n_features} * F, exclusive=0.1, k={k})
    tc = quick_train(**{train!r})
    check = hostsync.check_steps() if static else contextlib.nullcontext()
    try:
        with check as report:
            cc = train_crosscoder(ArraySource(*paired_data()), cfg, tc,
                                  checkpoint_dir=out + "/ckpt", progress=False, callback=cb)
    except Stop:  # a stopped run: leave without interpreter teardown (as a killed rank would)
        shutdown()
        os._exit(0)
    rank = int(os.environ["RANK"])
    if static:
        with open(f"{{out}}/syncs{{rank}}.json", "w") as fh:
            json.dump({{"steps": report.steps_checked, "syncs": report.syncs}}, fh)
    state = {{k: v.contiguous() for k, v in cc.state_dict().items()}}
    save_file(state, f"{{out}}/rank{{rank}}.safetensors")
    shutdown()
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(tmp_path: Path, out: Path, stop_at: int = 0, *, static: bool = False) -> None:
    script = tmp_path / "worker.py"
    script.write_text(
        WORKER.format(tests=str(Path(__file__).parent), train=TRAIN, n_features=F_TIMES, k=K)
    )
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        str(script), str(out), str(stop_at), "static" if static else "compacting",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
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


def test_static_path_under_torchrun_reads_nothing_and_matches(ddp_run: Path, tmp_path) -> None:
    """The same 2-rank run on the static path (fixed-size global BatchTopK, the filter as a
    row mask, device-side counts): no host read in an ordinary step on either rank, identical
    ranks, and the run of the compacting path up to float noise and ties. Ties: resampling
    draws rows with replacement, so features restart as exact duplicates, and which of two
    identical features a per-row AuxK top-k takes is the top-k's choice (a full-width top-k
    here, one over the dead columns there); measured: ~10 of the 256 features (duplicate
    pairs, cosine > 0.98) end up to 1e-2 apart, the rest within float noise."""
    out = tmp_path / "static"
    out.mkdir()
    _torchrun(tmp_path, out, static=True)
    for rank in (0, 1):
        report = json.loads((out / f"syncs{rank}.json").read_text())
        assert report["steps"] > 0 and report["syncs"] == [], report
    r0 = load_file(str(out / "rank0.safetensors"))
    r1 = load_file(str(out / "rank1.safetensors"))
    compact = load_file(str(ddp_run / "rank0.safetensors"))
    for name, t in compact.items():
        assert torch.equal(r0[name].nan_to_num(0), r1[name].nan_to_num(0)), name
        got, want = r0[name].nan_to_num(0).double(), t.nan_to_num(0).double()
        if want.numel():
            rel = float((got - want).norm() / want.norm().clamp_min(1e-12))
            assert rel < 3e-2, (name, rel)
    logs = [(ddp_run / "ckpt" / "train_log.jsonl"), (out / "ckpt" / "train_log.jsonl")]
    one, two = ([json.loads(x) for x in p.read_text().splitlines()] for p in logs)
    assert [r["resampled"] for r in one] == [r["resampled"] for r in two]
    for r1, r2 in zip(one, two):
        for key in ("loss", "l0", "fve_a", "fve_b", "dead"):
            assert r2[key] == pytest.approx(r1[key], rel=1e-4, abs=1e-5), (key, r1, r2)
        assert r2["aux"] == pytest.approx(r1["aux"], rel=1e-2), ("aux", r1, r2)
