"""Fused numba RK4 kernel for many trajectories at once (the default CPU path of ``physics.evolve``).

Same arithmetic as ``physics.rk4_step``, arranged for speed:

* trajectories are the innermost (contiguous) axis, in chunks of ``CHUNK``: every stencil update
  is a contiguous vector loop over trajectories, which LLVM vectorizes without fast-math, so each
  trajectory's arithmetic is identical whether it runs alone or in a batch;
* real and imaginary parts are separate float64 arrays (complex loads defeat vectorization);
* each RK4 stage is one pass that reads the stage input and writes both the next stage input and
  the running RK4 sum, so a step touches every element five times, not twenty;
* chunks are small enough (8 trajectories: ~130 kB per array at L=32) that a step's working set
  stays in L2, and chunks run in parallel (``prange``) across cores.
"""

from __future__ import annotations

import numpy as np

try:
    import numba
    from numba import njit, prange

    AVAILABLE = True
except ImportError:  # pragma: no cover - numba is a declared dependency; numpy path still works
    AVAILABLE = False

CHUNK = 8  # trajectories per vector chunk: one AVX-512 register of float64


if AVAILABLE:

    @njit(cache=True, nogil=True, boundscheck=False)
    def _stage(sr, si, sQ, sP, yr, yi, yQ, yP, nr, ni, nQ, nP, c_next, ar, ai, aQ, aP, w_acc,
               first, write_next, g, K0, g1):
        """k = f(s); next = y + c_next*k (if write_next); acc = (y if first else acc) + w_acc*k."""
        L = sr.shape[0]
        C = sr.shape[2]
        for a in range(L):
            ap = a + 1 if a + 1 < L else 0
            am = a - 1 if a > 0 else L - 1
            for b in range(L):
                bp = b + 1 if b + 1 < L else 0
                bm = b - 1 if b > 0 else L - 1
                for k in range(C):
                    gq = g * (sQ[b, k] - sQ[a, k])
                    # -i [h, s]: real part = Im X, imaginary part = -Re X (see physics.commutator_h)
                    kr = (-(si[ap, b, k] + si[am, b, k]) + (si[a, bp, k] + si[a, bm, k])) + gq * si[a, b, k]
                    ki = ((sr[ap, b, k] + sr[am, b, k]) - (sr[a, bp, k] + sr[a, bm, k])) - gq * sr[a, b, k]
                    if write_next:
                        nr[a, b, k] = yr[a, b, k] + c_next * kr
                        ni[a, b, k] = yi[a, b, k] + c_next * ki
                    if first:
                        ar[a, b, k] = yr[a, b, k] + w_acc * kr
                        ai[a, b, k] = yi[a, b, k] + w_acc * ki
                    else:
                        ar[a, b, k] = ar[a, b, k] + w_acc * kr
                        ai[a, b, k] = ai[a, b, k] + w_acc * ki
        for a in range(L):
            for k in range(C):
                kq = K0 * sP[a, k]
                kp = -K0 * sQ[a, k] + g1 * (sr[a, a, k] - 0.5)
                if write_next:
                    nQ[a, k] = yQ[a, k] + c_next * kq
                    nP[a, k] = yP[a, k] + c_next * kp
                if first:
                    aQ[a, k] = yQ[a, k] + w_acc * kq
                    aP[a, k] = yP[a, k] + w_acc * kp
                else:
                    aQ[a, k] = aQ[a, k] + w_acc * kq
                    aP[a, k] = aP[a, k] + w_acc * kp

    @njit(cache=True, nogil=True, boundscheck=False)
    def _advance_chunk(yr, yi, yQ, yP, n_steps, dt, g, K0, g1):
        """In place: ``n_steps`` RK4 steps of one chunk ``[L, L, C]`` / ``[L, C]``."""
        ar = np.empty_like(yr)
        ai = np.empty_like(yi)
        aQ = np.empty_like(yQ)
        aP = np.empty_like(yP)
        br = np.empty_like(yr)
        bi = np.empty_like(yi)
        bQ = np.empty_like(yQ)
        bP = np.empty_like(yP)
        cr = np.empty_like(yr)
        ci = np.empty_like(yi)
        cQ = np.empty_like(yQ)
        cP = np.empty_like(yP)
        h = 0.5 * dt
        w1 = dt / 6.0
        w2 = dt / 3.0
        for _ in range(n_steps):
            # stage 1: s = y -> b = y + h k1, acc a = y + dt/6 k1
            _stage(yr, yi, yQ, yP, yr, yi, yQ, yP, br, bi, bQ, bP, h, ar, ai, aQ, aP, w1, True, True, g, K0, g1)
            # stage 2: s = b -> c = y + h k2, acc += dt/3 k2
            _stage(br, bi, bQ, bP, yr, yi, yQ, yP, cr, ci, cQ, cP, h, ar, ai, aQ, aP, w2, False, True, g, K0, g1)
            # stage 3: s = c -> b = y + dt k3, acc += dt/3 k3
            _stage(cr, ci, cQ, cP, yr, yi, yQ, yP, br, bi, bQ, bP, dt, ar, ai, aQ, aP, w2, False, True, g, K0, g1)
            # stage 4: s = b -> acc += dt/6 k4; acc is the new state
            _stage(br, bi, bQ, bP, yr, yi, yQ, yP, cr, ci, cQ, cP, 0.0, ar, ai, aQ, aP, w1, False, False, g, K0, g1)
            yr[:] = ar
            yi[:] = ai
            yQ[:] = aQ
            yP[:] = aP

    @njit(cache=True, parallel=True)
    def _advance_all(re, im, Q, P, n_steps, dt, g, K0, g1):
        for c in prange(re.shape[0]):
            _advance_chunk(re[c], im[c], Q[c], P[c], n_steps, dt, g, K0, g1)


