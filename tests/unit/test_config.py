"""The shared config loader: YAML + dotted overrides -> validated dataclass, one-line errors."""

from __future__ import annotations

import dataclasses
from typing import Literal

import pytest

from holstein_dist.config import ConfigError, load_config, parse_overrides


@dataclasses.dataclass(frozen=True)
class Inner:
    train: int = 1
    val: int = 0


@dataclasses.dataclass(frozen=True)
class Outer:
    L: int
    noise: float = 0.0
    kind: Literal["a", "b"] = "a"
    splits: Inner = dataclasses.field(default_factory=Inner)


def test_overrides_nest_and_parse_yaml_scalars():
    assert parse_overrides(["splits.train=8", "kind=b", "noise=0.5"]) == {
        "splits": {"train": 8}, "kind": "b", "noise": 0.5}


def test_file_plus_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("L: 16\nsplits: {train: 4, val: 2}\n")
    cfg = load_config(Outer, path, ["splits.val=3", "noise=1e-4"])
    assert cfg == Outer(L=16, noise=1e-4, splits=Inner(train=4, val=3))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["bogus=1"], "unknown config key 'bogus'"),
        (["splits.tran=1"], "unknown config key 'splits.tran'"),
        (["L=sixteen"], "'L' must be an integer"),
        (["noise=abc"], "'noise' must be a number"),
        (["kind=c"], "choose one of 'a', 'b'"),
        (["L"], "is not KEY=VALUE"),
        ([], "'L' is required"),
    ],
)
def test_bad_overrides_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Outer, None, ["L=16", *overrides] if overrides != [] else [])


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Outer, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("L: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Outer, bad)
