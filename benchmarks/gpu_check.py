"""GPU readiness check: correctness, physics, training and evaluation on one GPU, in one run of <= 8 minutes.

Run it through ``benchmarks/gpu_check.sh`` (which also sets up the Python environment); docs/performance.md
has the layout of the results and the targets. Sections, in order (each row is skipped, and says so, once
its section's share of the time budget is spent, so the run ends in time whatever compiles cost):

1. correctness: the golden reference trajectories on the GPU (fused stepper and eager complex128, max
   deviation <= 1e-9); the GPU integrator against the numba CPU kernel; one DDP step under
   ``torchrun --nproc_per_node <GPUs>`` on NCCL against the same step in one process; TF32, bf16 autocast
   and torch.compile against fp32 eager (medium PARC, stated tolerances);
2. physics: us per trajectory-step of the GPU integrator at L = 16/32/64 over batch sizes until it
   saturates, next to the numba CPU kernel (1 core, all cores) measured in the same run; the paper's deep
   L=32 data set (configs/data/deep_L32.yaml) projected in GPU-minutes from a timed slice;
3. training: medium PARC optimizer step (4-step unroll, forward + backward + clip + AdamW) at b=32 and 8,
   L=32: fp32 eager, TF32, bf16 autocast, +compile, +channels_last; samples/s and peak memory;
4. evaluation: rollout-steps/s of the tiny CNN and the medium PARC (batch 256, L=32) on the GPU against
   the exact simulator on the same GPU and on the CPU, with the ratio stated plainly.

``--dry-run`` runs every section at tiny sizes on the CPU (gloo instead of NCCL, no torch.compile unless
``--compile``), so CI proves the script end to end. Writes ``gpu_check.json`` to ``--out`` (default: $OUT if
set, else the current directory) and exits 1 if a correctness check failed.

    python benchmarks/gpu_check.py [--dry-run] [--golden DIR] [--out DIR] [--budget-s 420] [--nproc N]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))  # sibling benchmarks (simulate.py, train_step.py) share their workload helpers
if str(ROOT) not in sys.path:
    sys.path.insert(1, str(ROOT))  # the project itself, when it is not installed (an offline machine)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from holstein_dist import physics as ph  # noqa: E402

GOLDEN_CANDIDATES = (ROOT.parent / "shared" / "reference" / "golden", ROOT / ".gpu_check" / "golden")
DEEP_CONFIG = ROOT / "configs" / "data" / "deep_L32.yaml"
TOL_GOLDEN = 1e-9
# Model variants against fp32 eager: (max relative deviation of the predicted increments, relative L2
# deviation of the gradient). TF32 keeps 10 mantissa bits and bf16 8, through 2 x 10 convolutions and a
# 4-step unroll; compile reorders fp32 sums only.
TOL_VARIANT = {"tf32": (2e-2, 5e-2), "bf16": (5e-2, 1e-1), "compile": (1e-4, 1e-3)}
TOL_DDP = 1e-5  # relative deviation of the all-reduced gradient and of the loss
TARGETS = {
    "integrator_us": 0.2,  # us per trajectory-step at L=32, batch >= 4096
    "deep_dataset_gpu_min": 10.0,
    "train_samples_per_s": 2000.0,  # medium PARC, b=32, n_step=4, bf16
}


# ----------------------------------------------------------------------------- sizes and budget


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Every knob that differs between the GPU run and the CPU dry run."""

    device: str
    physics_L: tuple[int, ...]
    physics_batches: tuple[int, ...]
    eager_batch: int  # the old complex128 eager path, one row per L, for the before/after
    cpu_batch: int
    deep_slice_snapshots: int
    deep_batch: int | None  # None: the whole data set in one batch
    train_model: str
    train_L: int
    train_batches: tuple[int, ...]
    n_step: int
    ddp_batch: int
    eval_L: int
    eval_batch: int
    eval_models: tuple[str, ...]
    eval_steps: dict[str, int]
    eval_exact_snapshots: int
    eval_cpu_snapshots: int
    rk4_per_snapshot: int
    seconds: float  # length of one timed run
    repeats: int
    compile: bool


GPU_SIZES = Sizes(
    device="cuda", physics_L=(16, 32, 64), physics_batches=(256, 1024, 4096, 16384, 65536, 262144),
    eager_batch=4096, cpu_batch=64, deep_slice_snapshots=8, deep_batch=None, train_model="medium", train_L=32,
    train_batches=(32, 8), n_step=4, ddp_batch=8, eval_L=32, eval_batch=256, eval_models=("tiny", "medium"),
    eval_steps={"tiny": 200, "medium": 20}, eval_exact_snapshots=4, eval_cpu_snapshots=1, rk4_per_snapshot=256,
    seconds=0.3, repeats=3, compile=True,
)
DRY_SIZES = Sizes(
    device="cpu", physics_L=(16,), physics_batches=(2, 4), eager_batch=2, cpu_batch=4, deep_slice_snapshots=1,
    deep_batch=4, train_model="tiny", train_L=16, train_batches=(2,), n_step=2, ddp_batch=4, eval_L=16,
    eval_batch=2, eval_models=("tiny", "medium"), eval_steps={"tiny": 2, "medium": 1}, eval_exact_snapshots=1,
    eval_cpu_snapshots=1, rk4_per_snapshot=16, seconds=0.02, repeats=3, compile=False,
)

SECTION_SHARES = {"correctness": 0.30, "physics": 0.25, "training": 0.30, "evaluation": 0.15}


