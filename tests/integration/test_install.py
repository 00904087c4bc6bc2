"""A plain (non-editable) install works away from the source tree: generate -> train -> evaluate.

The project is built and installed the way `pip install .` does it into a fresh virtual environment, and
the three commands run from an unrelated directory on the configs shipped inside the package. An install
that found its configs (or anything else) through the repository layout fails here.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
# What a source distribution of the project holds (tests, benchmarks and local state stay behind).
SOURCES = ("pyproject.toml", "README.md", "holstein_dist", "hpc", "configs")


def fresh_venv(root: Path) -> Path:
    """A new virtual environment that sees this interpreter's packages (torch, h5py, ...) but not the project.

    Not --system-site-packages: the dependencies live in the test runner's own venv, not the base Python.
    The .pth line only appends that folder to sys.path; its own .pth files (the project's editable-install
    hook among them) are not executed, so `holstein_dist` can come only from the fresh install.
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    python = root / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             check=True, capture_output=True, text=True).stdout.strip()
    (Path(purelib) / "test_runner_packages.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python


def copy_sources(dest: Path) -> Path:
    """The project's files, symlinks kept (holstein_dist/configs links to configs/), build debris left out."""
    dest.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in SOURCES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, symlinks=True, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)
    return dest


def test_pip_install_runs_generate_train_evaluate_from_another_directory(tmp_path: Path) -> None:
    python = fresh_venv(tmp_path / "venv")
    source = copy_sources(tmp_path / "src")
    # pip install . (not -e): a wheel is built and its files installed. --ignore-installed: never touch the
    # test runner's own (editable) install, which pip can see through the .pth line.
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                              "--no-index", "--ignore-installed", str(source)],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    shutil.rmtree(source)  # nothing may be read from the sources any more

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k != "PYTHONPATH" and not k.startswith(("SLURM_", "SUBMITIT_"))
           and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")

    def run(*argv: str) -> str:
        done = subprocess.run([str(python), *argv], cwd=work, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (argv, done.stdout[-3000:] + done.stderr[-3000:])
        return done.stdout

    where = run("-c", "import holstein_dist, hpc; from holstein_dist.config import shipped; "
                      "print(holstein_dist.__file__); print(hpc.__file__); print(shipped('data', 'tiny')); "
                      "print(shipped('train', 'tiny'))").split()
    site_dir = str(tmp_path / "venv")
    assert all(path.startswith(site_dir) for path in where), where  # the installed copy, not the repository
    data_config, train_config = where[2], where[3]

    run("-m", "holstein_dist.generate", "--config", data_config, "--out", "data", "--backend", "serial")
    # `model: tiny` in the train config resolves to the packaged configs/model/tiny.yaml.
    run("-m", "holstein_dist.train", "--config", train_config, "--data", "data", "--run-dir", "run", "max_steps=10")
    run("-m", "holstein_dist.evaluate", "--checkpoint", "run", "--data", "data", "--out", "eval", "--device", "cpu",
        "baseline_steps=2")

    report = json.loads((work / "eval" / "report.json").read_text())
    assert report["mode"] == "model" and report["data"]["rollouts"] == 2
    assert (work / "run" / "checkpoints" / "best.pt").is_file()
