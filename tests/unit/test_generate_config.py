"""Data configs, their overrides and the generate CLI's input errors (no trajectories integrated)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from holstein_dist import generate
from holstein_dist.config import ConfigError, load_config
from holstein_dist.shards import DataConfig, Splits, plan_shards

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "data"
TINY = CONFIGS / "tiny.yaml"


def test_every_data_config_loads():
    names = {p.name for p in CONFIGS.glob("*.yaml")}
    assert names >= {"deep_L16_finite_size_trap.yaml", "deep_L32.yaml", "shallow_L16.yaml", "shallow_L32.yaml",
                     "tiny.yaml"}
    for path in CONFIGS.glob("*.yaml"):
        cfg = load_config(DataConfig, path)
        assert cfg.precision == "single" and cfg.noise == 1e-4 and cfg.dt == 0.01, path.name


def test_paper_protocols_match_spec():
    deep = load_config(DataConfig, CONFIGS / "deep_L32.yaml")
    assert (deep.protocol, deep.L, deep.g_i, deep.g_f) == ("deep", 32, 0.0, 1.0)
    assert (deep.transient_steps, deep.save_interval, deep.n_steps, deep.max_phase) == (6400, 256, 1000, 255)
    assert deep.splits == Splits(train=1228, val=32, test=256)
    assert deep.snapshot_dt == pytest.approx(2.56) and deep.n_snapshots == 1001
    assert deep.trajectory_steps(0) == 262_400  # docs/physics.md section 2: 44 s per trajectory for the C++ reference
    for name, L in (("shallow_L32.yaml", 32), ("shallow_L16.yaml", 16)):
        shallow = load_config(DataConfig, CONFIGS / name)
        assert (shallow.protocol, shallow.L, shallow.g_i, shallow.g_f) == ("shallow", L, 0.5, 0.8)
        assert (shallow.transient_steps, shallow.save_interval, shallow.n_steps, shallow.max_phase) == (0, 64, 1200, 63)
        assert shallow.splits == Splits(train=64, val=4, test=64)


def test_overrides_change_fields():
    cfg = load_config(DataConfig, TINY, ["splits.train=8", "precision=double", "L=32", "g_f=1.5"])
    assert cfg.splits == Splits(train=8, val=2, test=2)
    assert (cfg.precision, cfg.L, cfg.g_f) == ("double", 32, 1.5)


@pytest.mark.parametrize("override, message", [
    ("L=15", "L must be even and >= 4"),
    ("L=2", "L must be even and >= 4"),
    ("L=abc", "config key 'L' must be an integer"),
    ("L=16.5", "config key 'L' must be an integer"),
    ("Lx=16", "unknown config key 'Lx'"),
    ("splits.trian=3", "trian'; valid keys: test, train, val"),
    ("splits.val=-1", "splits.val must be >= 0"),
    ("splits.train8", "is not KEY=VALUE"),
    ("save_interval=63", "save_interval must be even"),
    ("n_steps=0", "n_steps must be >= 1"),
    ("shard_size=0", "shard_size must be >= 1"),
    ("transient_steps=-5", "transient_steps must be >= 0"),
    ("max_phase=-1", "max_phase must be >= 0"),
    ("seed=-3", "seed must be >= 0"),
    ("dt=0", "dt must be a finite number > 0"),
    ("noise=-0.001", "noise must be a finite number >= 0"),
    ("precision=half", "choose one of 'single', 'double'"),
    ("protocol=medium", "choose one of 'deep', 'shallow', 'custom'"),
])
def test_bad_override_is_one_clear_line(override, message, tmp_path, capsys):
    with pytest.raises(ConfigError, match=message):
        load_config(DataConfig, TINY, [override])
    out = tmp_path / "out"
    assert generate.main(["--config", str(TINY), "--out", str(out), "--backend", "serial", override]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message.split("'")[0] in err
    assert not out.exists(), "a rejected run must not create anything"


def test_all_splits_empty_is_refused():
    with pytest.raises(ConfigError, match="splits are all 0"):
        load_config(DataConfig, TINY, ["splits.train=0", "splits.val=0", "splits.test=0"])


@pytest.mark.parametrize("argv, message", [
    (["--config", "configs/data/nope.yaml"], "does not exist"),
    (["--config", str(TINY), "--backend", "serial", "--dask-slurm"], "need --backend dask"),
    (["--config", str(TINY), "--dask-slurm", "--dask-scheduler-file", "x.json"], "exclude each other"),
    (["--config", str(TINY), "--workers", "0"], "--workers must be >= 1"),
    (["--config", str(TINY), "--dask-scheduler-file", "/nonexistent/sched.json"], "does not exist"),
])
def test_bad_command_lines(argv, message, capsys):
    assert generate.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_yaml_errors_are_reported(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("L: [16\n")
    assert generate.main(["--config", str(bad)]) == 2
    assert "is not valid YAML" in capsys.readouterr().err
    missing = tmp_path / "missing.yaml"
    missing.write_text("protocol: deep\nL: 16\n")
    assert generate.main(["--config", str(missing)]) == 2
    assert "is required" in capsys.readouterr().err


def test_trajectory_depends_only_on_seed_and_index():
    base = load_config(DataConfig, TINY)
    other = load_config(DataConfig, TINY, ["splits.train=100", "shard_size=7", "n_steps=3"])
    a, b = generate.initial_conditions(base, 5), generate.initial_conditions(other, 5)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    c = generate.initial_conditions(base, 6)
    assert not np.array_equal(a[1], c[1]), "neighbouring trajectories must get different noise"
    reseeded = generate.initial_conditions(load_config(DataConfig, TINY, ["seed=8"]), 5)
    assert not np.array_equal(a[1], reseeded[1])
    # the phase is drawn after the noise: a different max_phase leaves the noise untouched
    wider = generate.initial_conditions(load_config(DataConfig, TINY, ["max_phase=1000"]), 5)
    np.testing.assert_array_equal(a[1], wider[1])
    phases = [generate.initial_conditions(base, k)[3] for k in range(40)]
    assert 0 <= min(phases) and max(phases) <= base.max_phase and len(set(phases)) > 10


def test_tasks_cover_every_trajectory_once():
    cfg = load_config(DataConfig, TINY, ["splits.train=7", "shard_size=3"])
    ids = np.concatenate([s.traj_ids for s in plan_shards(cfg)])
    assert ids.tolist() == list(range(cfg.splits.total))
    assert {s.n for s in plan_shards(cfg)} == {1, 2, 3}
