"""Neural surrogates of the Holstein chain: the standard residual CNN and PARC (docs/physics.md section 4).

A state (``rho`` [B, L, L] complex, ``Q`` and ``P`` [B, L] real) travels through the networks as a
4-channel L x L image (``embed``/``unembed``). Each network is a small ResNet-v2 with circular padding,
wrapped by fixed scale buffers that bring inputs and outputs to order one.

Module and buffer names mirror the original reference code, so its pretrained state dicts load with
strict keys (``cnn.CNN.blocks.0.conv1.weight``, ``cnn.in_scale_rho``, ...). Our own checkpoints use the
same layout; ``holstein_dist.checkpoints`` reads and writes both formats.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from holstein_dist.guards import Guard, hermitian_part
from holstein_dist.physics import STATE_KEYS
from holstein_dist.shards import SCALE_KEYS  # the dataset owns its nine normalization scales
from holstein_dist.symmetry import symmetrized

State = tuple[Tensor, Tensor, Tensor]
"""A batch of states (rho [B, L, L] complex, Q [B, L], P [B, L]) in ``physics.STATE_KEYS`` order."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of one surrogate (the nine data scales travel separately, with the data)."""

    kind: Literal["simple", "parc"]
    """``simple``: one CNN maps the state to its increment; ``parc``: differentiator + integrator CNNs."""
    channels: int
    """Hidden channels C of every CNN (paper: 16 for the tiny shallow-quench model, 128 for PARC)."""
    n_blocks: int
    """Residual blocks per CNN (paper: 1 tiny, 4 PARC)."""
    kernel_size: int = 3
    """Spatial kernel of every convolution except the 1x1 output conv; odd, so 'same' padding is centred."""
    dropout: float = 0.2
    """Channel-wise (Dropout2d) probability inside each residual block; inactive in eval mode."""
    constrain_rho: bool = False
    """Project every predicted rho increment onto Hermitian, trace-zero matrices, so a rollout keeps rho
    Hermitian with the particle number of its initial state by construction (a linear, differentiable
    projection; the published models have no such layer)."""
    symmetrize: bool = False
    """Average every increment over the ring's reflection and particle-hole symmetries
    (:mod:`holstein_dist.symmetry`), making the model exactly equivariant under them at 4x the network cost;
    no parameters, so it can be switched on for any trained model (``evaluate --symmetrize``)."""

    def weight_layout_differences(self, other: ModelConfig) -> list[str]:
        """The fields in which ``other`` differs, leaving out ``WEIGHT_FREE_SETTINGS``: empty where one set of
        weights serves both."""
        return [f.name for f in dataclasses.fields(self)
                if f.name not in WEIGHT_FREE_SETTINGS and getattr(self, f.name) != getattr(other, f.name)]

    @property
    def has_differentiator(self) -> bool:
        """PARC predicts the time derivative too, and training supervises it with the exact one."""
        return self.kind == "parc"

    def __post_init__(self) -> None:
        if self.kind not in ("simple", "parc"):
            raise ValueError(f"kind is {self.kind!r}; choose 'simple' or 'parc'")
        if self.channels < 1 or self.n_blocks < 1:
            raise ValueError(f"channels ({self.channels}) and n_blocks ({self.n_blocks}) must be >= 1")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size is {self.kernel_size}; use a positive odd number such as 3")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout is {self.dropout}; use a probability in [0, 1)")


WEIGHT_FREE_SETTINGS = ("symmetrize", "dropout")
"""ModelConfig fields that change no weight: a trained model's weights serve under any value of them, so
``init_from`` may change them and ``average`` mixes models that differ in them."""


# --------------------------------------------------------------------------- state <-> image


def embed(rho: Tensor, Q: Tensor, P: Tensor) -> Tensor:
    """State -> image [B, 4, L, L]: Re rho, Im rho, diag(Q), diag(P) (zeros off the diagonal)."""
    return torch.cat(
        [
            rho.real.unsqueeze(1),
            rho.imag.unsqueeze(1),
            torch.diag_embed(Q).unsqueeze(1),
            torch.diag_embed(P).unsqueeze(1),
        ],
        dim=1,
    )


def unembed(x: Tensor) -> State:
    """Image [B, 4, L, L] -> (complex rho, Q, P); off-diagonal entries of channels 2 and 3 are ignored."""
    rho = torch.complex(x[:, 0], x[:, 1])
    return rho, torch.diagonal(x[:, 2], dim1=-2, dim2=-1), torch.diagonal(x[:, 3], dim1=-2, dim2=-1)


# --------------------------------------------------------------------------- network body


