"""Ehrenfest dynamics of the 1D semi-classical Holstein chain (docs/physics.md sections 1-3).

One formulation, three executions:

* ``rhs`` is the equations of motion written once against an array namespace, so the same lines
  run on numpy (reference path, any batch) and on torch (CPU or CUDA, complex128, batched on GPU);
* ``holstein_dist._rk4_numba`` is a fused, batch-innermost numba kernel of exactly the same RK4
  arithmetic; it is the default on CPU and is tested against ``rhs`` to 1e-12;
* ``FusedTorchStepper`` is the GPU path (the default for CUDA tensors): the same RK4 on real and
  imaginary float64 parts in a batch-last layout, compiled into a few fused kernels and replayed as
  a CUDA graph, with no host synchronisation inside ``advance``.

Conventions: ``rho[..., a, b] = <c_b^dag c_a>`` (complex Hermitian, ``n_i = Re rho[i, i]``),
``Q``, ``P`` are ``[..., L]``; any leading batch dimensions are allowed. ``h(Q)`` has hopping -1
on a periodic ring and on-site ``-g Q_i``. Time step ``dt = 0.01`` and constants ``K0 = 0.3``,
``eta = 0.8`` (``g1 = eta * g``) are the reference's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

K0_DEFAULT = 0.3
ETA_DEFAULT = 0.8
DT_DEFAULT = 0.01
KT_INIT = 1e-8
STAGGERED_START = 0.25
BACKENDS = ("auto", "numba", "numpy", "torch")
STATE_KEYS = ("rho", "Q", "P")
"""Names of the state's components, in the order every function here takes and returns them; the shard
schema, the data loaders and the evaluation key their arrays by these names."""
HALF_FILLING = 0.5
"""``<n_i>`` on the half-filled ring: subtracted from the density wherever its fluctuation is meant."""


# ----------------------------------------------------------------------------- array namespace


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


class _NumpyOps:
    roll = staticmethod(np.roll)

    @staticmethod
    def diag(x):
        return np.diagonal(x, axis1=-2, axis2=-1)

    @staticmethod
    def stagger(L: int, like):
        return np.where(np.arange(L) % 2 == 0, 1.0, -1.0)

    @staticmethod
    def float64(x):
        return x.astype(np.float64)


class _TorchOps:
    @staticmethod
    def roll(x, shift, axis):
        import torch

        return torch.roll(x, shifts=shift, dims=axis)

    @staticmethod
    def diag(x):
        import torch

        return torch.diagonal(x, dim1=-2, dim2=-1)

    @staticmethod
    def stagger(L: int, like):
        import torch

        s = torch.ones(L, dtype=like.real.dtype if like.is_complex() else like.dtype, device=like.device)
        s[1::2] = -1.0
        return s

    @staticmethod
    def float64(x):
        return x.double()


def _ops(x: Any):
    return _TorchOps if _is_torch(x) else _NumpyOps


# ----------------------------------------------------------------------------- equations of motion


def commutator_h(rho, Q, g: float):
    """``[h(Q), rho]`` in O(L^2): h is a ring stencil (hopping -1) plus the diagonal ``-g Q``."""
    ops = _ops(rho)
    hop = -(ops.roll(rho, -1, -2) + ops.roll(rho, 1, -2)) + (ops.roll(rho, -1, -1) + ops.roll(rho, 1, -1))
    return hop + g * (Q[..., None, :] - Q[..., :, None]) * rho


def rhs(rho, Q, P, *, g: float, K0: float = K0_DEFAULT, eta: float = ETA_DEFAULT):
    """Exact time derivative ``(drho/dt, dQ/dt, dP/dt)`` (numpy or torch, any batch)."""
    n = _ops(rho).diag(rho).real
    drho = -1j * commutator_h(rho, Q, g)
    dQ = K0 * P
    dP = -K0 * Q + (eta * g) * (n - 0.5)
    return drho, dQ, dP


def rk4_step(rho, Q, P, *, g: float, dt: float, K0: float, eta: float):
    """One classical RK4 step of the joint state (numpy or torch)."""
    k1 = rhs(rho, Q, P, g=g, K0=K0, eta=eta)
    h = 0.5 * dt
    k2 = rhs(rho + h * k1[0], Q + h * k1[1], P + h * k1[2], g=g, K0=K0, eta=eta)
    k3 = rhs(rho + h * k2[0], Q + h * k2[1], P + h * k2[2], g=g, K0=K0, eta=eta)
    k4 = rhs(rho + dt * k3[0], Q + dt * k3[1], P + dt * k3[2], g=g, K0=K0, eta=eta)
    w = dt / 6.0
    return tuple(y + w * (a + 2.0 * b + 2.0 * c + d) for y, a, b, c, d in zip((rho, Q, P), k1, k2, k3, k4))


# ----------------------------------------------------------------------------- validation


def validate_state(rho, Q, P, *, check_hermitian: bool = True) -> int:
    """Check shapes, even L, finiteness and Hermiticity; return L. Raises ValueError with the fix."""
    if rho.ndim < 2 or rho.shape[-1] != rho.shape[-2]:
        raise ValueError(f"rho must have shape [..., L, L], got {tuple(rho.shape)}; pass the density matrix")
    L = int(rho.shape[-1])
    if L < 4 or L % 2:
        raise ValueError(f"L must be even and >= 4 (half filling on a ring), got L={L}")
    for name, x in (("Q", Q), ("P", P)):
        if tuple(x.shape) != tuple(rho.shape[:-1]):
            raise ValueError(
                f"{name} must have shape {tuple(rho.shape[:-1])} to match rho {tuple(rho.shape)}, "
                f"got {tuple(x.shape)}"
            )
    lib = _torch() if _is_torch(rho) else np
    for name, x in (("rho", rho), ("Q", Q), ("P", P)):
        if not bool(lib.isfinite(x).all()):
            raise ValueError(f"{name} contains NaN or inf; the state diverged or the input is corrupt")
    if check_hermitian:
        err = float(lib.abs(rho - rho.conj().swapaxes(-1, -2)).max())
        if err > 1e-8:
            raise ValueError(f"rho is not Hermitian (max |rho - rho^H| = {err:.2e}); pass a density matrix")
    return L


def _torch():
    import torch

    return torch


# ----------------------------------------------------------------------------- steppers


def _choose_backend(backend: str, rho) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    if _is_torch(rho):
        return "torch"
    from holstein_dist import _rk4_numba

    return "numba" if _rk4_numba.AVAILABLE else "numpy"


def evolve(
    rho,
    Q,
    P,
    *,
    g: float,
    n_steps: int,
    dt: float = DT_DEFAULT,
    K0: float = K0_DEFAULT,
    eta: float = ETA_DEFAULT,
    backend: str = "auto",
    threads: int | None = None,
):
    """Advance ``(rho, Q, P)`` by ``n_steps`` RK4 steps of size ``dt`` at coupling ``g``.

    numpy in, numpy out (torch in, torch out for ``backend='torch'``); any leading batch shape.
    ``backend='auto'`` picks the numba kernel on CPU arrays and torch for torch tensors.
    ``threads`` bounds the numba threads (default: numba's setting, i.e. all cores).
    """
    if int(n_steps) != n_steps or n_steps < 0:
        raise ValueError(f"n_steps must be a non-negative integer, got {n_steps!r}")
    validate_state(rho, Q, P)
    stepper = make_stepper(rho, Q, P, g=g, dt=dt, K0=K0, eta=eta, backend=backend, threads=threads)
    stepper.advance(int(n_steps))
    return stepper.state()


def make_stepper(rho, Q, P, *, g: float, dt: float = DT_DEFAULT, K0: float = K0_DEFAULT,
                 eta: float = ETA_DEFAULT, backend: str = "auto", threads: int | None = None):
    """A stepper keeps the state in its backend's preferred layout across many ``advance`` calls.

    ``backend='torch'``: CUDA tensors get the fused GPU stepper (:class:`FusedTorchStepper`); CPU
    tensors and numpy arrays the eager complex128 path (:class:`TorchStepper`, unchanged bits).
    """
    backend = _choose_backend(backend, rho)
    if backend == "numba":
        from holstein_dist._rk4_numba import NumbaStepper

        return NumbaStepper(np.asarray(rho), np.asarray(Q), np.asarray(P), g=g, dt=dt, K0=K0, eta=eta,
                            threads=threads)
    if backend == "torch":
        if _is_torch(rho) and rho.device.type == "cuda":
            return FusedTorchStepper(rho, Q, P, g=g, dt=dt, K0=K0, eta=eta)
        return TorchStepper(rho, Q, P, g=g, dt=dt, K0=K0, eta=eta)
    return ArrayStepper(np.asarray(rho, dtype=np.complex128), np.asarray(Q, dtype=np.float64),
                        np.asarray(P, dtype=np.float64), g=g, dt=dt, K0=K0, eta=eta)


@dataclass
class ArrayStepper:
    """Reference stepper: ``rk4_step`` on numpy arrays (or torch tensors)."""

    rho: Any
    Q: Any
    P: Any
    g: float
    dt: float = DT_DEFAULT
    K0: float = K0_DEFAULT
    eta: float = ETA_DEFAULT

    def advance(self, n_steps: int) -> None:
        for _ in range(n_steps):
            self.rho, self.Q, self.P = rk4_step(self.rho, self.Q, self.P, g=self.g, dt=self.dt,
                                                K0=self.K0, eta=self.eta)

    def state(self):
        return self.rho, self.Q, self.P


class TorchStepper(ArrayStepper):
    """torch path (CPU or CUDA, complex128): same ``rk4_step``; numpy input comes back as numpy."""

    def __init__(self, rho, Q, P, *, g: float, dt: float, K0: float, eta: float, device: str | None = None):
        torch = _torch()
        self._numpy_io = not _is_torch(rho)
        dev = torch.device(device) if device else (rho.device if not self._numpy_io else torch.device("cpu"))
        super().__init__(
            torch.as_tensor(rho, dtype=torch.complex128, device=dev),
            torch.as_tensor(Q, dtype=torch.float64, device=dev),
            torch.as_tensor(P, dtype=torch.float64, device=dev),
            g=g, dt=dt, K0=K0, eta=eta,
        )

    def advance(self, n_steps: int) -> None:
        with _torch().no_grad():
            super().advance(n_steps)

    def state(self):
        if self._numpy_io:
            return tuple(x.cpu().numpy() for x in (self.rho, self.Q, self.P))
        return self.rho, self.Q, self.P


# ----------------------------------------------------------------------------- fused torch path (GPU)
#
# Why a second torch path: the eager complex128 ``rk4_step`` launches ~60 kernels per step (each
# torch.roll copies), so on a GPU it is launch-bound below ~10^4 trajectories and makes ~4x the
# necessary memory traffic above. Here the state is split into real and imaginary float64 parts
# (complex dtypes do not fuse well under torch.compile) and laid out batch-last, ``[L, L, B]``, so
# the ring stencil's neighbours are whole contiguous rows of trajectories (coalesced loads) and each
# RK4 stage compiles to a handful of fused kernels. The coefficients travel as a tensor so one
# compiled graph serves every g, and the batch size is symbolic so one graph serves every batch.


def _split_rhs(re, im, Q, P, c):
    """``rhs`` on the batch-last split layout: ``re, im [L, L, B]``, ``Q, P [L, B]``; ``c = (g, dt, K0, eta)``."""
    torch = _torch()
    g, K0, eta = c[0], c[2], c[3]

    def hop(x):  # the hopping part of [h, x], as in ``commutator_h`` (dims 0, 1 = rho's a, b)
        return -(torch.roll(x, -1, 0) + torch.roll(x, 1, 0)) + (torch.roll(x, -1, 1) + torch.roll(x, 1, 1))

    onsite = g * (Q[None, :, :] - Q[:, None, :])  # [a, b] = g (Q_b - Q_a)
    comm_re = hop(re) + onsite * re
    comm_im = hop(im) + onsite * im
    n = torch.diagonal(re, 0, 0, 1).transpose(0, 1)  # [B, L] -> [L, B]
    # drho = -i [h, rho]: real part Im[h, rho], imaginary part -Re[h, rho]
    return comm_im, -comm_re, K0 * P, -K0 * Q + (eta * g) * (n - 0.5)


def _split_rk4(re, im, Q, P, c):
    """One RK4 step on the split layout, in ``rk4_step``'s order of operations."""
    dt = c[1]
    h = 0.5 * dt
    y = (re, im, Q, P)
    k1 = _split_rhs(*y, c)
    k2 = _split_rhs(*(a + h * b for a, b in zip(y, k1)), c)
    k3 = _split_rhs(*(a + h * b for a, b in zip(y, k2)), c)
    k4 = _split_rhs(*(a + dt * b for a, b in zip(y, k3)), c)
    w = dt / 6.0
    return tuple(x + w * (a + 2.0 * b + 2.0 * e + d) for x, a, b, e, d in zip(y, k1, k2, k3, k4))


_COMPILED_RK4 = None


def _compiled_rk4():
    """``_split_rk4`` under torch.compile (built once per process; graphs are cached per L)."""
    global _COMPILED_RK4
    if _COMPILED_RK4 is None:
        _COMPILED_RK4 = _torch().compile(_split_rk4, fullgraph=True, dynamic=True)
    return _COMPILED_RK4


class FusedTorchStepper:
    """GPU stepper: split real/imag float64, batch-last ``[L, L, B]``, compiled RK4, CUDA-graph replay.

    ``compile`` (default: on CUDA) runs ``_split_rk4`` through torch.compile; ``graph_steps`` (default
    32 on CUDA, 0 = off) captures that many steps as one CUDA graph, so ``advance`` launches one graph
    per ``graph_steps`` steps instead of dozens of kernels per step and never waits for the device. If
    compilation or capture fails the stepper falls back (compiled -> eager, graph -> plain loop) and says
    so in ``mode`` and ``notes``: slower, never wrong. Results agree with ``rk4_step`` to rounding
    (~1e-15 per step; a different summation order, not bit-identical). ``state()`` follows
    ``TorchStepper``: numpy in, numpy out (through pinned memory on CUDA); torch in, torch out.
    """

    DEFAULT_GRAPH_STEPS = 32

    def __init__(self, rho, Q, P, *, g: float, dt: float = DT_DEFAULT, K0: float = K0_DEFAULT,
                 eta: float = ETA_DEFAULT, device: str | None = None, compile: bool | None = None,
                 graph_steps: int | None = None) -> None:
        torch = _torch()
        self._numpy_io = not _is_torch(rho)
        dev = torch.device(device) if device else (rho.device if not self._numpy_io else torch.device("cpu"))
        on_cuda = dev.type == "cuda"
        graph_steps = (self.DEFAULT_GRAPH_STEPS if on_cuda else 0) if graph_steps is None else int(graph_steps)
        if graph_steps < 0 or (graph_steps and not on_cuda):
            raise ValueError(f"graph_steps={graph_steps} needs a CUDA device and must be >= 0; pass 0 on CPU")
        rho = torch.as_tensor(rho, dtype=torch.complex128, device=dev)
        self.L = int(rho.shape[-1])
        self.batch_shape = tuple(rho.shape[:-2])
        flat = rho.reshape(-1, self.L, self.L)
        self.B = int(flat.shape[0])
        self.device = dev
        # Persistent buffers: a captured graph reads and writes these very tensors on every replay.
        self.re = flat.real.permute(1, 2, 0).contiguous()
        self.im = flat.imag.permute(1, 2, 0).contiguous()
        self.Q = torch.as_tensor(Q, dtype=torch.float64, device=dev).reshape(self.B, self.L).T.contiguous()
        self.P = torch.as_tensor(P, dtype=torch.float64, device=dev).reshape(self.B, self.L).T.contiguous()
        self.c = torch.tensor([g, dt, K0, eta], dtype=torch.float64, device=dev)
        self.notes: list[str] = []
        self._fn = _split_rk4
        if on_cuda if compile is None else compile:
            self._fn = self._try_compile()
        self.graph_steps = graph_steps
        self._graph = None
        self._graph_failed = False

    @property
    def mode(self) -> str:
        """What ``advance`` runs: ``compiled``/``eager``, plus ``+graph(k)`` when a CUDA graph replays k steps."""
        kind = "eager" if self._fn is _split_rk4 else "compiled"
        return kind + (f"+graph({self.graph_steps})" if self.graph_steps and not self._graph_failed else "")

    def _buffers(self) -> tuple:
        return self.re, self.im, self.Q, self.P

    def _mark(self, tensors) -> None:
        """Keep L a compile-time constant (plain index math, one graph per L); only the batch is symbolic."""
        if self._fn is _split_rk4:
            return
        torch = _torch()
        for t in tensors:
            for dim in range(t.ndim - 1):
                torch._dynamo.mark_static(t, dim)
        torch._dynamo.mark_static(self.c, 0)

    def _call(self, state):
        out = self._fn(*state, self.c)
        self._mark(out)  # outputs feed the next call: unmarked, they would trigger a second, all-dynamic graph
        return out

    def _try_compile(self):
        torch = _torch()
        self._fn = _compiled_rk4()
        probe = tuple(t.clone() for t in self._buffers())
        try:
            self._mark((*probe, *self._buffers()))
            with torch.no_grad():
                self._call(probe)  # compile now, on copies: a failure must not touch the state
        except Exception as exc:  # no compiler / Triton on this machine: the eager split path is still right
            self.notes.append(f"torch.compile failed ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); "
                              "running eager")
            self._fn = _split_rk4
        return self._fn

    def _step_into_buffers(self) -> None:
        torch = _torch()
        with torch.no_grad():
            out = self._call(self._buffers())
            for buf, new in zip(self._buffers(), out):
                buf.copy_(new)

    def _chain(self, n: int):
        """``n`` steps from the buffers, outputs of one step feeding the next (no copies in between)."""
        state = self._buffers()
        for _ in range(n):
            state = self._call(state)
        return state

    def _capture(self) -> None:
        torch = _torch()
        try:
            # Warm up on a side stream (as capture requires; the chain writes new tensors, never the
            # buffers), then capture: recording runs nothing, so the state is untouched until replay.
            side = torch.cuda.Stream(device=self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.no_grad(), torch.cuda.stream(side):
                self._chain(2)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.no_grad(), torch.cuda.graph(graph):
                out = self._chain(self.graph_steps)
                for buf, new in zip(self._buffers(), out):
                    buf.copy_(new)
            self._graph = graph
        except Exception as exc:
            self._graph_failed = True
            self.notes.append(f"CUDA graph capture failed ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); "
                              "launching step by step")

    def advance(self, n_steps: int) -> None:
        """``n_steps`` RK4 steps; asynchronous on CUDA (synchronize before timing)."""
        n_steps = int(n_steps)
        if self.graph_steps and not self._graph_failed and n_steps >= self.graph_steps:
            if self._graph is None:
                self._capture()
            if self._graph is not None:
                for _ in range(n_steps // self.graph_steps):
                    self._graph.replay()
                n_steps %= self.graph_steps
        for _ in range(n_steps):
            self._step_into_buffers()

    def state(self):
        """``(rho, Q, P)`` in the caller's layout and type (see the class docstring)."""
        torch = _torch()
        rho = torch.complex(self.re, self.im).permute(2, 0, 1).reshape(*self.batch_shape, self.L, self.L)
        Q = self.Q.T.reshape(*self.batch_shape, self.L)
        P = self.P.T.reshape(*self.batch_shape, self.L)
        if not self._numpy_io:
            return rho.contiguous(), Q.contiguous(), P.contiguous()
        return tuple(_to_host(x) for x in (rho, Q, P))


def _to_host(x):
    """Device tensor -> numpy; on CUDA through a pinned buffer (a faster copy than to pageable memory)."""
    torch = _torch()
    if x.device.type != "cuda":
        return x.contiguous().numpy()
    host = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
    host.copy_(x, non_blocking=True)
    torch.cuda.current_stream(x.device).synchronize()
    return host.numpy()


# ----------------------------------------------------------------------------- initial state


def hamiltonian(Q, g: float):
    """Dense ``h(Q)`` (numpy float64, or torch in Q's dtype and device; any batch): diagonalised at the initial
    state, and the rollout guard's energy shift works in its basis."""
    L = Q.shape[-1]
    if _is_torch(Q):
        torch = _torch()
        h = torch.zeros(Q.shape[:-1] + (L, L), dtype=Q.dtype, device=Q.device)
        idx = torch.arange(L, device=Q.device)
    else:
        h = np.zeros(Q.shape[:-1] + (L, L))
        idx = np.arange(L)
    h[..., idx, (idx + 1) % L] = -1.0
    h[..., (idx + 1) % L, idx] = -1.0
    h[..., idx, idx] = -g * Q
    return h


def fermi_occupations(eps: np.ndarray, n_particles: float, kT: float = KT_INIT) -> np.ndarray:
    """Fermi-Dirac occupations with the chemical potential bisected so they sum to ``n_particles``.

    Exactly degenerate levels at the Fermi energy end up sharing the remaining charge (each 1/2 at
    g=0, even L): the reference physics of the deep-quench start, a mixed state.
    """
    lo, hi = float(eps.min()) - 1.0, float(eps.max()) + 1.0

    def occ(mu: float) -> np.ndarray:
        return 0.5 * (1.0 - np.tanh((eps - mu) / (2.0 * kT)))

    # The occupation sum changes by ~1/(4 kT) = 2.5e7 per unit of mu at a Fermi-level orbital, so
    # bisect down to float resolution (not a relative tolerance) until the charge is exact.
    mu = 0.5 * (lo + hi)
    for _ in range(2000):
        mu = 0.5 * (lo + hi)
        total = occ(mu).sum()
        if abs(total - n_particles) < 1e-12 or mu in (lo, hi):
            break
        if total > n_particles:
            hi = mu
        else:
            lo = mu
    return occ(mu)


def thermal_density_matrix(Q: np.ndarray, g: float, kT: float = KT_INIT) -> np.ndarray:
    """``rho = sum_m f(eps_m) psi_m psi_m^dag`` for ``h(g, Q)`` at half filling."""
    L = Q.shape[-1]
    eps, vecs = np.linalg.eigh(hamiltonian(Q, g))
    f = fermi_occupations(eps, L / 2, kT)
    return (vecs * f) @ vecs.T.conj()


def ground_state_Q(L: int, g: float, *, K0: float = K0_DEFAULT, eta: float = ETA_DEFAULT,
                   tol: float = 1e-12, max_iter: int = 100_000) -> np.ndarray:
    """Self-consistent mean-field CDW: iterate ``Q <- eta g (n - 1/2) / K0`` from a staggered start."""
    Q = STAGGERED_START * np.where(np.arange(L) % 2 == 0, 1.0, -1.0)
    for _ in range(max_iter):
        n = np.diagonal(thermal_density_matrix(Q, g)).real
        Q_new = eta * g * (n - 0.5) / K0
        if np.max(np.abs(Q_new - Q)) < tol:
            return Q_new
        Q = Q_new
    raise RuntimeError(f"mean-field iteration at L={L}, g={g} did not converge in {max_iter} steps")


def initial_state(
    L: int,
    g_i: float,
    *,
    noise: float = 1e-4,
    seed: int | np.random.SeedSequence | np.random.Generator,
    K0: float = K0_DEFAULT,
    eta: float = ETA_DEFAULT,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pre-quench state (docs/physics.md section 2): CDW ground state at ``g_i`` + phonon noise, Fermi ``rho``.

    Deterministic in ``seed``: Q's noise is drawn first, then P's, from ``np.random.default_rng(seed)``.
    """
    if int(L) != L or L < 4 or L % 2:
        raise ValueError(f"L must be an even integer >= 4, got {L!r}")
    if not np.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    Q = ground_state_Q(int(L), g_i, K0=K0, eta=eta)
    P = np.zeros(int(L))
    Q = Q + noise * rng.standard_normal(int(L))
    P = P + noise * rng.standard_normal(int(L))
    rho = thermal_density_matrix(Q, g_i).astype(np.complex128)
    return rho, Q, P


# ----------------------------------------------------------------------------- observables


def derivatives(rho, Q, P, *, g: float, K0: float = K0_DEFAULT, eta: float = ETA_DEFAULT):
    """The exact time derivative at a state (the PARC differentiator's label)."""
    validate_state(rho, Q, P, check_hermitian=False)
    return rhs(rho, Q, P, g=g, K0=K0, eta=eta)


ENERGY_SPLITS = ("momenta", "work")
"""How a rollout guard that conserves the total energy (``evaluate --conserve``) shares each step's energy error
between the subsystems: ``momenta`` (the lattice momenta are rescaled to the total, so they take all of it) or
``work`` (the lattice keeps the energy the electrons' work over the step gave it, the electrons hold the rest):
:mod:`holstein_dist.guards`."""


def check_work_share(share: float, work_split: bool, name: str = "work share") -> None:
    """Raise ValueError unless ``share`` (the lattice target's share taken from the work, the rest from the momenta
    split) is in (0, 1], and 1 wherever the split is not ``work``; ``name``: the setting as its user spells it."""
    if not (0.0 < share <= 1.0):
        raise ValueError(f"{name} is {share}; use a number in (0, 1] (1: the work split alone)")
    if share != 1.0 and not work_split:
        raise ValueError(f"{name} {share} blends the work split's lattice energy; set the energy split to work or "
                         f"drop {name}")


def energy(rho, Q, P, *, g: float, K0: float = K0_DEFAULT, eta: float = ETA_DEFAULT):
    """Conserved total energy ``Re Tr(h rho) + (g/2) sum Q + K0/(2 eta) sum (P^2 + Q^2)`` (any batch)."""
    ops = _ops(rho)
    n = ops.diag(rho).real
    hop = -(ops.diag(ops.roll(rho, -1, -2)) + ops.diag(ops.roll(rho, 1, -2))).real.sum(-1)
    return hop - g * (Q * (n - 0.5)).sum(-1) + K0 / (2.0 * eta) * (P * P + Q * Q).sum(-1)


def charge_order(rho):
    """CDW charge order ``phi_n = (1/L) sum_i (-1)^i n_i`` (numpy or torch, any batch)."""
    ops = _ops(rho)
    n = ops.diag(rho).real
    return (n * ops.stagger(n.shape[-1], n)).mean(-1)


def staggered_density(rho):
    """The CDW amplitude ``(-1)^i (n_i - 1/2)`` per site, ``[..., L]`` (numpy or torch, any batch).

    The 1/2 of half filling is subtracted first: ``(-1)^i n_i`` alone is dominated by trivial +-1/2
    stripes, which would set a plot's colour scale and hide the CDW amplitude. Its site mean is
    ``charge_order`` (the staggered 1/2 sums to zero on an even ring).
    """
    ops = _ops(rho)
    # float64 before the subtraction: n_i - 1/2 of a float32 n_i near 0 or 1 would round.
    n = ops.float64(ops.diag(rho).real) - HALF_FILLING
    return n * ops.stagger(n.shape[-1], n)


def lattice_order(Q):
    """Lattice order ``phi_Q = (1/L) sum_i (-1)^i Q_i`` (numpy or torch, any batch)."""
    return (Q * _ops(Q).stagger(Q.shape[-1], Q)).mean(-1)


def lattice_kinetic_energy(P: np.ndarray, *, K0: float = K0_DEFAULT, eta: float = ETA_DEFAULT) -> np.ndarray:
    """Kinetic energy of the lattice per site, ``K0/(2 eta) mean_i P_i^2`` (numpy, any batch).

    The lattice's temperature gauge: after a quench the exact dynamics keeps it at a steady level, while a
    surrogate with friction cools it towards 0 (and one with anti-friction heats it) even when the total
    energy barely moves, because the lattice holds a small share of it.
    """
    return K0 / (2.0 * eta) * np.mean(np.square(P, dtype=np.float64), axis=-1)


def domain_walls(Q: np.ndarray) -> np.ndarray:
    """Domain walls of the CDW per ring: sign changes of the staggered field ``(-1)^i Q_i`` between
    neighbours, the ring closed (numpy, any batch; an even count on an even ring).

    After a deep quench the order grows in domains of both signs; the walls between them move and carry
    the slow swings of the lattice order. A surrogate whose walls stop or annihilate freezes that order
    even where its one-step error is small.
    """
    staggered = Q * _NumpyOps.stagger(Q.shape[-1], Q)
    return np.count_nonzero(np.signbit(staggered) != np.signbit(np.roll(staggered, -1, axis=-1)), axis=-1)


def purity(rho):
    """``Tr rho^2`` (real; conserved by unitary evolution)."""
    return (rho * rho.swapaxes(-1, -2)).sum((-2, -1)).real