class Budget:
    """Cumulative deadlines per section: time a section leaves unused passes to the next one."""

    def __init__(self, total_s: float) -> None:
        self.start = time.monotonic()
        self.total = total_s
        self.deadline = self.start

    def open(self, section: str) -> None:
        self.deadline += SECTION_SHARES[section] * self.total

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def allows(self, need_s: float = 5.0) -> bool:
        return self.left() >= need_s


# ----------------------------------------------------------------------------- rows and timing


def row(section: str, check: str, result: str, target: str = "", status: str = "info", **data: Any) -> dict:
    """One line of the summary table (``status``: PASS / FAIL / MISS / SKIP / info) plus its numbers."""
    out = {"section": section, "check": check, "result": result, "target": target, "status": status, **data}
    print(f"  [{status:4s}] {check}: {result}" + (f"  (target {target})" if target else ""), flush=True)
    return out


def skipped(section: str, check: str, why: str) -> dict:
    return row(section, check, f"skipped: {why}", status="SKIP")


def failed_row(section: str, check: str, exc: BaseException, correctness: bool = False) -> dict:
    """A row for a step that raised: the run goes on; a broken correctness check fails the run."""
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    return row(section, check, f"error: {type(exc).__name__}: {first}", status="FAIL" if correctness else "info",
               traceback=traceback.format_exc(limit=6))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median wall seconds of ``repeats`` calls after ``warmup`` calls, each bracketed by device syncs."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def steps_per_run(advance: Callable[[int], None], device: torch.device, chunk: int, seconds: float) -> int:
    """A step count (multiple of ``chunk``) whose run lasts about ``seconds``, found by doubling."""
    n = chunk
    while True:
        start = time.perf_counter()
        advance(n)
        sync(device)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds / 4 or n >= 1 << 22:
            return max(chunk, int(n * seconds / max(elapsed, 1e-9)) // chunk * chunk)
        n *= 2


def us_per_trajectory_step(advance: Callable[[int], None], batch: int, device: torch.device, chunk: int,
                           sizes: Sizes) -> float:
    """Median us per trajectory per RK4 step (warm-up, compilation and graph capture excluded)."""
    advance(2 * chunk)
    sync(device)
    n = steps_per_run(advance, device, chunk, sizes.seconds)
    return median_time(lambda: advance(n), device, sizes.repeats, warmup=0) / n / batch * 1e6


# ----------------------------------------------------------------------------- states


def distinct_starts(L: int, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``count`` deep-quench starts (8 distinct, tiled), moved 20 RK4 steps off the symmetric start."""
    import simulate  # sibling benchmark: the same workload definition as the CPU figures

    base = simulate.initial_batch(L, min(count, 8))
    reps = -(-count // base[0].shape[0])
    return tuple(np.concatenate([x] * reps)[:count] for x in base)


def fused_stepper(L: int, batch: int, device: torch.device, sizes: Sizes) -> ph.FusedTorchStepper:
    """A GPU stepper over ``batch`` trajectories, the 8 distinct starts tiled on the device (no host work)."""
    rho, Q, P = (torch.from_numpy(x).to(device) for x in distinct_starts(L, 8))
    reps = -(-batch // rho.shape[0])
    rho, Q, P = (x.repeat((reps,) + (1,) * (x.ndim - 1))[:batch] for x in (rho, Q, P))
    return ph.FusedTorchStepper(rho, Q, P, g=1.0, compile=sizes.compile)


# ----------------------------------------------------------------------------- 1. correctness


def golden_dir_from(arg: str | None) -> Path | None:
    if arg:
        path = Path(arg)
        if not path.is_dir():
            raise SystemExit(f"error: --golden {arg} is not a directory; pass the folder holding the golden .npz/.json")
        return path
    return next((p for p in GOLDEN_CANDIDATES if p.is_dir()), None)


def golden_deviation(npz: Path, device: torch.device, kind: str, sizes: Sizes) -> float:
    """Max |state - reference| over every snapshot and mid-interval state of one golden trajectory."""
    data = np.load(npz)
    meta = json.loads(npz.with_suffix(".json").read_text())
    half = meta["save_interval"] // 2
    rho, Q, P = (torch.from_numpy(data[k][0][None]).to(device) for k in ("rho", "Q", "P"))
    kwargs = {"g": meta["g_f"], "dt": meta["dt"], "K0": meta["K0"], "eta": meta["eta"]}
    if kind == "fused":
        graph = 0 if device.type != "cuda" else half
        stepper = ph.FusedTorchStepper(rho, Q, P, compile=sizes.compile, graph_steps=graph, **kwargs)
    else:
        stepper = ph.TorchStepper(rho, Q, P, **kwargs)
    worst = 0.0
    for k in range(1, data["rho"].shape[0]):
        for suffix, idx in (("_mid", k - 1), ("", k)):
            stepper.advance(half)
            for key, value in zip(("rho", "Q", "P"), stepper.state()):
                worst = max(worst, float(np.abs(value[0].cpu().numpy() - data[key + suffix][idx]).max()))
    return worst


def check_golden(golden: Path | None, device: torch.device, sizes: Sizes, budget: Budget) -> list[dict]:
    if golden is None:
        return [skipped("correctness", "golden trajectories", "no golden dir (pass --golden DIR or HOLSTEIN_GOLDEN)")]
    rows = []
    for npz in sorted(golden.glob("*.npz")):
        for kind, label in (("fused", "fused split float64"), ("eager", "eager complex128")):
            check = f"golden {npz.stem}, {device.type} {label}"
            if not budget.allows(10):
                rows.append(skipped("correctness", check, "time budget"))
                continue
            try:
                dev = golden_deviation(npz, device, kind, sizes)
                rows.append(row("correctness", check, f"max deviation {dev:.1e}", f"<= {TOL_GOLDEN:.0e}",
                                "PASS" if dev <= TOL_GOLDEN else "FAIL", value=dev))
            except Exception as exc:
                rows.append(failed_row("correctness", check, exc, correctness=True))
    return rows


def check_against_numba(device: torch.device, sizes: Sizes) -> dict:
    """The device integrator against the numba CPU kernel: 64 trajectories, L=32, 256 steps."""
    check = f"{device.type} integrator vs numba CPU (L=32, 64 trajectories, 256 steps)"
    try:
        rho, Q, P = distinct_starts(32, 64)
        ref = ph.evolve(rho, Q, P, g=1.0, n_steps=256, backend="numba")
        stepper = ph.FusedTorchStepper(*(torch.from_numpy(x).to(device) for x in (rho, Q, P)), g=1.0,
                                       compile=sizes.compile)
        stepper.advance(256)
        dev = max(float(np.abs(a.cpu().numpy() - b).max()) for a, b in zip(stepper.state(), ref))
        return row("correctness", check, f"max deviation {dev:.1e} ({stepper.mode})", f"<= {TOL_GOLDEN:.0e}",
                   "PASS" if dev <= TOL_GOLDEN else "FAIL", value=dev, mode=stepper.mode, notes=stepper.notes)
    except Exception as exc:
        return failed_row("correctness", check, exc, correctness=True)


# --- model variants (shared with the training section, so each compilation is paid once)


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    tf32: bool = False
    bf16: bool = False
    compile: bool = False
    channels_last: bool = False


LADDER = (
    Variant("fp32 eager"),
    Variant("TF32", tf32=True),
    Variant("bf16 autocast", tf32=True, bf16=True),
    Variant("bf16 + compile", tf32=True, bf16=True, compile=True),
    Variant("bf16 + compile + channels_last", tf32=True, bf16=True, compile=True, channels_last=True),
)
FP32_COMPILE = Variant("fp32 + compile", compile=True)


@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """TF32 in cuDNN convolutions and matmuls inside, the previous settings restored after."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def build_surrogate(name: str, device: torch.device, seed: int = 0) -> torch.nn.Module:
    """configs/model/<name>.yaml with unit scales and seeded weights, every layer perturbed off zero.

    The increment networks start at exactly zero, which would hide most layers from the comparisons; eval
    mode (no dropout) so that every variant computes the same function.
    """
    from holstein_dist.config import load_config
    from holstein_dist.model import SCALE_KEYS, ModelConfig, build_model

    torch.manual_seed(seed)
    cfg = load_config(ModelConfig, ROOT / "configs" / "model" / f"{name}.yaml")
    model = build_model(cfg, dict.fromkeys(SCALE_KEYS, 1.0))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return model.to(device).eval()


def make_batch(B: int, L: int, n: int, device: torch.device) -> dict[str, torch.Tensor]:
    import train_step  # sibling benchmark: the same random batch of realistic magnitudes

    return train_step.make_batch(B, L, n, device)


class TrainStep:
    """One optimizer step of a variant: unrolled forward, loss, backward, clip, AdamW (the trainer's order)."""

    def __init__(self, model_name: str, variant: Variant, batch: dict[str, torch.Tensor], n_step: int,
                 device: torch.device) -> None:
        from holstein_dist.train import Rollout

        self.variant, self.batch, self.n_step, self.device = variant, batch, n_step, device
        self.model = build_surrogate(model_name, device)
        if variant.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        core = torch.compile(self.model) if variant.compile else self.model
        self.rollout = Rollout(core)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=1e-5)
        self.x0 = (batch["rho"][:, 0], batch["Q"][:, 0], batch["P"][:, 0])

    def forward_backward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, predicted increments and derivatives flattened) with gradients left in the model."""
        from holstein_dist.train import rollout_loss

        with tf32(self.variant.tf32), torch.autocast(self.device.type, dtype=torch.bfloat16,
                                                     enabled=self.variant.bf16):
            states, derivs = self.rollout(*self.x0, self.n_step)
        loss = rollout_loss(states, derivs, self.batch)[0]
        self.optimizer.zero_grad(set_to_none=True)
        with tf32(self.variant.tf32):
            loss.backward()
        # Increments, not states: a state is dominated by its input, which every variant shares exactly.
        parts = [torch.view_as_real(s[0] - self.x0[0]).flatten() for s in states]
        parts += [(s[i] - self.x0[i]).flatten() for s in states for i in (1, 2)]
        for d in derivs or []:
            parts += [torch.view_as_real(d[0]).flatten(), d[1].flatten(), d[2].flatten()]
        return loss.detach(), torch.cat([p.detach().float() for p in parts])

    def gradient(self) -> torch.Tensor:
        return torch.cat([p.grad.detach().float().flatten() for p in self.model.parameters()])

    def step(self) -> None:
        self.forward_backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()


def relative(a: torch.Tensor, b: torch.Tensor, norm: str) -> float:
    """max|a-b|/max|b| (``max``) or ||a-b||/||b|| (``l2``)."""
    if norm == "max":
        return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b).clamp_min(1e-30))


def tolerance_key(variant: Variant) -> str:
    return "bf16" if variant.bf16 else "tf32" if variant.tf32 else "compile"


def check_variants(steps: dict, model_name: str, batch: int, sizes: Sizes, device: torch.device,
                   budget: Budget) -> list[dict]:
    """Every variant's first forward + backward against fp32 eager on the same weights and batch."""
    data = make_batch(batch, sizes.train_L, sizes.n_step, device)
    variants = [LADDER[0], LADDER[1], LADDER[2], FP32_COMPILE, *LADDER[3:]]
    ref_step = steps[(LADDER[0], batch)] = TrainStep(model_name, LADDER[0], data, sizes.n_step, device)
    ref_loss, ref_out = ref_step.forward_backward()
    ref_grad = ref_step.gradient()
    rows = []
    for variant in variants[1:]:
        check = f"{model_name} {variant.name} vs fp32 eager (b={batch}, L={sizes.train_L}, {sizes.n_step} steps)"
        if variant.compile and not sizes.compile:
            rows.append(skipped("correctness", check, "no torch.compile in this run (--compile to include)"))
            continue
        if not budget.allows(30 if variant.compile else 5):
            rows.append(skipped("correctness", check, "time budget"))
            continue
        try:
            step = steps[(variant, batch)] = TrainStep(model_name, variant, data, sizes.n_step, device)
            loss, out = step.forward_backward()
            d_out, d_grad = relative(out, ref_out, "max"), relative(step.gradient(), ref_grad, "l2")
            tol_out, tol_grad = TOL_VARIANT[tolerance_key(variant)]
            ok = d_out <= tol_out and d_grad <= tol_grad
            rows.append(row("correctness", check, f"increments {d_out:.1e}, gradient {d_grad:.1e}, loss "
                            f"{float(loss):.6g} vs {float(ref_loss):.6g}", f"<= {tol_out:.0e} / {tol_grad:.0e}",
                            "PASS" if ok else "FAIL", increments=d_out, gradient=d_grad))
        except Exception as exc:
            rows.append(failed_row("correctness", check, exc, correctness=True))
    return rows


