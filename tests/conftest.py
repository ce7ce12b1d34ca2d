"""Shared fixtures. Tests run on CPU with one thread; MACE models in tests are tiny."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import shutil  # noqa: E402

import pytest  # noqa: E402


def _has_gpaw() -> bool:
    try:
        import gpaw  # noqa: F401
    except Exception:
        return False
    return True


HAS_GPAW = _has_gpaw()
needs_gpaw = pytest.mark.skipif(not HAS_GPAW, reason="GPAW is not installed (pip install limace[dft])")


@pytest.fixture
def limace_exe():
    import sys
    from pathlib import Path

    exe = Path(sys.executable).with_name("limace")
    exe = str(exe) if exe.exists() else shutil.which("limace")
    if exe is None:
        pytest.fail("the limace console script is not on PATH; install the package (make venv)")
    return exe
