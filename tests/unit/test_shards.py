"""Shard schema, atomic writer, manifest, scales and reader, on small synthetic datasets (no integration)."""

from __future__ import annotations

import json
import multiprocessing
import pickle
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import holstein_dist
from holstein_dist import physics
from holstein_dist import shards as sh
from holstein_dist.config import from_dict
from hpc.files import file_sha256, is_temp_name, publish

L, T = 4, 20  # T intervals: 21 snapshots = 2 time chunks of 17 (exercises the partial last block)


def small_config(**changes) -> sh.DataConfig:
    data = dict(protocol="custom", L=L, g_i=0.0, g_f=0.7, save_interval=2, n_steps=T,
                splits={"train": 5, "val": 0, "test": 3}, seed=1, shard_size=2)
    data.update(changes)
    return from_dict(sh.DataConfig, data)


def encoded_state(traj: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A state whose every value tells (trajectory, time) apart, exactly representable in float32."""
    k = traj[:, None].astype(np.float64)
    site = np.arange(L, dtype=np.float64)[None, :]
    Q = 1000.0 * k + 10.0 * t + site
    P = -Q - 0.5
    rho = (Q[:, :, None] + 0.25 * site[:, None, :]) + 1j * (t - site[:, None, :])
    return rho, Q, P


def write_shard(root, cfg, spec) -> dict:
    with sh.ShardWriter(root, cfg, spec) as w:
        for s in range(cfg.n_snapshots):
            w.snapshot(s, *encoded_state(spec.traj_ids, s))
            if s < cfg.n_steps:
                w.mid(s, *encoded_state(spec.traj_ids, s + 0.5))
        tmp, sha, size = w.seal(t0=0.01 * spec.traj_ids)
    publish(tmp, root / spec.file)
    return dict(sha256=sha, size=size, scales=dict(w.scales.values))


def make_dataset(root, cfg) -> sh.Manifest:
    manifest = sh.Manifest.new(cfg)
    for spec in sh.plan_shards(cfg):
        manifest.mark_complete(spec.file, worker="test", **write_shard(root, cfg, spec))
    manifest.save(root)
    return manifest


@pytest.fixture
def dataset(tmp_path):
    make_dataset(tmp_path, small_config())
    return sh.open_dataset(tmp_path)


# ----------------------------------------------------------------------------- plan and config


def test_plan_runs_global_indices_over_splits_in_order():
    cfg = small_config(splits={"train": 5, "val": 1, "test": 3})
    plan = sh.plan_shards(cfg)
    assert [(s.split, s.index, s.start, s.stop, s.traj_start) for s in plan] == [
        ("train", 0, 0, 2, 0), ("train", 1, 2, 4, 2), ("train", 2, 4, 5, 4),
        ("val", 0, 0, 1, 5), ("test", 0, 0, 2, 6), ("test", 1, 2, 3, 8)]
    assert plan[-1].file == "shards/test-00001.h5"
    assert np.concatenate([s.traj_ids for s in plan]).tolist() == list(range(9))


def test_config_differences_name_each_field():
    a, b = sh.flat_params(small_config()), sh.flat_params(small_config(L=6))
    assert a["splits.train"] == 5 and a["K0"] == physics.K0_DEFAULT
    old = holstein_dist.config.to_dict(small_config())
    new = holstein_dist.config.to_dict(small_config(L=6, splits={"train": 5, "val": 2, "test": 3}))
    assert sh.config_differences(old, new) == ["L: 4 != 6", "splits.val: 0 != 2"]
    assert sh.config_differences(old, old) == []
    assert a != b


# ----------------------------------------------------------------------------- writer


def test_writer_layout_values_and_attrs(tmp_path):
    cfg = small_config()
    spec = sh.plan_shards(cfg)[1]
    info = write_shard(tmp_path, cfg, spec)
    path = tmp_path / spec.file
    assert info["size"] == path.stat().st_size and info["sha256"] == file_sha256(path)
    assert [p.name for p in path.parent.iterdir()] == [path.name], "no temporary file may remain"
    with h5py.File(path) as f:
        shapes = {k: (f[k].shape, f[k].dtype) for k in f}
        assert shapes == {
            "rho": ((2, T + 1, L, L), np.complex64), "Q": ((2, T + 1, L), np.float32), "P": ((2, T + 1, L), np.float32),
            "rho_mid": ((2, T, L, L), np.complex64), "Q_mid": ((2, T, L), np.float32),
            "P_mid": ((2, T, L), np.float32), "t0": ((2,), np.float64), "traj_id": ((2,), np.int64),
            "energy": ((2, T + 1), np.float64)}
        assert f["rho"].chunks == (1, sh.TIME_CHUNK, L, L) and f["Q_mid"].chunks == (1, sh.TIME_CHUNK, L)
        for s in (0, 16, 17, T):  # both sides of a chunk boundary and the partial last block
            rho, Q, P = encoded_state(spec.traj_ids, s)
            np.testing.assert_array_equal(f["rho"][:, s], rho.astype(np.complex64))
            np.testing.assert_array_equal(f["P"][:, s], P.astype(np.float32))
            np.testing.assert_allclose(f["energy"][:, s], physics.energy(rho, Q, P, g=cfg.g_f) / L, rtol=1e-15)
        np.testing.assert_array_equal(f["Q_mid"][:, T - 1], encoded_state(spec.traj_ids, T - 0.5)[1])
        assert f["traj_id"][:].tolist() == [2, 3] and f["t0"][:].tolist() == [0.02, 0.03]
        attrs = dict(f.attrs)
    for key, value in sh.flat_params(cfg).items():
        assert attrs[key] == value, key
    assert attrs["software_version"] == holstein_dist.__version__ and attrs["created"].startswith("20")
    assert (attrs["split"], attrs["shard_index"], attrs["traj_start"]) == ("train", 1, 2)
    assert {k: attrs[f"scale_{k}"] for k in sh.SCALE_KEYS} == info["scales"]


def test_double_precision_storage(tmp_path):
    cfg = small_config(precision="double")
    write_shard(tmp_path, cfg, sh.plan_shards(cfg)[0])
    with h5py.File(tmp_path / sh.plan_shards(cfg)[0].file) as f:
        assert f["rho"].dtype == np.complex128 and f["Q"].dtype == np.float64 and f["P_mid"].dtype == np.float64


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_interrupted_writer_leaves_no_file(tmp_path, error):
    cfg = small_config()
    spec = sh.plan_shards(cfg)[0]
    with pytest.raises(error), sh.ShardWriter(tmp_path, cfg, spec) as w:
        w.snapshot(0, *encoded_state(spec.traj_ids, 0))
        assert w.tmp.exists() and is_temp_name(w.tmp)
        raise error()
    assert list((tmp_path / sh.SHARD_DIR).iterdir()) == []


def test_writer_refuses_gaps_and_early_seal(tmp_path):
    cfg = small_config()
    spec = sh.plan_shards(cfg)[0]
    with sh.ShardWriter(tmp_path, cfg, spec) as w:
        with pytest.raises(ValueError, match="out of order"):
            w.snapshot(1, *encoded_state(spec.traj_ids, 1))
        w.snapshot(0, *encoded_state(spec.traj_ids, 0))
        with pytest.raises(ValueError, match="sealed before"):
            w.seal(t0=np.zeros(2))
        w.discard()
    assert list((tmp_path / sh.SHARD_DIR).iterdir()) == []


# ----------------------------------------------------------------------------- scales and manifest


def test_scales_equal_brute_force_over_train(dataset):
    train = dataset.split("train")
    data = train.read_many(range(train.n_trajectories), keys=physics.STATE_KEYS + sh.MID_KEYS)
    up = {k: v.astype(np.result_type(v, np.float64)) for k, v in data.items()}
    derivative = physics.derivatives(up["rho_mid"], up["Q_mid"], up["P_mid"], g=dataset.g_f)
    expected = {}
    for key, d in zip(physics.STATE_KEYS, derivative):
        expected[key] = np.abs(up[key]).max()
        expected[f"d{key}"] = np.abs(d).max()
        expected[f"delta_{key}"] = np.abs(np.diff(up[key], axis=1)).max()
    assert dataset.scales == {k: float(v) for k, v in expected.items()}
    # the test split holds larger values (higher trajectory ids): it must not leak into the scales
    assert np.abs(dataset.split("test").read(0)["Q"]).max() > dataset.scales["Q"]


def test_manifest_tracks_completion(tmp_path):
    cfg = small_config()
    manifest = sh.Manifest.new(cfg)
    assert manifest.complete is False and manifest.scales is None
    assert [e.status for e in manifest.shards] == ["pending"] * 5
    specs = sh.plan_shards(cfg)
    for spec in specs[:2]:
        manifest.mark_complete(spec.file, worker="w", **write_shard(tmp_path, cfg, spec))
    assert manifest.scales is None, "scales need every train shard"
    manifest.mark_complete(specs[2].file, worker="w", **write_shard(tmp_path, cfg, specs[2]))
    assert manifest.scales == sh.reduce_scales(e.scales for e in manifest.shards[:3])
    assert manifest.complete is False
    manifest.save(tmp_path)
    assert sh.Manifest.load(tmp_path) == manifest
    assert json.loads((tmp_path / sh.MANIFEST).read_text()) == json.loads(json.dumps(manifest.to_dict()))
    assert [p.name for p in tmp_path.iterdir() if is_temp_name(p)] == []
    manifest.mark_pending(manifest.shards[0].file)
    assert manifest.shards[0].status == "pending" and "sha256" not in manifest.shards[0].to_dict()


@pytest.mark.parametrize("content, match", [
    (None, "has no manifest.json"),
    ("{not json", "is not valid JSON"),
    ('{"format": "other"}', "is not a holstein-dist-shards manifest"),
    ('{"format": "holstein-dist-shards", "schema_version": 99}', "schema version 99"),
])
def test_bad_manifest_is_one_clear_line(tmp_path, content, match):
    if content is not None:
        (tmp_path / sh.MANIFEST).write_text(content)
    with pytest.raises(ValueError, match=match) as info:
        sh.open_dataset(tmp_path)
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- reader


def test_reader_properties(dataset):
    assert dataset.L == L and dataset.n_snapshots == T + 1 and dataset.g_f == 0.7
    assert dataset.snapshot_dt == pytest.approx(0.02) and dataset.splits == ["train", "test"]
    train = dataset.split("train")
    assert train.shard_sizes == [2, 2, 1] and train.n_trajectories == 5 and len(train) == 5
    assert [p.name for p in train.shard_paths] == ["train-00000.h5", "train-00001.h5", "train-00002.h5"]
    assert train.locate(0)[1] == 0 and train.locate(3) == (train.shard_paths[1], 1)
    assert train.locate(4) == (train.shard_paths[2], 0)
    assert isinstance(dataset.config, sh.DataConfig) and dataset.manifest.complete


def test_read_window_and_keys(dataset):
    test = dataset.split("test")  # global trajectories 5, 6, 7
    out = test.read(2, 3, 8, keys=("rho", "Q", "P_mid", "t0", "traj_id", "energy"))
    rho, Q, _ = encoded_state(np.array([7]), 3)
    np.testing.assert_array_equal(out["rho"][0], rho[0].astype(np.complex64))
    np.testing.assert_array_equal(out["Q"][:, 0], 7000.0 + 10.0 * np.arange(3, 8))
    np.testing.assert_array_equal(out["P_mid"][:, 0], -(7000.0 + 10.0 * np.arange(3.5, 8.5)) - 0.5)
    assert out["traj_id"] == 7 and out["t0"] == pytest.approx(0.07) and out["energy"].shape == (5,)
    assert set(test.read(0)) == {"rho", "Q", "P"} and test.read(0)["rho"].shape == (T + 1, L, L)
    assert test.read(0, 15, T + 1, keys=["Q_mid"])["Q_mid"].shape == (T - 15, L), "mid stop clipped to T"


def test_content_sha256_names_the_values_not_the_files(tmp_path):
    make_dataset(tmp_path / "a", small_config())
    time.sleep(1.1)  # the shards' creation-time attribute differs: the files' bytes do
    make_dataset(tmp_path / "b", small_config())
    a, b = sh.open_dataset(tmp_path / "a"), sh.open_dataset(tmp_path / "b")
    assert a.split("test").shard_paths[0].read_bytes() != b.split("test").shard_paths[0].read_bytes()
    assert a.split("test").content_sha256() == b.split("test").content_sha256()
    assert a.split("test").content_sha256() != a.split("train").content_sha256()
    b.split("test").close()
    with h5py.File(b.split("test").shard_paths[-1], "r+") as f:  # one value of one trajectory changed
        f["P"][0, 3, 2] += 1.0
    assert sh.open_dataset(tmp_path / "b").split("test").content_sha256() != a.split("test").content_sha256()


def test_read_many_matches_read_in_any_order(dataset):
    train = dataset.split("train")
    order = [4, 0, 3, 0, 1]  # across shards, unsorted, with a duplicate
    many = train.read_many(order, 2, 19, keys=("rho", "Q_mid", "traj_id"))
    assert many["rho"].shape == (5, 17, L, L) and many["traj_id"].tolist() == order
    for row, i in enumerate(order):
        one = train.read(i, 2, 19, keys=("rho", "Q_mid"))
        np.testing.assert_array_equal(many["rho"][row], one["rho"])
        np.testing.assert_array_equal(many["Q_mid"][row], one["Q_mid"])


def test_reader_errors_name_the_problem(dataset):
    with pytest.raises(ValueError, match="no split 'val'; available: train, test"):
        dataset.split("val")
    with pytest.raises(ValueError, match="no split 'training'"):
        dataset.split("training")
    train = dataset.split("train")
    with pytest.raises(ValueError, match="unknown key 'rhoo'"):
        train.read(0, keys=("rhoo",))
    with pytest.raises(ValueError, match=r"snapshot range \[5, 5\)"):
        train.read(0, 5, 5)
    with pytest.raises(ValueError, match="outside"):
        train.read(0, 0, T + 2)
    with pytest.raises(IndexError, match="out of range"):
        train.locate(5)


def test_open_dataset_detects_missing_incomplete_and_changed(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        sh.open_dataset(tmp_path / "nope")
    manifest = make_dataset(tmp_path, small_config())
    path = tmp_path / manifest.shards[1].file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different content: only the sha256 sees it
    path.write_bytes(bytes(data))
    sh.open_dataset(tmp_path)
    with pytest.raises(ValueError, match="differs from the manifest"):
        sh.open_dataset(tmp_path, verify=True)
    path.write_bytes(bytes(data[:-10]))
    with pytest.raises(ValueError, match="re-run the generate command"):
        sh.open_dataset(tmp_path)
    path.unlink()
    with pytest.raises(ValueError, match="is missing"):
        sh.open_dataset(tmp_path)
    manifest.mark_pending(manifest.shards[1].file)
    manifest.save(tmp_path)
    with pytest.raises(ValueError, match="incomplete \\(4 of 5 shards done\\)"):
        sh.open_dataset(tmp_path)


def _read_in_child(split: sh.Split, conn) -> None:
    conn.send(split.read(3, 0, 5, keys=("Q",))["Q"])
    conn.close()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_reader_in_child_processes(dataset, method):
    """A split used in the parent keeps working in forked (own handles) and spawned (pickled) children."""
    train = dataset.split("train")
    before = train.read(3, 0, 5, keys=("Q",))["Q"]
    ctx = multiprocessing.get_context(method)
    parent_end, child_end = ctx.Pipe()
    child = ctx.Process(target=_read_in_child, args=(train, child_end))
    child.start()
    got = parent_end.recv()
    child.join(30)
    assert child.exitcode == 0
    np.testing.assert_array_equal(got, before)
    np.testing.assert_array_equal(train.read(3, 0, 5, keys=("Q",))["Q"], before)
    assert pickle.loads(pickle.dumps(train))._handles == {}


def test_virtual_split_file_stitches_shards(tmp_path, monkeypatch):
    cfg = small_config()
    manifest = make_dataset(tmp_path, cfg)
    vds = sh.write_virtual_split(tmp_path, manifest, "train")
    monkeypatch.chdir(tmp_path.parent)  # sources are relative to the file, not the working directory
    ds = sh.open_dataset(tmp_path)
    train = ds.split("train")
    with h5py.File(vds) as f:
        assert f["rho"].shape == (5, T + 1, L, L) and f.attrs["split"] == "train"
        for key in ("rho", "Q_mid", "energy", "traj_id"):
            np.testing.assert_array_equal(f[key][:], train.read_many(range(5), keys=(key,))[key])


def _flip_a_byte_in_every_chunk(path, key: str) -> int:
    """Flip one bit in the middle of each stored chunk of dataset ``key`` (same size: sizes still match)."""
    with h5py.File(path, "r") as f:
        ds = f[key]
        chunks = [ds.id.get_chunk_info(i) for i in range(ds.id.get_num_chunks())]
    with open(path, "r+b") as handle:
        for chunk in chunks:
            handle.seek(chunk.byte_offset + chunk.size // 2)
            byte = handle.read(1)
            handle.seek(-1, 1)
            handle.write(bytes([byte[0] ^ 0x01]))
    return len(chunks)


def test_a_flipped_byte_in_a_shard_is_caught_on_read_by_every_reader(tiny_data, tmp_path, capsys):
    """Same-size corruption: the size check passes, HDF5's Fletcher32 check stops train and evaluate."""
    import shutil

    from holstein_dist import evaluate, train

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    ds = sh.open_dataset(data)
    for split in ds.splits:
        for path in ds.split(split).shard_paths:
            assert _flip_a_byte_in_every_chunk(path, "Q") >= 1
    ds = sh.open_dataset(data)  # sizes unchanged: opening still succeeds
    with pytest.raises(sh.CorruptShard) as info:
        ds.split("test").read(0)
    message = str(info.value)
    path = ds.split("test").shard_paths[0]
    assert str(path) in message and "re-run the generate command" in message and "\n" not in message
    root = Path(__file__).resolve().parents[2]
    argv = ["--config", str(root / "configs/train/tiny.yaml"), f"data={data}", f"run_dir={tmp_path / 'run'}",
            "max_steps=2"]
    assert train.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: shard ") and "is corrupt" in err and err.count("\n") == 1, err
    assert evaluate.main(["--truth-only", "--data", str(data), "--out", str(tmp_path / "ev")]) == 2
    err = capsys.readouterr().err
    assert "is corrupt" in err and err.count("\n") == 1, err