# --- DDP


def ddp_shard_gradients(model_name: str, batch: dict, shards: int, n_step: int, device: torch.device
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean loss, mean gradient) over ``shards`` equal slices of ``batch``: what DDP's all-reduce yields."""
    from holstein_dist.train import Rollout, rollout_loss

    model = build_surrogate(model_name, device)
    rollout = Rollout(model)
    grads, losses = [], []
    size = batch["rho"].shape[0] // shards
    for r in range(shards):
        part = {k: v[r * size:(r + 1) * size] for k, v in batch.items()}
        states, derivs = rollout(part["rho"][:, 0], part["Q"][:, 0], part["P"][:, 0], n_step)
        loss = rollout_loss(states, derivs, part)[0]
        model.zero_grad(set_to_none=True)
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        losses.append(loss.detach())
    return torch.stack(losses).mean(), torch.stack(grads).mean(0)


def deterministic_math() -> None:
    """fp32 without TF32 and with deterministic cuDNN, so two processes compute the same bits."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False


def ddp_worker(args: argparse.Namespace) -> int:
    """One torchrun rank: a DDP forward + backward on this rank's slice; rank 0 saves loss and gradient."""
    import torch.distributed as tdist
    from torch.nn.parallel import DistributedDataParallel

    from holstein_dist.train import Rollout, rollout_loss
    from hpc import dist as hdist

    deterministic_math()
    backend = "nccl" if args.device == "cuda" else "gloo"
    env = hdist.init_distributed(backend)
    if not tdist.is_initialized():  # one rank: hpc.dist makes no group, but the check must run the backend
        tdist.init_process_group(backend, init_method="env://", rank=0, world_size=1)
    device = env.device if args.device == "cuda" else torch.device("cpu")
    world, rank = tdist.get_world_size(), tdist.get_rank()
    try:
        batch = make_batch(args.ddp_batch, args.ddp_L, args.ddp_nstep, torch.device("cpu"))
        size = args.ddp_batch // world
        part = {k: v[rank * size:(rank + 1) * size].to(device) for k, v in batch.items()}
        model = build_surrogate(args.ddp_model, device)
        ddp = DistributedDataParallel(Rollout(model), device_ids=[device.index] if device.type == "cuda" else None)
        states, derivs = ddp(part["rho"][:, 0], part["Q"][:, 0], part["P"][:, 0], args.ddp_nstep)
        loss = rollout_loss(states, derivs, part)[0]
        loss.backward()
        loss_sum = loss.detach().clone()
        tdist.all_reduce(loss_sum)
        grad = torch.cat([p.grad.flatten() for p in model.parameters()])
        if rank == 0:
            torch.save({"loss": (loss_sum / world).cpu(), "grad": grad.cpu(), "world": world,
                        "backend": tdist.get_backend()}, args.ddp_out)
    finally:
        hdist.shutdown()
    return 0


