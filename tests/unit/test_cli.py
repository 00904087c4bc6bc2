"""The one command-line dialect: flags = KEY=VALUE, one `error:` line and exit status 2 for every command."""

from __future__ import annotations

from pathlib import Path

import pytest

from holstein_dist import ensemble, evaluate, generate, results, train
from hpc import submit
from hpc.cli import UserError

ROOT = Path(__file__).resolve().parents[2]
TINY_TRAIN = ROOT / "configs" / "train" / "tiny.yaml"


def test_evaluate_flag_and_key_value_set_the_same_field(tmp_path: Path) -> None:
    out = str(tmp_path / "eval")
    by_flags = evaluate.parse_options(["--truth-only", "--data", "d", "--max-lag", "5", "--out", out,
                                       "--device", "cpu"])
    by_keys = evaluate.parse_options(["truth_only=true", "data=d", "max_lag=5", f"out={out}", "device=cpu"])
    assert by_flags == by_keys
    assert by_flags.data == Path("d") and by_flags.max_lag == 5


def test_evaluate_config_file_then_flags_then_overrides(tmp_path: Path) -> None:
    config = tmp_path / "eval.yaml"
    config.write_text(f"data: from_file\ntruth_only: true\nmax_lag: 3\nbatch_size: 4\nout: {tmp_path / 'o'}\n")
    opts = evaluate.parse_options(["--config", str(config), "--max-lag", "7", "batch_size=8"])
    assert (opts.data, opts.max_lag, opts.batch_size) == (Path("from_file"), 7, 8)


def test_train_flags_are_its_key_value_fields() -> None:
    args = train.parse_args(["--config", str(TINY_TRAIN), "--data", "d", "--run-dir", "r", "batch_size=2"])
    flags = {"data": "d", "run_dir": "r"}
    by_flags = train.load_train_config(args.config, args.overrides, flags)
    by_keys = train.load_train_config(TINY_TRAIN, ["data=d", "run_dir=r", "batch_size=2"])
    assert by_flags == by_keys and by_flags.run_dir == "r"


@pytest.mark.parametrize("main, argv", [
    (generate.main, ["--nope"]),
    (train.main, ["--config", str(TINY_TRAIN), "--bogus"]),
    (evaluate.main, ["--data"]),
    (submit.main, ["train"]),
])
def test_bad_command_line_is_one_error_line_with_status_2(main, argv, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "--help" in err, err


@pytest.mark.parametrize("main, argv", [
    (generate.main, ["--help"]), (train.main, ["--help"]), (evaluate.main, ["--help"]), (submit.main, ["--help"]),
    (ensemble.main, ["--help"]), (results.main, ["--help"]),
    *((results.main, [sub, "--help"]) for sub in ("table", "curve", "rollout-curve", "calibrate", "score",
                                                   "average", "ensemble")),
])
def test_every_help_text_prints(main, argv, capsys) -> None:
    """argparse %-formats help; a literal "%" in a field's text once made evaluate --help crash."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0 and "usage:" in capsys.readouterr().out


def test_config_error_is_the_user_error() -> None:
    from holstein_dist.config import ConfigError

    assert ConfigError is UserError and issubclass(UserError, ValueError)
