"""Reading labelled configurations from extxyz, ASE trajectories, VASP and GPAW outputs, and validating them.

Everything comes back in one form: ASE Atoms with ``info['REF_energy']``, ``arrays['REF_forces']`` and (periodic
cells) ``info['REF_stress']`` in Voigt order, no calculator attached. Validation errors are
:class:`limace.core.errors.ValidationError` with one line naming the file, the frame and the key.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from ase import Atoms

from limace.core.errors import ValidationError
from limace.keys import CONFIG_TYPE_KEY, ELEMENTS, ENERGY_KEY, FORCES_KEY, STRESS_KEY

# file suffix / name -> ASE format
_FORMATS = {
    ".xyz": "extxyz",
    ".extxyz": "extxyz",
    ".traj": "traj",
    ".xml": "vasp-xml",
    ".gpw": "gpw",
}


# (3, 3) -> Voigt (xx, yy, zz, yz, xz, xy): row and column index of each component; indexes numpy arrays and batched
# (N, 3, 3) torch tensors alike (``t[:, VOIGT_ROWS, VOIGT_COLS]``)
VOIGT_ROWS, VOIGT_COLS = [0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]


def to_voigt(stress) -> np.ndarray:
    """A stress label or result as Voigt (xx, yy, zz, yz, xz, xy), from either shape labels may hold: (6,) or (3, 3)."""
    s = np.asarray(stress, dtype=float)
    if s.shape == (6,):
        return s
    return s.reshape(3, 3)[VOIGT_ROWS, VOIGT_COLS]


def guess_format(path: Path) -> str:
    name = path.name.lower()
    if name.startswith("vasprun") or name.endswith(".xml"):
        return "vasp-xml"
    if name.startswith("outcar"):
        return "vasp-out"
    if path.suffix.lower() == ".txt":
        raise ValidationError(f"{path}: GPAW text logs hold neither forces nor stress at full precision; "
                              "read the .gpw file instead (calc.write('name.gpw'))")
    for suffix in reversed(path.suffixes):
        if suffix.lower() in _FORMATS:
            return _FORMATS[suffix.lower()]
    raise ValidationError(f"{path}: unknown file type (use .extxyz/.xyz, .traj, vasprun.xml, OUTCAR or GPAW .gpw)")


def _to_labelled(atoms: Atoms) -> Atoms:
    """Move a calculator's results (e.g. from vasprun.xml or a .traj) to REF_* keys; keep REF_* already there."""
    calc = atoms.calc
    out = Atoms(atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    out.info = {k: v for k, v in atoms.info.items()}
    for k, v in atoms.arrays.items():
        if k not in ("numbers", "positions"):
            out.arrays[k] = v
    if calc is not None:
        res = getattr(calc, "results", {})
        if ENERGY_KEY not in out.info:
            e = res.get("free_energy", res.get("energy"))
            if e is not None:
                out.info[ENERGY_KEY] = float(e)
        if FORCES_KEY not in out.arrays and res.get("forces") is not None:
            out.arrays[FORCES_KEY] = np.asarray(res["forces"], dtype=float)
        if STRESS_KEY not in out.info and res.get("stress") is not None:
            s = np.asarray(res["stress"], dtype=float)
            out.info[STRESS_KEY] = to_voigt(s)
    return out


def read_configurations(path: str | Path, index: str = ":", labelled: bool = True,
                        allowed_elements: Sequence[str] | None = ELEMENTS, min_distance: float = 1.2,
                        require_periodic: bool = True, fmt: str | None = None) -> list[Atoms]:
    """Read every frame of ``path`` into the labelled form and validate it (see :func:`validate`).

    ``labelled=False`` reads structures to be labelled (labels are not required but are checked if present).
    """
    from ase.io import read

    path = Path(path)
    if not path.exists():
        raise ValidationError(f"{path}: no such file")
    if path.is_file() and path.stat().st_size == 0:
        raise ValidationError(f"{path}: empty file")
    fmt = fmt or guess_format(path)
    try:
        frames = read(path, index=index, format=fmt)
    except ValidationError:
        raise
    except Exception as exc:
        raise ValidationError(f"{path}: cannot be read as {fmt} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if isinstance(frames, Atoms):
        frames = [frames]
    frames = [_to_labelled(a) for a in frames]
    if not frames:
        raise ValidationError(f"{path}: empty file (no frames)")
    for k, atoms in enumerate(frames):
        validate(atoms, where=f"{path}: frame {k}", labelled=labelled, allowed_elements=allowed_elements,
                 min_distance=min_distance, require_periodic=require_periodic)
    return frames


# Structures to simulate (MD, NEB, relaxations): two atoms closer than this are an input error, not a calculation
MIN_STRUCTURE_DISTANCE = 0.5


def validate_structure(atoms: Atoms, where: str = "structure", allowed_elements: Sequence[str] | None = ELEMENTS,
                       min_distance: float = MIN_STRUCTURE_DISTANCE, require_periodic: bool = True) -> None:
    """Raise :class:`ValidationError` (one line naming ``where``) for the first problem of the geometry: no atoms,
    foreign elements, a missing/degenerate/non-finite cell, non-finite positions, atoms closer than ``min_distance``."""
    n = len(atoms)
    if n == 0:
        raise ValidationError(f"{where}: no atoms")
    if allowed_elements is not None:
        bad = sorted(set(atoms.get_chemical_symbols()) - set(allowed_elements))
        if bad:
            raise ValidationError(f"{where}: element(s) {', '.join(bad)} not allowed (allowed: {', '.join(allowed_elements)})")
    if not np.all(np.isfinite(atoms.cell.array)):
        raise ValidationError(f"{where}: key 'cell' has NaN/inf")
    if require_periodic:
        if not atoms.pbc.all():
            raise ValidationError(f"{where}: key 'pbc' is {atoms.pbc.tolist()}, a periodic cell is expected")
        if abs(atoms.cell.volume) < 1e-6:
            raise ValidationError(f"{where}: key 'cell' has zero volume")
    elif atoms.pbc.any() and abs(atoms.cell.volume) < 1e-6 and atoms.cell.rank < int(atoms.pbc.sum()):
        raise ValidationError(f"{where}: key 'cell' has zero volume along its periodic directions")
    if not np.all(np.isfinite(atoms.positions)):
        raise ValidationError(f"{where}: key 'positions' has NaN/inf")
    if n > 1 and min_distance > 0:
        from ase.neighborlist import neighbor_list

        d = neighbor_list("d", atoms, min_distance) if atoms.pbc.any() else atoms.get_all_distances()[np.triu_indices(n, 1)]
        if len(d) and d.min() < min_distance:
            raise ValidationError(f"{where}: atoms closer than {min_distance} A (shortest {d.min():.3f} A)")


def read_structures(path: str | Path, index: str = ":", allowed_elements: Sequence[str] | None = ELEMENTS,
                    min_distance: float = MIN_STRUCTURE_DISTANCE, require_periodic: bool = True) -> list[Atoms]:
    """Every frame of a structure file (extxyz, traj, cif, POSCAR... anything ASE reads), each checked by
    :func:`validate_structure`; labels are neither needed nor checked. The frames come back as ASE read them
    (momenta, info and arrays kept).

    Missing, empty, truncated or binary files, and files with no frames, are one-line :class:`ValidationError`.
    """
    from ase.io import read

    path = Path(path)
    if not path.exists():
        raise ValidationError(f"{path}: no such file")
    if not path.is_file():
        raise ValidationError(f"{path}: is a directory, not a structure file")
    if path.stat().st_size == 0:
        raise ValidationError(f"{path}: empty file")
    try:
        fmt = guess_format(path)
    except ValidationError:
        fmt = None  # cif, POSCAR, ...: ASE's own detection
    try:
        frames = read(path, index=index, format=fmt)
    except Exception as exc:  # truncated, binary, or not a structure format ASE knows
        first = str(exc).splitlines()[0][:160] if str(exc).strip() else ""
        raise ValidationError(f"{path}: cannot be read as {fmt or 'a structure file'} ({type(exc).__name__}"
                              f"{': ' + first if first else ''})") from None
    if isinstance(frames, Atoms):
        frames = [frames]
    if not frames:
        raise ValidationError(f"{path}: no structures in the file")
    for k, atoms in enumerate(frames):
        if not isinstance(atoms, Atoms):
            raise ValidationError(f"{path}: frame {k} is not a structure ({type(atoms).__name__})")
        validate_structure(atoms, where=f"{path}: frame {k}", allowed_elements=allowed_elements,
                           min_distance=min_distance, require_periodic=require_periodic)
    return frames


def validate(atoms: Atoms, where: str = "configuration", labelled: bool = True,
             allowed_elements: Sequence[str] | None = ELEMENTS, min_distance: float = 1.2,
             require_periodic: bool = True) -> None:
    """Raise :class:`ValidationError` (one line naming ``where`` and the key) for the first problem found: the
    geometry (:func:`validate_structure`), then the labels."""
    n = len(atoms)
    validate_structure(atoms, where, allowed_elements=allowed_elements, min_distance=min_distance,
                       require_periodic=require_periodic)
    has_any = ENERGY_KEY in atoms.info or FORCES_KEY in atoms.arrays or STRESS_KEY in atoms.info
    if not labelled and not has_any:
        return
    e = atoms.info.get(ENERGY_KEY)
    if e is None:
        raise ValidationError(f"{where}: missing key '{ENERGY_KEY}'")
    try:
        e = float(e)
    except (TypeError, ValueError):
        raise ValidationError(f"{where}: key '{ENERGY_KEY}' is not a number ({e!r})") from None
    if not np.isfinite(e):
        raise ValidationError(f"{where}: key '{ENERGY_KEY}' is {e}")
    f = atoms.arrays.get(FORCES_KEY, atoms.info.get(FORCES_KEY))  # a per-frame (info) entry has the wrong shape
    if f is None:
        raise ValidationError(f"{where}: missing key '{FORCES_KEY}'")
    if np.shape(f) != (n, 3):
        raise ValidationError(f"{where}: key '{FORCES_KEY}' has shape {np.shape(f)}, expected ({n}, 3)")
    if not np.all(np.isfinite(f)):
        raise ValidationError(f"{where}: key '{FORCES_KEY}' has NaN/inf")
    s = atoms.info.get(STRESS_KEY)
    if s is not None:
        s = np.asarray(s, dtype=float)
        if s.shape not in ((6,), (9,), (3, 3)):
            raise ValidationError(f"{where}: key '{STRESS_KEY}' has shape {s.shape}, expected (6,) or (3, 3)")
        if not np.all(np.isfinite(s)):
            raise ValidationError(f"{where}: key '{STRESS_KEY}' has NaN/inf")
    elif require_periodic and labelled:
        raise ValidationError(f"{where}: missing key '{STRESS_KEY}'")


def composition_label(atoms: Atoms) -> str:
    """Reduced formula such as ``Li13Sn5`` (pymatgen's reduced formula, deterministic)."""
    from pymatgen.core import Composition

    return Composition(atoms.get_chemical_formula()).reduced_formula


def summarize(frames: Sequence[Atoms]) -> dict:
    """Counts per element, config_type, composition and size, and label statistics (what ``limace data info`` shows)."""
    elements: Counter = Counter()
    ctypes: Counter = Counter()
    comps: Counter = Counter()
    sizes: Counter = Counter()
    e_per_atom, fmax, fnorm, smax = [], [], [], []
    for a in frames:
        elements.update(set(a.get_chemical_symbols()))
        ctypes[str(a.info.get(CONFIG_TYPE_KEY, "unknown"))] += 1
        comps[composition_label(a)] += 1
        sizes[len(a)] += 1
        if ENERGY_KEY in a.info:
            e_per_atom.append(float(a.info[ENERGY_KEY]) / len(a))
        if FORCES_KEY in a.arrays:
            norms = np.linalg.norm(a.arrays[FORCES_KEY], axis=1)
            fmax.append(float(norms.max()))
            fnorm.extend(norms.tolist())
        if STRESS_KEY in a.info:
            smax.append(float(np.abs(np.asarray(a.info[STRESS_KEY])).max()))

    def stats(x):
        return None if not x else {"min": float(np.min(x)), "mean": float(np.mean(x)), "max": float(np.max(x))}

    return {
        "n_configs": len(frames),
        "n_atoms": int(sum(len(a) for a in frames)),
        "elements": dict(sorted(elements.items())),
        "config_types": dict(sorted(ctypes.items())),
        "compositions": dict(sorted(comps.items())),
        "sizes": {int(k): v for k, v in sorted(sizes.items())},
        "n_with_12_or_more_atoms": int(sum(v for k, v in sizes.items() if k >= 12)),
        "energy_eV_per_atom": stats(e_per_atom),
        "force_norm_eV_per_A": stats(fnorm),
        "max_force_eV_per_A": stats(fmax),
        "max_abs_stress_eV_per_A3": stats(smax),
    }