def gpu_count(device: torch.device) -> int:
    return torch.cuda.device_count() if device.type == "cuda" else 0


def check_ddp(args: argparse.Namespace, sizes: Sizes, device: torch.device) -> dict:
    """torchrun with one rank per GPU (2 gloo ranks on the CPU dry run) against the same step in this process."""
    nproc = args.nproc or (gpu_count(device) if device.type == "cuda" else 2)
    backend = "nccl" if device.type == "cuda" else "gloo"
    model_name = sizes.train_model
    batch_size = sizes.ddp_batch * nproc if sizes.ddp_batch % nproc else sizes.ddp_batch
    check = f"DDP step, {backend}, torchrun --nproc_per_node {nproc}, vs one process ({model_name}, b={batch_size})"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "ddp.pt"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
                   str(Path(__file__).resolve()), "--ddp-worker", "--ddp-out", str(out), "--device", device.type,
                   "--ddp-model", model_name, "--ddp-batch", str(batch_size), "--ddp-L", str(sizes.train_L),
                   "--ddp-nstep", str(sizes.n_step)]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            if proc.returncode != 0 or not out.exists():
                tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
                raise RuntimeError(f"torchrun exited {proc.returncode}: {tail}")
            got = torch.load(out)
        deterministic_math()
        batch = make_batch(batch_size, sizes.train_L, sizes.n_step, device)
        loss, grad = ddp_shard_gradients(model_name, batch, nproc, sizes.n_step, device)
        d_grad = relative(got["grad"].to(device), grad, "max")
        d_loss = abs(float(got["loss"]) - float(loss)) / abs(float(loss))
        ok = d_grad <= TOL_DDP and d_loss <= TOL_DDP
        return row("correctness", check, f"gradient {d_grad:.1e}, loss {d_loss:.1e} (backend {got['backend']})",
                   f"<= {TOL_DDP:.0e}", "PASS" if ok else "FAIL", gradient=d_grad, loss=d_loss, nproc=nproc)
    except Exception as exc:
        return failed_row("correctness", check, exc, correctness=True)