class CircularConv2d(nn.Conv2d):
    """'same' convolution on a torus: the chain is a ring, so site L-1 neighbours site 0 in both rho indices.

    Same parameters (and state-dict keys) as ``nn.Conv2d(..., padding='same', padding_mode='circular')``
    and the same numbers, but the wrap-around is built with two ``torch.cat`` of edge slices: torch's
    circular ``F.pad`` fills a zero tensor and copies five slices (and as many back in the backward
    pass), which was ~15% of a medium-PARC training step on CPU.
    """

    def __init__(self, c_in: int, c_out: int, kernel_size: int) -> None:
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd for a 'same' circular convolution, got {kernel_size}")
        super().__init__(c_in, c_out, kernel_size, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(circular_pad(x, self.kernel_size[0] // 2), self.weight, self.bias)


def circular_pad(x: Tensor, p: int) -> Tensor:
    """Pad the last two dimensions by ``p`` with wrap-around (periodic) values."""
    if p == 0:
        return x
    x = torch.cat([x[..., -p:, :], x, x[..., :p, :]], dim=-2)
    return torch.cat([x[..., :, -p:], x, x[..., :, :p]], dim=-1)


def _circular_conv(c_in: int, c_out: int, kernel_size: int) -> nn.Conv2d:
    return CircularConv2d(c_in, c_out, kernel_size)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over channels at every pixel (not over space), so no statistic couples distant sites."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ResidualBlock(nn.Module):
    """Pre-activation block: ``x + conv2(dropout(tanh(LN2(conv1(tanh(LN1(x)))))))``."""

    def __init__(self, channels: int, kernel_size: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = ChannelLayerNorm(channels)
        self.conv1 = _circular_conv(channels, channels, kernel_size)
        self.ln2 = ChannelLayerNorm(channels)
        self.dropout = nn.Dropout2d(dropout)
        self.conv2 = _circular_conv(channels, channels, kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(torch.tanh(self.ln1(x)))
        return x + self.conv2(self.dropout(torch.tanh(self.ln2(h))))


class ResNetCNN(nn.Module):
    """input conv -> tanh -> residual blocks -> tanh -> 1x1 output conv, on 4-channel images."""

    def __init__(self, cfg: ModelConfig, zero_output: bool) -> None:
        super().__init__()
        self.input_conv = _circular_conv(4, cfg.channels, cfg.kernel_size)
        self.blocks = nn.ModuleList(
            ResidualBlock(cfg.channels, cfg.kernel_size, cfg.dropout) for _ in range(cfg.n_blocks)
        )
        self.output_conv = nn.Conv2d(cfg.channels, 4, 1)
        self._initialize(zero_output)

    def _initialize(self, zero_output: bool) -> None:
        gain = nn.init.calculate_gain("tanh")
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight, gain=gain)
                nn.init.zeros_(module.bias)
        if zero_output:
            # An increment network that starts at exactly zero makes the untrained model the identity
            # map, the safest start for a recurrent rollout.
            nn.init.zeros_(self.output_conv.weight)
            nn.init.zeros_(self.output_conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.tanh(self.input_conv(x))
        for block in self.blocks:
            x = block(x)
        return self.output_conv(torch.tanh(x))


class ScaledCNN(nn.Module):
    """A ResNetCNN between fixed scale buffers: (rho, Q, P) / s_in -> CNN -> * s_out per component.

    The buffers hold ``1/s_in`` and ``s_out`` (as the reference stores them) so its weights load as-is;
    buffers, not parameters, because the scales are data statistics the optimizer must not touch.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        s_in: tuple[float, float, float],
        s_out: tuple[float, float, float],
        zero_output: bool,
    ) -> None:
        super().__init__()
        for name, s_i, s_o in zip(STATE_KEYS, s_in, s_out, strict=True):
            self.register_buffer(f"in_scale_{name}", torch.tensor(1.0 / s_i, dtype=torch.float32))
            self.register_buffer(f"out_scale_{name}", torch.tensor(s_o, dtype=torch.float32))
        self.CNN = ResNetCNN(cfg, zero_output)

    def forward(self, rho: Tensor, Q: Tensor, P: Tensor) -> State:
        x = embed(rho * self.in_scale_rho, Q * self.in_scale_Q, P * self.in_scale_P)
        # Under bf16 autocast the convolutions return bfloat16; the state (and complex rho, which has
        # no bfloat16 dtype) stays in the input's precision so rounding does not accumulate in rollouts.
        out_rho, out_Q, out_P = unembed(self.CNN(x).to(x.dtype))
        return out_rho * self.out_scale_rho, out_Q * self.out_scale_Q, out_P * self.out_scale_P

    @torch.no_grad()
    def scale_output(self, factors: Mapping[str, float]) -> None:
        """Multiply each component's output by its factor (``factors``: state key -> factor; keys left out stay),
        through the output-scale buffers."""
        for name, factor in factors.items():
            getattr(self, f"out_scale_{name}").mul_(factor)


def increment_factors(factor: float | Mapping[str, float]) -> dict[str, float]:
    """Per-component increment factors (state key -> factor) from one number (every component) or a mapping
    (components left out: 1). Raises ValueError naming the bad entry: factors must be finite and positive."""
    if isinstance(factor, Mapping):
        unknown = sorted(set(factor) - set(STATE_KEYS))
        if unknown:
            raise ValueError(f"increment factors for {unknown}: the components are {', '.join(STATE_KEYS)}")
        factors = {key: float(factor.get(key, 1.0)) for key in STATE_KEYS}
    else:
        factors = dict.fromkeys(STATE_KEYS, float(factor))
    for key, value in factors.items():
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"increment factor {value} for {key} must be a positive number (1 leaves it unchanged)")
    return factors


# --------------------------------------------------------------------------- surrogates


class Surrogate(nn.Module, abc.ABC):
    """Common interface: ``forward`` for training, ``step``/``rollout`` for evaluation.

    Subclasses implement ``increment``; ``next = state + increment``.
    """

    def __init__(self, cfg: ModelConfig, scales: Mapping[str, float]) -> None:
        super().__init__()
        self.config = cfg
        self.scales = {key: float(scales[key]) for key in SCALE_KEYS}
        self.increment_factors = dict.fromkeys(STATE_KEYS, 1.0)
        """The product of every factor :meth:`scale_increments` applied (already in the weights): a record that
        files keep as ``increment_factor`` and fine-tunes (``init_from``) inherit."""

    @abc.abstractmethod
    def increment(self, rho: Tensor, Q: Tensor, P: Tensor) -> tuple[State, State | None]:
        """(one-snapshot increment, differentiator output or None for a model without one)."""

    @property
    @abc.abstractmethod
    def increment_head(self) -> ScaledCNN:
        """The network whose output is the one-snapshot increment."""

    def scale_increments(self, factor: float | Mapping[str, float]) -> None:
        """Multiply every predicted increment by ``factor`` (to first order: the learned map's time step), or each
        component's by its own (a mapping state key -> factor, e.g. ``{"Q": 0.95, "P": 0.95}``: the lattice's
        rate alone), keeping the ``delta_*`` scales in step with the head's output buffers."""
        factors = increment_factors(factor)
        self.increment_head.scale_output(factors)
        self.scales = {key: value * factors[key[len("delta_"):]] if key.startswith("delta_") else value
                       for key, value in self.scales.items()}
        self.increment_factors = {key: value * factors[key] for key, value in self.increment_factors.items()}

    def symmetrize(self) -> None:
        """Switch on group averaging (``ModelConfig.symmetrize``) for this trained model; weights unchanged."""
        self.config = dataclasses.replace(self.config, symmetrize=True)

    def forward(self, rho: Tensor, Q: Tensor, P: Tensor, return_derivative: bool = False) -> Any:
        """Differentiable one-step prediction; the derivative option lives on forward (not a separate
        method) so DDP, which only hooks ``forward``, still synchronizes gradients.

        Returns ``next_state``, or ``(next_state, derivative)`` when ``return_derivative`` (derivative
        is None for SimpleCNN).
        """
        if self.config.symmetrize:
            (d_rho, d_Q, d_P), derivative = symmetrized(self.increment, rho, Q, P)
        else:
            (d_rho, d_Q, d_P), derivative = self.increment(rho, Q, P)
        if self.config.constrain_rho:
            d_rho = hermitian_traceless(d_rho)
        nxt = (rho + d_rho, Q + d_Q, P + d_P)
        return (nxt, derivative) if return_derivative else nxt

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def step(self, rho: Tensor, Q: Tensor, P: Tensor) -> State:
        """Advance (rho [B,L,L], Q [B,L], P [B,L]) by one snapshot interval, in the model's dtype."""
        state = self._prepare(rho, Q, P)
        with self._grad_mode():
            return self(*state)

    def rollout(self, rho: Tensor, Q: Tensor, P: Tensor, n_steps: int, guard: Guard | None = None) -> State:
        """Feed the model its own predictions n_steps times; each output is [B, n_steps+1, ...],
        index 0 being the (dtype-converted) input. ``guard``: what to restore after every step
        (:class:`holstein_dist.guards.Guard`), a rollout-time guard (not trained with)."""
        if n_steps < 0:
            raise ValueError(f"n_steps is {n_steps}; it must be >= 0")
        state = self._prepare(rho, Q, P)
        with self._grad_mode():
            restore = guard.start(*state) if guard is not None else None
            # Preallocated outputs: stacking a list would briefly hold two copies of a long rollout.
            out = tuple(s.new_empty((s.shape[0], n_steps + 1, *s.shape[1:])) for s in state)
            for k in range(n_steps + 1):
                for buf, s in zip(out, state, strict=True):
                    buf[:, k] = s
                if k < n_steps:
                    state = self(*state)
                    if restore is not None:
                        state = restore(*state)
        return out

    def _grad_mode(self) -> contextlib.AbstractContextManager:
        # Evaluation never needs autograd; a training-mode model keeps the graph (and any outer context).
        return contextlib.nullcontext() if self.training else torch.inference_mode()

    def _prepare(self, rho: Tensor, Q: Tensor, P: Tensor) -> State:
        rho, Q, P = torch.as_tensor(rho), torch.as_tensor(Q), torch.as_tensor(P)
        if rho.ndim != 3 or rho.shape[1] != rho.shape[2] or Q.shape != rho.shape[:2] or P.shape != Q.shape:
            raise ValueError(
                f"expected rho [B, L, L] and Q, P [B, L]; got rho {tuple(rho.shape)}, Q {tuple(Q.shape)}, "
                f"P {tuple(P.shape)} (add a leading batch axis for a single state)"
            )
        real = self.dtype
        cplx = torch.promote_types(real, torch.complex64)
        return rho.to(self.device, cplx), Q.to(self.device, real), P.to(self.device, real)


class SimpleCNN(Surrogate):
    """Standard CNN: ``next = state + CNN(state)`` (in = state scales, out = increment scales)."""

    def __init__(self, cfg: ModelConfig, scales: Mapping[str, float]) -> None:
        super().__init__(cfg, scales)
        s = self.scales
        self.cnn = ScaledCNN(
            cfg, (s["rho"], s["Q"], s["P"]), (s["delta_rho"], s["delta_Q"], s["delta_P"]), zero_output=True
        )

    def increment(self, rho: Tensor, Q: Tensor, P: Tensor) -> tuple[State, State | None]:
        return self.cnn(rho, Q, P), None

    @property
    def increment_head(self) -> ScaledCNN:
        return self.cnn


class PARC(Surrogate):
    """PARC: differentiator D (state -> time derivative), integrator I (derivative alone -> increment);
    ``next = state + I(D(state))``. D's output is exposed so training can supervise it."""

    def __init__(self, cfg: ModelConfig, scales: Mapping[str, float]) -> None:
        super().__init__(cfg, scales)
        s = self.scales
        state, deriv = (s["rho"], s["Q"], s["P"]), (s["drho"], s["dQ"], s["dP"])
        self.differentiator = ScaledCNN(cfg, state, deriv, zero_output=False)
        self.integrator = ScaledCNN(cfg, deriv, (s["delta_rho"], s["delta_Q"], s["delta_P"]), zero_output=True)

    def increment(self, rho: Tensor, Q: Tensor, P: Tensor) -> tuple[State, State | None]:
        derivative = self.differentiator(rho, Q, P)
        return self.integrator(*derivative), derivative

    @property
    def increment_head(self) -> ScaledCNN:
        return self.integrator  # the differentiator predicts derivatives, not increments


def hermitian_traceless(x: Tensor) -> Tensor:
    """Orthogonal projection of a batch of square matrices [..., L, L] onto Hermitian matrices with zero trace."""
    h = hermitian_part(x)
    mean_diag = torch.diagonal(h, dim1=-2, dim2=-1).mean(-1, keepdim=True)
    return h - torch.diag_embed(mean_diag.expand(h.shape[:-1]))


def build_model(cfg: ModelConfig, scales: Mapping[str, float]) -> Surrogate:
    """A freshly initialized SimpleCNN or PARC with the nine data scales (keys: ``SCALE_KEYS``)."""
    missing = [key for key in SCALE_KEYS if key not in scales]
    extra = sorted(set(scales) - set(SCALE_KEYS))
    if missing or extra:
        raise ValueError(
            f"scales must have exactly the keys {', '.join(SCALE_KEYS)}; missing {missing}, unexpected {extra}"
        )
    bad = {key: scales[key] for key in SCALE_KEYS if not (math.isfinite(scales[key]) and scales[key] > 0)}
    if bad:
        raise ValueError(f"scales must be finite and positive (max |x| of the training data); got {bad}")
    return SimpleCNN(cfg, scales) if cfg.kind == "simple" else PARC(cfg, scales)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under DDP (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    while True:
        for attr in ("module", "_orig_mod"):
            inner = getattr(model, attr, None)
            if isinstance(inner, nn.Module):
                model = inner
                break
        else:
            return model
