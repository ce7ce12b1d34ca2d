"""Loading potentials: a registry name or any MACE ``.model`` file -> ASE calculator (or our batched model).

The calculator is mace-torch's own :class:`~mace.calculators.MACECalculator` with two additions: elements the
potential was not trained on are refused before any computation, and a committee (several models) also reports its
spread: ``results["energy_std"]`` (eV), ``results["forces_std"]`` ([n_atoms, 3], eV/A) and ``results["stress_std"]``
(Voigt, eV/A^3), standard deviations over the members (the mean is what ``energy``/``forces``/``stress`` give).

>>> import limace.potentials
>>> atoms.calc = limace.potentials.load("limace-lisnin-small")                 # doctest: +SKIP
>>> atoms.calc = limace.potentials.load(["a.model", "b.model"], dtype="float32")  # committee  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, Union

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # e3nn 0.4.4 + torch >= 2.6 (see helper notes)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from ase.calculators.calculator import all_changes  # noqa: E402
from ase.data import chemical_symbols  # noqa: E402
from ase.stress import full_3x3_to_voigt_6_stress  # noqa: E402
from mace.calculators import MACECalculator  # noqa: E402

from limace.core.errors import LimaceInputError, ModelFileError, UnsupportedElementError  # noqa: E402
from limace.potentials.registry import (  # noqa: E402
    PotentialEntry, check_model_archive, fetch, get_potential, looks_like_path, sha256_file,
)

PathOrName = Union[str, Path]
_DTYPES = {"float64": torch.float64, "float32": torch.float32}


def _check_dtype(dtype) -> str:
    if isinstance(dtype, torch.dtype):
        for name, dt in _DTYPES.items():
            if dt == dtype:
                return name
    if isinstance(dtype, str) and dtype in _DTYPES:
        return dtype
    raise LimaceInputError(f"dtype {dtype!r} is not supported; use 'float64' or 'float32'")


def _check_device(device) -> str:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise LimaceInputError(f"device {device!r} is not a torch device; use 'cpu' or 'cuda'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LimaceInputError(f"device {device!r} asked for but CUDA is not available here; use device='cpu'")
    return str(dev)


def resolve(spec: PathOrName, offline: bool | None = None, progress: bool = True) -> tuple[Path, PotentialEntry | None]:
    """The model file for a registry name (fetched and verified) or a path, and the registry entry if any."""
    if isinstance(spec, Path) or (isinstance(spec, str) and looks_like_path(spec)):
        return Path(spec).expanduser(), None
    if not isinstance(spec, str):
        raise LimaceInputError(f"a potential is a registry name or a .model path, got {type(spec).__name__}")
    try:
        entry = get_potential(spec, offline)
    except LimaceInputError:
        if Path(spec).is_file():  # a model file in the working directory without a suffix
            return Path(spec), None
        raise
    return fetch(entry, offline=offline, progress=progress), entry


def potential_sha256(spec: PathOrName, offline: bool | None = None) -> str:
    """SHA-256 of the model file a registry name or path stands for: what identifies a potential in caches of
    results (a registry name keeps its name across versions; a path can be overwritten by a retrained model)."""
    path, entry = resolve(spec, offline=offline, progress=False)
    if entry is not None:
        return entry.weights.sha256
    if not path.is_file():
        raise LimaceInputError(f"{path}: no such model file")
    return sha256_file(path)


def read_model(path: str | Path, device: str = "cpu") -> torch.nn.Module:
    """The MACE model saved in ``path`` (``torch.save(model)``, as mace-torch writes ``.model`` files).

    Only load files you trust: a ``.model`` file is a pickle (registry weights are checksum-verified).
    """
    path = Path(path)
    check_model_archive(path)  # missing, not a file, or damaged (zip members' CRC): one line, before unpickling
    try:
        model = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:  # truncated, not a pickle, or written by an incompatible version
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise ModelFileError(f"{path}: not a readable MACE model ({type(exc).__name__}: {reason}); download it again "
                             "or check it was written with torch.save(model) by mace-torch") from None
    if not (isinstance(model, torch.nn.Module) and hasattr(model, "atomic_numbers") and hasattr(model, "r_max")):
        raise ModelFileError(f"{path}: holds a {type(model).__name__}, not a MACE model (a torch.nn.Module with "
                             "atomic_numbers and r_max); save the model itself, not a state_dict or checkpoint")
    return model.eval()


def model_elements(model: torch.nn.Module) -> tuple[str, ...]:
    """Chemical symbols the model knows (its ``atomic_numbers`` buffer, the z_table), in its order."""
    return tuple(chemical_symbols[int(z)] for z in model.atomic_numbers)


class LimaceCalculator(MACECalculator):
    """mace-torch's MACECalculator that refuses unknown elements up front and reports a committee's spread.

    ``names`` labels the members (registry names or paths) in error messages; ``entries`` are their registry
    entries (``None`` for a plain file).
    """

    def __init__(self, models: list[torch.nn.Module], *, device: str = "cpu", dtype: str = "float64",
                 names: Sequence[str] = (), entries: Sequence[PotentialEntry | None] = (), **kwargs):
        dtype = _check_dtype(dtype)
        models = [m.to(dtype=_DTYPES[dtype]) for m in models]
        super().__init__(models=models, device=device, default_dtype=dtype, **kwargs)
        self.implemented_properties = list(self.implemented_properties)  # mace extends the class-level list
        if self.num_models > 1:
            self.implemented_properties += ["energy_std", "forces_std", "stress_std"]
        self.names = tuple(names) or tuple(f"model {i}" for i in range(len(models)))
        self.entries = tuple(entries) or (None,) * len(models)
        self.elements = model_elements(self.models[0])
        self._known_z = {int(z) for z in self.models[0].atomic_numbers}

    def check_elements(self, atoms) -> None:
        """Raise UnsupportedElementError when ``atoms`` holds elements the potential was not trained on."""
        unknown = sorted({int(z) for z in atoms.numbers} - self._known_z)
        if unknown:
            bad = ", ".join(f"{chemical_symbols[z]} (Z={z})" for z in unknown)
            who = self.names[0] if len(self.names) == 1 else "the committee " + ", ".join(self.names)
            raise UnsupportedElementError(f"the structure contains {bad}, which {who} was not trained on "
                                          f"(it knows {', '.join(self.elements)})")

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        target = atoms if atoms is not None else self.atoms
        if target is not None:
            self.check_elements(target)
        super().calculate(atoms, properties, system_changes)
        if self.num_models > 1:
            self.results["energy_std"] = float(np.std(self.results["energy_comm"]))
            self.results["forces_std"] = np.std(self.results["forces_comm"], axis=0)
            if "stress_comm" in self.results:
                self.results["stress_std"] = full_3x3_to_voigt_6_stress(np.std(self.results["stress_comm"], axis=0))


def load(name_or_path: PathOrName | Sequence[PathOrName], device: str = "cpu", dtype: str = "float64",
         batched: bool = False, *, offline: bool | None = None, progress: bool = True):
    """A potential, ready to use.

    Args:
        name_or_path: a registry name (``"limace-lisnin-small"``), the path of any MACE ``.model`` file, or a list of
            those for a committee (members must share elements and cutoff).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        dtype: ``"float64"`` or ``"float32"`` (the weights are converted).
        batched: return our batched model (:class:`limace.potentials.batched.BatchedMACE`) for the MD/NEB engines
            instead of an ASE calculator; one potential only.
        offline: never touch the network (default: ``LIMACE_OFFLINE``); registry weights must be cached.
        progress: show a progress bar while downloading.

    Returns:
        a :class:`LimaceCalculator` (an ASE calculator), or a ``BatchedMACE`` when ``batched=True``.
    """
    dtype = _check_dtype(dtype)
    device = _check_device(device)
    specs = list(name_or_path) if isinstance(name_or_path, (list, tuple)) else [name_or_path]
    if not specs:
        raise LimaceInputError("load() got an empty list of potentials")
    if batched and len(specs) > 1:
        raise LimaceInputError(f"batched=True takes one potential, got {len(specs)}; load committee members "
                               "one by one")
    resolved = [resolve(s, offline=offline, progress=progress) for s in specs]
    models = []
    for (path, entry), spec in zip(resolved, specs):
        model = read_model(path, device=device)
        if entry is not None and set(model_elements(model)) != set(entry.elements):
            raise ModelFileError(f"{path}: weights of {entry.name} know {', '.join(model_elements(model))} but its "
                                 f"registry entry ({entry.source}) lists {', '.join(entry.elements)}; fix the entry")
        models.append(model)
    names = [str(s) for s in specs]
    for name, model in zip(names[1:], models[1:]):
        if [int(z) for z in model.atomic_numbers] != [int(z) for z in models[0].atomic_numbers]:
            raise LimaceInputError(f"committee members differ in elements: {names[0]} has "
                                   f"{', '.join(model_elements(models[0]))}, {name} has "
                                   f"{', '.join(model_elements(model))}")
        if float(model.r_max) != float(models[0].r_max):
            raise LimaceInputError(f"committee members differ in cutoff: {names[0]} has r_max "
                                   f"{float(models[0].r_max):g} A, {name} has {float(model.r_max):g} A")
    if batched:
        from limace.potentials.batched import BatchedMACE

        return BatchedMACE(models[0], device=device, dtype=dtype)
    return LimaceCalculator(models, device=device, dtype=dtype, names=names, entries=[e for _, e in resolved])
