"""Rollout windows over real (tiny) shards, the epoch sampler, and the seeded input noise."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from holstein_dist import physics
from holstein_dist.data import (
    EpochSampler,
    RolloutWindows,
    input_noise,
    make_loader,
    open_data,
    validation_indices,
)

ROOT = Path(__file__).resolve().parents[2]




def test_windows_match_the_shards(tiny_data):
    data = open_data(tiny_data)
    windows = RolloutWindows(data, "train", n_step=3)
    n_traj, T1 = data.split("train").n_trajectories, data.n_snapshots
    assert len(windows) == n_traj * (T1 - 3)
    index = len(windows) - 5
    traj, start = windows.window(index)
    assert (traj, start) == divmod(index, T1 - 3)
    item = windows[index]
    assert item["rho"].shape == (4, data.L, data.L) and item["rho"].dtype == np.complex64
    assert item["Q"].shape == (4, data.L) and item["dQ"].shape == (3, data.L)
    assert item["drho"].shape == (3, data.L, data.L)
    path, local = data.split("train").locate(traj)
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(item["rho"], f["rho"][local, start : start + 4])
        np.testing.assert_array_equal(item["P"], f["P"][local, start : start + 4])
        mid = [f[k][local, start : start + 3] for k in ("rho_mid", "Q_mid", "P_mid")]
    for got, want in zip((item["drho"], item["dQ"], item["dP"]), physics.derivatives(*mid, g=data.g_f)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_derivative_labels_sit_at_the_interval_midpoints(tiny_data):
    """The label of step k is the derivative half-way between snapshots k and k+1: it matches the central
    difference (x_{k+1} - x_k) / dt far better than the derivative at the neighbouring interval does."""
    data = open_data(tiny_data)
    item = RolloutWindows(data, "train", n_step=4)[7]
    central = (item["Q"][1:] - item["Q"][:-1]) / data.snapshot_dt
    aligned = np.abs(item["dQ"] - central).max()
    shifted = np.abs(item["dQ"][1:] - central[:-1]).max()
    assert aligned < 0.05 * np.abs(central).max()
    assert aligned < 0.2 * shifted


def test_no_window_longer_than_the_trajectories(tiny_data):
    data = open_data(tiny_data)
    with pytest.raises(ValueError, match="lower n_step"):
        RolloutWindows(data, "train", n_step=data.n_snapshots)


def test_missing_data_directory_is_a_one_line_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist; generate one") as info:
        open_data(tmp_path / "nope")
    assert "\n" not in str(info.value)


def test_epoch_sampler_is_seeded_sliceable_and_equal_per_rank():
    full = list(EpochSampler(1000, batch_size=4, batches=10, seed=3))
    assert len(full) == 40 and full == list(EpochSampler(1000, 4, 10, seed=3))
    resumed = EpochSampler(1000, 4, 10, seed=3, start_batch=6)
    assert list(resumed) == full[24:] and list(resumed.positions()) == list(range(24, 40))
    assert list(EpochSampler(1000, 4, 10, seed=3, start_batch=2, stop_batch=5)) == full[8:20]
    other_epoch = EpochSampler(1000, 4, 10, seed=3)
    other_epoch.set_epoch(1)
    assert list(other_epoch) != full
    ranks = [list(EpochSampler(1000, 4, 10, seed=3, rank=r)) for r in range(3)]
    assert all(len(r) == 40 for r in ranks) and ranks[0] != ranks[1]


def test_early_windows_take_their_fraction_and_leave_uniform_draws_unchanged():
    uniform = list(EpochSampler(1000, 4, 10, seed=3))
    assert list(EpochSampler(1000, 4, 10, seed=3, starts=100, early_fraction=0.0, early_window=5)) == uniform
    draws = np.array(list(EpochSampler(1000, 64, 100, seed=3, starts=100, early_fraction=0.25, early_window=5)))
    early = draws % 100 < 5
    # 25 % forced early plus the uniform draws' own 5 % of the remaining 75 %.
    assert early.mean() == pytest.approx(0.25 + 0.75 * 0.05, abs=0.01)
    assert set(draws[early] // 100) == set(range(10))  # every trajectory's start is drawn
    resumed = EpochSampler(1000, 64, 100, seed=3, start_batch=40, starts=100, early_fraction=0.25, early_window=5)
    assert list(resumed) == draws[40 * 64 :].tolist()
    with pytest.raises(ValueError, match="windows per trajectory"):
        EpochSampler(1000, 4, 10, seed=3, early_fraction=0.1, early_window=5)


def test_input_noise_is_a_function_of_its_coordinates():
    batch = {"rho": torch.zeros(8, 3, 6, 6, dtype=torch.complex64), "Q": torch.zeros(8, 3, 6)}
    whole = input_noise(batch, 0.5, seed=1, rank=0, epoch=2, first_position=16)
    halves = [input_noise({k: v[i : i + 4] for k, v in batch.items()}, 0.5, 1, 0, 2, 16 + i) for i in (0, 4)]
    for part, w in zip(zip(*halves), whole):
        torch.testing.assert_close(torch.cat(part), w, rtol=0, atol=0)
    assert whole[0].shape == (8, 6, 6) and whole[0].is_complex() and whole[1].shape == (8, 6)
    other_rank = input_noise(batch, 0.5, 1, 1, 2, 16)
    other_epoch = input_noise(batch, 0.5, 1, 0, 3, 16)
    assert not torch.equal(whole[1], other_rank[1]) and not torch.equal(whole[1], other_epoch[1])
    big = input_noise({"rho": torch.zeros(64, 1, 16, 16, dtype=torch.complex64), "Q": torch.zeros(64, 1, 16)},
                      2e-2, 0, 0, 0, 0)
    # Complex entries have total variance std^2 (each part std^2 / 2), like torch.randn_like on complex.
    assert big[0].real.std().item() == pytest.approx(2e-2 / np.sqrt(2), rel=0.05)
    assert big[0].abs().square().mean().sqrt().item() == pytest.approx(2e-2, rel=0.05)
    assert big[2].std().item() == pytest.approx(2e-2, rel=0.1)


@pytest.mark.parametrize("preload_gib", [0.0, 1.0])
def test_worker_processes_read_the_same_batches(tiny_data, preload_gib):
    """h5py handles are opened inside each forked worker, a preloaded split is inherited by it: parallel loading
    returns the serial batches."""
    windows = RolloutWindows(open_data(tiny_data), "train", n_step=2, preload_gib=preload_gib)
    serial = list(make_loader(windows, EpochSampler(len(windows), 4, 3, seed=0), 4, num_workers=0))
    # Touch the files in the parent first, so a handle exists that the children must not reuse.
    windows[0]
    parallel = list(make_loader(windows, EpochSampler(len(windows), 4, 3, seed=0), 4, num_workers=2))
    assert len(serial) == len(parallel) == 3
    for a, b in zip(serial, parallel):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key])


@pytest.mark.parametrize("derivatives", [True, False])
def test_preloaded_windows_are_the_windows_read_from_the_files(tiny_data, tmp_path, derivatives):
    """A preloaded split gives every window exactly as the per-window HDF5 read does, labels included, and
    then reads nothing from disk: it still answers with the dataset moved away."""
    data = open_data(tiny_data)
    from_files = RolloutWindows(data, "train", n_step=3, derivatives=derivatives)
    preloaded = RolloutWindows(data, "train", n_step=3, derivatives=derivatives, preload_gib=1.0)
    assert preloaded.preload and not from_files.preload
    expected = [from_files[i] for i in range(len(from_files))]
    data.close()
    moved = tmp_path / "moved"
    Path(tiny_data).rename(moved)
    try:
        for i, want in enumerate(expected):
            got = preloaded[i]
            assert got.keys() == want.keys()
            for key in want:
                assert got[key].dtype == want[key].dtype
                np.testing.assert_array_equal(got[key], want[key])
    finally:
        moved.rename(tiny_data)


def test_preload_only_below_its_budget_and_never_through_a_pipe(tiny_data):
    import pickle

    data = open_data(tiny_data)
    split_bytes = data.split("train").nbytes(("rho", "Q", "P"))
    assert split_bytes > 0
    assert not RolloutWindows(data, "train", n_step=2, preload_gib=0.99 * split_bytes / 2**30,
                              derivatives=False).preload
    windows = RolloutWindows(data, "train", n_step=2, preload_gib=1.01 * split_bytes / 2**30, derivatives=False)
    assert windows.preload and windows._memory is not None  # loaded by the constructor, before any fork
    # A spawned DataLoader worker receives the dataset pickled: without the arrays, it loads its own.
    assert pickle.loads(pickle.dumps(windows))._memory is None
    # Another n_step over the same split shares the arrays instead of loading a second copy.
    longer = RolloutWindows(data, "train", n_step=4, derivatives=False, memory=windows.memory)
    assert longer.memory is windows.memory
    from_files = RolloutWindows(data, "train", n_step=4, derivatives=False)
    np.testing.assert_array_equal(longer[3]["rho"], from_files[3]["rho"])


def test_works_with_distributed_sampler(tiny_data):
    windows = RolloutWindows(open_data(tiny_data), "val", n_step=1, derivatives=False)
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(windows, num_replicas=2, rank=rank, shuffle=True, seed=0, drop_last=True)
        sampler.set_epoch(1)
        loader = DataLoader(windows, batch_size=4, sampler=sampler, drop_last=True)
        batches = list(loader)
        assert len(batches) == len(windows) // 2 // 4
        seen.append(set(sampler))
    assert not seen[0] & seen[1]


def test_validation_indices_spread_over_the_split():
    assert list(validation_indices(10, 0)) == list(range(10))
    picked = validation_indices(100, 5)
    assert list(picked) == [0, 25, 50, 74, 99]
