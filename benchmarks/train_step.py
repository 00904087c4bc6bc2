"""Benchmark: one training step (4-step unrolled forward + backward) and the data loader's window rate.

``--reference-src PATH`` (a checkout of the original code, github.com/apning/holstein-parc, that you
supply; nothing of it is copied here) imports the original model and times its step beside ours in the
same process, on the same batch, loss and threads (CPU or GPU), and prints the measured ratios; the
target is >= 1.3x at equal math. Every variant below runs the same model and loss (``holstein_dist.train``); eager,
channels_last and compile differ in memory layout and compilation only, and each variant's gradients are
checked against eager's so a fast but wrong variant cannot pass (relative difference of the summed
|gradient|, printed).

    python benchmarks/train_step.py                       # CPU, 2 threads: tiny + medium, all variants
    python benchmarks/train_step.py --device cuda         # GPU: fp32 / bf16 / compile / bf16+compile
    python benchmarks/train_step.py --data DIR            # loader rate on an existing data set (L=32 best)
    python benchmarks/train_step.py --reference-src ~/holstein-parc [--device cuda]   # + the original code

Variants: ``eager`` (NCHW, as built), ``channels_last`` (the ``channels_last`` train flag),
``compile`` (torch.compile of the surrogate, the ``compile`` flag), ``bf16`` (the ``bf16`` flag: autocast
of the convolutions; NOT equal math - its gradient differs at the 1e-3 level - but fast on GPUs and on
CPUs with AVX512-BF16/AMX). The loader part times ``RolloutWindows`` reads (with PARC derivative labels)
from the HDF5 shards, serially and through a DataLoader with workers, and prints them next to the windows/s
a training step consumes.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from holstein_dist.config import load_config
from holstein_dist.data import EpochSampler, RolloutWindows, make_loader, open_data
from holstein_dist.model import SCALE_KEYS, ModelConfig, build_model
from holstein_dist.train import Rollout, rollout_loss

ROOT = Path(__file__).resolve().parents[1]


def step_seconds(fn: Callable[[], object], repeats: int, warmup: int = 2) -> tuple[float, float]:
    """(median, min) wall time of ``repeats`` calls after ``warmup`` calls (compilation, allocator warm-up).

    Both are printed: on a shared machine the minimum is the better estimate of the step's own cost.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def make_batch(B: int, L: int, n: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Random states of realistic magnitude; timing does not depend on the values."""
    g = torch.Generator().manual_seed(0)
    batch = {
        "rho": 0.5 * torch.randn(B, n + 1, L, L, dtype=torch.complex64, generator=g),
        "Q": 0.1 * torch.randn(B, n + 1, L, generator=g),
        "P": 0.1 * torch.randn(B, n + 1, L, generator=g),
        "drho": torch.randn(B, n, L, L, dtype=torch.complex64, generator=g),
        "dQ": 0.1 * torch.randn(B, n, L, generator=g),
        "dP": 0.1 * torch.randn(B, n, L, generator=g),
    }
    return {k: v.to(device) for k, v in batch.items()}


def train_step_fn(model_cfg: ModelConfig, variant: str, batch: dict, n: int, device: torch.device):
    """(step function, gradient fingerprint of its first call) for one variant; same initial weights for all."""
    torch.manual_seed(0)
    model = build_model(model_cfg, dict.fromkeys(SCALE_KEYS, 1.0)).to(device)
    model.eval()  # no dropout: identical arithmetic across variants, so their gradients can be compared
    with torch.no_grad():
        # The increment networks start at exactly zero, which would hide most layers from the fingerprint
        # below; a seeded perturbation makes every layer count.
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())).to(device))
    bf16 = "bf16" in variant
    if "channels_last" in variant:
        model = model.to(memory_format=torch.channels_last)
    core = torch.compile(model) if "compile" in variant else model
    rollout = Rollout(core)
    x0 = (batch["rho"][:, 0], batch["Q"][:, 0], batch["P"][:, 0])

    def step() -> float:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            states, derivs = rollout(*x0, n)
        loss = rollout_loss(states, derivs, batch)[0]
        model.zero_grad(set_to_none=True)
        loss.backward()
        # Fingerprint of the whole computation: the gradient reaches every layer, the loss alone barely moves.
        return float(sum(p.grad.double().abs().sum() for p in model.parameters()))

    return step, step()


