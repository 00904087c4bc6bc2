"""Rollout guards: what a surrogate's rollout restores after every step because the exact dynamics keeps it.

Two guards, applied after every model step of a rollout (and of unrolled training, with a curriculum stage's
``guard``):

- ``bounds`` (``evaluate --project``): rho Hermitian with eigenvalues in [0, 1] and an integer trace, the
  conditions every fermionic single-particle density matrix obeys (:func:`project_density_matrix`).
- ``conserve`` (``evaluate --conserve``): the two invariants of the Ehrenfest dynamics, read from the
  rollout's own initial state. The electrons evolve unitarily, so rho keeps its whole spectrum (here 15
  ones, two halves and 15 zeros on the half-filled L = 32 ring): after a step rho becomes the nearest matrix
  with that spectrum (:func:`nearest_isospectral`). The total energy is conserved: the lattice momenta are
  then rescaled so that it equals the initial one (:func:`restore_energy`, a velocity-rescaling step). The
  momenta change by a bounded factor per step; where the electrons hold more energy than the lattice can give
  at its floor, they give up the rest along rho's isospectral orbit (:func:`shift_electronic_energy`). With the
  energy split ``work`` (``evaluate --energy-split work``) the lattice instead keeps the energy the electrons' work
  over the step gave it and the electrons hold the rest of the shell (:func:`restore_energy_by_work`).

Why the second exists, measured on the deep L = 32 validation set (experiments/deep_L32/conserve): a
single-step-trained PARC loses the lattice's kinetic energy step after step (it ends 67x too cold and its
domain walls annihilate); either restore alone does not fix it (the spectrum alone: still cooling; the
energy alone: the electronic energy of an unphysical rho drifts and all rollouts diverge), both together
keep the lattice temperature, the wall count and the order-parameter ranges near the truth's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import Tensor

from holstein_dist.physics import ENERGY_SPLITS, check_work_share, commutator_h, energy, hamiltonian

State = tuple[Tensor, Tensor, Tensor]

MAX_MOMENTUM_GAIN = 2.0
"""The most one energy restore may multiply the momenta by. A step that lands with almost no kinetic energy
far below the energy shell would otherwise get an unbounded kick; capped, the shell is approached over a
few steps."""

MIN_MOMENTUM_GAIN = 0.5
"""The least one energy restore may multiply the momenta by. Where the electrons hold more energy than the shell
leaves the lattice (a surrogate whose rho heats), velocity rescaling alone zeroes the momenta and freezes the
lattice for good: 16-step unrolled training with the guard collapsed so (experiments/deep_L32/guarded_training/
exploration). The rest of the excess is taken from the electrons instead (:func:`shift_electronic_energy`).
It bounds one step's cooling, not a steady drain: a model whose electrons heat step after step still cools its
lattice by up to 4x a step (experiments/deep_L32/long_unroll/exploration)."""


def hermitian_part(x: Tensor) -> Tensor:
    """(x + x^H) / 2 for a batch of square matrices ``[..., L, L]``."""
    return 0.5 * (x + x.transpose(-2, -1).conj())


def project_density_matrix(rho: Tensor, trace: float | None = None, iterations: int = 40) -> Tensor:
    """Nearest (Frobenius) Hermitian matrix with eigenvalues in [0, 1] and trace ``trace`` (default: the
    input's, rounded to the nearest integer particle number), for a batch ``[..., L, L]``.

    The eigenvalues are projected onto the capped simplex {0 <= l <= 1, sum l = N}: shift all by one
    number and clip, with the shift found by bisection (the clipped sum is monotone in the shift).
    A single-particle density matrix of fermions obeys these bounds exactly; a surrogate's step does not.
    """
    h = hermitian_part(rho)
    evals, evecs = torch.linalg.eigh(h)
    n = torch.diagonal(h, dim1=-2, dim2=-1).real.sum(-1).round() if trace is None else \
        torch.full(evals.shape[:-1], float(trace), dtype=evals.dtype, device=evals.device)
    lo = (-evals.max(-1).values).unsqueeze(-1)  # every eigenvalue clipped to 0: sum 0
    hi = (1 - evals.min(-1).values).unsqueeze(-1)  # every eigenvalue clipped to 1: sum L
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        low_sum = (evals + mid).clamp(0, 1).sum(-1, keepdim=True) < n.unsqueeze(-1)
        lo, hi = torch.where(low_sum, mid, lo), torch.where(low_sum, hi, mid)
    clipped = (evals + 0.5 * (lo + hi)).clamp(0, 1).to(evecs.dtype)
    return (evecs * clipped.unsqueeze(-2)) @ evecs.transpose(-2, -1).conj()


def spectrum(rho: Tensor) -> Tensor:
    """Ascending eigenvalues of the Hermitian part of a batch ``[..., L, L]``, shape ``[..., L]``."""
    return torch.linalg.eigvalsh(hermitian_part(rho))


def nearest_isospectral(rho: Tensor, eigenvalues: Tensor) -> Tensor:
    """Nearest (Frobenius) Hermitian matrix to ``rho`` whose spectrum is ``eigenvalues`` (ascending, ``[..., L]``).

    It keeps the eigenvectors of rho's Hermitian part and gives them the target eigenvalues in the same
    order (the Hoffman-Wielandt inequality makes the order-matched pairing the closest one).
    """
    _, evecs = torch.linalg.eigh(hermitian_part(rho))
    return (evecs * eigenvalues.to(evecs.dtype).unsqueeze(-2)) @ evecs.transpose(-2, -1).conj()


@dataclasses.dataclass(frozen=True)
class Couplings:
    """The constants of the total energy (physics.energy): the quench's final coupling and the lattice's."""

    g: float
    K0: float
    eta: float


def shift_electronic_energy(rho: Tensor, Q: Tensor, delta: Tensor, couplings: Couplings, *,
                            iterations: int = 8, max_angle: float = 1.0) -> Tensor:
    """rho carried along its isospectral orbit ``e^{sA} rho e^{-sA}``, ``A = [h(Q), rho]``, until its energy
    Re Tr(h rho) has changed by ``delta`` ([B]); complex128 in and out.

    A unitary rotation keeps rho's whole spectrum, as the exact dynamics does, and A is the direction in which
    the energy changes fastest on that orbit (dE/ds = ||A||^2 at s = 0). With iA = V diag(w) V^H diagonalised
    once, every point of the orbit is a phase pattern in that basis, so Newton's method on s costs no further
    decomposition. The rotation is capped at ``max_angle`` radians: a shift beyond that reach is made in part.
    """
    A = commutator_h(rho, Q, couplings.g)
    w, V = torch.linalg.eigh(1j * A)  # iA is Hermitian: e^{sA} = V diag(e^{-isw}) V^H
    rho_v = V.mH @ rho @ V
    # Tr(h X) = sum_jk h_kj X_jk, with h in the eigenbasis of iA
    weights = (V.mH @ hamiltonian(Q.double(), couplings.g).to(V.dtype) @ V).transpose(-2, -1)
    gap = w[..., :, None] - w[..., None, :]  # rotated rho_v[j, k] picks up the phase e^{-is(w_j - w_k)}
    slope_weights = weights * (-1j * gap)

    def energy_and_slope(s: Tensor) -> tuple[Tensor, Tensor]:
        moved = rho_v * torch.exp(-1j * s[..., None, None] * gap)
        return (weights * moved).sum((-2, -1)).real, (slope_weights * moved).sum((-2, -1)).real

    start, slope0 = energy_and_slope(torch.zeros_like(delta))
    s_max = max_angle / w.abs().amax(-1).clamp_min(1e-150)
    s = torch.zeros_like(delta)
    for _ in range(iterations):
        value, slope = energy_and_slope(s)
        # Far along the orbit the slope can flatten or turn; the initial one keeps the step sensible there.
        slope = torch.where(slope > 0.1 * slope0, slope, slope0).clamp_min(1e-300)
        s = torch.clamp(s - (value - start - delta) / slope, -s_max, s_max)
    rotation = V * torch.exp(-1j * s[..., None] * w)[..., None, :]
    return rotation @ rho_v @ rotation.mH


def restore_energy(rho: Tensor, Q: Tensor, P: Tensor, target: Tensor, couplings: Couplings) -> tuple[Tensor, Tensor]:
    """(rho, P) put back on the energy shell ``target`` ([B]) per trajectory.

    The momenta are rescaled (velocity rescaling) by a factor within [MIN_MOMENTUM_GAIN, MAX_MOMENTUM_GAIN];
    where the shell needs less kinetic energy than that allows, the electrons give up the excess along rho's
    isospectral orbit. Far below the shell the momenta take the capped gain and the rest is left for later
    steps. rho keeps its dtype, P its dtype.
    """
    c = couplings
    P64, Q64 = P.double(), Q.double()
    rho128 = rho.to(torch.complex128)
    kinetic = c.K0 / (2.0 * c.eta) * P64.square().sum(-1)
    rest = energy(rho128, Q64, torch.zeros_like(P64), g=c.g, K0=c.K0, eta=c.eta)
    # The electrons' share: what the lattice cannot give at its floor. (Giving them a fixed share of every step's
    # error instead, half, froze the guard-trained deep model's rollouts: experiments/deep_L32/long_unroll/exploration.)
    floor = MIN_MOMENTUM_GAIN ** 2 * kinetic
    electrons = -(floor - (target - rest)).clamp_min(0.0)
    if bool((electrons != 0).any()):
        shifted = shift_electronic_energy(rho128, Q64, electrons, c)
        rho128 = torch.where((electrons != 0)[..., None, None], shifted, rho128)
        rest = energy(rho128, Q64, torch.zeros_like(P64), g=c.g, K0=c.K0, eta=c.eta)
        rho = rho128.to(rho.dtype)
    squared_gain = ((target - rest) / kinetic.clamp_min(1e-300)).clamp(MIN_MOMENTUM_GAIN ** 2, MAX_MOMENTUM_GAIN ** 2)
    return rho, (P64 * squared_gain.sqrt().unsqueeze(-1)).to(P.dtype)


# Three-point Gauss-Legendre nodes and weights on [0, 1]: exact for the degree-5 product of two cubics' values and
# derivatives that :func:`lattice_work` integrates.
_GAUSS_NODES = (0.5 - 0.15 ** 0.5, 0.5, 0.5 + 0.15 ** 0.5)
_GAUSS_WEIGHTS = (5.0 / 18.0, 8.0 / 18.0, 5.0 / 18.0)


def _hermite(y0: Tensor, y1: Tensor, d0: Tensor, d1: Tensor, s: float, dt: float) -> tuple[Tensor, Tensor]:
    """The cubic through (y0, slope d0) at t = 0 and (y1, d1) at t = dt: its value and time derivative at t = s dt."""
    value = (2 * s**3 - 3 * s**2 + 1) * y0 + (s**3 - 2 * s**2 + s) * dt * d0 \
        + (3 * s**2 - 2 * s**3) * y1 + (s**3 - s**2) * dt * d1
    slope = ((6 * s**2 - 6 * s) * y0 + (3 * s**2 - 4 * s + 1) * dt * d0
             + (6 * s - 6 * s**2) * y1 + (3 * s**2 - 2 * s) * dt * d1) / dt
    return value, slope


def _occupations_and_rates(rho: Tensor, Q: Tensor, g: float) -> tuple[Tensor, Tensor]:
    """n_i - 1/2 and dn_i/dt = diag(-i [h(Q), rho]) of the exact dynamics at this state, float64."""
    n = torch.diagonal(rho, dim1=-2, dim2=-1).real.double() - 0.5
    rate = torch.diagonal(-1j * commutator_h(rho, Q, g), dim1=-2, dim2=-1).real.double()
    return n, rate


def lattice_work(before: State, after: State, couplings: Couplings, dt: float) -> tuple[Tensor, Tensor]:
    """The work the electrons do on the lattice over one snapshot interval ``dt``, per trajectory ([B], float64).

    The lattice energy ``K0/(2 eta) sum (P^2 + Q^2)`` changes at the rate ``g sum_i (n_i - 1/2) dQ_i/dt`` under the
    exact dynamics (the rest of the total energy is the electrons'). Over the interval Q and n are each taken as
    the cubic that matches their values and exact time derivatives at both ends (dQ/dt = K0 P, dn/dt from the
    commutator), and the product is integrated by Gauss-Legendre. On the deep L = 32 truth (16 validation
    trajectories x 1000 intervals of 2.56) this reproduces each interval's lattice-energy change, 0.16 on average,
    to 1.6e-3 rms and the 1000 intervals' sum, a loss of 0.53, to 0.035 rms.

    Returns the work and the part of it that the end momenta carry: the work is linear in ``after``'s P, and the
    second number is that term, so the work with the end momenta scaled by x is ``work + (x - 1) * second``.
    """
    c = couplings
    (rho0, Q0, P0), (rho1, Q1, P1) = before, after
    Q0, Q1, P0, P1 = Q0.double(), Q1.double(), P0.double(), P1.double()
    n0, dn0 = _occupations_and_rates(rho0.to(torch.complex128), Q0, c.g)
    n1, dn1 = _occupations_and_rates(rho1.to(torch.complex128), Q1, c.g)
    work = torch.zeros_like(Q0[..., 0])
    end_momenta = torch.zeros_like(work)
    for s, weight in zip(_GAUSS_NODES, _GAUSS_WEIGHTS, strict=True):
        n, _ = _hermite(n0, n1, dn0, dn1, s, dt)
        _, velocity = _hermite(Q0, Q1, c.K0 * P0, c.K0 * P1, s, dt)
        work = work + weight * dt * c.g * (n * velocity).sum(-1)
        # the end slope's coefficient in the cubic's time derivative: (3 s^2 - 2 s), dt cancelled
        end_momenta = end_momenta + weight * dt * c.g * (3 * s**2 - 2 * s) * c.K0 * (n * P1).sum(-1)
    return work, end_momenta


def lattice_energy(Q: Tensor, P: Tensor, couplings: Couplings) -> Tensor:
    """``K0/(2 eta) sum_i (P_i^2 + Q_i^2)`` per trajectory, float64: the lattice's share of the total energy."""
    return couplings.K0 / (2.0 * couplings.eta) * (P.double().square() + Q.double().square()).sum(-1)


def restore_energy_by_work(before: State, rho: Tensor, Q: Tensor, P: Tensor, target: Tensor, couplings: Couplings,
                           dt: float, share: float = 1.0) -> tuple[Tensor, Tensor]:
    """(rho, P) put back on the energy shell ``target`` with the shell's split set by the physics of the step.

    :func:`restore_energy` gives the lattice every step's energy error: whatever the surrogate's electrons fail to
    take from the lattice stays there, and a rollout keeps the lattice at its initial temperature, where the exact
    dynamics lets it cool (by ~30 % over 1000 deep-quench intervals). Here the lattice's energy after the step is
    its energy before plus :func:`lattice_work` over the step (the momenta rescaled to it, within the same gain
    bounds), and the electrons hold the rest of the shell (rho moved along its isospectral orbit,
    :func:`shift_electronic_energy`). Where that shift cannot reach the shell, the step is restored as
    :func:`restore_energy` does. ``before``: the restored state the step started from.

    ``share`` in (0, 1] blends the lattice's target energy: that share of it from the work, the rest from
    :func:`restore_energy`'s (the shell less the surrogate's electronic and potential energy); 1 is the work split.
    (Measured on the deep quench, experiments/deep_L32/work_share: no share from 0 to 1 set the trained model's
    period; continued training did.)
    """
    c = couplings
    rho128, Q64, P64 = rho.to(torch.complex128), Q.double(), P.double()
    work, end_momenta = lattice_work(before, (rho128, Q64, P64), c, dt)
    # The gain x of the momenta solves  potential(Q) + x^2 kinetic = E_lattice(before) + work(x), with the work's
    # end velocity the rescaled one, work(x) = work - end_momenta + x end_momenta: the restored step is
    # self-consistent, and only the direction of the surrogate's P counts (as with restore_energy), not its length
    # (a guard-trained model's raw steps keep ~30 % of the lattice's kinetic energy and leave the rest to the guard).
    # With share w < 1 the right-hand side becomes  w (E_lattice(before) + work(x)) + (1 - w) (target - rest of the
    # surrogate's energy), still a quadratic in x.
    kinetic = (c.K0 / (2.0 * c.eta) * P64.square().sum(-1)).clamp_min(1e-300)
    by_work = lattice_energy(before[1], before[2], c) + work - end_momenta - c.K0 / (2.0 * c.eta) * Q64.square().sum(-1)
    rest = share * by_work
    linear = share * end_momenta
    if share < 1.0:
        rest = rest + (1.0 - share) * (target - energy(rho128, Q64, torch.zeros_like(P64), g=c.g, K0=c.K0, eta=c.eta))
    discriminant = (linear.square() + 4.0 * kinetic * rest).clamp_min(0.0)
    gain = ((linear + discriminant.sqrt()) / (2.0 * kinetic)).clamp(MIN_MOMENTUM_GAIN, MAX_MOMENTUM_GAIN)
    P64 = P64 * gain.unsqueeze(-1)
    rest = energy(rho128, Q64, P64, g=c.g, K0=c.K0, eta=c.eta)
    rho128 = shift_electronic_energy(rho128, Q64, target - rest, c)
    # Where the split cannot reach the shell (the electrons' shift turns rho by at most a radian a step), the step
    # is restored as restore_energy does instead. Without this, a step whose work estimate was far off left rollouts
    # of the deep model up to 0.4 per site off the shell for a few steps (experiments/deep_L32/work_split/notes.md).
    missed = (energy(rho128, Q64, P64, g=c.g, K0=c.K0, eta=c.eta) - target).abs() > 1e-9 * (1.0 + target.abs())
    if bool(missed.any()):
        fallback_rho, fallback_P = restore_energy(rho, Q, P, target, c)
        rho128 = torch.where(missed[..., None, None], fallback_rho.to(torch.complex128), rho128)
        P64 = torch.where(missed[..., None], fallback_P.double(), P64)
    return rho128.to(rho.dtype), P64.to(P.dtype)


@dataclasses.dataclass(frozen=True)
class Guard:
    """What a rollout restores after every model step (nothing by default)."""

    bounds: bool = False
    """rho onto the physical bounds (:func:`project_density_matrix`)."""
    conserve: Couplings | None = None
    """rho onto its initial spectrum and the total energy onto its initial value (implies ``bounds``)."""
    work_dt: float | None = None
    """With ``conserve``: the snapshot interval, and the energy split by the lattice's work over it
    (:func:`restore_energy_by_work`); None: the momenta take the whole error (:func:`restore_energy`)."""
    work_share: float = 1.0
    """With ``work_dt``: the share of the lattice's target energy taken from the work (``share`` of
    :func:`restore_energy_by_work`)."""

    def __post_init__(self) -> None:
        if self.bounds and self.conserve is not None:
            raise ValueError("--project and --conserve are exclusive; --conserve keeps rho's whole initial "
                             "spectrum, which implies --project's bounds: keep one")
        if self.work_dt is not None and (self.conserve is None or not self.work_dt > 0):
            raise ValueError(f"the work split needs --conserve and a snapshot interval > 0 (got {self.work_dt}); "
                             "pass --conserve with --energy-split work")
        check_work_share(self.work_share, self.work_dt is not None)

    def start(self, rho: Tensor, Q: Tensor, P: Tensor) -> Callable[[Tensor, Tensor, Tensor], State] | None:
        """The per-step restore of a rollout starting at (rho, Q, P), or None when there is nothing to do."""
        if self.conserve is not None:
            c = self.conserve
            with torch.autocast(rho.device.type, enabled=False):
                eigenvalues = spectrum(rho)
                target = energy(rho.to(torch.complex128), Q.double(), P.double(), g=c.g, K0=c.K0, eta=c.eta)

            if self.work_dt is None:
                def conserve(r: Tensor, q: Tensor, p: Tensor) -> State:
                    with torch.autocast(r.device.type, enabled=False):
                        r, p = restore_energy(nearest_isospectral(r, eigenvalues), q, p, target, c)
                        return r, q, p
                return conserve
            previous = [(rho, Q, P)]  # the restored state each step starts from: the work is done over the step

            def conserve_by_work(r: Tensor, q: Tensor, p: Tensor) -> State:
                with torch.autocast(r.device.type, enabled=False):
                    r, p = restore_energy_by_work(previous[0], nearest_isospectral(r, eigenvalues), q, p, target, c,
                                                  self.work_dt, self.work_share)
                previous[0] = (r, q, p)
                return r, q, p
            return conserve_by_work
        if self.bounds:
            def bounds(r: Tensor, q: Tensor, p: Tensor) -> State:
                with torch.autocast(r.device.type, enabled=False):
                    return project_density_matrix(r), q, p
            return bounds
        return None


GUARD_NAMES = ("none", "bounds", "conserve")
"""The guards by name: a curriculum stage's ``guard``; evaluate's ``--project`` is ``bounds``, ``--conserve``
``conserve``."""


def named_guard(name: str, couplings: Couplings, energy_split: str = "momenta",
                snapshot_dt: float | None = None, work_share: float = 1.0) -> Guard | None:
    """The guard ``name`` (one of :data:`GUARD_NAMES`) selects, None for ``none``; ``couplings`` serve ``conserve``,
    and so do ``energy_split`` (one of :data:`ENERGY_SPLITS`) and, for ``work``, the data's ``snapshot_dt`` and
    ``work_share``."""
    if name not in GUARD_NAMES:
        raise ValueError(f"guard is {name!r}; choose one of {', '.join(GUARD_NAMES)}")
    if energy_split not in ENERGY_SPLITS:
        raise ValueError(f"energy split is {energy_split!r}; choose one of {', '.join(ENERGY_SPLITS)}")
    if energy_split == "work" and name != "conserve":
        raise ValueError(f"the energy split 'work' belongs to the guard conserve, not {name!r}; "
                         "use guard conserve or energy split momenta")
    # Built for every name, so Guard's checks (a work share needs the work split) hold for all of them.
    conserve = Guard(conserve=couplings, work_dt=snapshot_dt if energy_split == "work" else None, work_share=work_share)
    return {"none": None, "bounds": Guard(bounds=True), "conserve": conserve}[name]
