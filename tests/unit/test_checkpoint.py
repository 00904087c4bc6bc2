"""Checkpoint files, RNG state, preemption signals, and resuming real training runs exactly."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from holstein_dist import train
from holstein_dist.checkpoints import load_model
from holstein_dist.data import open_data, stack_windows
from hpc import checkpoint as ckpt
from hpc import dist

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "configs/train/tiny.yaml")




# --------------------------------------------------------------------------- files


def test_manager_keeps_the_latest_k_and_the_best(tmp_path):
    manager = ckpt.CheckpointManager(tmp_path, keep=2)
    assert manager.latest() is None
    metrics = {10: 5.0, 20: 3.0, 30: None, 40: 4.0, 50: 2.5}
    for step, metric in metrics.items():
        manager.save({"weights": torch.full((3,), float(step))}, step, best=manager.update_best(metric))
    assert manager.best_metric == 2.5 and not manager.update_best(float("nan"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "step-00000040.pt", "step-00000050.pt"]
    assert ckpt.latest_checkpoint(tmp_path) == tmp_path / "step-00000050.pt"
    best = ckpt.load_checkpoint(tmp_path / "best.pt")
    assert best["step"] == 50 and best["best_metric"] == 2.5
    # A checkpoint written after a worse validation still records the best so far.
    assert ckpt.load_checkpoint(tmp_path / "step-00000040.pt")["best_metric"] == 3.0


def test_step_numbers_sort_numerically_beyond_eight_digits(tmp_path):
    for step in (99_999_999, 100_000_000):
        ckpt.atomic_save({"step": step}, tmp_path / ckpt.step_name(step))
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path))["step"] == 100_000_000


def test_atomic_save_leaves_no_temporary_and_ignores_stale_ones(tmp_path):
    stale = tmp_path / ".step-00000001.pt.12345.tmp"
    stale.write_bytes(b"half a file from a killed writer")
    manager = ckpt.CheckpointManager(tmp_path, keep=1)
    manager.save({"x": 1}, step=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000001.pt"]


@pytest.mark.parametrize(
    "content, message",
    [(b"not a torch file", "is unreadable"), (None, "lacks ['step']")],
)
def test_bad_checkpoint_is_one_line_error(tmp_path, content, message):
    path = tmp_path / "step-00000001.pt"
    if content is None:
        ckpt.atomic_save({"other": 1}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(ckpt.CheckpointError) as info:
        ckpt.load_checkpoint(path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_rng_state_round_trip():
    state = ckpt.capture_rng_state()
    first = (random.random(), np.random.rand(), torch.rand(2))
    ckpt.restore_rng_state(state)
    again = (random.random(), np.random.rand(), torch.rand(2))
    assert first[:2] == again[:2] and torch.equal(first[2], again[2])


# --------------------------------------------------------------------------- signals


def test_preemption_guard_records_signals_and_restores_handlers():
    before = signal.getsignal(signal.SIGUSR1)
    with ckpt.PreemptionGuard() as guard:
        assert not guard.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert guard.requested and not guard.wants_requeue
        os.kill(os.getpid(), signal.SIGUSR1)
        assert guard.wants_requeue and guard.received == signal.SIGUSR1
    assert signal.getsignal(signal.SIGUSR1) == before


def test_requeue_outside_slurm_does_nothing(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert ckpt.requeue_slurm_job() is False


# --------------------------------------------------------------------------- real runs


def test_trained_checkpoint_loads_with_load_model_and_gives_identical_outputs(tiny_data, tmp_path):
    cfg = train.load_train_config(TINY, [f"data={tiny_data}", f"run_dir={tmp_path}", "model=small", "threads=0"])
    env = dist.init_distributed()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small only loses from threads competing for two cores
    try:
        with ckpt.PreemptionGuard() as guard:
            trainer = train.build_trainer(cfg, env, open_data(tiny_data))
            result = trainer.fit(guard)
    finally:
        torch.set_num_threads(threads)
        dist.shutdown()
    assert result.status == "finished" and result.step == 30
    final = load_model(tmp_path / "checkpoints" / "step-00000030.pt")
    best = load_model(tmp_path)  # a run directory resolves to checkpoints/best.pt
    assert ckpt.load_checkpoint(tmp_path / "checkpoints" / "best.pt")["best_metric"] == result.best_metric
    batch = stack_windows(trainer.val_windows, np.arange(4))
    x0 = (batch["rho"][:, 0], batch["Q"][:, 0], batch["P"][:, 0])
    trainer.model.eval()
    want = trainer.model.rollout(*x0, 5)
    for got, w in zip(final.rollout(*x0, 5), want):
        assert torch.equal(got, w)
    assert type(best) is type(final)


def _command(data: Path, run_dir: Path) -> list[str]:
    # 180 steps (60 + 2 x 60), a checkpoint every 10, validation every 30; deterministic on one thread.
    return [sys.executable, "-m", "holstein_dist.train", "--config", TINY, f"data={data}", f"run_dir={run_dir}",
            "curriculum.batches_per_epoch=60", "ckpt_every=10", "val_every=30", "log_every=30", "keep=2",
            "deterministic=true", "threads=1", "num_workers=0"]


def _start(data: Path, run_dir: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return subprocess.Popen(_command(data, run_dir), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _interrupt_at_checkpoint(proc: subprocess.Popen, run_dir: Path, step: int, sig: signal.Signals) -> None:
    """Send ``sig`` as soon as the checkpoint of ``step`` exists (the run is then still going)."""
    target = run_dir / "checkpoints" / ckpt.step_name(step)
    deadline = time.monotonic() + 120
    while not target.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, f"no checkpoint {target.name} after 120 s"
        time.sleep(0.002)
    proc.send_signal(sig)


def _latest_step(run_dir: Path) -> int:
    return ckpt.load_checkpoint(ckpt.latest_checkpoint(run_dir / "checkpoints"))["step"]


def _final(run_dir: Path) -> dict:
    return ckpt.load_checkpoint(run_dir / "checkpoints" / "step-00000180.pt")


def test_killed_then_signalled_run_resumes_bit_identically(tiny_data, tmp_path):
    """SIGKILL mid-run, resume, SIGUSR1 (Slurm's warning) mid-run, resume: the final weights, optimizer
    and scheduler state equal those of an uninterrupted run bit for bit."""
    straight, chain = tmp_path / "straight", tmp_path / "chain"
    reference, proc = _start(tiny_data, straight), _start(tiny_data, chain)
    _interrupt_at_checkpoint(proc, chain, 10, signal.SIGKILL)
    assert proc.wait(60) == -signal.SIGKILL
    killed_at = _latest_step(chain)
    assert killed_at < 180, "the run finished before the kill"

    proc = _start(tiny_data, chain)
    _interrupt_at_checkpoint(proc, chain, killed_at + 10, signal.SIGUSR1)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, out
    assert "resuming from" in out and f"at step {killed_at}" in out
    assert "stopped at step" in out and "re-run the same command to resume" in out
    signalled_at = _latest_step(chain)
    assert killed_at < signalled_at < 180 and f"stopped at step {signalled_at} " in out

    proc = _start(tiny_data, chain)
    outputs = [p.communicate(timeout=120)[0] for p in (proc, reference)]
    assert proc.returncode == reference.returncode == 0, outputs
    assert f"at step {signalled_at}" in outputs[0]

    a, b = _final(straight), _final(chain)
    assert a["step"] == b["step"] == 180 and a["best_metric"] == b["best_metric"]
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        for key in sa:
            assert torch.equal(sa[key], sb[key]), key
    assert a["scheduler"] == b["scheduler"]


def test_sigterm_to_the_whole_process_group_stops_a_run_with_loader_workers_cleanly(tiny_data, tmp_path):
    """scancel, a job's time limit and `timeout` signal every process of the job, DataLoader workers included:
    the run still finishes its step, writes the preemption checkpoint and exits 0 (workers used to die first and
    take the run down with "DataLoader worker is killed")."""
    run_dir = tmp_path / "run"
    cmd = [*_command(tiny_data, run_dir)[:-1], "num_workers=2"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        target = run_dir / "checkpoints" / ckpt.step_name(20)
        deadline = time.monotonic() + 120
        while not target.exists():
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "no checkpoint at step 20 after 120 s"
            time.sleep(0.002)
        os.killpg(proc.pid, signal.SIGTERM)
        out = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out
    assert "killed by signal" not in out and "stopped at step" in out, out[-2000:]
    stopped_at = _latest_step(run_dir)
    assert 20 <= stopped_at < 180 and f"stopped at step {stopped_at} " in out


def test_incompatible_or_corrupt_checkpoint_in_run_dir_is_one_line_error(tiny_data, tmp_path, capsys):
    base = ["--config", TINY, f"data={tiny_data}", f"run_dir={tmp_path}", "max_steps=10"]
    threads = torch.get_num_threads()
    try:
        assert train.main(base) == 0  # tiny.yaml's threads=1; the test process's setting is restored below
    finally:
        torch.set_num_threads(threads)
    capsys.readouterr()
    assert train.main([*base, "model=small", "max_steps=20"]) == 2
    err = capsys.readouterr().err
    assert "holds a different model" in err and "fresh run_dir" in err and err.count("\n") == 1
    path = tmp_path / "checkpoints" / "step-00000010.pt"
    payload = ckpt.load_checkpoint(path)
    payload["scales"]["rho"] *= 2  # as if trained on another data set
    ckpt.atomic_save(payload, path)
    assert train.main([*base, "max_steps=20"]) == 2
    err = capsys.readouterr().err
    assert "other normalization scales (rho:" in err and err.count("\n") == 1
    path.write_bytes(b"\x00" * 100)
    assert train.main([*base, "max_steps=20"]) == 2
    err = capsys.readouterr().err
    assert "is unreadable" in err and err.count("\n") == 1


# --------------------------------------------------------------------------- hardening: safety and corruption


class _RunsCode:
    """Unpickling this calls ``builtins.exec``: the attack a shared checkpoint file can carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import builtins

        return builtins.exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def malicious_checkpoint(path: Path, marker: Path) -> Path:
    """A .pt file that writes ``marker`` when loaded with full unpickling (what the suite used to do)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": "holstein-dist/2", "step": 10**6, "model": _RunsCode(marker)}, path)
    return path


def test_a_checkpoint_that_would_run_code_is_refused_everywhere(tiny_data, tmp_path, capsys):
    from holstein_dist import evaluate

    marker = tmp_path / "marker"
    evil = malicious_checkpoint(tmp_path / "evil.pt", marker)
    with pytest.raises(ckpt.CheckpointError, match="refused, since loading it could run code"):
        ckpt.load_checkpoint(evil)
    with pytest.raises(ValueError, match="could run code"):
        load_model(evil)
    assert evaluate.main(["--checkpoint", str(evil), "--data", str(tiny_data), "--out", str(tmp_path / "ev")]) == 2
    assert "could run code" in capsys.readouterr().err
    # Dropped into a run directory as the newest checkpoint: resume skips it for the valid one before it.
    run_dir = tmp_path / "run"
    base = ["--config", TINY, f"data={tiny_data}", f"run_dir={run_dir}"]
    assert train.main([*base, "max_steps=10"]) == 0
    malicious_checkpoint(run_dir / "checkpoints" / ckpt.step_name(20), marker)
    capsys.readouterr()
    assert train.main([*base, "max_steps=20"]) == 0
    err = capsys.readouterr().err
    assert "skipped step-00000020.pt and resumed from step-00000010.pt" in err and "could run code" in err
    assert not marker.exists()


def _flip_byte_inside(path: Path, needle: bytes) -> None:
    """Flip one bit in the middle of the first occurrence of ``needle`` (a tensor's raw bytes) in ``path``."""
    data = bytearray(path.read_bytes())
    at = data.find(needle)
    assert at >= 0, "tensor bytes not found in the file"
    data[at + len(needle) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_flipped_byte_in_a_checkpoint_is_caught_on_load(tmp_path):
    weights = torch.linspace(0.0, 1.0, 4096)
    path = tmp_path / ckpt.step_name(5)
    ckpt.atomic_save({"step": 5, "w": weights}, path)
    assert torch.equal(ckpt.load_checkpoint(path)["w"], weights)
    _flip_byte_inside(path, weights.numpy().tobytes())
    with pytest.raises(ckpt.InvalidCheckpoint) as info:
        ckpt.load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "corrupt" in message and "older" in message and "\n" not in message


def test_resume_falls_back_past_a_corrupt_newest_checkpoint(tiny_data, tmp_path, capsys):
    run_dir = tmp_path / "run"
    base = ["--config", TINY, f"data={tiny_data}", f"run_dir={run_dir}"]
    assert train.main([*base, "max_steps=20"]) == 0  # keep=2: step-10 and step-20 stay
    newest = run_dir / "checkpoints" / ckpt.step_name(20)
    payload = ckpt.load_checkpoint(newest)
    key = next(iter(payload["model"]))
    _flip_byte_inside(newest, payload["model"][key].numpy().tobytes())
    capsys.readouterr()
    assert train.main([*base, "max_steps=30"]) == 0
    captured = capsys.readouterr()
    assert "skipped step-00000020.pt and resumed from step-00000010.pt" in captured.err
    assert "resuming from" in captured.out and "at step 10" in captured.out
    assert (run_dir / "checkpoints" / "step-00000020.pt.bad").is_file()  # kept for inspection, out of the way
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(run_dir / "checkpoints"))["step"] == 30


def test_with_no_valid_checkpoint_resume_stops_and_touches_nothing(tiny_data, tmp_path, capsys):
    run_dir = tmp_path / "run"
    base = ["--config", TINY, f"data={tiny_data}", f"run_dir={run_dir}", "keep=1"]
    assert train.main([*base, "max_steps=10"]) == 0
    only = run_dir / "checkpoints" / ckpt.step_name(10)
    only.write_bytes(only.read_bytes()[:-100])
    before = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    capsys.readouterr()
    assert train.main([*base, "max_steps=20"]) == 2
    err = capsys.readouterr().err
    assert str(only) in err and err.count("\n") == 1
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == before


def test_rng_state_is_plain_tensors_and_containers(tmp_path):
    path = tmp_path / "rng.pt"
    ckpt.atomic_save({"step": 0, "rng": ckpt.capture_rng_state()}, path)
    state = ckpt.load_checkpoint(path)["rng"]  # weights_only=True: would refuse numpy arrays or tuples of them
    first = (random.random(), np.random.rand(), np.random.randn(), torch.rand(2))
    ckpt.restore_rng_state(state)
    again = (random.random(), np.random.rand(), np.random.randn(), torch.rand(2))
    assert first[:3] == again[:3] and torch.equal(first[3], again[3])
