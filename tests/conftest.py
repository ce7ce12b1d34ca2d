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


# -- tiny MACE models (random weights, mace-torch's own classes) ------------------------------------------------------

TINY_MACE_Z = (3, 49, 50)  # Li, In, Sn
TINY_MACE_R_MAX = 4.5


def build_tiny_mace(seed: int = 0, dtype: str = "float64"):
    """A random-weight ScaleShiftMACE (8 channels, L=1, 2 interactions, Li/In/Sn, r_max 4.5 A): a real potential.

    Built under a forked torch RNG, so the global RNG state is left as it was.
    """
    import numpy as np
    import torch
    from mace import modules  # mace before e3nn (torch >= 2.6 weights-only load)
    from e3nn import o3

    block = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = modules.ScaleShiftMACE(
            r_max=TINY_MACE_R_MAX, num_bessel=6, num_polynomial_cutoff=5, max_ell=2,
            interaction_cls=block, interaction_cls_first=block, num_interactions=2,
            num_elements=len(TINY_MACE_Z), hidden_irreps=o3.Irreps("8x0e + 8x1o"), MLP_irreps=o3.Irreps("8x0e"),
            gate=torch.nn.functional.silu, atomic_energies=np.array([-1.9, -2.6, -3.8]), avg_num_neighbors=12.0,
            atomic_numbers=list(TINY_MACE_Z), correlation=2, radial_type="bessel",
            atomic_inter_scale=2.0, atomic_inter_shift=0.0,
        )
        # Spread the weights beyond mace's initialisation so forces and stresses are well above round-off.
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.3 * (p.abs().mean() + 0.1) * torch.randn_like(p))
    return model.to({"float64": torch.float64, "float32": torch.float32}[dtype]).eval()


@pytest.fixture(scope="session")
def tiny_mace_model_factory(tmp_path_factory):
    """``make(seed=0) -> Path`` of a tiny random-weight MACE ``.model`` file (torch.save of the model), cached per
    seed for the session."""
    import torch

    made: dict[int, object] = {}
    root = tmp_path_factory.mktemp("tiny_mace")

    def make(seed: int = 0):
        if seed not in made:
            path = root / f"tiny-mace-{seed}.model"
            torch.save(build_tiny_mace(seed), path)
            made[seed] = path
        return made[seed]

    return make


@pytest.fixture(scope="session")
def tiny_mace_model_path(tiny_mace_model_factory):
    """Path of a tiny random-weight MACE ``.model`` file (Li/In/Sn, float64, 8 channels, r_max 4.5 A)."""
    return tiny_mace_model_factory(0)
