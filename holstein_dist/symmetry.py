"""Point symmetries of the Holstein ring and exact equivariance by group averaging (docs/physics.md section 4).

Besides translations (which the circular convolutions respect by construction), the Ehrenfest equations
of SPEC section 1 commute with two involutions of a state (rho, Q, P) on an even ring:

- reflection ``i -> -i (mod L)``: ``rho[a, b] -> rho[-a, -b]``, ``Q_i -> Q_-i``, ``P_i -> P_-i``;
- particle-hole ``c_i -> (-1)^i c_i^dagger``: ``rho -> 1 - S rho^T S`` with ``S = diag((-1)^i)``,
  ``Q -> -Q``, ``P -> -P`` (so ``n_i -> 1 - n_i``). The hopping of a bipartite ring changes sign under
  ``S``, which the ``-i`` of the commutator and the sign of ``Q`` undo; the phonon force ``g1 (n - 1/2)``
  flips with ``Q`` and ``P``.

A trained CNN obeys neither exactly. Averaging its increment over the group,
``d(x) = (1/|G|) sum_g g^-1 d(g x)``, makes it exactly equivariant, and (the true increment being
equivariant and each ``g`` an isometry) the average is never further from the truth than its members'
mean error on a symmetric ensemble of states (Jensen). It costs |G| = 4 network evaluations per step,
done as one batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

State = tuple[Tensor, Tensor, Tensor]
Derivative = State | None

GROUP = ("identity", "reflection", "particle_hole", "reflection+particle_hole")
"""The four elements averaged over, each its own inverse."""


def _reflection_index(L: int, device: torch.device) -> Tensor:
    return (-torch.arange(L, device=device)) % L


def _stagger(L: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    return (1 - 2 * (torch.arange(L, device=device) % 2)).to(dtype)


def reflect(rho: Tensor, Q: Tensor, P: Tensor) -> State:
    """The state mirrored about site 0 (a permutation: states and increments transform alike)."""
    idx = _reflection_index(Q.shape[-1], Q.device)
    return rho[..., idx, :][..., :, idx], Q[..., idx], P[..., idx]


def particle_hole_linear(rho: Tensor, Q: Tensor, P: Tensor) -> State:
    """The linear part of the particle-hole map, ``(-S rho^T S, -Q, -P)``: how increments and derivatives
    transform."""
    if Q.shape[-1] % 2:
        raise ValueError(f"particle-hole conjugation is a symmetry of an even ring only (L = {Q.shape[-1]}); "
                         "use model.symmetrize only with even L")
    s = _stagger(Q.shape[-1], Q.device, Q.dtype)
    return -(s[:, None] * s[None, :]) * rho.transpose(-2, -1), -Q, -P


def particle_hole(rho: Tensor, Q: Tensor, P: Tensor) -> State:
    """The particle-hole conjugate state ``(1 - S rho^T S, -Q, -P)``."""
    r, q, p = particle_hole_linear(rho, Q, P)
    return r + torch.eye(rho.shape[-1], dtype=rho.dtype, device=rho.device), q, p


def act(element: str, state: State, linear: bool = False) -> State:
    """Apply one group element to a state, or (``linear``) to an increment or time derivative."""
    if element not in GROUP:
        raise ValueError(f"unknown symmetry {element!r}; choose one of {', '.join(GROUP)}")
    if "reflection" in element:
        state = reflect(*state)
    if "particle_hole" in element:
        state = particle_hole_linear(*state) if linear else particle_hole(*state)
    return state


def symmetrized(increment: Callable[[Tensor, Tensor, Tensor], tuple[State, Derivative]],
                rho: Tensor, Q: Tensor, P: Tensor) -> tuple[State, Derivative]:
    """Group average of ``increment`` (a surrogate's ``(increment, derivative or None)`` map) at one batch.

    The |G| transformed copies travel as one batch of 4B states; every output is mapped back by its
    element's linear part (each element is its own inverse) and averaged.
    """
    copies = [act(element, (rho, Q, P)) for element in GROUP]
    stacked = tuple(torch.cat(parts, dim=0) for parts in zip(*copies, strict=True))
    inc, derivative = increment(*stacked)

    def back(out: State) -> State:
        per_element = zip(*(x.chunk(len(GROUP), dim=0) for x in out), strict=True)  # one (rho, Q, P) per element
        mapped = [act(element, part, linear=True) for element, part in zip(GROUP, per_element, strict=True)]
        return tuple(torch.stack(parts).mean(dim=0) for parts in zip(*mapped, strict=True))

    return back(inc), (None if derivative is None else back(derivative))
