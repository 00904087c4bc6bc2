"""Neural surrogates of the Holstein chain: the standard residual CNN and PARC (SPEC section 4).

A state (``rho`` [B, L, L] complex, ``Q`` and ``P`` [B, L] real) travels through the networks as a
4-channel L x L image (``embed``/``unembed``). Each network is a small ResNet-v2 with circular padding,
wrapped by fixed scale buffers that bring inputs and outputs to order one.

Module and buffer names mirror the original reference code, so its pretrained state dicts load with
strict keys (``cnn.CNN.blocks.0.conv1.weight``, ``cnn.in_scale_rho``, ...). Our own checkpoints use the
same layout, which lets ``load_model`` serve both formats.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from holstein_dist.config import from_dict

FORMAT = "holstein-dist/1"
"""Value of the ``format`` key in our checkpoint files; bump it when the payload layout changes."""

SCALE_KEYS = ("rho", "Q", "P", "drho", "dQ", "dP", "delta_rho", "delta_Q", "delta_P")
"""The nine per-dataset scales: state, exact time derivative, one-snapshot increment."""

State = tuple[Tensor, Tensor, Tensor]


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

    def __post_init__(self) -> None:
        if self.kind not in ("simple", "parc"):
            raise ValueError(f"kind is {self.kind!r}; choose 'simple' or 'parc'")
        if self.channels < 1 or self.n_blocks < 1:
            raise ValueError(f"channels ({self.channels}) and n_blocks ({self.n_blocks}) must be >= 1")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size is {self.kernel_size}; use a positive odd number such as 3")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout is {self.dropout}; use a probability in [0, 1)")


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
        for name, s_i, s_o in zip(("rho", "Q", "P"), s_in, s_out, strict=True):
            self.register_buffer(f"in_scale_{name}", torch.tensor(1.0 / s_i, dtype=torch.float32))
            self.register_buffer(f"out_scale_{name}", torch.tensor(s_o, dtype=torch.float32))
        self.CNN = ResNetCNN(cfg, zero_output)

    def forward(self, rho: Tensor, Q: Tensor, P: Tensor) -> State:
        x = embed(rho * self.in_scale_rho, Q * self.in_scale_Q, P * self.in_scale_P)
        # Under bf16 autocast the convolutions return bfloat16; the state (and complex rho, which has
        # no bfloat16 dtype) stays in the input's precision so rounding does not accumulate in rollouts.
        out_rho, out_Q, out_P = unembed(self.CNN(x).to(x.dtype))
        return out_rho * self.out_scale_rho, out_Q * self.out_scale_Q, out_P * self.out_scale_P


# --------------------------------------------------------------------------- surrogates


class Surrogate(nn.Module, abc.ABC):
    """Common interface: ``forward`` for training, ``step``/``rollout`` for evaluation.

    Subclasses implement ``increment``; ``next = state + increment``.
    """

    def __init__(self, cfg: ModelConfig, scales: Mapping[str, float]) -> None:
        super().__init__()
        self.config = cfg
        self.scales = {key: float(scales[key]) for key in SCALE_KEYS}

    @abc.abstractmethod
    def increment(self, rho: Tensor, Q: Tensor, P: Tensor) -> tuple[State, State | None]:
        """(one-snapshot increment, differentiator output or None for a model without one)."""

    def forward(self, rho: Tensor, Q: Tensor, P: Tensor, return_derivative: bool = False) -> Any:
        """Differentiable one-step prediction; the derivative option lives on forward (not a separate
        method) so DDP, which only hooks ``forward``, still synchronizes gradients.

        Returns ``next_state``, or ``(next_state, derivative)`` when ``return_derivative`` (derivative
        is None for SimpleCNN).
        """
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

    def rollout(self, rho: Tensor, Q: Tensor, P: Tensor, n_steps: int) -> State:
        """Feed the model its own predictions n_steps times; each output is [B, n_steps+1, ...],
        index 0 being the (dtype-converted) input."""
        if n_steps < 0:
            raise ValueError(f"n_steps is {n_steps}; it must be >= 0")
        state = self._prepare(rho, Q, P)
        with self._grad_mode():
            # Preallocated outputs: stacking a list would briefly hold two copies of a long rollout.
            out = tuple(s.new_empty((s.shape[0], n_steps + 1, *s.shape[1:])) for s in state)
            for k in range(n_steps + 1):
                for buf, s in zip(out, state, strict=True):
                    buf[:, k] = s
                if k < n_steps:
                    state = self(*state)
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


def hermitian_traceless(x: Tensor) -> Tensor:
    """Orthogonal projection of a batch of square matrices [..., L, L] onto Hermitian matrices with zero trace."""
    h = 0.5 * (x + x.transpose(-2, -1).conj())
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


# --------------------------------------------------------------------------- checkpoints


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


def model_payload(model: nn.Module) -> dict[str, Any]:
    """The model part of a checkpoint: format tag, config, scales and CPU copies of the weights."""
    core = unwrap(model)
    if not isinstance(core, Surrogate):
        raise TypeError(f"model_payload needs a SimpleCNN or PARC, got {type(core).__name__}")
    return {
        "format": FORMAT,
        "model_config": dataclasses.asdict(core.config),
        "scales": dict(core.scales),
        # Copies, so a checkpoint written in the background is not changed by the next optimizer step.
        "model": {k: v.detach().to("cpu", copy=True) for k, v in core.state_dict().items()},
    }


def load_model(path: str | Path, device: str | torch.device = "cpu") -> Surrogate:
    """Load a model in eval mode from one of our checkpoint files, a run directory (its
    ``checkpoints/best.pt``, else the highest ``checkpoints/step-*.pt``), or an original-format
    directory (``model_kwargs.json`` + ``model_weights.pth``). Problems raise a one-line ValueError.

    Our checkpoint files are unpickled in full (they also carry optimizer and RNG state), so only
    load files this suite wrote.
    """
    path = Path(path)
    if path.is_dir():
        if (path / "model_kwargs.json").is_file():
            model = _load_original(path)
        else:
            model = _load_checkpoint_file(checkpoint_in_run(path))
    elif path.is_file():
        model = _load_checkpoint_file(path)
    else:
        raise ValueError(
            f"model path {str(path)!r} does not exist; pass a checkpoint .pt file, a run "
            "directory containing checkpoints/, or a directory with model_kwargs.json"
        )
    return model.to(device).eval()


def checkpoint_in_run(run: Path) -> Path:
    """The checkpoint ``load_model`` takes from a run directory: ``best.pt``, else the newest ``step-*.pt``."""
    ckpt_dir = run / "checkpoints"
    if not ckpt_dir.is_dir():
        raise ValueError(
            f"directory {str(run)!r} has neither checkpoints/ nor model_kwargs.json; pass a run "
            "directory, a checkpoint .pt file or an original-format model directory"
        )
    if (ckpt_dir / "best.pt").is_file():
        return ckpt_dir / "best.pt"
    steps = [(_step_number(p), p) for p in ckpt_dir.glob("step-*.pt")]
    if not steps:
        raise ValueError(f"{str(ckpt_dir)!r} holds no best.pt or step-*.pt; train first or pass a checkpoint file")
    return max(steps)[1]


def _step_number(path: Path) -> int:
    match = re.fullmatch(r"step-(\d+)\.pt", path.name)
    return int(match.group(1)) if match else -1


def _load_checkpoint_file(path: Path) -> Surrogate:
    payload = _torch_load(path, weights_only=False)
    found = payload.get("format") if isinstance(payload, dict) else None
    if found != FORMAT:
        raise ValueError(
            f"{str(path)!r} is not a holstein-dist checkpoint (format {found!r}, expected "
            f"{FORMAT!r}); for original reference weights pass the directory with model_kwargs.json"
        )
    absent = [key for key in ("model_config", "scales", "model") if key not in payload]
    if absent:
        raise ValueError(f"checkpoint {str(path)!r} lacks {absent}; it was written incompletely, use another one")
    try:
        model = build_model(from_dict(ModelConfig, payload["model_config"]), payload["scales"])
    except (ValueError, TypeError) as exc:
        raise ValueError(f"checkpoint {str(path)!r}: {exc}") from None
    _load_state(model, payload["model"], path)
    return model


def _load_original(directory: Path) -> Surrogate:
    weights = directory / "model_weights.pth"
    if not weights.is_file():
        raise ValueError(
            f"{str(directory)!r} has model_kwargs.json but no model_weights.pth; put the weights file next to it"
        )
    kwargs_path = directory / "model_kwargs.json"
    try:
        kwargs = json.loads(kwargs_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{str(kwargs_path)!r} is not valid JSON (line {exc.lineno}); restore the original file"
        ) from None
    cfg, scales = _original_config(kwargs, kwargs_path)
    try:
        model = build_model(cfg, scales)
    except ValueError as exc:
        raise ValueError(f"{str(kwargs_path)!r} data_scalars: {exc}") from None
    _load_state(model, _torch_load(weights, weights_only=True), weights)
    return model


def _torch_load(path: Path, weights_only: bool) -> Any:
    try:
        # map_location: the reference saved its weights from a CUDA device; we may have none.
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as exc:  # any unreadable file gets the same one-line answer
        raise ValueError(
            f"cannot read {str(path)!r} as a torch file ({type(exc).__name__}); pass a checkpoint .pt "
            "written by holstein-dist training or an original model directory"
        ) from None


# Architecture switches of the reference code and the only values this module implements.
_ORIGINAL_FIXED = {
    "use_residual_scalar": False,
    "act_func": "Tanh()",
    "use_layernorm": True,
    "dtype": "torch.float32",
}


def _original_config(kwargs: dict[str, Any], source: Path) -> tuple[ModelConfig, dict[str, float]]:
    """Translate the reference's model_kwargs.json into (ModelConfig, scales)."""
    required = ("channels", "n_blocks", "kernel_size", "dropout_p", "data_scalars")
    absent = [key for key in required if key not in kwargs]
    if absent:
        raise ValueError(f"{str(source)!r} lacks {absent}; it is not an original model_kwargs.json")
    for key, value in _ORIGINAL_FIXED.items():
        if kwargs.get(key, value) != value:
            raise ValueError(
                f"{str(source)!r} sets {key}={kwargs[key]!r}, but only {key}={value!r} is "
                "implemented here; this original model cannot be loaded"
            )
    try:
        cfg = ModelConfig(
            kind="simple" if kwargs.get("simple_cnn", False) else "parc",
            channels=int(kwargs["channels"]),
            n_blocks=int(kwargs["n_blocks"]),
            kernel_size=int(kwargs["kernel_size"]),
            dropout=float(kwargs["dropout_p"]),
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{str(source)!r}: {exc}") from None
    return cfg, dict(kwargs["data_scalars"])


def _load_state(model: Surrogate, state: Any, source: Path) -> None:
    """Strict load with every mismatch reported in one line instead of PyTorch's multi-line error."""
    if not isinstance(state, Mapping):
        raise ValueError(
            f"{str(source)!r} holds a {type(state).__name__}, not a state dict; pass the model's weights file"
        )
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {missing[0]!r})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]!r})")
    if mismatched:
        key = mismatched[0]
        problems.append(f"shape mismatch for {key!r}: file {tuple(state[key].shape)}, model {tuple(own[key].shape)}")
    if problems:
        raise ValueError(
            f"weights in {str(source)!r} do not fit the {type(model).__name__} built from its config: "
            f"{'; '.join(problems)}; pass weights written with the same model config"
        )
    model.load_state_dict(state, strict=True)