def correctness(args: argparse.Namespace, sizes: Sizes, device: torch.device, budget: Budget,
                steps: dict) -> list[dict]:
    budget.open("correctness")
    print("\n== correctness", flush=True)
    rows = check_golden(golden_dir_from(args.golden), device, sizes, budget)
    rows.append(check_against_numba(device, sizes))
    rows.append(check_ddp(args, sizes, device) if budget.allows(20) else skipped("correctness", "DDP", "time budget"))
    rows += check_variants(steps, sizes.train_model, sizes.train_batches[0], sizes, device, budget)
    torch.backends.cudnn.deterministic = False  # timings use the default (fastest) cuDNN algorithms
    return rows


# ----------------------------------------------------------------------------- 2. physics


def numba_rows(sizes: Sizes, L: int, cores: int) -> list[dict]:
    """numba CPU kernel, batch ``cpu_batch``, on one core and on every core, in this run."""
    import simulate

    rows = []
    for threads in dict.fromkeys((1, cores)):
        advance, _, _ = simulate.make("numba", L, sizes.cpu_batch, threads)
        us = us_per_trajectory_step(advance, sizes.cpu_batch, torch.device("cpu"), 1, sizes)
        rows.append(row("physics", f"numba CPU, L={L}, {threads} core(s), batch {sizes.cpu_batch}",
                        f"{us:.3g} us/trajectory-step", L=L, threads=threads, batch=sizes.cpu_batch, us=us,
                        backend="numba"))
    return rows


def device_sweep(sizes: Sizes, L: int, device: torch.device, budget: Budget) -> list[dict]:
    """The fused stepper over rising batch sizes until another 4x batch gains < 10% (saturation)."""
    rows, best = [], math.inf
    for batch in sizes.physics_batches:
        check = f"{device.type} fused integrator, L={L}, batch {batch}"
        if not budget.allows(8):
            rows.append(skipped("physics", check, "time budget"))
            break
        try:
            stepper = fused_stepper(L, batch, device, sizes)
            chunk = max(1, stepper.graph_steps)
            us = us_per_trajectory_step(stepper.advance, batch, device, chunk, sizes)
        except torch.OutOfMemoryError:
            rows.append(skipped("physics", check, "out of device memory"))
            break
        except Exception as exc:
            rows.append(failed_row("physics", check, exc))
            break
        rows.append(row("physics", f"{check} ({stepper.mode})", f"{us:.3g} us/trajectory-step", L=L, batch=batch,
                        us=us, backend="fused", mode=stepper.mode, notes=stepper.notes))
        del stepper
        saturated = us > 0.9 * best
        best = min(best, us)
        if saturated:
            break
    return rows


def eager_row(sizes: Sizes, L: int, device: torch.device) -> dict:
    """The former torch path (eager complex128 ``rk4_step``) at one batch size: the before of the after."""
    check = f"{device.type} eager complex128 (TorchStepper), L={L}, batch {sizes.eager_batch}"
    try:
        rho, Q, P = (torch.from_numpy(x).to(device) for x in distinct_starts(L, sizes.eager_batch))
        stepper = ph.TorchStepper(rho, Q, P, g=1.0, dt=ph.DT_DEFAULT, K0=ph.K0_DEFAULT, eta=ph.ETA_DEFAULT)
        us = us_per_trajectory_step(stepper.advance, sizes.eager_batch, device, 1, sizes)
        return row("physics", check, f"{us:.3g} us/trajectory-step", L=L, batch=sizes.eager_batch, us=us,
                   backend="eager")
    except Exception as exc:
        return failed_row("physics", check, exc)


def deep_projection(sizes: Sizes, device: torch.device) -> dict:
    """GPU-minutes for the paper's deep L=32 data set: all its trajectories in one batch, timed over a slice
    of snapshot intervals (advance ``save_interval`` steps, copy the snapshot to host memory)."""
    cfg = yaml.safe_load(DEEP_CONFIG.read_text())
    n_traj = sum(cfg["splits"].values())
    batch = sizes.deep_batch or n_traj
    interval = cfg["save_interval"]
    check = f"deep L={cfg['L']} data set ({n_traj} trajectories) projected from {sizes.deep_slice_snapshots} " \
            f"snapshot(s) at batch {batch}"
    try:
        stepper = fused_stepper(cfg["L"], batch, device, sizes)
        stepper.advance(interval)  # compile, capture, warm-up
        stepper.state()

        def snapshots() -> None:
            for _ in range(sizes.deep_slice_snapshots):
                stepper.advance(interval)
                stepper.state()  # device -> pinned host copy, as a writer would need it

        seconds = median_time(snapshots, device, sizes.repeats, warmup=0) / sizes.deep_slice_snapshots
        per_step = seconds / interval
        total_steps = cfg["transient_steps"] + cfg["max_phase"] / 2 + cfg["n_steps"] * interval
        minutes = per_step * total_steps * math.ceil(n_traj / batch) / 60
        target = TARGETS["deep_dataset_gpu_min"]
        return row("physics", check, f"{minutes:.3g} GPU-minutes ({per_step / batch * 1e6:.3g} us/trajectory-step "
                   f"incl. snapshot copies)", f"<= {target:g} GPU-minutes",
                   "PASS" if minutes <= target else "MISS", gpu_minutes=minutes, trajectories=n_traj,
                   steps_per_trajectory=total_steps, mode=stepper.mode)
    except Exception as exc:
        return failed_row("physics", check, exc)


