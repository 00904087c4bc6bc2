"""The fused GPU stepper (split real/imag, batch-last, compiled, CUDA graphs) computes the same dynamics.

Its layout and arithmetic are exercised on the CPU (eager, and compiled in one slow test); the CUDA-only
parts (graph capture, pinned copies) run in benchmarks/gpu_check.py on a GPU.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from holstein_dist import physics as ph


def _batch(L: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    starts = [ph.initial_state(L, 0.0, seed=s) for s in range(n)]
    rho, Q, P = (np.stack(x) for x in zip(*starts))
    return ph.evolve(rho, Q, P, g=1.0, n_steps=20, backend="numpy")


def test_fused_eager_matches_the_reference_step():
    rho, Q, P = _batch(16, 3)
    ref = ph.evolve(rho, Q, P, g=0.9, n_steps=40, backend="numpy")
    stepper = ph.FusedTorchStepper(rho, Q, P, g=0.9)
    assert stepper.mode == "eager"
    stepper.advance(40)
    out = stepper.state()
    assert all(isinstance(x, np.ndarray) for x in out)
    for got, want in zip(out, ref):
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 1e-12


def test_fused_keeps_leading_batch_shape_and_torch_io():
    rho, Q, P = _batch(8, 4)
    shaped = [torch.from_numpy(x.reshape((2, 2) + x.shape[1:])) for x in (rho, Q, P)]
    stepper = ph.FusedTorchStepper(*shaped, g=1.0)
    stepper.advance(5)
    out = stepper.state()
    assert [tuple(x.shape) for x in out] == [(2, 2, 8, 8), (2, 2, 8), (2, 2, 8)]
    assert out[0].dtype == torch.complex128 and out[1].dtype == torch.float64
    ref = ph.evolve(rho, Q, P, g=1.0, n_steps=5, backend="numpy")
    assert np.abs(out[0].numpy().reshape(rho.shape) - ref[0]).max() <= 1e-12


def test_golden_trajectory_with_the_fused_path(golden_dir):
    data = np.load(golden_dir / "L16_deep_g0_1.npz")
    meta = json.loads((golden_dir / "L16_deep_g0_1.json").read_text())
    stepper = ph.FusedTorchStepper(data["rho"][0], data["Q"][0], data["P"][0], g=meta["g_f"])
    worst = 0.0
    for k in range(1, data["rho"].shape[0]):
        stepper.advance(meta["save_interval"])
        for x, key in zip(stepper.state(), ("rho", "Q", "P")):
            worst = max(worst, float(np.abs(x - data[key][k]).max()))
    assert worst <= 1e-9


def test_graph_steps_need_cuda():
    rho, Q, P = _batch(8, 1)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        ph.FusedTorchStepper(rho, Q, P, g=1.0, graph_steps=8)


def test_cpu_torch_backend_keeps_the_eager_complex_path():
    rho, Q, P = (torch.from_numpy(x) for x in _batch(8, 2))
    assert type(ph.make_stepper(rho, Q, P, g=1.0, backend="torch")) is ph.TorchStepper


@pytest.mark.slow
def test_compiled_split_step_one_graph_for_every_batch_and_coupling():
    """torch.compile (inductor's CPU backend here, Triton on a GPU): the same numbers, and a second batch
    size and coupling reuse the compiled graph (L static, batch symbolic, g a tensor), so a sweep over
    batch sizes compiles once per L."""
    rho, Q, P = _batch(8, 3)
    ref = ph.evolve(rho, Q, P, g=1.0, n_steps=10, backend="numpy")
    stepper = ph.FusedTorchStepper(rho, Q, P, g=1.0, compile=True)
    if stepper.mode != "compiled":
        pytest.skip(f"torch.compile unavailable here: {stepper.notes}")
    stepper.advance(10)
    assert max(float(np.abs(a - b).max()) for a, b in zip(stepper.state(), ref)) <= 1e-12
    torch._dynamo.utils.counters.clear()
    wider = [np.concatenate([x, x]) for x in (rho, Q, P)]
    other = ph.FusedTorchStepper(*wider, g=0.7, compile=True)
    other.advance(3)
    assert other.mode == "compiled"
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 0, "a new batch size or g recompiled"
