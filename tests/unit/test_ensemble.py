"""Ensemble directories: the manifest pins the recipe, members differ by seed, state follows the processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from holstein_dist import ensemble
from holstein_dist.train import load_train_config
from hpc.cli import UserError
from hpc.files import DirectoryLock

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "train" / "tiny.yaml"


def config(tmp_path: Path, *overrides: str):
    return load_train_config(TINY, [f"run_dir={tmp_path / 'ens'}", "ensemble.members=3", *overrides])


def test_members_differ_by_seed_and_directory_only(tmp_path):
    cfg = config(tmp_path, "seed=10")
    members = [ensemble.member_config(cfg, i) for i in range(3)]
    assert [m.seed for m in members] == [10, 11, 12]
    assert [Path(m.run_dir).name for m in members] == ["member-00", "member-01", "member-02"]
    assert all(m.ensemble.members == 1 for m in members)  # a member is a plain run
    assert {m.optim for m in members} == {cfg.optim} and {m.curriculum for m in members} == {cfg.curriculum}


def test_the_manifest_pins_size_seed_and_recipe(tmp_path):
    cfg = config(tmp_path)
    manifest = ensemble.open_ensemble(cfg)
    assert [m["state"] for m in manifest["members"]] == ["pending"] * 3
    assert (tmp_path / "ens" / "config.yaml").is_file()
    # Run-time settings may change between commands (another machine, more threads) ...
    faster = config(tmp_path, "threads=4", "num_workers=2", "max_steps=5")
    ensemble.open_ensemble(faster)
    # ... what the members learn may not.
    for overrides, needle in ((("optim.lr=0.5",), "differs from the one ensemble"),
                              (("ensemble.members=4",), "is an ensemble of 3 members, not 4"),
                              (("seed=1",), "was trained with seed 0, not 1")):
        other = config(tmp_path, *overrides)
        with pytest.raises(UserError, match=needle):
            ensemble.open_ensemble(other)
    saved = load_train_config(tmp_path / "ens" / "config.yaml", ["ensemble.member=2"])
    ensemble.open_ensemble(saved)  # the rerun hint's command is accepted


def test_a_running_member_whose_process_died_shows_as_stopped(tmp_path):
    cfg = config(tmp_path)
    root = tmp_path / "ens"
    ensemble.open_ensemble(cfg)
    ensemble.set_member_state(root, 0, "finished", step=30)
    ensemble.set_member_state(root, 1, "running", job="77_1")
    ensemble.set_member_state(root, 2, "failed", error="UserError: bad shard")
    with DirectoryLock(ensemble.member_dir(root, 1)):  # the trainer holds its run_dir's lock while it runs
        assert [m["state"] for m in ensemble.member_status(root)] == ["finished", "running", "failed"]
    states = [m["state"] for m in ensemble.member_status(root)]
    assert states == ["finished", "stopped", "failed"]  # the lock went with the process
    lines = "\n".join(ensemble.status_lines(root))
    assert "job 77_1" in lines and "UserError: bad shard" in lines
    assert f"--config {root / 'config.yaml'} ensemble.member=i   (i in [1, 2])" in lines
    assert json.loads((root / "ensemble.json").read_text())["members"][0]["step"] == 30


def test_evaluating_an_ensemble_with_an_untrained_member_names_the_command(tmp_path):
    cfg = config(tmp_path)
    ensemble.open_ensemble(cfg)
    with pytest.raises(UserError, match=r"member-00 .* has no checkpoint yet .* ensemble\.member=0"):
        ensemble.member_checkpoints(tmp_path / "ens")


@pytest.mark.parametrize("overrides, needle", [
    (("ensemble.members=0",), "ensemble.members is 0"),
    (("ensemble.member=3",), r"ensemble.member is 3; it must lie in 0..2"),
    (("ensemble.parallel=0",), "ensemble.parallel is 0"),
])
def test_bad_ensemble_settings_are_one_line_errors(tmp_path, overrides, needle):
    with pytest.raises(ValueError, match=needle):
        config(tmp_path, *overrides)


def test_status_cli_on_a_directory_without_manifest(tmp_path, capsys):
    assert ensemble.main(["status", str(tmp_path)]) == 2
    assert "cannot read the ensemble manifest" in capsys.readouterr().err


def test_submit_ensemble_needs_members(capsys):
    from hpc import submit

    assert submit.main(["ensemble", "--config", str(TINY)]) == 2
    assert "ensemble needs --members K with K >= 2" in capsys.readouterr().err
    assert submit.main(["train", "--config", str(TINY), "--members", "3"]) == 2
    assert "belong to the ensemble command" in capsys.readouterr().err


def test_a_member_trained_elsewhere_is_refused_and_left_alone(tiny_data, tmp_path, capsys):
    from holstein_dist import train

    root = tmp_path / "ens"
    argv = ["--config", str(TINY), f"data={tiny_data}", f"run_dir={root}", "ensemble.members=2", "ensemble.member=1"]
    with DirectoryLock(ensemble.member_dir(root, 1)):  # as a second process training member 1 would hold it
        assert train.main(argv) == 2
    assert "member-01 (run_dir) is in use by another process" in capsys.readouterr().err
    assert [m["state"] for m in ensemble.member_status(root)] == ["pending", "stopped"]  # not "failed"
