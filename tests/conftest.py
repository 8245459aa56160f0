"""Shared test helpers: where the real data lies, and running the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DLSA_SHARED_DATA", REPO.parent / "shared" / "data"))
CALTECH_NPZ = SHARED_DATA / "caltech101_lite0.npz"
CALTECH_SAMPLE = SHARED_DATA / "caltech101-sample"
PROFILES = SHARED_DATA / "profiles"

requires_caltech = pytest.mark.skipif(
    not CALTECH_NPZ.exists(), reason=f"real Caltech-101 features not found at {CALTECH_NPZ}"
)
requires_caltech_sample = pytest.mark.skipif(
    not (CALTECH_SAMPLE / "manifest.csv").exists(), reason=f"Caltech-101 photo sample not found at {CALTECH_SAMPLE}"
)


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run `python -m dlsa_cli ARGS` in a real subprocess, capturing text output (`env`: extra variables)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="200", **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "dlsa_cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def caltech_lt():
    """Caltech-101-LT (seed 0) train/val/test FeatureSets from the real features."""
    if not CALTECH_NPZ.exists():
        pytest.skip(f"real Caltech-101 features not found at {CALTECH_NPZ}")
    from dlsa_cli.datasets import caltech101_lt

    return caltech101_lt(CALTECH_NPZ, seed=0)


def invoke(*args) -> SimpleNamespace:
    """The real CLI in this process (CliRunner on the app), shaped like `run_cli`'s result."""
    from typer.testing import CliRunner

    from dlsa_cli.cli import app

    r = CliRunner().invoke(app, [str(a) for a in args])
    return SimpleNamespace(returncode=r.exit_code, stdout=r.stdout, stderr=r.stderr)


def assert_clean_failure(r, out: Path, needle: str) -> None:
    """Non-zero exit, one line on stderr containing `needle`, no traceback, nothing written at `out`."""
    assert r.returncode != 0, r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert needle in lines[0], lines[0]
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")], "temporary file left behind"


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """scikit-learn's real digit scans made long-tailed (train counts 112..6), as feature files."""
    from dlsa_cli.datasets import digits_lt
    from dlsa_cli.io.features import write_features

    d = tmp_path_factory.mktemp("digits")
    s = digits_lt()
    for name in ("train", "val", "test"):
        write_features(d / f"{name}.safetensors", getattr(s, name), meta={"class_names": s.class_names})
    return d
