"""The layering of the package, checked on the source with the stdlib ``ast`` (module-level and function-level
imports alike), and the absence of process-wide side effects at import.

Layers: ``limace.core`` (state, neighbour lists, model protocol, optimisers, units, errors, file IO) imports nothing
of limace outside itself; ``limace.potentials`` and ``limace.md`` both build on core and do not import each other;
``limace.data`` does not import the layers that use it (analysis, training, md, learn, the CLI).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "limace"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """``[(line, imported module), ...]`` of every import in the file, at any depth (lazy imports in functions
    included), relative imports resolved; ``from limace import x`` counts as ``limace.x``; the targets of a lazy
    ``_LAZY = {"name": "module"}`` table count too."""
    tree = ast.parse(path.read_text(), filename=str(path))
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            out.append((node.lineno, target))
            out += [(node.lineno, f"{target}.{a.name}") for a in node.names if a.name != "*"]
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_LAZY" for t in node.targets):
            if isinstance(node.value, ast.Dict):
                out += [(node.lineno, v.value) for v in node.value.values
                        if isinstance(v, ast.Constant) and isinstance(v.value, str)]
    return out


def _files(package: str) -> list[Path]:
    root = SRC / package.replace("limace.", "").replace(".", "/")
    return sorted(root.rglob("*.py")) if root.is_dir() else [root.with_suffix(".py")]


def _violations(package: str, forbidden: tuple[str, ...], allowed: tuple[str, ...] = ()) -> list[str]:
    bad = []
    for path in _files(package):
        for line, target in _imports(path):
            if not target.startswith("limace"):
                continue
            if any(target == a or target.startswith(a + ".") for a in allowed):
                continue
            if any(target == f or target.startswith(f + ".") for f in forbidden):
                bad.append(f"{path.relative_to(SRC.parent)}:{line} imports {target}")
    return bad


def test_the_import_walker_sees_lazy_and_relative_imports(tmp_path):
    """The checker itself: a function-level import and a relative one are found (else the tests below prove
    nothing)."""
    imports = dict((t, n) for n, t in _imports(SRC / "md" / "cli.py"))
    assert "limace.md.runner" in imports  # imported inside a function
    assert any(t.startswith("limace.core") for t in imports)
    rel = SRC / "md" / "_probe_relative_import.py"
    try:
        rel.write_text("def f():\n    from ..core import state\n    from . import runner\n")
        targets = {t for _, t in _imports(rel)}
    finally:
        rel.unlink()
    assert {"limace.core", "limace.core.state", "limace.md", "limace.md.runner"} <= targets


def test_md_does_not_import_potentials():
    assert _violations("limace.md", ("limace.potentials",)) == []


def test_md_does_not_import_analysis():
    """Post-processing (diffusion, hull, barriers) sits above the engines; md/diffusion.py is the one deprecated
    alias of limace.analysis.diffusion kept for old scripts."""
    bad = [v for v in _violations("limace.md", ("limace.analysis",)) if not v.startswith("limace/md/diffusion.py:")]
    assert bad == []


def test_potentials_do_not_import_md():
    assert _violations("limace.potentials", ("limace.md",)) == []


def test_data_does_not_import_the_layers_above_it():
    forbidden = ("limace.analysis", "limace.training", "limace.md", "limace.learn", "limace.cli", "limace.demo",
                 "limace.potentials")
    assert _violations("limace.data", forbidden) == []


def test_core_imports_nothing_of_limace_outside_core():
    assert _violations("limace.core", ("limace",), allowed=("limace.core",)) == []


def test_old_module_paths_still_work():
    """Scripts written against the old layout keep working: the moved modules re-export the same objects."""
    from limace.analysis.optimize import OPTIMIZERS, fire_init
    from limace.core import optimize, state
    from limace.core.errors import LimaceInputError as CoreError
    from limace.errors import LimaceInputError
    from limace.fileio import atomic_write_text
    from limace.keys import EV_PER_A3_TO_GPA
    from limace.md.state import BatchedState, MDState
    from limace.potentials.neighbors import VerletList
    from limace.analysis.diffusion import ArrheniusFit
    from limace.md.diffusion import ArrheniusFit as OldArrheniusFit

    assert OldArrheniusFit is ArrheniusFit

    assert BatchedState is state.BatchedState and MDState is state.MDState
    assert OPTIMIZERS is optimize.OPTIMIZERS and fire_init is optimize.fire_init
    assert LimaceInputError is CoreError and callable(atomic_write_text)
    assert EV_PER_A3_TO_GPA == pytest.approx(160.21766208)
    from limace.core.neighbors import VerletList as CoreVerlet

    assert VerletList is CoreVerlet
    opt = OPTIMIZERS["lbfgs"]
    assert opt.select is optimize.lbfgs_select and opt.name == "lbfgs"


def test_run_neb_and_barrier_settings_default_to_the_same_optimizer():
    import inspect

    from limace.analysis.barriers import BarrierSettings
    from limace.analysis.neb import run_neb

    assert inspect.signature(run_neb).parameters["optimizer"].default == BarrierSettings().optimizer == "lbfgs"


def test_no_backend_switch_in_library_code():
    """``matplotlib.use`` changes the backend of the user's whole process: library code draws on Figures."""
    calls = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "use" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id in ("matplotlib", "mpl"):
                calls.append(f"{path.relative_to(SRC.parent)}:{node.lineno}")
    assert calls == []


