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

from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
from ase.data import chemical_symbols

from limace.core.compat import weights_only_fallback
from limace.core.errors import LimaceInputError, ModelFileError
from limace.core.state import dtype_name
from limace.potentials.registry import (
    PotentialEntry, check_model_archive, fetch, get_potential, looks_like_path, sha256_file,
)

PathOrName = Union[str, Path]


def __getattr__(name):
    # LimaceCalculator subclasses mace's MACECalculator: mace is imported when it is first asked for, not here
    if name == "LimaceCalculator":
        from limace.potentials.ase_calculator import LimaceCalculator

        return LimaceCalculator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _check_dtype(dtype) -> str:
    """``"float32"``/``"float64"`` (:func:`limace.core.state.dtype_name`, the one dtype check)."""
    return dtype_name(dtype)


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
        with weights_only_fallback():  # e3nn, if unpickling imports it first, loads its constants with torch.load
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


def load(name_or_path: PathOrName | Sequence[PathOrName], device: str = "cpu", dtype: str = "float64",
         batched: bool = False, *, offline: bool | None = None, progress: bool = True, domain: bool = True,
         prediction: str | None = None):
    """A potential, ready to use.

    Args:
        name_or_path: a registry name (``"limace-lisnin-small"``), the path of any MACE ``.model`` file, or a list of
            those for a committee (members must share elements and cutoff); ``[name, "shipped"]``: the potential
            and the committee registered with it.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        dtype: ``"float64"`` or ``"float32"`` (the weights are converted).
        batched: return our batched model (:class:`limace.potentials.batched.BatchedMACE`) for the MD/NEB engines
            instead of an ASE calculator (:func:`load_batched`, which takes more options).
        offline: never touch the network (default: ``LIMACE_OFFLINE``); registry weights must be cached.
        progress: show a progress bar while downloading.
        domain: the ASE calculator runs the domain check beside the weights, if any, at every calculation
            (``results["domain_score"]``, ``["outside_domain"]``); it costs a second forward pass, so about doubles
            the time of each call. False: energies, forces and stress only.
        prediction: for a committee, what energy, forces and stress are: ``"mean"`` (the members' mean, as in
            mace-torch; the default for a list of potentials) or ``"first"`` (the first potential's own results, the
            others giving only the spread; the default for ``[name, "shipped"]``, whose registered members are
            there for the uncertainty of ``name``, not to change its predictions).

    Returns:
        a :class:`LimaceCalculator` (an ASE calculator), or a ``BatchedMACE`` when ``batched=True`` (a
        :class:`~limace.potentials.committee.BatchedCommittee` for several potentials).
    """
    dtype = _check_dtype(dtype)
    device = _check_device(device)
    specs = list(name_or_path) if isinstance(name_or_path, (list, tuple)) else [name_or_path]
    if not specs:
        raise LimaceInputError("load() got an empty list of potentials")
    prediction = _prediction(prediction, specs)
    specs = _expand_shipped(specs, offline)
    if batched:  # one potential: BatchedMACE; several: a BatchedCommittee
        return load_batched(specs, device=device, dtype=dtype, offline=offline, progress=progress,
                            prediction=prediction)
    from limace.potentials.ase_calculator import LimaceCalculator

    models, entries = _read_models(specs, device, offline, progress)
    return LimaceCalculator(models, device=device, dtype=dtype, names=[str(s) for s in specs], entries=entries,
                            domain=_domain_of(specs[0], offline) if domain else None, copy=False,
                            prediction=prediction)


def _prediction(prediction: str | None, specs: Sequence) -> str:
    """The committee's prediction rule: as given, else ``"first"`` with the shipped committee, ``"mean"`` otherwise."""
    from limace.potentials.committee import check_prediction
    from limace.potentials.registry import SHIPPED_COMMITTEE

    if prediction is None:
        return "first" if SHIPPED_COMMITTEE in [str(s) for s in specs[1:]] else "mean"
    return check_prediction(prediction)


def _domain_of(spec: PathOrName, offline: bool | None):
    """The domain check beside the weights of ``spec``, or None."""
    from limace.potentials.domain import DomainCheck, domain_path

    path, _ = resolve(spec, offline=offline, progress=False)
    dom = domain_path(path)
    return DomainCheck.load(dom) if dom.is_file() else None


def load_batched(name_or_path: PathOrName, device: str = "cpu", dtype: str = "float64", *, skin: float = 0.5,
                 max_atoms_per_call: int | str | None = "auto", compute_stress: bool = False, compile: bool = False,
                 offline: bool | None = None, progress: bool = True, prediction: str | None = None):
    """The one loader of batched models: a registry name or ``.model`` path -> a
    :class:`~limace.potentials.batched.BatchedMACE` (the :class:`limace.core.model.BatchedModel` contract), for
    MD, relaxation, NEB and screening. ``skin``, ``max_atoms_per_call``, ``compute_stress`` and ``compile`` are
    BatchedMACE's options; the rest as :func:`load`. A list of several potentials gives a
    :class:`~limace.potentials.committee.BatchedCommittee` of them (the members' mean, or with ``prediction="first"``
    the first one's results, as in :func:`load`; plus ``energy_std`` and ``forces_std``); its members must share
    elements and cutoff."""
    from limace.potentials.batched import BatchedMACE

    dtype = _check_dtype(dtype)
    device = _check_device(device)
    if isinstance(name_or_path, (list, tuple)):
        specs = list(name_or_path)
        if not specs:
            raise LimaceInputError("load_batched() got an empty list of potentials")
        prediction = _prediction(prediction, specs)
        specs = _expand_shipped(specs, offline)
    else:
        specs = [name_or_path]
    models, _ = _read_models(specs, device, offline, progress)  # several: checked against each other (elements, r_max)
    members = []
    for spec, model in zip(specs, models):
        # the model was read here, so BatchedMACE may convert it in place (copy=False) instead of copying it
        batched = BatchedMACE(model, device=device, dtype=dtype, compute_stress=compute_stress, skin=skin,
                              max_atoms_per_call=max_atoms_per_call, compile=compile, copy=False)
        batched.domain = _domain_of(spec, offline)  # its domain check (limace.potentials.domain), or None
        members.append(batched)
    if len(members) == 1:
        return members[0]
    from limace.potentials.committee import BatchedCommittee

    return BatchedCommittee(members, names=[str(s) for s in specs], prediction=prediction)  # resolved for a list


def _expand_shipped(specs: list, offline: bool | None) -> list:
    """``[potential, "shipped"]`` -> the potential and the committee registered with it
    (:func:`limace.potentials.registry.expand_committee`)."""
    from limace.potentials.registry import SHIPPED_COMMITTEE, expand_committee

    if SHIPPED_COMMITTEE not in [str(s) for s in specs[1:]]:
        return specs
    return [specs[0], *expand_committee([str(s) for s in specs[1:]], str(specs[0]), offline)]


def _read_models(specs: Sequence[PathOrName], device: str, offline: bool | None, progress: bool):
    """The models of ``specs`` (checked against their registry entries and, for several, against each other) and
    the registry entries (``None`` for plain files)."""
    resolved = [resolve(s, offline=offline, progress=progress) for s in specs]
    models = []
    for path, entry in resolved:
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
    return models, [e for _, e in resolved]