def load_reference(src: str):
    """The original code's ``src.modeling`` module, imported from the user's checkout at ``src``."""
    root = Path(src).expanduser().resolve()
    if not (root / "src" / "modeling.py").is_file():
        raise SystemExit(f"error: --reference-src {src} has no src/modeling.py; pass a checkout of "
                         "github.com/apning/holstein-parc")
    sys.path.insert(0, str(root))
    import importlib

    module = importlib.import_module("src.modeling")
    if Path(module.__file__).resolve().parent != root / "src":
        raise SystemExit(f"error: another package named 'src' ({module.__file__}) shadows --reference-src {src}; "
                         "run from a directory without one")
    return module


def reference_step_fn(reference, cfg: ModelConfig, batch: dict, n: int, device: torch.device):
    """(step function, parameter count) of the original model with our config, unit scales, dropout 0.

    The paper's settings (the original's experiment configs: tanh, channel LayerNorm, no residual scalar,
    Xavier init), so the parameter counts match ours; its own multi-step forward (``return_multiple_steps``)
    feeds our loss, so both sides do equal math.
    """
    scalars = dict.fromkeys(SCALE_KEYS, 1.0)
    torch.manual_seed(0)
    model = reference.HolsteinPARC(channels=cfg.channels, n_blocks=cfg.n_blocks, dropout_p=0.0,
                                   kernel_size=cfg.kernel_size, use_residual_scalar=False,
                                   act_func=torch.nn.Tanh(), init_method="xavier_uniform", use_layernorm=True,
                                   data_scalars=scalars, simple_cnn=cfg.kind == "simple").to(device)
    x0 = (batch["rho"][:, 0], batch["Q"][:, 0], batch["P"][:, 0])
    parc = cfg.kind == "parc"

    def step() -> None:
        out = model(*x0, return_derivatives=parc, n_step=n, return_multiple_steps=True)
        states = [tuple(x[:, k] for x in out[:3]) for k in range(n)]
        derivs = [tuple(x[:, k] for x in out[3:]) for k in range(n)] if parc else None
        loss = rollout_loss(states, derivs, batch)[0]
        model.zero_grad(set_to_none=True)
        loss.backward()

    return step, sum(p.numel() for p in model.parameters())


