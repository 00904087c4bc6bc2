"""Rollout guards: the physical bounds, the nearest matrix with a given spectrum, the energy restore."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from holstein_dist import physics, train
from holstein_dist.curriculum import Stage
from holstein_dist.data import open_data
from holstein_dist.guards import (
    MAX_MOMENTUM_GAIN,
    MIN_MOMENTUM_GAIN,
    Couplings,
    Guard,
    lattice_energy,
    lattice_work,
    named_guard,
    nearest_isospectral,
    project_density_matrix,
    restore_energy,
    shift_electronic_energy,
    spectrum,
)
from holstein_dist.model import ModelConfig, build_model

COUPLINGS = Couplings(g=1.0, K0=physics.K0_DEFAULT, eta=physics.ETA_DEFAULT)


def _unitary(B: int, L: int, gen: torch.Generator) -> torch.Tensor:
    z = torch.complex(torch.randn(B, L, L, generator=gen, dtype=torch.float64),
                      torch.randn(B, L, L, generator=gen, dtype=torch.float64))
    return torch.linalg.qr(z)[0]


def _physical_state(B: int, L: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """A rho with the half-filled ring's spectrum (ones, two halves, zeros), random Q and P."""
    occupations = torch.tensor([0.0] * (L // 2 - 1) + [0.5, 0.5] + [1.0] * (L // 2 - 1), dtype=torch.float64)
    u = _unitary(B, L, gen)
    rho = (u * occupations.to(u.dtype)) @ u.mH
    return rho, 0.3 * torch.randn(B, L, generator=gen, dtype=torch.float64), \
        0.5 * torch.randn(B, L, generator=gen, dtype=torch.float64)


def test_density_matrix_projection_is_physical_and_idempotent():
    gen = torch.Generator().manual_seed(5)
    L = 8
    basis = torch.linalg.qr(torch.complex(torch.randn(3, L, L, generator=gen), torch.randn(3, L, L, generator=gen)))[0]
    occupations = torch.tensor([1.0, 0.9, 0.7, 0.6, 0.4, 0.3, 0.1, 0.0])  # a mixed state with trace 4
    rho = (basis * occupations.to(basis.dtype)) @ basis.mH
    torch.testing.assert_close(project_density_matrix(rho), rho, atol=1e-5, rtol=0)  # physical: unchanged
    noise = torch.complex(torch.randn(3, L, L, generator=gen), torch.randn(3, L, L, generator=gen))
    noisy = rho + 0.1 * noise
    out = project_density_matrix(noisy)
    evals = torch.linalg.eigvalsh(out)
    assert torch.allclose(out, out.mH, atol=1e-6)
    assert evals.min() > -1e-5 and evals.max() < 1 + 1e-5
    torch.testing.assert_close(torch.diagonal(out, dim1=-2, dim2=-1).real.sum(-1), torch.full((3,), 4.0))
    assert ((out - rho).abs().square().sum() < (noisy - rho).abs().square().sum())  # closer to the truth
    torch.testing.assert_close(project_density_matrix(out), out, atol=1e-5, rtol=0)


def test_nearest_isospectral_keeps_a_matrix_with_the_spectrum_and_restores_it_after_noise():
    gen = torch.Generator().manual_seed(7)
    rho, _, _ = _physical_state(3, 8, gen)
    eigenvalues = spectrum(rho)
    torch.testing.assert_close(nearest_isospectral(rho, eigenvalues), rho, atol=1e-10, rtol=0)
    noise = 0.05 * torch.complex(torch.randn(3, 8, 8, generator=gen, dtype=torch.float64),
                                 torch.randn(3, 8, 8, generator=gen, dtype=torch.float64))
    noisy = rho + noise
    out = nearest_isospectral(noisy, eigenvalues)
    torch.testing.assert_close(out, out.mH)
    torch.testing.assert_close(spectrum(out), eigenvalues, atol=1e-10, rtol=0)
    assert (out - rho).abs().square().sum() < (noisy - rho).abs().square().sum()  # closer to the truth
    # The order-matched pairing is the nearest: any other matrix with the spectrum is farther from noisy.
    other = nearest_isospectral(_unitary(3, 8, gen) @ rho @ _unitary(3, 8, gen).mH, eigenvalues)
    assert ((out - noisy).abs().square().sum((-2, -1)) <= (other - noisy).abs().square().sum((-2, -1))).all()


def _energy(rho: torch.Tensor, Q: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
    c = COUPLINGS
    return physics.energy(rho.to(torch.complex128), Q.double(), P.double(), g=c.g, K0=c.K0, eta=c.eta)


def _kinetic(P: torch.Tensor) -> torch.Tensor:
    return COUPLINGS.K0 / (2.0 * COUPLINGS.eta) * P.double().square().sum(-1)


def test_restore_energy_puts_the_state_back_on_the_energy_shell():
    gen = torch.Generator().manual_seed(8)
    rho, Q, P = _physical_state(4, 8, gen)
    target = _energy(rho, Q, P)
    for scale in (0.7, 1.3):  # a cooled and a heated step: velocity rescaling alone, rho untouched
        restored_rho, restored_p = restore_energy(rho, Q, scale * P, target, COUPLINGS)
        torch.testing.assert_close(restored_p, P)
        assert torch.equal(restored_rho, rho)
    # Far below the shell: at most MAX_MOMENTUM_GAIN in one step.
    torch.testing.assert_close(restore_energy(rho, Q, 0.01 * P, target, COUPLINGS)[1], 0.01 * MAX_MOMENTUM_GAIN * P)
    restored = restore_energy(rho, Q, P.float(), target, COUPLINGS)
    assert restored[1].dtype == torch.float32 and restored[0].dtype == rho.dtype


def test_hot_electrons_give_their_excess_energy_instead_of_freezing_the_lattice():
    gen = torch.Generator().manual_seed(8)
    rho, Q, P = _physical_state(4, 8, gen)
    # The shell leaves the lattice only a tenth of its kinetic energy: velocity rescaling alone would take the
    # momenta down to 0.32 of themselves (and to 0 with an excess beyond the kinetic energy).
    target = _energy(rho, Q, P) - 0.9 * _kinetic(P)
    new_rho, new_p = restore_energy(rho, Q, P, target, COUPLINGS)
    torch.testing.assert_close(new_p, MIN_MOMENTUM_GAIN * P)  # the lattice cools no further than the floor
    torch.testing.assert_close(_energy(new_rho, Q, new_p), target)  # the electrons gave the rest
    torch.testing.assert_close(spectrum(new_rho), spectrum(rho))  # by a unitary rotation of rho
    assert (new_rho - rho).abs().amax() > 1e-3
    # In single precision, as rollouts run: the same within float32's resolution.
    new_rho32, new_p32 = restore_energy(rho.to(torch.complex64), Q.float(), P.float(), target, COUPLINGS)
    assert new_rho32.dtype == torch.complex64 and new_p32.dtype == torch.float32
    torch.testing.assert_close(_energy(new_rho32, Q, new_p32), target, atol=1e-5, rtol=0)


def test_electronic_energy_shift_moves_along_the_orbit_by_the_asked_amount_and_no_further_than_its_reach():
    gen = torch.Generator().manual_seed(11)
    rho, Q, _ = _physical_state(3, 8, gen)
    c = COUPLINGS
    zero_p = torch.zeros_like(Q)
    delta = torch.tensor([-0.3, 0.2, 0.0], dtype=torch.float64)
    moved = shift_electronic_energy(rho, Q, delta, c)
    torch.testing.assert_close(_energy(moved, Q, zero_p) - _energy(rho, Q, zero_p), delta)
    torch.testing.assert_close(spectrum(moved), spectrum(rho))
    torch.testing.assert_close(moved[2], rho[2])  # nothing asked, nothing moved
    # An impossible shift (far below the orbit's lowest energy) is made only in part, still isospectral.
    far = shift_electronic_energy(rho, Q, torch.full((3,), -100.0, dtype=torch.float64), c)
    change = _energy(far, Q, zero_p) - _energy(rho, Q, zero_p)
    assert ((change < 0) & (change > -100.0)).all()
    torch.testing.assert_close(spectrum(far), spectrum(rho))


def test_conserving_guard_keeps_the_initial_spectrum_and_energy_through_perturbed_steps():
    gen = torch.Generator().manual_seed(9)
    rho, Q, P = _physical_state(2, 8, gen)
    restore = Guard(conserve=COUPLINGS).start(rho, Q, P)
    e0 = physics.energy(rho, Q, P, g=COUPLINGS.g, K0=COUPLINGS.K0, eta=COUPLINGS.eta)
    r, q, p = rho, Q, P
    for _ in range(5):  # a "model" that rotates rho a little, adds noise and cools the lattice
        u = torch.linalg.matrix_exp(0.01j * (lambda h: h + h.mH)(torch.randn(2, 8, 8, generator=gen).to(rho.dtype)))
        r = u @ r @ u.mH + 1e-3 * torch.randn(2, 8, 8, generator=gen, dtype=torch.float64)
        q, p = q + 0.01 * torch.randn(2, 8, generator=gen, dtype=torch.float64), 0.95 * p
        r, q, p = restore(r, q, p)
        torch.testing.assert_close(spectrum(r), spectrum(rho), atol=1e-10, rtol=0)
        torch.testing.assert_close(physics.energy(r, q, p, g=COUPLINGS.g, K0=COUPLINGS.K0, eta=COUPLINGS.eta), e0)


def test_guard_choices():
    gen = torch.Generator().manual_seed(10)
    state = _physical_state(1, 4, gen)
    assert Guard().start(*state) is None
    noisy = state[0] + 0.2
    torch.testing.assert_close(Guard(bounds=True).start(*state)(noisy, *state[1:])[0], project_density_matrix(noisy))
    with pytest.raises(ValueError, match="exclusive"):
        Guard(bounds=True, conserve=COUPLINGS)


def test_a_conserve_stage_unrolls_on_the_windows_invariants_and_still_trains_the_model(tiny_data):
    """curriculum stage guard: conserve: every unrolled training state keeps the clean window start's spectrum
    and total energy, whatever the noisy input and the model's steps, and the loss still reaches the weights."""
    data = open_data(tiny_data)  # its constants and coupling; its deep L = 16 lattice barely moves, so not its states
    c = Couplings(g=data.g_f, **data.constants)
    rho, Q, P = _physical_state(3, 8, torch.Generator().manual_seed(4))
    clean = (rho.to(torch.complex64), Q.float(), P.float())
    restore = train.stage_restore(Stage(epochs=1, n_step=3, noise=0.02, guard="conserve"), data, *clean)
    torch.manual_seed(0)
    model = build_model(ModelConfig("parc", 8, 1, constrain_rho=True), data.scales)
    for p in model.parameters():  # an untrained model with visible steps (the integrator's output starts at 0)
        torch.nn.init.normal_(p, std=0.05)
    noisy = tuple(s + 0.02 * torch.randn_like(s) for s in clean)
    states, _ = train.Rollout(model)(*noisy, n_step=3, restore=restore)
    e0 = physics.energy(*(s.double() if not s.is_complex() else s.to(torch.complex128) for s in clean),
                        g=c.g, K0=c.K0, eta=c.eta)
    for r, q, p in states:
        assert (r.detach() - clean[0]).abs().max() > 1e-3  # the model did move rho ...
        torch.testing.assert_close(spectrum(r.detach()), spectrum(clean[0]), atol=1e-5, rtol=0)  # ... not its spectrum
        e = physics.energy(r.detach().to(torch.complex128), q.detach().double(), p.detach().double(),
                           g=c.g, K0=c.K0, eta=c.eta)
        torch.testing.assert_close(e, e0, atol=1e-4, rtol=0)
    sum(r.abs().square().sum() + q.square().sum() + p.square().sum() for r, q, p in states).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert train.stage_restore(Stage(epochs=1, n_step=3, noise=0.0), data, *clean) is None  # guard: none


def _exact_steps(interval_substeps: int, count: int) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """``count`` consecutive exact deep-quench intervals of ``interval_substeps`` x 0.01 on the L = 8 ring, as
    (starts, ends), each a batch of states."""
    state = physics.evolve(*physics.initial_state(8, 0.0, noise=0.3, seed=3), g=1.0, n_steps=2000, dt=0.01,
                           backend="numpy")
    states = [state]
    for _ in range(count):
        states.append(physics.evolve(*states[-1], g=1.0, n_steps=interval_substeps, dt=0.01, backend="numpy"))
    stack = lambda part: tuple(torch.as_tensor(np.stack([s[i] for s in part])) for i in range(3))  # noqa: E731
    return stack(states[:-1]), stack(states[1:])


def test_lattice_work_is_the_exact_lattice_energy_change_to_fourth_order_in_the_interval():
    errors = []
    for substeps in (32, 16):
        before, after = _exact_steps(substeps, 10)
        work, end_momenta = lattice_work(before, after, COUPLINGS, substeps * 0.01)
        change = lattice_energy(*after[1:], COUPLINGS) - lattice_energy(*before[1:], COUPLINGS)
        assert change.abs().mean() > 1e-4  # the lattice does exchange energy over these intervals
        errors.append(float((work - change).abs().max()))
        # linear in the end momenta: scaling them by x adds (x - 1) times their term
        scaled = (*after[:2], 0.5 * after[2])
        scaled_work = lattice_work(before, scaled, COUPLINGS, substeps * 0.01)[0]
        torch.testing.assert_close(scaled_work, work - 0.5 * end_momenta)
    assert errors[1] < 1e-6 and errors[0] / errors[1] > 16, errors


def test_work_split_guard_restores_the_invariants_and_splits_the_energy_by_the_work():
    gen = torch.Generator().manual_seed(12)
    before, after = _exact_steps(16, 4)
    start = tuple(s[:1] for s in before)
    guard = Guard(conserve=COUPLINGS, work_dt=0.16)
    e0 = physics.energy(*start, g=COUPLINGS.g, K0=COUPLINGS.K0, eta=COUPLINGS.eta)
    # The exact next state passes (almost) unchanged.
    exact = tuple(s[:1] for s in after)
    restored = guard.start(*start)(*exact)
    for got, want in zip(restored, exact, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # A "model" step that errs on rho and Q and shortens the momenta by 30 %: the spectrum and the total energy come
    # back, the lattice holds its energy before plus the work over the restored step, and the momenta's length did
    # not count (the same step with full-length momenta restores to the same state).
    u = torch.linalg.matrix_exp(0.02j * (lambda h: h + h.mH)(torch.randn(1, 8, 8, generator=gen).to(exact[0].dtype)))
    r = u @ exact[0] @ u.mH + 1e-3 * torch.randn(1, 8, 8, generator=gen, dtype=torch.float64)
    q = exact[1] + 0.01 * torch.randn(1, 8, generator=gen, dtype=torch.float64)
    half = guard.start(*start)(r, q, 0.7 * exact[2])
    full = guard.start(*start)(r, q, exact[2])
    for a, b in zip(half, full, strict=True):
        torch.testing.assert_close(a, b)
    rho1, q1, p1 = half
    torch.testing.assert_close(spectrum(rho1), spectrum(start[0]), atol=1e-10, rtol=0)
    torch.testing.assert_close(physics.energy(rho1, q1, p1, g=COUPLINGS.g, K0=COUPLINGS.K0, eta=COUPLINGS.eta), e0)
    # (the work is taken before the electrons' shift, which moves the occupations it integrates a little)
    torch.testing.assert_close(lattice_energy(q1, p1, COUPLINGS),
                               lattice_energy(*start[1:], COUPLINGS) + lattice_work(start, half, COUPLINGS, 0.16)[0],
                               rtol=1e-4, atol=0)


def test_work_split_guard_falls_back_to_the_momenta_where_the_electrons_cannot_reach_the_shell():
    """Steps with rho turned far from the exact one (by 0.3-1 radian): the work estimate is far off too and the
    electrons' shift (at most a radian a step) cannot take the difference; such a step is restored as the momenta
    split restores it, so the work split keeps the shell wherever the momenta split does."""
    gen = torch.Generator().manual_seed(1)
    before, after = _exact_steps(16, 1)
    start, exact = tuple(s[:1] for s in before), tuple(s[:1] for s in after)
    for angle in (0.1, 0.3, 1.0):
        h = torch.randn(1, 8, 8, generator=gen, dtype=torch.float64).to(torch.complex128)
        u = torch.linalg.matrix_exp(1j * angle * (h + h.mH))
        step = (u @ exact[0] @ u.mH, *exact[1:])
        work = Guard(conserve=COUPLINGS, work_dt=0.16).start(*start)(*step)
        momenta = Guard(conserve=COUPLINGS).start(*start)(*step)
        e_work, e_momenta = (physics.energy(*s, g=COUPLINGS.g, K0=COUPLINGS.K0, eta=COUPLINGS.eta)
                             for s in (work, momenta))
        torch.testing.assert_close(e_work, e_momenta)
        torch.testing.assert_close(spectrum(work[0]), spectrum(start[0]), atol=1e-10, rtol=0)


def test_work_share_blends_the_lattice_energy_of_the_two_splits():
    """share 0.3: the lattice ends at 0.3 of the work split's energy plus 0.7 of the momenta split's (the shell
    less the electronic and potential energy of the step's rho, brought onto the initial spectrum)."""
    gen = torch.Generator().manual_seed(5)
    before, after = _exact_steps(16, 1)
    start, exact = tuple(s[:1] for s in before), tuple(s[:1] for s in after)
    u = torch.linalg.matrix_exp(0.02j * (lambda h: h + h.mH)(torch.randn(1, 8, 8, generator=gen).to(exact[0].dtype)))
    r, q = u @ exact[0] @ u.mH, exact[1] + 0.01 * torch.randn(1, 8, generator=gen, dtype=torch.float64)
    e0 = physics.energy(*start, g=COUPLINGS.g, K0=COUPLINGS.K0, eta=COUPLINGS.eta)
    rho1, q1, p1 = Guard(conserve=COUPLINGS, work_dt=0.16, work_share=0.3).start(*start)(r, q, exact[2])
    torch.testing.assert_close(physics.energy(rho1, q1, p1, g=COUPLINGS.g, K0=COUPLINGS.K0, eta=COUPLINGS.eta), e0)
    by_work = lattice_energy(*start[1:], COUPLINGS) + lattice_work(start, (rho1, q1, p1), COUPLINGS, 0.16)[0]
    surrogate = nearest_isospectral(r, spectrum(start[0]))
    by_momenta = e0 - physics.energy(surrogate, q, torch.zeros_like(q), g=COUPLINGS.g, K0=COUPLINGS.K0,
                                     eta=COUPLINGS.eta) + lattice_energy(q, torch.zeros_like(q), COUPLINGS)
    assert float((by_work - by_momenta).abs()) > 1e-3  # the two splits disagree on this step
    torch.testing.assert_close(lattice_energy(q1, p1, COUPLINGS), 0.3 * by_work + 0.7 * by_momenta, rtol=1e-4, atol=0)
    # share 1 is the work split
    assert named_guard("conserve", COUPLINGS, "work", 0.16, 1.0) == Guard(conserve=COUPLINGS, work_dt=0.16)


def test_energy_split_choices():
    assert named_guard("conserve", COUPLINGS, "work", 2.56) == Guard(conserve=COUPLINGS, work_dt=2.56)
    assert named_guard("conserve", COUPLINGS) == Guard(conserve=COUPLINGS)
    with pytest.raises(ValueError, match="energy split is 'heat'"):
        named_guard("conserve", COUPLINGS, "heat", 2.56)
    with pytest.raises(ValueError, match="belongs to the guard conserve"):
        named_guard("bounds", COUPLINGS, "work", 2.56)
    with pytest.raises(ValueError, match="needs --conserve"):
        Guard(work_dt=2.56)
    with pytest.raises(ValueError, match="needs guard: conserve"):
        Stage(epochs=1, n_step=2, noise=0.0, energy_split="work")
    with pytest.raises(ValueError, match="choose one of momenta, work"):
        Stage(epochs=1, n_step=2, noise=0.0, guard="conserve", energy_split="heat")
    with pytest.raises(ValueError, match=r"stage work_share is 1.5; use a number in \(0, 1\]"):
        Stage(epochs=1, n_step=2, noise=0.0, guard="conserve", energy_split="work", work_share=1.5)
    with pytest.raises(ValueError, match="set the energy split to work"):
        named_guard("conserve", COUPLINGS, "momenta", 2.56, 0.5)
    with pytest.raises(ValueError, match="work share is 0.0"):
        Guard(conserve=COUPLINGS, work_dt=2.56, work_share=0.0)
