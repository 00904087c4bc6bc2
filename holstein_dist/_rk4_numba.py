"""Fused numba RK4 kernel for many trajectories at once (the default CPU path of ``physics.evolve``).

The same arithmetic as ``physics.rk4_step`` (the same IEEE operations in the same order; no
fast-math, no FMA contraction), so for an exactly Hermitian ``rho`` it reproduces the numpy path
bit for bit. Arranged for speed:

* **Hermitian storage.** RK4 keeps an exactly Hermitian ``rho`` exactly Hermitian (``[h, rho]``
  of a Hermitian ``rho`` is anti-Hermitian bit for bit), so only the ring diagonals
  ``D[k, a] = rho[a, (a + k) % L]``, ``k = 0 .. L/2``, are evolved (about half the matrix).
  In these coordinates the commutator is a constant-offset stencil in ``(k, a)``: neighbours across
  ``k = 0`` and ``k = L/2`` are complex conjugates of stored values (ghost rows), the periodic
  ``a +- 1`` neighbours are ghost columns, both refreshed before each stage.
* **Trajectories innermost.** A chunk of ``W`` trajectories is one flat float64 buffer (see
  :func:`layout`) with the lane index fastest, so every update is one long unit-stride loop that
  LLVM vectorizes (zmm on AVX-512). Indices are unsigned, so numba emits no negative-index
  wraparound (which blocks vectorization). Vector and scalar (remainder) lanes run the same IEEE
  operations, so a trajectory's bits do not depend on ``W``, its lane, or the rest of the batch.
* **Four passes per step.** Stage ``s`` reads its input once and writes the next stage input and
  the running sum ``k1 + 2 k2 + 2 k3`` (numpy's summation order); the last stage writes
  ``y + dt/6 (acc + k4)`` in place. Stage buffers rotate; nothing is copied. The on-site factor
  ``g (Q_b - Q_a)`` is tabulated once per stage.
* **Chunks in parallel.** ``W`` keeps a chunk's working set in L2 (:data:`CHUNK_BYTES`); chunks
  run under ``prange``, one thread each, with no shared writes.

The input ``rho`` is replaced by its Hermitian part ``(rho + rho^H) / 2`` (the same bits when
``rho`` is exactly Hermitian, as the physics produces; ``physics.validate_state`` refuses anything
not Hermitian to 1e-8). The caller's arrays are never written.
"""

from __future__ import annotations

import numpy as np

try:
    import numba
    from numba import njit, prange

    AVAILABLE = True
except ImportError:  # pragma: no cover - numba is a declared dependency; numpy path still works
    AVAILABLE = False

CHUNK_BYTES = 400 * 1024  # target working set of one chunk (state, 2 stage buffers, sum, on-site table)
MAX_WIDTH = 16  # at most this many trajectories per chunk

_STAGE_FIRST, _STAGE_MIDDLE, _STAGE_LAST = 0, 1, 2


def layout(L: int, W: int) -> tuple[int, int, int, int, int, int]:
    """Offsets of one chunk buffer: ``(K, R, NS, QO, PO, NB)``.

    ``K = L/2 + 1`` stored diagonals; a row (one diagonal, ghost columns ``a = -1`` and ``a = L``)
    is ``R = (L + 2) W`` floats; a component (ghost rows ``k = -1`` and ``k = K``) is ``NS``
    floats; real part at 0, imaginary at ``NS``, ``Q`` at ``QO`` (stored twice over, so that
    ``Q[(a + k) % L]`` is a plain offset), ``P`` at ``PO``; ``NB`` floats in all. Element
    ``(k, a, lane)`` of a component is at ``(k + 1) R + (a + 1) W + lane``.
    """
    K = L // 2 + 1
    R = (L + 2) * W
    NS = (K + 2) * R
    QO = 2 * NS
    PO = QO + 2 * L * W
    return K, R, NS, QO, PO, PO + L * W