def bench_reference(reference, name: str, cfg: ModelConfig, args: argparse.Namespace, batch: dict,
                    device: torch.device, ours: dict[str, float]) -> None:
    """Time the original model's step and print our variants' measured speed-ups over it."""
    step, params = reference_step_fn(reference, cfg, batch, args.n_step, device)
    ours_params = sum(p.numel() for p in build_model(cfg, dict.fromkeys(SCALE_KEYS, 1.0)).parameters())
    seconds, fastest = step_seconds(step, args.repeats if name != "medium" else max(3, args.repeats // 3))
    print(f"{name:7s} {'ORIGINAL (reference)':22s} {seconds * 1000:8.1f} ms/step (min {fastest * 1000:8.1f}) "
          f"{args.batch / seconds:7.1f} windows/s  parameters {params:,} (ours {ours_params:,})", flush=True)
    for variant, ours_s in ours.items():
        print(f"{name:7s} {variant:22s} {seconds / ours_s:5.2f}x the original, measured in this run", flush=True)


def bench_models(args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Print seconds per training step for every model x variant; returns windows/s consumed (eager)."""
    consumed = {}
    batch = make_batch(args.batch, args.L, args.n_step, device)
    reference = load_reference(args.reference_src) if args.reference_src else None
    for name in args.models:
        cfg = load_config(ModelConfig, ROOT / "configs" / "model" / f"{name}.yaml")
        base_s, base_grad = None, None
        timings: dict[str, float] = {}
        for variant in args.variants:
            try:
                step, grad = train_step_fn(cfg, variant, batch, args.n_step, device)
                seconds, fastest = step_seconds(step, args.repeats if name != "medium" else max(3, args.repeats // 3))
            except Exception as exc:  # a variant the platform cannot run (e.g. compile without a compiler)
                print(f"{name:7s} {variant:24s} unavailable: {type(exc).__name__}: {str(exc).splitlines()[0]}")
                continue
            if base_s is None:
                base_s, base_grad = seconds, grad
                consumed[name] = args.batch / seconds
            timings[variant] = seconds
            rel = abs(grad - base_grad) / abs(base_grad)
            print(f"{name:7s} {variant:22s} {seconds * 1000:8.1f} ms/step (min {fastest * 1000:8.1f}) "
                  f"{args.batch / seconds:7.1f} windows/s "
                  f"{base_s / seconds:5.2f}x vs {args.variants[0]:5s} grad rel.diff {rel:.1e}", flush=True)
        if reference is not None:
            bench_reference(reference, name, cfg, args, batch, device, timings)
    return consumed


def tiny_l32_dataset(out: Path) -> Path:
    """A small L=32 deep-quench data set (the tiny recipe at L=32), made by the real generate command."""
    cmd = [sys.executable, "-m", "holstein_dist.generate", "--config", str(ROOT / "configs/data/tiny.yaml"),
           "--out", str(out), "--backend", "serial", "L=32"]
    subprocess.run(cmd, check=True, capture_output=True)
    return out


def bench_loader(args: argparse.Namespace, consumed: dict[str, float]) -> None:
    """Windows/s (with derivative labels) read from the shards per window and from a preloaded split, serial
    and with DataLoader workers, side by side in this run."""
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(args.data) if args.data else tiny_l32_dataset(Path(tmp) / "data")
        data = open_data(data_dir)
        count = 2000
        indices = list(EpochSampler(len(RolloutWindows(data, "train", args.n_step)), 1, count, seed=0))
        serial = {}
        for mode, preload_gib in (("files", 0.0), ("preload", 64.0)):
            start = time.perf_counter()
            windows = RolloutWindows(data, "train", args.n_step, preload_gib=preload_gib)
            windows[indices[0]]  # with the preload's one-time load in the constructor
            first = time.perf_counter() - start
            start = time.perf_counter()
            for i in indices:
                windows[i]
            serial[mode] = count / (time.perf_counter() - start)
            print(f"loader  L={data.L} n_step={args.n_step} {mode:7s}: {serial[mode]:8.0f} windows/s in one process "
                  f"(first item {first:.2f} s)", flush=True)
            for workers in args.workers:
                batches = 60
                loader = make_loader(windows, EpochSampler(len(windows), args.batch, batches, seed=1), args.batch,
                                     workers)
                it = iter(loader)
                next(it)  # worker start-up (and a worker's own preload) is paid once per epoch; time the steady state
                start = time.perf_counter()
                n = sum(b["rho"].shape[0] for b in it)
                rate = n / (time.perf_counter() - start)
                print(f"loader  {mode:7s} DataLoader, {workers} worker(s), batch {args.batch}: {rate:8.0f} windows/s",
                      flush=True)
        print(f"loader  preload / files, one process: {serial['preload'] / serial['files']:.1f}x", flush=True)
    for name, rate in consumed.items():
        print(f"consume {name:7s} training step (eager) consumes {rate:8.1f} windows/s per rank", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads on CPU (default 2)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--L", type=int, default=32)
    parser.add_argument("--n-step", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--models", nargs="*", default=["tiny", "medium"],
                        help="names in configs/model (none: the loader part only)")
    parser.add_argument("--variants", nargs="+", default=None,
                        help="default: eager channels_last compile channels_last+compile bf16 channels_last+bf16 "
                             "(CPU); eager bf16 compile bf16+compile channels_last+bf16+compile (GPU)")
    parser.add_argument("--data", default=None, help="data set for the loader benchmark (default: a temporary "
                                                      "tiny L=32 one)")
    parser.add_argument("--workers", nargs="+", type=int, default=[0, 2])
    parser.add_argument("--skip-loader", action="store_true")
    parser.add_argument("--reference-src", default=None, metavar="PATH",
                        help="checkout of the original code (github.com/apning/holstein-parc): time its model "
                             "beside ours in this run and print the ratios")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")  # torch.compile's advisory warnings would drown the table
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    if args.variants is None:
        args.variants = (["eager", "channels_last", "compile", "channels_last+compile", "bf16", "channels_last+bf16"]
                         if device.type == "cpu"
                         else ["eager", "bf16", "compile", "bf16+compile", "channels_last+bf16+compile"])
    where = f"{torch.get_num_threads()} threads" if device.type == "cpu" else torch.cuda.get_device_name()
    print(f"torch {torch.__version__}, {device.type} ({where}), batch {args.batch}, L={args.L}, "
          f"{args.n_step}-step unroll, forward + backward", flush=True)
    consumed = bench_models(args, device)
    if not args.skip_loader:
        bench_loader(args, consumed)


if __name__ == "__main__":
    main()
