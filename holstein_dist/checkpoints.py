"""The one owner of the surrogate checkpoint formats: what a file holds, where it is found, how it loads.

Two formats are read:

* **ours** (``format: holstein-dist/2``), written by training (``checkpoints/step-*.pt``, ``best.pt``) and by
  :func:`export_model` (a weights-only model file for sharing). Every file carries the model config, the
  nine normalization scales, the weights, and the *data signature* (ring length, snapshot interval and
  quench protocol of the training set), so a model can be checked against evaluation data without the
  training set still being where it was. Training checkpoints add optimizer, scheduler, RNG and
  curriculum state. Bytes and safety (atomic writes, ``weights_only`` loading, the embedded checksum)
  are ``hpc.checkpoint``'s job.
* **original** published models: a directory with ``model_kwargs.json`` and ``model_weights.pth``.

:func:`load_model` takes any of: one of our files, a run directory (its ``checkpoints/best.pt``, else the
newest ``step-*.pt``), or an original directory.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from holstein_dist.config import from_dict
from holstein_dist.model import ModelConfig, Surrogate, build_model, increment_factors, unwrap
from hpc import checkpoint as ckpt

FORMAT = "holstein-dist/2"
"""Value of the ``format`` key in our files; bump it when the payload layout changes."""
CHECKPOINT_DIR = "checkpoints"
"""Sub-directory of a run directory that holds its checkpoints."""
MODEL_KEYS = ("format", "model_config", "scales", "model", "data_signature")
"""Keys every file of ours has (training checkpoints add optimizer, scheduler, rng, config, step, ...)."""
OPTIONAL_MODEL_KEYS = ("increment_factor",)
"""Model keys a file may carry and exports keep (``increment_factor``: see :func:`scale_increments`)."""
TRAINING_KEYS = (*MODEL_KEYS, "optimizer", "scheduler", "step")
"""Keys a checkpoint needs to resume training."""

Kind = Literal["ours", "original"]


# --------------------------------------------------------------------------- writing


def data_signature(data_config: Any) -> dict[str, Any]:
    """The training set's facts a model depends on, from a dataset's ``DataConfig``."""
    return {
        "L": int(data_config.L),
        "snapshot_dt": float(data_config.snapshot_dt),
        "protocol": str(data_config.protocol),
        "g_i": float(data_config.g_i),
        "g_f": float(data_config.g_f),
    }


def model_payload(model: torch.nn.Module, signature: Mapping[str, Any]) -> dict[str, Any]:
    """The model part of every file of ours: format tag, config, scales, data signature, CPU weights."""
    core = unwrap(model)
    if not isinstance(core, Surrogate):
        raise TypeError(f"model_payload needs a SimpleCNN or PARC, got {type(core).__name__}")
    payload = {
        "format": FORMAT,
        "model_config": dataclasses.asdict(core.config),
        "scales": dict(core.scales),
        "data_signature": dict(signature),
        # Copies, so a checkpoint written in the background is not changed by the next optimizer step.
        "model": {k: v.detach().to("cpu", copy=True) for k, v in core.state_dict().items()},
    }
    factors = core.increment_factors
    if any(value != 1.0 for value in factors.values()):  # one number while every component has had the same
        payload["increment_factor"] = factors["rho"] if len(set(factors.values())) == 1 else dict(factors)
    return payload


def export_model(source: str | Path, out: str | Path) -> Path:
    """Write the model of ``source`` (run dir or checkpoint file of ours) as a weights-only file ``out``.

    The result holds only :data:`MODEL_KEYS` (a few hundred KB for the small models): the file to share or
    commit, loadable by :func:`load_model` and ``evaluate --checkpoint``.
    """
    _, path = resolve(Path(source))
    payload = read_payload(path)
    ckpt.atomic_save({key: payload[key] for key in (*MODEL_KEYS, *OPTIONAL_MODEL_KEYS) if key in payload}, out)
    return Path(out)


def average_models(sources: Sequence[str | Path], out: str | Path,
                   weights: Sequence[float] | None = None) -> Path:
    """Write the element-wise mean of the weights of ``sources`` (files or run dirs of ours) as model file ``out``;
    with ``weights``, the weighted mean (weights >= 0, one per source, normalized to sum 1).

    Checkpoint averaging (as in stochastic weight averaging): late checkpoints of one annealed run lie in one
    basin, and their mean is often a better and steadier model than any single one of them. With two sources and
    weights, weight-space interpolation between a model and its fine-tune (``init_from``), which also lie in one
    basin: a way to take part of what a fine-tune changed. Every source must hold the same architecture,
    normalization scales and data signature (else a one-line ValueError naming the first that differs); settings
    without weights (``model.WEIGHT_FREE_SETTINGS``, e.g. dropout) may differ and are taken from the first source,
    as are non-floating entries; the ``increment_factor`` record is kept where all sources share it.
    """
    if not sources:
        raise ValueError("no checkpoints to average; pass two or more step-*.pt files of one run")
    mix = _mixing_weights(weights, len(sources))
    payloads = [(Path(s), read_payload(resolve(Path(s))[1])) for s in sources]
    first_path, first = payloads[0]
    for path, payload in payloads[1:]:
        # Configs compare after defaults, so a file written before a new ModelConfig field still matches.
        differing = _config_of(first, first_path).weight_layout_differences(_config_of(payload, path))
        if differing:
            raise ValueError(f"{str(path)!r} has another model_config than {str(first_path)!r} "
                             f"(model.{', model.'.join(differing)} differ); average models of one architecture, "
                             "normalization and data only")
        for key in ("scales", "data_signature"):
            if payload[key] != first[key]:
                raise ValueError(f"{str(path)!r} has another {key} than {str(first_path)!r}; average checkpoints "
                                 "of one run (same model and data) only")
    averaged_weights = {}
    for name, tensor in first["model"].items():
        if tensor.is_floating_point() or tensor.is_complex():
            wide = torch.float64 if tensor.is_floating_point() else torch.complex128
            mean = sum(share * payload["model"][name].to(wide) for share, (_, payload) in zip(mix, payloads))
            averaged_weights[name] = mean.to(tensor.dtype)
        else:
            averaged_weights[name] = tensor.clone()
    averaged = {key: first[key] for key in MODEL_KEYS}
    averaged["model"] = averaged_weights
    records = [payload.get("increment_factor") for _, payload in payloads]
    if records[0] is not None and all(record == records[0] for record in records):
        averaged["increment_factor"] = records[0]
    ckpt.atomic_save(averaged, out)
    return Path(out)


def _mixing_weights(weights: Sequence[float] | None, n_sources: int) -> list[float]:
    """``weights`` normalized to sum 1 (equal shares when None), or a one-line ValueError naming the fault."""
    if weights is None:
        return [1.0 / n_sources] * n_sources
    if len(weights) != n_sources:
        raise ValueError(f"{len(weights)} weights for {n_sources} checkpoints; give one weight per checkpoint")
    if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weights {list(weights)} must be finite, >= 0 and not all 0 (e.g. --weights 0.5 0.5)")
    total = float(sum(weights))
    return [float(w) / total for w in weights]


def scale_increments(source: str | Path, factor: float | Mapping[str, float], out: str | Path,
                     symmetrize: bool = False) -> Path:
    """Write the model of ``source`` with every predicted increment multiplied by ``factor`` as model file ``out``
    (``symmetrize``: with group averaging switched on, ``ModelConfig.symmetrize``, before the scaling).

    To first order in the snapshot interval this rescales the time step of the learned flow map, i.e. the
    frequency of every oscillation it produces: the one-parameter rate calibration of ``results calibrate``
    (:meth:`Surrogate.scale_increments`). ``factor`` may also map state keys to their own factors (``{"Q": f,
    "P": f}`` scales the lattice's rate and leaves the electrons'). The file loads, evaluates and fine-tunes
    (``init_from``) like any other; ``increment_factor`` records the product of all factors applied: one number
    while every component has had the same, else one per component.
    """
    factors = increment_factors(factor)  # a bad factor is refused before anything is read or written
    kind, weights_path = resolve(Path(source))
    if kind == "original":
        raise ValueError(f"{str(source)!r} is an original-format model; calibrate models of ours (train one, or "
                         "fine-tune this one with init_from=... and calibrate the result)")
    payload = read_payload(weights_path)
    model = _model_from(payload, weights_path)
    if symmetrize:
        model.symmetrize()
    model.scale_increments(factors)
    ckpt.atomic_save(model_payload(model, payload["data_signature"]), out)
    return Path(out)


# --------------------------------------------------------------------------- finding


def find_in_run(run: Path) -> Path:
    """The file :func:`load_model` takes from a run directory: ``best.pt``, else the newest ``step-*.pt``."""
    directory = run / CHECKPOINT_DIR
    if not directory.is_dir():
        raise ValueError(
            f"directory {str(run)!r} has neither {CHECKPOINT_DIR}/ nor model_kwargs.json; pass a run "
            "directory, a checkpoint .pt file or an original-format model directory"
        )
    if (directory / ckpt.BEST_NAME).is_file():
        return directory / ckpt.BEST_NAME
    newest = ckpt.latest_checkpoint(directory)
    if newest is None:
        raise ValueError(f"{str(directory)!r} holds no {ckpt.BEST_NAME} or step-*.pt; train first or pass a "
                         "checkpoint file")
    return newest


def resolve(path: Path) -> tuple[Kind, Path]:
    """(format, file holding the weights) for anything :func:`load_model` accepts."""
    if path.is_dir():
        if (path / "model_kwargs.json").is_file():
            return "original", path / "model_weights.pth"
        return "ours", find_in_run(path)
    if path.is_file():
        return "ours", path
    raise ValueError(
        f"model path {str(path)!r} does not exist; pass a checkpoint .pt file, a run directory containing "
        f"{CHECKPOINT_DIR}/, or a directory with model_kwargs.json"
    )


# --------------------------------------------------------------------------- reading and checking


def read_payload(path: Path, required: tuple[str, ...] = MODEL_KEYS) -> dict[str, Any]:
    """A verified payload of ours with at least ``required``; anything else is a one-line CheckpointError."""
    payload = ckpt.load_checkpoint(path, required=("format",))
    if payload["format"] != FORMAT:
        raise ckpt.InvalidCheckpoint(
            f"{str(path)!r} has format {payload['format']!r}, expected {FORMAT!r}; for original reference "
            "weights pass the directory with model_kwargs.json, else retrain or use a fresh run_dir"
        )
    absent = [key for key in required if key not in payload]
    if absent:
        raise ckpt.InvalidCheckpoint(f"checkpoint {str(path)!r} lacks {absent}; it was written incompletely, "
                                     "use another one")
    return payload


def check_resumable(payload: Mapping[str, Any], path: Path, model: Surrogate) -> None:
    """Refuse a checkpoint of another format, model or normalization (one line, with the fix)."""
    if payload["format"] != FORMAT:
        raise ckpt.CheckpointError(f"{path} has format {payload['format']!r}, expected {FORMAT!r}; use a fresh run_dir")
    try:  # compared as configs, so a file predating a field gets its default
        same_model = _config_of(payload, path) == model.config
    except ValueError:
        same_model = False
    if not same_model:
        raise ckpt.CheckpointError(
            f"{path} holds a different model ({payload['model_config']}); use a fresh run_dir or the same model"
        )
    changed = [k for k, v in model.scales.items() if not math.isclose(v, payload["scales"].get(k, math.nan))]
    if changed:
        key = changed[0]
        raise ckpt.CheckpointError(
            f"{path} was trained on data with other normalization scales ({key}: {payload['scales'].get(key)} vs "
            f"{model.scales[key]}); use the same data or a fresh run_dir"
        )


def recorded_signature(path: Path) -> dict[str, Any]:
    """What a model file says about its training data (``L``, ``snapshot_dt``, ...), plus ``source``.

    Ours record the data signature themselves. Original directories record nothing but their name,
    which the reference spells ``<size>-quench_<gi>_<gf>-L_<L>``.
    """
    kind, weights = resolve(path)
    if kind == "original":
        match = re.search(r"(?:^|[-_])L_(\d+)(?:$|[-_])", path.resolve().name)
        return {"L": int(match.group(1)), "source": "directory name"} if match else {}
    return {**read_payload(weights)["data_signature"], "source": "checkpoint"}


def load_model(path: str | Path, device: str | torch.device = "cpu") -> Surrogate:
    """A model in eval mode from a file of ours, a run directory or an original directory (see module doc).

    Problems raise a one-line ValueError naming the file and the fix. Nothing is unpickled beyond tensors
    and plain containers, so a file from someone else cannot run code here.
    """
    kind, weights = resolve(Path(path))
    model = _load_original(Path(path)) if kind == "original" else _load_ours(weights)
    return model.to(device).eval()


def _load_ours(path: Path) -> Surrogate:
    return _model_from(read_payload(path), path)


def _config_of(payload: Mapping[str, Any], path: Path) -> ModelConfig:
    try:
        return from_dict(ModelConfig, payload["model_config"])
    except (ValueError, TypeError) as exc:
        raise ValueError(f"checkpoint {str(path)!r}: {exc}") from None


def _model_from(payload: Mapping[str, Any], path: Path) -> Surrogate:
    config = _config_of(payload, path)
    try:
        model = build_model(config, payload["scales"])
    except (ValueError, TypeError) as exc:
        raise ValueError(f"checkpoint {str(path)!r}: {exc}") from None
    load_state(model, payload["model"], path)
    model.increment_factors = increment_factors(payload.get("increment_factor", 1.0))  # a record: the weights have it
    return model


# --------------------------------------------------------------------------- original format


# Architecture switches of the reference code and the only values the model module implements.
_ORIGINAL_FIXED = {
    "use_residual_scalar": False,
    "act_func": "Tanh()",
    "use_layernorm": True,
    "dtype": "torch.float32",
}


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
    try:
        # map_location: the reference saved its weights from a CUDA device; we may have none.
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable or unsafe file gets the same one-line answer
        raise ValueError(
            f"cannot read {str(weights)!r} as a weights file ({type(exc).__name__}); restore the original "
            "model_weights.pth (only plain tensors are loaded)"
        ) from None
    load_state(model, state, weights)
    return model


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


def load_state(model: Surrogate, state: Any, source: Path) -> None:
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