class NumbaStepper:
    """Holds a batch in the kernel's layout (``[chunks, L, L, CHUNK]``) across ``advance`` calls."""

    def __init__(self, rho: np.ndarray, Q: np.ndarray, P: np.ndarray, *, g: float, dt: float, K0: float,
                 eta: float, threads: int | None = None) -> None:
        self.batch_shape = rho.shape[:-2]
        L = rho.shape[-1]
        rho = rho.reshape(-1, L, L)
        B = rho.shape[0]
        self.B = B
        width = CHUNK if B >= CHUNK else B
        n_chunks = -(-B // width)
        pad = n_chunks * width - B

        def chunked(x: np.ndarray) -> np.ndarray:
            # [B, ...] -> [chunks, ..., width]; padding trajectories are zeros (a fixed point)
            x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)]) if pad else x
            x = x.reshape((n_chunks, width) + x.shape[1:])
            return np.moveaxis(x, 1, -1).copy()  # always a copy: never mutate the caller's arrays

        self.re = chunked(np.ascontiguousarray(rho.real, dtype=np.float64))
        self.im = chunked(np.ascontiguousarray(rho.imag, dtype=np.float64))
        self.Q = chunked(np.asarray(Q, dtype=np.float64).reshape(-1, L))
        self.P = chunked(np.asarray(P, dtype=np.float64).reshape(-1, L))
        self.g, self.dt, self.K0, self.g1 = float(g), float(dt), float(K0), float(eta) * float(g)
        self.threads = threads

    def advance(self, n_steps: int) -> None:
        if n_steps <= 0:
            return
        previous = numba.get_num_threads()
        if self.threads is not None:
            numba.set_num_threads(max(1, min(self.threads, numba.config.NUMBA_NUM_THREADS)))
        try:
            _advance_all(self.re, self.im, self.Q, self.P, int(n_steps), self.dt, self.g, self.K0, self.g1)
        finally:
            numba.set_num_threads(previous)

    def state(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        def unchunk(x: np.ndarray) -> np.ndarray:
            x = np.moveaxis(x, -1, 1)
            return x.reshape((-1,) + x.shape[2:])[: self.B]

        L = self.re.shape[1]
        rho = unchunk(self.re) + 1j * unchunk(self.im)
        return (rho.reshape(self.batch_shape + (L, L)),
                unchunk(self.Q).reshape(self.batch_shape + (L,)),
                unchunk(self.P).reshape(self.batch_shape + (L,)))