def integrator_target(rows: list[dict]) -> dict:
    """The target row: best fused figure at L=32 among batches >= 4096 (a dry run: its largest L and batch)."""
    fused = [r for r in rows if r.get("backend") == "fused"]
    if not fused:
        return skipped("physics", "integrator target", "no fused-integrator figure")
    L = 32 if any(r["L"] == 32 for r in fused) else max(r["L"] for r in fused)
    fused = [r for r in fused if r["L"] == L]
    eligible = [r for r in fused if r["batch"] >= 4096] or fused
    target = TARGETS["integrator_us"]
    best = min(eligible, key=lambda r: r["us"])
    cpu = {r["threads"]: r["us"] for r in rows if r.get("backend") == "numba" and r.get("L") == L}
    versus = ", ".join(f"{best_cpu / best['us']:.3g}x numba on {t} core(s)" for t, best_cpu in sorted(cpu.items()))
    return row("physics", f"integrator at L={L} (best batch >= 4096)", f"{best['us']:.3g} us/trajectory-step at batch "
               f"{best['batch']}" + (f"; {versus}" if versus else ""), f"<= {target:g} us",
               "PASS" if best["us"] <= target and best["batch"] >= 4096 else "MISS", us=best["us"],
               batch=best["batch"])


def physics(sizes: Sizes, device: torch.device, budget: Budget, cores: int) -> list[dict]:
    budget.open("physics")
    print("\n== physics", flush=True)
    rows = []
    for L in sizes.physics_L:
        try:
            rows += numba_rows(sizes, L, cores)
        except Exception as exc:
            rows.append(failed_row("physics", f"numba CPU, L={L}", exc))
        rows.append(eager_row(sizes, L, device))
        rows += device_sweep(sizes, L, device, budget)
    rows.append(deep_projection(sizes, device))
    rows.append(integrator_target(rows))
    return rows


# ----------------------------------------------------------------------------- 3. training


def peak_memory_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def time_variant(steps: dict, variant: Variant, batch: int, sizes: Sizes, device: torch.device) -> dict:
    """samples/s and peak memory of one variant's optimizer step (built here unless correctness built it)."""
    key = (variant, batch)
    if key not in steps:
        steps[key] = TrainStep(sizes.train_model, variant, make_batch(batch, sizes.train_L, sizes.n_step, device),
                               sizes.n_step, device)
    step = steps[key]
    step.step()  # compile / cuDNN autotuning / allocator warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = median_time(step.step, device, sizes.repeats, warmup=1)
    rate, memory = batch / seconds, peak_memory_gib(device)
    mem = f", peak {memory:.2f} GiB" if memory is not None else ""
    is_target = variant.bf16 and batch == 32 and sizes.train_model == "medium"
    target = TARGETS["train_samples_per_s"]
    return row("training", f"{sizes.train_model} b={batch} {variant.name}",
               f"{rate:.0f} samples/s ({seconds * 1e3:.1f} ms/step{mem})",
               f">= {target:g} samples/s" if is_target else "", ("PASS" if rate >= target else "MISS")
               if is_target else "info", batch=batch, variant=variant.name, samples_per_s=rate,
               ms_per_step=seconds * 1e3, peak_gib=memory)


def training(sizes: Sizes, device: torch.device, budget: Budget, steps: dict) -> list[dict]:
    budget.open("training")
    print("\n== training", flush=True)
    rows = []
    for batch in sizes.train_batches:
        for variant in LADDER:
            check = f"{sizes.train_model} b={batch} {variant.name}"
            if variant.compile and not sizes.compile:
                rows.append(skipped("training", check, "no torch.compile in this run"))
                continue
            if not budget.allows(40 if variant.compile and (variant, batch) not in steps else 5):
                rows.append(skipped("training", check, "time budget"))
                continue
            try:
                rows.append(time_variant(steps, variant, batch, sizes, device))
            except Exception as exc:
                rows.append(failed_row("training", check, exc))
            steps.pop((variant, batch), None)  # free its weights, optimizer state and compiled graphs
    return rows


# ----------------------------------------------------------------------------- 4. evaluation


def eval_states(sizes: Sizes) -> tuple[np.ndarray, ...]:
    return distinct_starts(sizes.eval_L, sizes.eval_batch)


def exact_rate(sizes: Sizes, device: torch.device, state: tuple[np.ndarray, ...]) -> float:
    """Rollout-steps/s (snapshots x trajectories) of the exact simulator, the fused stepper on ``device``."""
    snapshots = sizes.eval_exact_snapshots
    stepper = ph.FusedTorchStepper(*(torch.from_numpy(x).to(device) for x in state), g=1.0, compile=sizes.compile)
    advance = stepper.advance
    advance(sizes.rk4_per_snapshot)
    seconds = median_time(lambda: advance(snapshots * sizes.rk4_per_snapshot), device, sizes.repeats, warmup=0)
    return sizes.eval_batch * snapshots / seconds