_PROBE = r"""
import json, os, sys
import matplotlib
matplotlib.use("svg")  # the user's choice, which the library must keep
env0 = os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
import limace.potentials
after_package = os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
import limace.potentials.calculator, limace.potentials.batched, limace.potentials.pair
import limace.md.runner, limace.analysis.neb, limace.analysis.barriers, limace.analysis.hull, limace.cli
after_modules = os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
import numpy as np
from limace.analysis.neb import NEBResult
res = NEBResult(energies=np.array([0.0, 0.3, 0.1]), positions=[np.zeros((1, 3)), np.ones((1, 3)), 2 * np.ones((1, 3))],
                converged=True, steps=3, fmax=0.05, max_force=0.01, climbing_image=1)
res.plot(label="probe")
print(json.dumps({"env0": env0, "after_package": after_package, "after_modules": after_modules,
                  "backend": matplotlib.get_backend()}))
"""


def test_importing_the_library_has_no_process_wide_side_effects():
    """Importing limace.potentials (and the modules that load models, and plotting a profile) neither sets
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD for the process nor switches the matplotlib backend."""
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "MPLBACKEND")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got == {"env0": None, "after_package": None, "after_modules": None, "backend": "svg"}


def test_reading_a_model_leaves_the_weights_only_default_alone(tiny_mace_model_path):
    import os

    from limace.potentials.calculator import read_model

    before = os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    read_model(tiny_mace_model_path)
    assert os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD") == before


def test_batched_mace_does_not_change_the_callers_model():
    import torch

    from conftest import build_tiny_mace
    from limace.potentials.batched import BatchedMACE

    model = build_tiny_mace(0).train()
    flags = [p.requires_grad for p in model.parameters()]
    ref = {k: v.clone() for k, v in model.state_dict().items()}
    batched = BatchedMACE(model, dtype=torch.float32)
    assert next(batched.model.parameters()).dtype == torch.float32
    assert next(model.parameters()).dtype == torch.float64
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())


def test_the_ase_calculator_does_not_change_the_callers_model():
    import torch

    from conftest import build_tiny_mace
    from limace.potentials.calculator import LimaceCalculator

    model = build_tiny_mace(0)
    ref = {k: v.clone() for k, v in model.state_dict().items()}
    calc = LimaceCalculator([model], dtype="float32")
    assert next(calc.models[0].parameters()).dtype == torch.float32
    assert next(model.parameters()).dtype == torch.float64
    assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())


def test_batched_models_follow_the_protocol(tiny_mace_model_path):
    from limace.core.model import BatchedModel
    from limace.potentials.batched import BatchedMACE
    from limace.potentials.pair import BatchedMorse

    assert isinstance(BatchedMorse(), BatchedModel)
    assert isinstance(BatchedMACE.from_file(tiny_mace_model_path), BatchedModel)


def test_one_list_of_dtypes():
    """Options, configs and tensors check the precision against one list (limace.core.errors.FLOAT_DTYPES)."""
    from limace.core.errors import FLOAT_DTYPES, ValidationError, check_dtype_name

    literal = [str(p.relative_to(SRC.parent)) for p in SRC.rglob("*.py")
               if p.name != "errors.py" and ('("float32", "float64")' in p.read_text()
                                            or '("float64", "float32")' in p.read_text())]
    assert literal == []
    assert check_dtype_name("float32") == "float32" and FLOAT_DTYPES == ("float32", "float64")
    with pytest.raises(ValidationError, match="--dtype must be float32 or float64, not 'float16'"):
        check_dtype_name("float16")


def test_mace_is_imported_only_when_a_model_is_used():
    """Importing the library (the CLI, the loaders, the engines) does not import mace or e3nn (seconds, and
    mace's import-time messages); the ASE calculator class imports it when first asked for."""
    probe = ("import sys\n"
             "import limace.cli, limace.potentials, limace.potentials.calculator, limace.potentials.batched\n"
             "import limace.md.runner, limace.analysis.barriers, limace.analysis.screen, limace.training, limace.learn\n"
             "before = sorted(m for m in ('mace', 'e3nn') if m in sys.modules)\n"
             "from limace.potentials.calculator import LimaceCalculator\n"
             "print(before, LimaceCalculator.__mro__[1].__module__)\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[] mace.calculators.mace"
