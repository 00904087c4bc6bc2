"""Curriculum positions and the learning-rate schedule derived from the stage list; shipped configs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from holstein_dist.config import ConfigError, load_config
from holstein_dist.curriculum import Curriculum, Stage
from holstein_dist.model import SCALE_KEYS, build_model
from holstein_dist.shards import DataConfig
from holstein_dist.train import load_train_config

ROOT = Path(__file__).resolve().parents[2]

# Two stages with different epoch multipliers: stage 0 = 2 epochs x 10 steps, stage 1 = 3 epochs x 20 steps.
CUR = Curriculum(
    stages=(Stage(2, 1, 0.0, 1), Stage(3, 4, 1e-2, 2)), batches_per_epoch=10, warmup_steps=4, lr_floor=0.01
)


def test_lengths_and_positions_at_boundaries():
    assert CUR.stage_starts == (0, 20)
    assert CUR.total_steps == 20 + 60
    assert CUR.total_epochs == 5
    first = CUR.position(0)
    assert (first.stage, first.epoch, first.epoch_in_stage, first.step_in_epoch, first.step_in_stage) == (0, 0, 0, 0, 0)
    last_of_epoch = CUR.position(9)
    assert (last_of_epoch.epoch, last_of_epoch.step_in_epoch) == (0, 9)
    assert CUR.position(10).epoch == 1 and CUR.position(10).step_in_epoch == 0
    stage1 = CUR.position(20)
    assert (stage1.stage, stage1.epoch, stage1.epoch_in_stage, stage1.step_in_epoch) == (1, 2, 0, 0)
    # Stage 1 epochs are 20 steps long (multiplier 2).
    assert CUR.position(39).epoch == 2 and CUR.position(40).epoch == 3
    end = CUR.position(79)
    assert (end.stage, end.epoch, end.epoch_in_stage, end.step_in_epoch, end.step_in_stage) == (1, 4, 2, 19, 59)
    with pytest.raises(ValueError, match="outside the curriculum"):
        CUR.position(80)


def test_warmup_starts_at_floor_and_ends_at_peak():
    assert CUR.lr_factor(0) == pytest.approx(0.01)
    assert CUR.lr_factor(2) == pytest.approx(0.01 + 0.99 * 2 / 4)
    assert CUR.lr_factor(4) == pytest.approx(1.0)  # warm-up over: the cosine starts at the peak
    assert CUR.lr_factor(3) < CUR.lr_factor(4)


def test_cosine_decays_to_floor_and_restarts_at_each_stage():
    # Stage 0: cosine over steps 4..19 (16 steps); its midpoint is halfway between peak and floor.
    assert CUR.lr_factor(4 + 8) == pytest.approx(0.01 + 0.99 * 0.5)
    assert CUR.lr_factor(19) == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 15 / 16)))
    decay = [CUR.lr_factor(s) for s in range(4, 20)]
    assert all(a > b for a, b in zip(decay, decay[1:]))
    # Restart: the first step of stage 1 is back at the floor and warms up to the peak again.
    assert CUR.lr_factor(20) == pytest.approx(0.01)
    assert CUR.lr_factor(24) == pytest.approx(1.0)
    assert CUR.lr_factor(79) < 0.02
    factors = [CUR.lr_factor(s) for s in range(CUR.total_steps + 5)]
    assert min(factors) == pytest.approx(0.01) and max(factors) == pytest.approx(1.0)
    assert CUR.lr_factor(CUR.total_steps + 3) == pytest.approx(0.01)


def test_zero_warmup_starts_at_peak():
    cur = Curriculum(stages=(Stage(1, 1, 0.0),), batches_per_epoch=8, warmup_steps=0, lr_floor=0.0)
    assert cur.lr_factor(0) == 1.0
    assert cur.lr_factor(4) == pytest.approx(0.5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"stages": ()}, "empty"),
        ({"stages": (Stage(1, 1, 0.0),), "warmup_steps": 10, "batches_per_epoch": 10}, "warmup_steps"),
        ({"stages": (Stage(1, 1, 0.0),), "lr_floor": 1.5}, "lr_floor"),
        ({"stages": (Stage(1, 1, 0.0),), "early_fraction": -0.1}, "early_fraction"),
        ({"stages": (Stage(1, 1, 0.0),), "early_fraction": 0.1}, "set curriculum.early_window"),
    ],
)
def test_invalid_curricula_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Curriculum(**kwargs)


def test_invalid_stage_is_rejected():
    with pytest.raises(ValueError, match="n_step"):
        Stage(epochs=1, n_step=0, noise=0.0)
    with pytest.raises(ValueError, match="noise"):
        Stage(epochs=1, n_step=1, noise=-1e-3)


def test_deep_quench_config_is_the_paper_recipe():
    cfg = load_train_config(ROOT / "configs/train/deep_quench.yaml")
    stages = [(s.epochs, s.n_step, s.noise) for s in cfg.curriculum.stages]
    assert stages == [
        (6, 1, 0.0), (6, 1, 2e-3), (3, 2, 4e-3), (3, 2, 6e-3), (3, 4, 8e-3), (3, 4, 1e-2),
        (3, 8, 1.2e-2), (3, 8, 1.4e-2), (3, 8, 1.6e-2), (3, 8, 1.8e-2), (25, 16, 2e-2),
    ]
    assert [s.epoch_multiplier for s in cfg.curriculum.stages] == [4, 4, 4, 4, 2, 2, 1, 1, 1, 1, 1]
    assert cfg.curriculum.batches_per_epoch == 8192 and cfg.curriculum.warmup_steps == 500
    assert cfg.curriculum.lr_floor == 0.01
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.grad_clip, cfg.batch_size) == (1e-4, 1e-5, 1.0, 32)
    assert cfg.model.dropout == 0.2
    assert _n_params(cfg.model) == 2_375_944


def test_shallow_quench_config_and_tiny_model():
    cfg = load_train_config(ROOT / "configs/train/shallow_quench.yaml")
    assert [(s.epochs, s.n_step, s.noise) for s in cfg.curriculum.stages] == [(20, 1, 2e-2), (40, 8, 2e-2)]
    assert cfg.model.kind == "simple" and _n_params(cfg.model) == 5_364


def test_every_shipped_train_config_loads_with_each_model():
    for path in sorted((ROOT / "configs/train").glob("*.yaml")):
        for model in ("tiny", "small", "medium", "large"):
            cfg = load_train_config(path, [f"model={model}", "data=/somewhere"])
            assert cfg.model.channels > 0 and cfg.curriculum.total_steps > 0


def test_every_experiment_config_loads_and_starts_from_a_committed_model():
    """An experiment's rerun from nothing reads its YAML files with today's loaders; a schema change that breaks
    one, or an init_from naming a committed model that is gone, would surface only hours into a rerun."""
    paths = sorted((ROOT / "experiments").rglob("*.yaml"))
    assert len(paths) > 20
    for path in paths:
        text = path.read_text()
        if "curriculum:" not in text:
            assert load_config(DataConfig, path).n_snapshots > 0, path
            continue
        cfg = load_train_config(path, ["data=/somewhere", "run_dir=/somewhere"])
        assert cfg.curriculum.total_steps > 0, path
        if cfg.init_from and cfg.init_from.startswith("experiments/"):
            assert (ROOT / cfg.init_from).is_file(), f"{path}: init_from {cfg.init_from} is not committed"


def test_model_override_by_name_and_field():
    cfg = load_train_config(ROOT / "configs/train/tiny.yaml", ["model=medium", "batch_size=2"])
    assert (cfg.model.kind, cfg.model.channels, cfg.batch_size) == ("parc", 128, 2)
    cfg = load_train_config(ROOT / "configs/train/tiny.yaml", ["model.channels=8"])
    assert (cfg.model.kind, cfg.model.channels) == ("simple", 8)
    with pytest.raises(ConfigError, match="model 'huge'"):
        load_train_config(ROOT / "configs/train/tiny.yaml", ["model=huge"])


def _n_params(model_cfg) -> int:
    model = build_model(model_cfg, dict.fromkeys(SCALE_KEYS, 1.0))
    return sum(p.numel() for p in model.parameters())