def numba_rate(sizes: Sizes, state: tuple[np.ndarray, ...], cores: int) -> float:
    """Rollout-steps/s of the exact simulator on the CPU (numba on ``cores`` threads), as the evaluator runs it."""
    stepper = ph.make_stepper(*state, g=1.0, backend="numba", threads=cores)
    stepper.advance(1)
    n = sizes.eval_cpu_snapshots * sizes.rk4_per_snapshot
    seconds = median_time(lambda: stepper.advance(n), torch.device("cpu"), 1, warmup=0)
    return sizes.eval_batch * sizes.eval_cpu_snapshots / seconds


def surrogate_rate(name: str, sizes: Sizes, device: torch.device, state: tuple[np.ndarray, ...], bf16: bool) -> float:
    """Rollout-steps/s of ``model.rollout`` (the evaluator's call) from ``state``; TF32 on for fp32."""
    model = build_surrogate(name, device)
    tensors = tuple(torch.from_numpy(np.ascontiguousarray(x)).to(device) for x in state)
    steps = sizes.eval_steps[name]
    with tf32(True), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        seconds = median_time(lambda: model.rollout(*tensors, steps), device, sizes.repeats, warmup=1)
    return sizes.eval_batch * steps / seconds


def graph_rate(name: str, sizes: Sizes, device: torch.device, state: tuple[np.ndarray, ...], bf16: bool) -> float:
    """The same model step replayed as one CUDA graph (the launch overhead removed): an upper bound for
    what capturing ``Surrogate.rollout`` would give; states are advanced in place, not recorded."""
    model = build_surrogate(name, device)
    static = [torch.from_numpy(np.ascontiguousarray(x)).to(device) for x in state]
    static[0] = static[0].to(torch.complex64)
    static[1:] = [x.float() for x in static[1:]]
    steps = sizes.eval_steps[name]
    with torch.inference_mode(), tf32(True), torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(3):
                model(*[x.clone() for x in static])
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for buf, new in zip(static, model(*static)):
                buf.copy_(new)

        def run() -> None:
            for _ in range(steps):
                graph.replay()

        seconds = median_time(run, device, sizes.repeats, warmup=1)
    return sizes.eval_batch * steps / seconds


def conv_gflop_per_step(name: str, L: int) -> float:
    """Forward GFLOP per surrogate step and trajectory (convolutions only: 2 x MACs)."""
    cfg = yaml.safe_load((ROOT / "configs" / "model" / f"{name}.yaml").read_text())
    C, k, blocks = cfg["channels"], cfg.get("kernel_size", 3), cfg["n_blocks"]
    macs = (4 * C * k * k + 2 * blocks * C * C * k * k + C * 4) * L * L
    return 2 * macs * (2 if cfg["kind"] == "parc" else 1) / 1e9


def verdict(name: str, rate: float, exact_device: float, exact_cpu: float, device: torch.device,
            sizes: Sizes) -> dict:
    """The plain statement: how many times faster (or slower) the surrogate rolls out than simulating."""
    ratio = rate / exact_device
    word = "FASTER" if ratio >= 1 else "SLOWER"
    flops = conv_gflop_per_step(name, sizes.eval_L) * rate / 1e3
    result = (f"{name} {rate:.4g} vs exact {exact_device:.4g} rollout-steps/s on the same {device.type}: surrogate "
              f"{ratio:.3g}x ({word}); vs exact on the CPU {rate / exact_cpu:.3g}x; the surrogate runs "
              f"{flops:.3g} TFLOP/s of convolutions")
    status = "PASS" if ratio >= 1 else "MISS"
    return row("evaluation", f"surrogate vs exact simulator, L={sizes.eval_L}, batch {sizes.eval_batch}: {name}",
               result, "> 1x on the same GPU", status, model=name, ratio_vs_device_exact=ratio,
               ratio_vs_cpu_exact=rate / exact_cpu, conv_tflops=flops)


def evaluation(sizes: Sizes, device: torch.device, budget: Budget, cores: int) -> list[dict]:
    budget.open("evaluation")
    print("\n== evaluation", flush=True)
    state = eval_states(sizes)
    rows = []
    snap = f"1 snapshot = {sizes.rk4_per_snapshot} RK4 steps"
    try:
        exact_device = exact_rate(sizes, device, state)
        rows.append(row("evaluation", f"exact simulator on {device.type} (fused), batch {sizes.eval_batch}",
                        f"{exact_device:.4g} rollout-steps/s ({snap})", rate=exact_device, kind="exact_device"))
        exact_cpu = numba_rate(sizes, state, cores)
        rows.append(row("evaluation", f"exact simulator on CPU (numba, {cores} cores), batch {sizes.eval_batch}",
                        f"{exact_cpu:.4g} rollout-steps/s", rate=exact_cpu, kind="exact_cpu"))
    except Exception as exc:
        return rows + [failed_row("evaluation", "exact simulator rates", exc)]
    for name in sizes.eval_models:
        best = 0.0
        modes = [("fp32 (TF32)", False, surrogate_rate), ("bf16 autocast", True, surrogate_rate)]
        if device.type == "cuda":
            modes += [("CUDA graph, bf16", True, graph_rate)]
        for label, bf16, fn in modes:
            check = f"{name} rollout on {device.type}, {label}, batch {sizes.eval_batch}"
            if not budget.allows(3):
                rows.append(skipped("evaluation", check, "time budget"))
                continue
            try:
                rate = fn(name, sizes, device, state, bf16)
                best = max(best, rate)
                rows.append(row("evaluation", check, f"{rate:.4g} rollout-steps/s", model=name, mode=label,
                                rate=rate, kind="surrogate"))
            except Exception as exc:
                rows.append(failed_row("evaluation", check, exc))
        if best > 0:
            rows.append(verdict(name, best, exact_device, exact_cpu, device, sizes))
    return rows


