"""The physics engine reproduces the reference simulator and conserves what the dynamics conserves."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from holstein_dist import physics as ph

GOLDEN_NAMES = ["L16_deep_g0_1", "L32_shallow_g0p5_0p8", "L32_deep_g0_1_ps6400"]
BACKENDS = ["numba", "numpy", "torch"]


def _golden(golden_dir, name):
    data = np.load(golden_dir / f"{name}.npz")
    meta = json.loads((golden_dir / f"{name}.json").read_text())
    return data, meta


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_golden_trajectories(golden_dir, name, backend):
    """From index 0, every later snapshot and every mid-interval state agrees to 1e-9."""
    data, meta = _golden(golden_dir, name)
    g, half = meta["g_f"], meta["save_interval"] // 2
    assert meta["dt"] == ph.DT_DEFAULT and meta["K0"] == ph.K0_DEFAULT and meta["eta"] == ph.ETA_DEFAULT
    stepper = ph.make_stepper(data["rho"][0], data["Q"][0], data["P"][0], g=g, backend=backend)
    worst = 0.0
    for k in range(1, data["rho"].shape[0]):
        for suffix, idx in (("_mid", k - 1), ("", k)):
            stepper.advance(half)
            rho, Q, P = stepper.state()
            for key, value in (("rho", rho), ("Q", Q), ("P", P)):
                worst = max(worst, float(np.abs(np.asarray(value) - data[key + suffix][idx]).max()))
    assert worst <= 1e-9, f"{name} {backend}: max deviation {worst:.3e}"


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_golden_energy_matches_reference(golden_dir, name):
    data, meta = _golden(golden_dir, name)
    e = ph.energy(data["rho"], data["Q"], data["P"], g=meta["g_f"]) / meta["L"]
    np.testing.assert_allclose(e, data["energy_per_site"], atol=1e-12)


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_invariants_conserved_over_1e4_steps(backend):
    rho, Q, P = ph.initial_state(16, 0.0, seed=3)
    g = 1.0
    e0, tr0, pur0 = ph.energy(rho, Q, P, g=g), np.trace(rho).real, ph.purity(rho)
    rho1, Q1, P1 = ph.evolve(rho, Q, P, g=g, n_steps=10_000, backend=backend)
    assert abs(ph.energy(rho1, Q1, P1, g=g) - e0) <= 1e-9 * abs(e0)
    assert abs(np.trace(rho1).real - tr0) <= 1e-9 * tr0
    assert abs(ph.purity(rho1) - pur0) <= 1e-9 * pur0
    assert np.abs(rho1 - rho1.conj().T).max() <= 1e-12
    assert np.abs(Q1 - Q).max() > 1e-3, "the quench must actually move the lattice"


@pytest.mark.parametrize(("L", "amplitude"), [(16, 0.1087), (32, 0.0601), (64, 0.0336)])
def test_cdw_fixed_point_amplitude(L, amplitude):
    Q = ph.ground_state_Q(L, 0.5)
    np.testing.assert_allclose(np.abs(Q), amplitude, atol=5e-5)
    assert np.all(np.sign(Q[::2]) == -np.sign(Q[1::2])), "the CDW is staggered"


def test_deep_quench_start_is_mixed():
    L = 32
    rho, Q, P = ph.initial_state(L, 0.0, seed=0)
    assert np.all(ph.ground_state_Q(L, 0.0) == 0.0)
    assert abs(ph.purity(rho) - (L / 2 - 0.5)) < 1e-6
    assert abs(np.trace(rho).real - L / 2) < 1e-12
    eig = np.linalg.eigvalsh(rho)
    assert np.sum(np.abs(eig - 0.5) < 1e-6) == 2, "two Fermi-level orbitals share one electron"


def test_shallow_start_is_pure_and_noisy():
    rho, Q, P = ph.initial_state(16, 0.5, noise=1e-4, seed=7)
    assert abs(ph.purity(rho) - 8.0) < 1e-9
    assert 1e-6 < np.abs(P).max() < 1e-3
    assert np.abs(Q - ph.ground_state_Q(16, 0.5)).max() < 1e-3


def test_initial_state_deterministic_in_seed():
    a = ph.initial_state(16, 0.0, seed=11)
    b = ph.initial_state(16, 0.0, seed=11)
    c = ph.initial_state(16, 0.0, seed=12)
    for x, y in zip(a, b):
        assert np.array_equal(x, y)
    assert not np.array_equal(a[1], c[1])


def _random_batch(shape, L, seed=0):
    rng = np.random.default_rng(seed)
    states = [ph.initial_state(L, 0.0, seed=int(s)) for s in rng.integers(0, 2**31, size=int(np.prod(shape)))]
    rho = np.stack([s[0] for s in states]).reshape(shape + (L, L))
    Q = np.stack([s[1] for s in states]).reshape(shape + (L,))
    P = np.stack([s[2] for s in states]).reshape(shape + (L,))
    # a short deep quench makes rho complex and Q, P sizeable
    return ph.evolve(rho, Q, P, g=1.0, n_steps=500, backend="numpy")


def test_backends_agree_to_1e12():
    rho, Q, P = _random_batch((3,), 16)
    ref = ph.evolve(rho, Q, P, g=1.0, n_steps=300, backend="numpy")
    for backend in ("numba", "torch"):
        out = ph.evolve(rho, Q, P, g=1.0, n_steps=300, backend=backend)
        for x, y in zip(out, ref):
            assert np.abs(x - y).max() <= 1e-12, backend


def test_torch_tensors_in_torch_tensors_out():
    rho, Q, P = _random_batch((2,), 16)
    out = ph.evolve(torch.from_numpy(rho), torch.from_numpy(Q), torch.from_numpy(P), g=1.0, n_steps=20)
    assert all(isinstance(x, torch.Tensor) for x in out)
    ref = ph.evolve(rho, Q, P, g=1.0, n_steps=20, backend="numpy")
    assert max(float(np.abs(x.numpy() - y).max()) for x, y in zip(out, ref)) <= 1e-12


def test_batched_equals_one_by_one_bitwise():
    """A trajectory's numbers do not depend on what else is in the batch (reproducible sharding)."""
    rho, Q, P = _random_batch((2, 5), 16)
    batched = ph.evolve(rho, Q, P, g=1.0, n_steps=50)
    for i in range(2):
        for j in range(5):
            single = ph.evolve(rho[i, j], Q[i, j], P[i, j], g=1.0, n_steps=50)
            for x, y in zip(batched, single):
                assert np.array_equal(x[i, j], y)


