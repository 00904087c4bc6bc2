"""The fused numba RK4 kernel: exact agreement with the numpy RK4, independent of batching and threads."""

from __future__ import annotations

import numpy as np
import pytest

from holstein_dist import physics as ph

rk4 = pytest.importorskip("holstein_dist._rk4_numba")
if not rk4.AVAILABLE:  # pragma: no cover
    pytest.skip("numba is not installed", allow_module_level=True)

G, STEPS = 1.0, 40


def random_state(shape: tuple[int, ...], L: int, seed: int = 0):
    """Exactly Hermitian random ``rho`` (O(1) entries, complex off-diagonal) and random ``Q``, ``P``."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=shape + (L, L)) + 1j * rng.normal(size=shape + (L, L))
    rho = 0.5 * (a + np.conj(np.swapaxes(a, -1, -2))) / L
    return rho, 0.1 * rng.normal(size=shape + (L,)), 0.1 * rng.normal(size=shape + (L,))


def numba_evolve(rho, Q, P, n_steps=STEPS, threads=None, g=G):
    stepper = rk4.NumbaStepper(rho, Q, P, g=g, dt=ph.DT_DEFAULT, K0=ph.K0_DEFAULT, eta=ph.ETA_DEFAULT,
                               threads=threads)
    stepper.advance(n_steps)
    return stepper.state()


def assert_same_bits(xs, ys):
    for x, y in zip(xs, ys):
        assert x.shape == y.shape
        assert np.array_equal(x, y)


def test_hermitian_input_reproduces_numpy_bit_for_bit():
    """Same operations in the same order as ``physics.rk4_step``: no tolerance needed."""
    rho, Q, P = random_state((3,), 16, seed=1)
    ref = ph.evolve(rho, Q, P, g=G, n_steps=STEPS, backend="numpy")
    assert_same_bits(numba_evolve(rho, Q, P), ref)


@pytest.mark.parametrize("L", [4, 6, 8, 10, 32])
def test_small_and_odd_half_rings_match_numpy(L):
    """Ghost rows at k = 0 and k = L/2 are right for every even L, including L/2 odd and L = 4."""
    rho, Q, P = random_state((2,), L, seed=L)
    ref = ph.evolve(rho, Q, P, g=0.7, n_steps=25, backend="numpy")
    out = numba_evolve(rho, Q, P, n_steps=25, g=0.7)
    for x, y in zip(out, ref):
        assert np.abs(x - y).max() <= 1e-13


@pytest.mark.parametrize("batch", [1, 7, 9, 17])
def test_batched_equals_one_by_one_for_odd_batches(batch):
    rho, Q, P = random_state((batch,), 12, seed=batch)
    batched = numba_evolve(rho, Q, P)
    for i in {0, batch // 2, batch - 1}:
        assert_same_bits([x[i] for x in batched], numba_evolve(rho[i], Q[i], P[i]))


@pytest.mark.parametrize("shape", [(), (1,), (2, 3), (2, 1, 3)])
def test_leading_batch_shapes(shape):
    rho, Q, P = random_state(shape, 8, seed=3)
    out = numba_evolve(rho, Q, P)
    assert [x.shape for x in out] == [shape + (8, 8), shape + (8,), shape + (8,)]
    flat = numba_evolve(rho.reshape(-1, 8, 8), Q.reshape(-1, 8), P.reshape(-1, 8))
    assert_same_bits([x.reshape(-1, *x.shape[len(shape):]) for x in out], flat)


def test_threads_and_chunk_width_do_not_change_bits(monkeypatch):
    rho, Q, P = random_state((11,), 16, seed=5)
    ref = numba_evolve(rho, Q, P, threads=1)
    assert_same_bits(numba_evolve(rho, Q, P, threads=2), ref)
    for width in (1, 3, 16):
        monkeypatch.setattr(rk4, "MAX_WIDTH", width)
        monkeypatch.setattr(rk4, "CHUNK_BYTES", 1 << 40)
        stepper = rk4.NumbaStepper(rho, Q, P, g=G, dt=ph.DT_DEFAULT, K0=ph.K0_DEFAULT, eta=ph.ETA_DEFAULT,
                                   threads=2)
        assert stepper.W == min(width, 6)  # 11 trajectories over >= 2 chunks
        stepper.advance(STEPS)
        assert_same_bits(stepper.state(), ref)


def test_advance_in_pieces_equals_one_call():
    rho, Q, P = random_state((5,), 8, seed=6)
    stepper = rk4.NumbaStepper(rho, Q, P, g=G, dt=ph.DT_DEFAULT, K0=ph.K0_DEFAULT, eta=ph.ETA_DEFAULT)
    for n in (0, 1, 3, 36):
        stepper.advance(n)
    assert_same_bits(stepper.state(), numba_evolve(rho, Q, P))


def test_inputs_never_mutated_and_state_is_a_copy():
    rho, Q, P = random_state((4,), 8, seed=7)
    copies = [x.copy() for x in (rho, Q, P)]
    stepper = rk4.NumbaStepper(rho, Q, P, g=G, dt=ph.DT_DEFAULT, K0=ph.K0_DEFAULT, eta=ph.ETA_DEFAULT)
    stepper.advance(3)
    assert_same_bits((rho, Q, P), copies)
    first = stepper.state()
    kept = [x.copy() for x in first]
    for x in first:
        x[...] = np.nan
    assert_same_bits(stepper.state(), kept)
    stepper.advance(1)
    assert not np.array_equal(stepper.state()[1], kept[1])


def test_single_trajectory_state_is_not_a_view():
    """With one trajectory per chunk the lane axis has length 1: state() must still copy."""
    rho, Q, P = random_state((), 8, seed=8)
    stepper = rk4.NumbaStepper(rho, Q, P, g=G, dt=ph.DT_DEFAULT, K0=ph.K0_DEFAULT, eta=ph.ETA_DEFAULT)
    before = stepper.state()
    stepper.advance(2)
    assert_same_bits(before, rk4.NumbaStepper(rho, Q, P, g=G, dt=ph.DT_DEFAULT, K0=ph.K0_DEFAULT,
                                              eta=ph.ETA_DEFAULT).state())


def test_output_is_exactly_hermitian_and_nearly_hermitian_input_uses_its_hermitian_part():
    rho, Q, P = random_state((2,), 8, seed=9)
    skew = 1e-10 * (np.triu(np.ones((8, 8)), 1) * (1 + 1j))  # not Hermitian, well inside validate's 1e-8
    out = numba_evolve(rho + skew, Q, P)
    assert np.array_equal(out[0], np.conj(np.swapaxes(out[0], -1, -2)))
    herm = 0.5 * ((rho + skew) + np.conj(np.swapaxes(rho + skew, -1, -2)))
    assert_same_bits(out, ph.evolve(herm, Q, P, g=G, n_steps=STEPS, backend="numpy"))


def test_empty_batch_and_bad_sizes():
    rho, Q, P = random_state((0,), 8)
    out = numba_evolve(rho, Q, P)
    assert [x.shape for x in out] == [(0, 8, 8), (0, 8), (0, 8)]
    for L in (5, 2):
        with pytest.raises(ValueError, match="even L"):
            rk4.NumbaStepper(np.eye(L, dtype=complex), np.zeros(L), np.zeros(L), g=G, dt=0.01, K0=0.3, eta=0.8)


def test_chunking_covers_every_thread_with_little_padding():
    for L in (16, 32, 64):
        for B in (1, 2, 7, 9, 17, 64, 1000):
            for threads in (1, 2, 16):
                W, n_chunks = rk4.chunk_width(L, B, threads)
                assert n_chunks * W >= B and (n_chunks - 1) * W < B  # no chunk is all padding
                assert W <= -(-B // min(B, threads))  # enough chunks to occupy every thread
                assert W <= rk4.MAX_WIDTH
