"""The training loss, the unrolled forward, and short real runs of the trainer on the tiny data set."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from holstein_dist import train
from holstein_dist.data import open_data
from holstein_dist.metrics import RMSE_COMPONENTS
from holstein_dist.model import SCALE_KEYS, ModelConfig, build_model
from hpc import checkpoint as ckpt
from hpc import dist

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "configs/train/tiny.yaml")




def run_tiny(data: Path, run_dir: Path, *overrides: str) -> None:
    """configs/train/tiny.yaml in this process (threads=1 as configured; the test process's setting is restored)."""
    threads = torch.get_num_threads()
    try:
        assert train.main(["--config", TINY, f"data={data}", f"run_dir={run_dir}", *overrides]) == 0
    finally:
        torch.set_num_threads(threads)


def scalars(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


# --------------------------------------------------------------------------- loss


def _random_state(B: int, L: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    rho = torch.complex(torch.randn(B, L, L, generator=gen), torch.randn(B, L, L, generator=gen))
    return rho, torch.randn(B, L, generator=gen), torch.randn(B, L, generator=gen)


def _window_batch(B: int, L: int, n: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    snaps = [_random_state(B, L, gen) for _ in range(n + 1)]
    derivs = [_random_state(B, L, gen) for _ in range(n)]
    batch = {k: torch.stack([s[i] for s in snaps], 1) for i, k in enumerate(("rho", "Q", "P"))}
    batch.update({k: torch.stack([s[i] for s in derivs], 1) for i, k in enumerate(("drho", "dQ", "dP"))})
    return batch


def test_rms_terms_match_a_naive_formula():
    gen = torch.Generator().manual_seed(0)
    pred, truth = _random_state(3, 6, gen), _random_state(3, 6, gen)
    got = train.rms_terms(pred, truth).numpy()
    d = (pred[0] - truth[0]).numpy()
    eye = np.eye(6, dtype=bool)
    want = [
        np.sqrt(np.mean(np.abs(d[:, eye]) ** 2)),
        np.sqrt(np.mean(np.abs(d[:, ~eye]) ** 2)),
        np.sqrt(np.mean((pred[1] - truth[1]).numpy() ** 2)),
        np.sqrt(np.mean((pred[2] - truth[2]).numpy() ** 2)),
    ]
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_rollout_loss_is_one_rms_over_all_steps_plus_derivative_terms():
    """The original recipe: one RMS per component over [batch, n_step, ...], not a sum of per-step RMS."""
    gen = torch.Generator().manual_seed(1)
    B, L, n = 2, 4, 3
    batch = _window_batch(B, L, n, gen)
    snaps = [tuple(batch[k][:, i] for k in ("rho", "Q", "P")) for i in range(n + 1)]
    derivs = [tuple(batch[k][:, i] for k in ("drho", "dQ", "dP")) for i in range(n)]
    preds = [_random_state(B, L, gen) for _ in range(n)]
    dpreds = [_random_state(B, L, gen) for _ in range(n)]
    total, state_terms, deriv_terms = train.rollout_loss(preds, dpreds, batch)
    def stacked(states):
        return tuple(torch.cat([s[i] for s in states]) for i in range(3))

    want_state = train.rms_terms(stacked(preds), stacked(snaps[1:]))
    want_deriv = train.rms_terms(stacked(dpreds), stacked(derivs))
    # Does not grow with the unroll length: the mean of per-step squares, not their sum.
    per_step = torch.stack([train.rms_terms(preds[k], snaps[k + 1]) for k in range(n)])
    torch.testing.assert_close(want_state, per_step.square().mean(0).sqrt())
    torch.testing.assert_close(state_terms, want_state)
    torch.testing.assert_close(deriv_terms, want_deriv)
    torch.testing.assert_close(total, want_state.sum() + want_deriv.sum())
    total_simple, _, none = train.rollout_loss(preds, None, batch)
    assert none is None
    torch.testing.assert_close(total_simple, want_state.sum())


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    """Recomputing each unrolled step in backward (with its dropout masks) changes nothing numerically."""
    scales = dict.fromkeys(SCALE_KEYS, 1.0)
    gen = torch.Generator().manual_seed(2)
    rho, Q, P = _random_state(2, 8, gen)
    results = []
    for flag in (False, True):
        torch.manual_seed(0)
        model = build_model(ModelConfig("parc", 8, 1), scales)
        torch.manual_seed(5)
        states, derivs = train.Rollout(model, grad_checkpoint=flag)(rho, Q, P, n_step=3)
        loss = sum(s[0].abs().square().sum() + s[1].sum() + d[2].square().sum() for s, d in zip(states, derivs))
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_carry_noise_shifts_every_target_state_and_nothing_else():
    gen = torch.Generator().manual_seed(3)
    batch = _window_batch(2, 4, 3, gen)
    noise = _random_state(2, 4, gen)
    out = train.carry_noise(batch, noise, 0.25)
    for key, n in zip(("rho", "Q", "P"), noise):
        torch.testing.assert_close(out[key][:, 0], batch[key][:, 0])  # the input snapshot: noised elsewhere
        for k in range(1, 4):
            torch.testing.assert_close(out[key][:, k], batch[key][:, k] + 0.25 * n)
    for key in ("drho", "dQ", "dP"):
        assert out[key] is batch[key]


@pytest.mark.parametrize("carry, radius", [(0.0, 1 / (1 + 0.3**2)), (1.0, 1.0)])
def test_uncarried_input_noise_fits_a_friction_into_a_conservative_map(carry, radius):
    """Why noise_carry exists: the least-squares one-step map of a rotation (a conservative system) fitted
    on inputs with noise of std 0.3 against clean targets shrinks every step by var / (var + 0.3^2);
    with the noise carried into the targets it is the rotation again."""
    gen = torch.Generator().manual_seed(4)
    n, theta = 200_000, 0.3
    x = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    rot = torch.tensor([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]], dtype=torch.float64)
    batch = {"Q": torch.stack([x, x @ rot.T], 1), "P": torch.zeros(n, 2, 2, dtype=torch.float64),
             "rho": torch.zeros(n, 2, 2, 2, dtype=torch.complex128)}
    noise = 0.3 * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    no_noise_rho, no_noise_P = torch.zeros(n, 2, 2, dtype=torch.complex128), torch.zeros(n, 2, dtype=torch.float64)
    targets = train.carry_noise(batch, (no_noise_rho, noise, no_noise_P), carry)["Q"][:, 1]
    fitted = torch.linalg.lstsq(x + noise, targets).solution.T
    assert torch.linalg.eigvals(fitted).abs().max().item() == pytest.approx(radius, abs=5e-3)


def test_kinetic_log_ratios_read_the_batch_lattice_temperature_at_each_step():
    gen = torch.Generator().manual_seed(5)
    truths = [_random_state(3, 6, gen) for _ in range(3)]
    preds = [(rho, Q, scale * P) for (rho, Q, P), scale in zip(truths, (1.0, 0.5, 2.0))]
    got = train.kinetic_log_ratios(preds, truths)
    torch.testing.assert_close(got, torch.tensor([0.0, 2 * np.log(0.5), 2 * np.log(2.0)], dtype=torch.float32))
    zeros = [(rho, Q, torch.zeros_like(P)) for rho, Q, P in truths]
    assert torch.isfinite(train.kinetic_log_ratios(zeros, zeros)).all()


@pytest.mark.parametrize("weight", [0.0, 3.0])
def test_kinetic_term_keeps_the_temperature_an_rms_fit_gives_away(weight):
    """Why kinetic_weight exists: when part of the next momentum is unpredictable (here a random kick of
    std 0.5), the best RMS fit predicts only the predictable part, so its momenta carry 1 / 1.25 of the
    true kinetic energy, and a rollout would lose that much every step. The kinetic term holds it near 1."""
    gen = torch.Generator().manual_seed(6)
    B, L = 4096, 4
    rho, Q, P = _random_state(B, L, gen)
    truth = (rho, Q, P + 0.5 * torch.randn(B, L, generator=gen))
    gain = torch.ones((), requires_grad=True)
    optimizer = torch.optim.Adam([gain], lr=0.01)
    for _ in range(400):
        pred = (rho, Q, gain * P)
        loss = train.unrolled_rms([pred], [truth]).sum()
        loss = loss + weight * train.kinetic_log_ratios([pred], [truth]).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    ratio = train.kinetic_log_ratios([(rho, Q, gain.detach() * P)], [truth]).exp().item()
    if weight == 0:
        assert ratio == pytest.approx(1 / 1.25, abs=0.02)
    else:
        assert ratio > 0.95


def test_a_restore_is_taken_forward_and_passed_straight_through_backward():
    gen = torch.Generator().manual_seed(3)
    state = tuple(torch.randn(2, 4, generator=gen).requires_grad_() for _ in range(3))
    fixed = train.restored_straight_through(state, lambda r, q, p: (r.clamp(-0.1, 0.1), 2 * q, torch.zeros_like(p)))
    torch.testing.assert_close(fixed[0], state[0].detach().clamp(-0.1, 0.1))
    torch.testing.assert_close(fixed[1], 2 * state[1].detach())
    assert not fixed[2].detach().any()
    sum(f.sum() for f in fixed).backward()  # the restore's own Jacobian (0 where clamped, 2, 0) is not used
    for s in state:
        torch.testing.assert_close(s.grad, torch.ones_like(s))


# --------------------------------------------------------------------------- real runs


def test_loss_decreases_on_the_tiny_data_set(tiny_data, tmp_path):
    run_tiny(tiny_data, tmp_path / "run", "curriculum.batches_per_epoch=40",
             "curriculum.stages=[{epochs: 3, n_step: 1, noise: 0.0}]", "val_every=20", "log_every=10")
    acc = scalars(tmp_path / "run")
    loss = [e.value for e in acc.Scalars("train/loss")]
    val = [e.value for e in acc.Scalars("val/rollout_error")]
    assert len(loss) == 12 and len(val) == 6
    assert np.mean(loss[-3:]) < 0.85 * np.mean(loss[:2])
    assert val[-1] < 0.9 * val[0]


def test_tensorboard_tags_config_and_checkpoints(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    run_tiny(tiny_data, run_dir, "model=small")
    acc = scalars(run_dir)
    tags = set(acc.Tags()["scalars"])
    expected = {"train/loss", "train/grad_norm", "train/kinetic_log_ratio", "lr", "curriculum/stage",
                "curriculum/n_step", "curriculum/noise",
                "perf/samples_per_s", "val/rollout_error"}
    expected |= {f"train/{c}" for c in RMSE_COMPONENTS} | {f"train/deriv_{c}" for c in RMSE_COMPONENTS}
    assert expected <= tags, expected - tags
    assert acc.Tags()["images"] == ["val/cdw_pattern_pred_vs_true"]
    assert [e.value for e in acc.Scalars("curriculum/n_step")][-1] == 2
    assert "_hparams_/session_start_info" in acc.PluginTagToContent("hparams")
    saved = train.load_train_config(run_dir / "config.yaml")
    assert saved.model.kind == "parc" and saved.data == str(tiny_data) and saved.threads == 1
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names == ["best.pt", "step-00000020.pt", "step-00000030.pt"]


def test_bf16_and_gradient_checkpointing_flags_run_on_cpu(tiny_data, tmp_path):
    run_tiny(tiny_data, tmp_path / "run", "model=small", "bf16=true", "grad_checkpoint=true", "max_steps=12")
    losses = [e.value for e in scalars(tmp_path / "run").Scalars("train/loss")]
    assert len(losses) == 2 and all(np.isfinite(losses))


class RecordingLog:
    """Stands in for RunLog: keeps the scalars in memory instead of writing TensorBoard events."""

    def __init__(self, start: int, end: int) -> None:
        self.seen: dict[str, list[tuple[int, float]]] = {}
        RecordingLog.last = self

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.seen.setdefault(tag, []).append((step, value))

    def hparams(self, *args: object) -> None: ...
    def figure(self, *args: object) -> None: ...
    def line(self, *args: object) -> None: ...
    def advance(self, n: int = 1) -> None: ...
    def close(self) -> None: ...


def test_one_piece_of_the_composition_root_can_be_swapped(tiny_data, tmp_path):
    """build_parts + dataclasses.replace: the standard run with one piece (here the logger) exchanged."""
    run_dir = tmp_path / "run"
    cfg = train.load_train_config(TINY, [f"data={tiny_data}", f"run_dir={run_dir}", "max_steps=4", "log_every=2"])
    env = dist.init_distributed()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = open_data(tiny_data)
        parts = dataclasses.replace(train.build_parts(cfg, env, data), make_log=RecordingLog)
        with ckpt.PreemptionGuard() as guard:
            result = train.Trainer(cfg, env, data, parts).fit(guard)
    finally:
        torch.set_num_threads(threads)
        dist.shutdown()
    assert result.status == "finished" and result.step == 4
    seen = RecordingLog.last.seen
    assert [step for step, _ in seen["train/rho_offdiag"]] == [2, 4]
    assert [step for step, _ in seen["val/rollout_error"]] == [4]
    assert not list(run_dir.glob("events.out.tfevents*"))  # the standard logger was not built
    assert (run_dir / "checkpoints" / "step-00000004.pt").is_file()  # every other piece was


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["bogus=1"], "unknown config key 'bogus'"),
        (["batch_size=four"], "config key 'batch_size' must be an integer"),
        (["curriculum.warmup_steps=500"], "warmup_steps (500) must be >= 0 and shorter than every stage"),
        (["model.kind=rnn"], "config key 'model.kind' is 'rnn'"),
        (["data=/nonexistent/tiny"], "data directory '/nonexistent/tiny' does not exist"),
        (["val_split=test2"], "val_split 'test2' is not in"),
        (["train_split=holdout"], "train_split 'holdout' is not in"),
        (["curriculum.stages=[{epochs: 1, n_step: 1, noise: 0.01, noise_carry: 2}]"], "noise_carry is 2"),
        (["curriculum.stages=[{epochs: 1, n_step: 1, noise: 0.01, kinetic_weight: -1}]"], "kinetic_weight is -1"),
        (["curriculum.stages=[{epochs: 1, n_step: 1, noise: 0.01, guard: energy}]"], "guard is 'energy'"),
    ],
)
def test_bad_input_is_one_clear_line(tiny_data, tmp_path, capsys, overrides, message):
    argv = ["--config", TINY, f"data={tiny_data}", f"run_dir={tmp_path / 'run'}", "threads=0", *overrides]
    assert train.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err
    assert not (tmp_path / "run").exists()  # refused before config.yaml, events or checkpoints were written


def test_run_dir_that_is_a_file_is_refused_before_any_work(tiny_data, tmp_path, capsys):
    (tmp_path / "afile").write_text("keep me")
    for run_dir, message in ((tmp_path / "afile", "is a file, not a directory"),
                             (tmp_path / "afile" / "run", "lies under the file")):
        assert train.main(["--config", TINY, f"data={tiny_data}", f"run_dir={run_dir}"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: run_dir ") and message in err and err.count("\n") == 1
    assert (tmp_path / "afile").read_text() == "keep me"


def test_a_second_train_on_the_same_run_dir_is_refused_while_the_first_runs(tiny_data, tmp_path, capsys):
    from hpc.files import DirectoryLock

    run_dir = tmp_path / "run"
    with DirectoryLock(run_dir, job_id="4242"):  # stands in for a live first run (another process's flock)
        assert train.main(["--config", TINY, f"data={tiny_data}", f"run_dir={run_dir}", "max_steps=2"]) == 2
        err = capsys.readouterr().err
        assert "(run_dir) is in use by another process" in err and "Slurm job 4242" in err
        assert not (run_dir / "checkpoints").exists()
    # Released on exit (and by the kernel when a holder dies): the next run goes ahead.
    assert train.main(["--config", TINY, f"data={tiny_data}", f"run_dir={run_dir}", "max_steps=2"]) == 0


def test_the_requeued_job_of_the_same_run_is_not_blocked_by_its_own_lock(tiny_data, tmp_path, monkeypatch):
    from hpc.files import DirectoryLock

    run_dir = tmp_path / "run"
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    # The lock as a dead incarnation of job 777 on another node may still appear on a network file system.
    with DirectoryLock(run_dir, job_id="777"):
        assert train.main(["--config", TINY, f"data={tiny_data}", f"run_dir={run_dir}", "max_steps=2"]) == 0


def test_missing_config_file_is_one_clear_line(tmp_path, capsys):
    assert train.main(["--config", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and err.count("\n") == 1


def test_init_from_starts_from_another_models_weights(tiny_data, tmp_path, capsys):
    """Fine-tuning: the new run's first weights are the source's, and its rate record (a source with scaled
    increments); a different architecture is refused."""
    from holstein_dist.checkpoints import export_model, load_model, scale_increments

    first = tmp_path / "first"
    run_tiny(tiny_data, first, "max_steps=10")
    source = scale_increments(export_model(first, tmp_path / "exported.pt"), 0.95, tmp_path / "source.pt")
    fine = tmp_path / "fine"
    cfg = train.load_train_config(TINY, [f"data={tiny_data}", f"run_dir={fine}", f"init_from={source}", "seed=5"])
    parts = train.build_parts(cfg, dist.init_distributed(), open_data(tiny_data))
    want = load_model(source)
    assert all(torch.equal(a, b) for a, b in zip(parts.model.state_dict().values(), want.state_dict().values()))
    assert parts.model.scales == want.scales
    run_tiny(tiny_data, fine, f"init_from={source}", "max_steps=2")
    fine_tuned = export_model(fine, tmp_path / "fine.pt")
    assert ckpt.load_checkpoint(fine_tuned, required=("format",))["increment_factor"] == pytest.approx(0.95)
    assert load_model(fine_tuned).increment_factors == pytest.approx(dict.fromkeys(("rho", "Q", "P"), 0.95))
    # Group averaging has no weights: a plain model may be fine-tuned with it switched on.
    cfg = train.load_train_config(TINY, [f"data={tiny_data}", f"run_dir={fine}", f"init_from={source}",
                                         "model.symmetrize=true"])
    assert train.build_parts(cfg, dist.init_distributed(), open_data(tiny_data)).model.config.symmetrize is True
    # Nor has dropout: a model trained with it may be fine-tuned without, and its dropout layers follow the run.
    cfg = train.load_train_config(TINY, [f"data={tiny_data}", f"run_dir={fine}", f"init_from={source}",
                                         "model.dropout=0.0"])
    model = train.build_parts(cfg, dist.init_distributed(), open_data(tiny_data)).model
    assert load_model(source).config.dropout > 0 and model.config.dropout == 0.0
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout2d)]
    assert dropouts and all(m.p == 0.0 for m in dropouts)
    assert train.main(["--config", TINY, f"data={tiny_data}", f"run_dir={fine}", f"init_from={source}",
                       "model.channels=8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: init_from") and "(model.channels differ)" in err and err.count("\n") == 1