def test_derivatives_match_finite_difference():
    rho, Q, P = _random_batch((1,), 16)
    drho, dQ, dP = ph.derivatives(rho, Q, P, g=1.0)
    eps = 1e-4
    fwd = ph.evolve(rho, Q, P, g=1.0, n_steps=1, dt=eps, backend="numpy")
    bwd = ph.evolve(rho, Q, P, g=1.0, n_steps=1, dt=-eps, backend="numpy")
    for d, f, b in zip((drho, dQ, dP), fwd, bwd):
        np.testing.assert_allclose(d, (f - b) / (2 * eps), atol=1e-8)


def test_order_parameters_numpy_and_torch():
    rho, Q, P = _random_batch((4,), 16)
    L = 16
    sign = (-1.0) ** np.arange(L)
    np.testing.assert_allclose(ph.charge_order(rho), (np.diagonal(rho, axis1=-2, axis2=-1).real * sign).mean(-1))
    np.testing.assert_allclose(ph.lattice_order(Q), (Q * sign).mean(-1))
    np.testing.assert_allclose(ph.charge_order(torch.from_numpy(rho)).numpy(), ph.charge_order(rho))
    np.testing.assert_allclose(ph.lattice_order(torch.from_numpy(Q)).numpy(), ph.lattice_order(Q))


def test_domain_walls_count_the_sign_changes_of_the_staggered_lattice_around_the_ring():
    L = 16
    sign = (-1.0) ** np.arange(L)
    one_domain = 0.4 * sign
    two_domains = np.where(np.arange(L) < 5, 0.4, -0.3) * sign  # walls between sites 4|5 and 15|0
    four_domains = np.where((np.arange(L) // 4) % 2 == 0, 0.2, -0.2) * sign
    Q = np.stack([one_domain, -one_domain, two_domains, four_domains])
    np.testing.assert_array_equal(ph.domain_walls(Q), [0, 0, 2, 4])
    assert ph.domain_walls(Q[None]).shape == (1, 4)  # any batch


def test_lattice_kinetic_energy_is_the_momentum_part_of_the_energy_per_site():
    rho, Q, _ = _random_batch((3,), 16)
    P = np.random.default_rng(1).normal(0.0, 0.3, Q.shape)
    got = ph.lattice_kinetic_energy(P, K0=0.7, eta=1.3)
    without = ph.energy(rho, Q, np.zeros_like(P), g=0.8, K0=0.7, eta=1.3)
    np.testing.assert_allclose(got * 16, ph.energy(rho, Q, P, g=0.8, K0=0.7, eta=1.3) - without, rtol=1e-10)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r, q, p: (r[:, :-1], q, p), "rho must have shape"),
        (lambda r, q, p: (np.zeros((15, 15), complex), q[:15], p[:15]), "L must be even"),
        (lambda r, q, p: (r, q[:-1], p), "Q must have shape"),
        (lambda r, q, p: (r + np.triu(np.ones_like(r), 1) * 0.1j, q, p), "not Hermitian"),
        (lambda r, q, p: (r, np.where(np.arange(16) == 3, np.nan, q), p), "NaN"),
    ],
)
def test_bad_input_is_refused(mutate, message):
    rho, Q, P = ph.initial_state(16, 0.0, seed=1)
    with pytest.raises(ValueError, match=message):
        ph.evolve(*mutate(rho, Q, P), g=1.0, n_steps=1)


def test_bad_backend_and_steps_refused():
    rho, Q, P = ph.initial_state(16, 0.0, seed=1)
    with pytest.raises(ValueError, match="unknown backend"):
        ph.evolve(rho, Q, P, g=1.0, n_steps=1, backend="fortran")
    with pytest.raises(ValueError, match="n_steps"):
        ph.evolve(rho, Q, P, g=1.0, n_steps=-1)
    with pytest.raises(ValueError, match="L must be"):
        ph.initial_state(15, 0.0, seed=1)