# ----------------------------------------------------------------------------- report


def cpu_threads() -> int:
    """Cores this process may use, capped by numba's thread pool (NUMBA_NUM_THREADS)."""
    import numba

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, numba.config.NUMBA_NUM_THREADS))


def machine_meta(device: torch.device, cores: int, sizes: Sizes, dry_run: bool) -> dict[str, Any]:
    import simulate

    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "dry_run": dry_run,
            "python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "cpu": simulate.cpu_name(), "cores": cores, "device": device.type, "sizes": dataclasses.asdict(sizes)}
    if device.type == "cuda":
        meta.update(gpu=torch.cuda.get_device_name(device), gpus=torch.cuda.device_count(),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    try:
        meta["commit"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                        text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        meta["commit"] = None
    return meta


def summary_table(rows: list[dict]) -> str:
    lines = ["| section | check | result | target | status |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['section']} | {r['check']} | {r['result']} | {r['target']} | {r['status']} |")
    return "\n".join(lines)


def output_dir(arg: str | None) -> Path:
    path = Path(arg or os.environ.get("OUT") or ".")
    path.mkdir(parents=True, exist_ok=True)
    return path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="every section at tiny sizes on the CPU (gloo)")
    parser.add_argument("--cpu", dest="dry_run", action="store_true", help="alias of --dry-run")
    parser.add_argument("--compile", action="store_true", help="dry run: include the torch.compile rows (slow)")
    parser.add_argument("--golden", default=os.environ.get("HOLSTEIN_GOLDEN"),
                        help="folder of the golden trajectories (default: ../shared/reference/golden, else "
                             ".gpu_check/golden; env HOLSTEIN_GOLDEN)")
    parser.add_argument("--out", default=None, help="where gpu_check.json goes (default: $OUT, else the cwd)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="seconds for all sections (default 420 on the GPU; the wrapper passes what its "
                             "8 minutes leave after set-up)")
    parser.add_argument("--nproc", type=int, default=None, help="DDP ranks (default: every visible GPU; dry run 2)")
    parser.add_argument("--sections", nargs="+", default=list(SECTION_SHARES), choices=list(SECTION_SHARES))
    parser.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ddp-out", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    parser.add_argument("--ddp-model", default="medium", help=argparse.SUPPRESS)
    parser.add_argument("--ddp-batch", type=int, default=8, help=argparse.SUPPRESS)
    parser.add_argument("--ddp-L", type=int, default=32, help=argparse.SUPPRESS)
    parser.add_argument("--ddp-nstep", type=int, default=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.budget_s is not None and args.budget_s <= 0:
        parser.error(f"--budget-s must be positive, got {args.budget_s}; pass the seconds the sections may take")
    if args.nproc is not None and args.nproc < 1:
        parser.error(f"--nproc must be >= 1, got {args.nproc}; pass the number of DDP ranks")
    return args


def choose(args: argparse.Namespace) -> tuple[Sizes, torch.device]:
    if args.dry_run:
        sizes = dataclasses.replace(DRY_SIZES, compile=args.compile)
        return sizes, torch.device("cpu")
    if not torch.cuda.is_available():
        raise SystemExit("error: torch sees no GPU (torch.cuda.is_available() is False); run on a GPU machine "
                         "with a CUDA build of torch, or pass --dry-run for the CPU rehearsal")
    return GPU_SIZES, torch.device("cuda", 0)


def run(args: argparse.Namespace) -> int:
    sizes, device = choose(args)
    cores = cpu_threads()
    budget = Budget(args.budget_s or (120.0 if args.dry_run else 420.0))
    warnings.filterwarnings("ignore")  # torch.compile's advisory warnings would drown the table
    meta = machine_meta(device, cores, sizes, args.dry_run)
    print(f"gpu_check: {meta.get('gpu', 'CPU dry run')}, torch {torch.__version__}, {cores} CPU cores, "
          f"budget {budget.total:.0f} s", flush=True)
    steps: dict = {}
    report: dict[str, Any] = {"meta": meta, "targets": TARGETS}
    sections = {
        "correctness": lambda: correctness(args, sizes, device, budget, steps),
        "physics": lambda: physics(sizes, device, budget, cores),
        "training": lambda: training(sizes, device, budget, steps),
        "evaluation": lambda: evaluation(sizes, device, budget, cores),
    }
    rows: list[dict] = []
    for name, fn in sections.items():
        if name not in args.sections:
            budget.open(name)
            continue
        report[name] = fn()
        rows += report[name]
    steps.clear()
    report["elapsed_s"] = time.monotonic() - budget.start
    bad = [r for r in rows if r["section"] == "correctness" and r["status"] == "FAIL"]
    report["correctness_ok"] = not bad
    table = summary_table([{k: r[k] for k in ("section", "check", "result", "target", "status")} for r in rows])
    print(f"\n{table}\n", flush=True)
    out = output_dir(args.out) / "gpu_check.json"
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"gpu_check: {len(rows)} rows in {report['elapsed_s']:.0f} s; correctness "
          f"{'OK' if not bad else f'FAILED ({len(bad)})'}; wrote {out}", flush=True)
    return 0 if not bad else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.ddp_worker:
        return ddp_worker(args)
    if args.dry_run:
        torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