def chunk_width(L: int, B: int, threads: int) -> tuple[int, int]:
    """``(W, n_chunks)``: at least one chunk per thread, each within :data:`CHUNK_BYTES`, minimal padding.

    The result never changes a trajectory's numbers, only the speed.
    """
    if B <= 0:
        return 1, 0
    _, _, NS, _, _, NB = layout(L, 1)
    per_lane = 8 * (4 * NB + NS)
    w_max = max(1, min(MAX_WIDTH, CHUNK_BYTES // per_lane))
    W = -(-B // max(-(-B // w_max), min(B, max(1, threads))))
    return W, -(-B // W)


if AVAILABLE:
    _layout = njit(inline="always")(layout)

    @njit(inline="always", boundscheck=False)
    def _copy(S, dst, src, n):
        """``S[dst:dst+n] = S[src:src+n]`` (non-overlapping)."""
        d, s, m = np.uint64(dst), np.uint64(src), np.uint64(n)
        for j in range(m):
            S[d + j] = S[s + j]

    @njit(inline="always", boundscheck=False)
    def _copy_conj(S, dst, src, n, NS):
        """Complex-conjugate copy: real part at ``dst``/``src``, imaginary part ``NS`` further on."""
        d, s, m, o = np.uint64(dst), np.uint64(src), np.uint64(n), np.uint64(NS)
        for j in range(m):
            S[d + j] = S[s + j]
        for j in range(m):
            S[o + d + j] = -S[o + s + j]

    @njit(cache=True, nogil=True, boundscheck=False)
    def _prepare(S, G, L, W, g):
        """Fill the ghosts of stage input ``S`` and the on-site factor ``G = g (Q[(a + k) % L] - Q[a])``.

        Ghost columns are periodic in ``a``; ghost rows are conjugates: ``D[-1, a] = conj(D[1, a - 1])``
        and ``D[L/2 + 1, a] = conj(D[L/2 - 1, a + L/2 + 1])`` (indices mod L); Q is stored twice.
        """
        K, R, NS, QO, PO, NB = _layout(L, W)
        LW = L * W
        half = L // 2
        for comp in range(2):
            for k in range(K):
                row = comp * NS + (k + 1) * R
                _copy(S, row, row + LW, W)  # a = -1 <- a = L - 1
                _copy(S, row + LW + W, row + W, W)  # a = L <- a = 0
        # row k = -1 (offset 0), columns a = -1..L (cols 0..L+1); row k = 1 is at offset 2R
        _copy_conj(S, 0, 2 * R + L * W - W, 2 * W, NS)  # a = -1, 0  <- conj D[1, L-2], D[1, L-1]
        _copy_conj(S, 2 * W, 2 * R + W, LW, NS)  # a = 1..L  <- conj D[1, 0..L-1]
        # row k = L/2 + 1 (offset (K+1)R); row k = L/2 - 1 is at offset half R
        top = (K + 1) * R
        _copy_conj(S, top, half * R + (half + 1) * W, half * W, NS)  # a = -1..half-2 <- D[half-1, half..L-1]
        _copy_conj(S, top + half * W, half * R + W, (half + 2) * W, NS)  # a = half-1..L <- D[half-1, 0..half+1]
        _copy(S, QO + LW, QO, LW)
        uQO, uLW = np.uint64(QO), np.uint64(LW)
        for k in range(K):
            row = np.uint64((k + 1) * R + W)
            qb = uQO + np.uint64(k * W)
            for j in range(uLW):
                G[row + j] = g * (S[qb + j] - S[uQO + j])

    @njit(inline="always", boundscheck=False)
    def _deriv(S, i, NS, R, W, gq):
        """``d rho / dt`` at flat index ``i``: numpy's ``-1j * (hop + gq * rho)``, same order."""
        up = i - R  # D[k-1, a]  = rho[a, b-1]
        dn = i + R  # D[k+1, a]  = rho[a, b+1]
        # hop = -(rho[a+1, b] + rho[a-1, b]) + (rho[a, b+1] + rho[a, b-1]);  drho = Im X - i Re X
        kr = (-(S[NS + up + W] + S[NS + dn - W]) + (S[NS + dn] + S[NS + up])) + gq * S[NS + i]
        ki = ((S[up + W] + S[dn - W]) - (S[dn] + S[up])) - gq * S[i]
        return kr, ki

    @njit(cache=True, nogil=True, boundscheck=False)
    def _stage(S, Y, N, A, G, mode, c, L, W, g, K0, g1):
        """One RK4 stage: ``k = f(S)``, then by ``mode``:

        first:  ``N = Y + c k``, ``A = k``;   middle: ``N = Y + c k``, ``A = A + 2 k``;
        last:   ``Y = Y + c (A + k)`` (``c = dt/6``; ``N`` unused).

        Indices are unsigned so that numba emits no negative-index wraparound (which blocks
        vectorization).
        """
        _prepare(S, G, L, W, g)
        K, R_, NS_, QO_, PO_, NB = _layout(L, W)
        R, NS, QO, PO, uW = np.uint64(R_), np.uint64(NS_), np.uint64(QO_), np.uint64(PO_), np.uint64(W)
        LW = np.uint64(L * W)
        # one flat loop over all stored diagonals; the ghost columns between rows are computed too
        # (finite garbage, never read back: ghosts are refilled before a buffer is read as a stage input)
        lo = R + uW
        n = np.uint64((K - 1) * R_ + L * W)
        if mode == _STAGE_FIRST:
            for j in range(n):
                i = lo + j
                kr, ki = _deriv(S, i, NS, R, uW, G[i])
                N[i] = Y[i] + c * kr
                N[NS + i] = Y[NS + i] + c * ki
                A[i] = kr
                A[NS + i] = ki
        elif mode == _STAGE_MIDDLE:
            for j in range(n):
                i = lo + j
                kr, ki = _deriv(S, i, NS, R, uW, G[i])
                N[i] = Y[i] + c * kr
                N[NS + i] = Y[NS + i] + c * ki
                A[i] = A[i] + 2.0 * kr
                A[NS + i] = A[NS + i] + 2.0 * ki
        else:
            for j in range(n):
                i = lo + j
                kr, ki = _deriv(S, i, NS, R, uW, G[i])
                Y[i] = Y[i] + c * (A[i] + kr)
                Y[NS + i] = Y[NS + i] + c * (A[NS + i] + ki)
        diag = R + uW  # D[0, a] = rho[a, a]
        for j in range(LW):
            q = QO + j
            p = PO + j
            kq = K0 * S[p]
            kp = -K0 * S[q] + g1 * (S[diag + j] - 0.5)
            if mode == _STAGE_FIRST:
                N[q] = Y[q] + c * kq
                N[p] = Y[p] + c * kp
                A[q] = kq
                A[p] = kp
            elif mode == _STAGE_MIDDLE:
                N[q] = Y[q] + c * kq
                N[p] = Y[p] + c * kp
                A[q] = A[q] + 2.0 * kq
                A[p] = A[p] + 2.0 * kp
            else:
                Y[q] = Y[q] + c * (A[q] + kq)
                Y[p] = Y[p] + c * (A[p] + kp)

    @njit(cache=True, nogil=True, boundscheck=False)
    def _advance_chunk(y, s1, s2, acc, G, n_steps, L, W, dt, g, K0, g1):
        """In place: ``n_steps`` RK4 steps of one chunk buffer ``y`` (see :func:`layout`).

        ``s1``, ``s2`` (stage inputs), ``acc`` (running sum) and ``G`` (on-site table) are scratch
        buffers of the same size as ``y``.
        """
        h = 0.5 * dt
        w = dt / 6.0
        for _ in range(n_steps):
            _stage(y, y, s1, acc, G, _STAGE_FIRST, h, L, W, g, K0, g1)  # k1 = f(y); s1 = y + h k1
            _stage(s1, y, s2, acc, G, _STAGE_MIDDLE, h, L, W, g, K0, g1)  # k2 = f(s1); s2 = y + h k2
            _stage(s2, y, s1, acc, G, _STAGE_MIDDLE, dt, L, W, g, K0, g1)  # k3 = f(s2); s1 = y + dt k3
            _stage(s1, y, s2, acc, G, _STAGE_LAST, w, L, W, g, K0, g1)  # k4 = f(s1); y += dt/6 (acc + k4)

    @njit(cache=True, parallel=True)
    def _advance_all(y, work, n_steps, L, W, dt, g, K0, g1):
        """``y[chunk]``: chunk buffers; ``work[chunk, 4]``: their scratch buffers; chunks in parallel."""
        for c in prange(y.shape[0]):
            _advance_chunk(y[c], work[c, 0], work[c, 1], work[c, 2], work[c, 3], n_steps, L, W, dt, g, K0, g1)


class NumbaStepper:
    """Holds a batch in the kernel's layout (``[chunks, buffer]``, see :func:`layout`) across ``advance`` calls.

    ``rho`` ``[..., L, L]``, ``Q`` and ``P`` ``[..., L]`` with any leading batch shape (even ``L >= 4``);
    ``threads`` bounds numba's threads during ``advance`` (default: numba's setting).
    """

    def __init__(self, rho: np.ndarray, Q: np.ndarray, P: np.ndarray, *, g: float, dt: float, K0: float,
                 eta: float, threads: int | None = None) -> None:
        if not AVAILABLE:  # pragma: no cover
            raise RuntimeError("numba is not installed; use backend='numpy'")
        rho = np.asarray(rho)
        L = int(rho.shape[-1]) if rho.ndim >= 2 else 0
        if rho.ndim < 2 or rho.shape[-2] != L or L < 4 or L % 2:
            raise ValueError(f"rho must have shape [..., L, L] with even L >= 4, got {rho.shape}")
        self.batch_shape = rho.shape[:-2]
        rho = rho.reshape(-1, L, L)
        B = rho.shape[0]
        self.B, self.L = B, L
        self.threads = threads
        W, n_chunks = chunk_width(L, B, threads if threads is not None else numba.get_num_threads())
        self.W = W
        self._k, self._a = _diagonal_index(L)

        # Hermitian part (the same bits when rho is exactly Hermitian), as diagonals D[t, k, a]
        herm = 0.5 * (rho + np.conj(np.swapaxes(rho, -1, -2)))
        D = herm[:, self._a, (self._a + self._k) % L]  # [B, K, L]
        self.y = np.zeros((n_chunks, layout(L, W)[5]), dtype=np.float64)
        v = self._views(self.y)
        pad = n_chunks * W - B

        def lanes(x: np.ndarray) -> np.ndarray:
            # [B, ...] -> [chunks, ..., W]; padding trajectories are zeros (finite, and discarded)
            x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)]) if pad else x
            return np.moveaxis(x.reshape((n_chunks, W) + x.shape[1:]), 1, -1)

        v["re"][...] = lanes(np.ascontiguousarray(D.real, dtype=np.float64))
        v["im"][...] = lanes(np.ascontiguousarray(D.imag, dtype=np.float64))
        v["Q"][...] = lanes(np.asarray(Q, dtype=np.float64).reshape(B, L))
        v["P"][...] = lanes(np.asarray(P, dtype=np.float64).reshape(B, L))
        self.g, self.dt, self.K0, self.g1 = float(g), float(dt), float(K0), float(eta) * float(g)
        self._work: np.ndarray | None = None  # scratch buffers, allocated at the first advance

    def _views(self, y: np.ndarray) -> dict[str, np.ndarray]:
        """Interior views of the chunk buffers: re/im ``[chunks, K, L, W]``, Q/P ``[chunks, L, W]``."""
        L, W = self.L, self.W
        K, R, NS, QO, PO, NB = layout(L, W)
        comps = y[:, : 2 * NS].reshape(-1, 2, K + 2, L + 2, W)[:, :, 1 : K + 1, 1 : L + 1]
        return {"re": comps[:, 0], "im": comps[:, 1],
                "Q": y[:, QO : QO + L * W].reshape(-1, L, W), "P": y[:, PO : PO + L * W].reshape(-1, L, W)}

    def advance(self, n_steps: int) -> None:
        if n_steps <= 0 or self.y.shape[0] == 0:
            return
        if self._work is None:  # kept across calls: first-touching fresh pages every call is costly
            self._work = np.zeros((self.y.shape[0], 4, self.y.shape[1]))
        previous = numba.get_num_threads()
        if self.threads is not None:
            numba.set_num_threads(max(1, min(self.threads, numba.config.NUMBA_NUM_THREADS)))
        try:
            _advance_all(self.y, self._work, int(n_steps), self.L, self.W, self.dt, self.g, self.K0, self.g1)
        finally:
            numba.set_num_threads(previous)

    def state(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Fresh numpy ``(rho, Q, P)`` in the input's batch shape."""
        L, B = self.L, self.B
        v = self._views(self.y)

        def unlanes(x: np.ndarray) -> np.ndarray:
            x = np.moveaxis(x, -1, 1)
            return x.reshape((-1,) + x.shape[2:])[:B]

        D = np.empty((B, L // 2 + 1, L), dtype=np.complex128)
        D.real = unlanes(v["re"])
        D.imag = unlanes(v["im"])
        rho = np.empty((B, L, L), dtype=np.complex128)
        k, a = self._k, self._a
        rho[:, a, (a + k) % L] = D
        low = (k > 0) & (k < L // 2)  # k = L/2 is stored for every a (both halves); k = 0 is the diagonal
        rho[:, ((a + k) % L)[low], a[low]] = np.conj(D[:, low])
        return (rho.reshape(self.batch_shape + (L, L)),
                unlanes(v["Q"]).copy().reshape(self.batch_shape + (L,)),
                unlanes(v["P"]).copy().reshape(self.batch_shape + (L,)))


def _diagonal_index(L: int) -> tuple[np.ndarray, np.ndarray]:
    """``(k, a)`` index grids ``[L/2 + 1, L]`` of the stored diagonals."""
    k, a = np.meshgrid(np.arange(L // 2 + 1), np.arange(L), indexing="ij")
    return k, a
