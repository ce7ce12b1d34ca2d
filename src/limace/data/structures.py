"""The library of Li-In-Sn phases, built from crystallographic facts kept in ``phases.yaml``.

Every entry records its source, and every built entry its provenance class (:data:`PROVENANCE_CLASSES`):

- ``refined``: the compound's own experimental structure (lattice and coordinates of that compound);
- ``isotypic prototype``: the coordinates of an isotypic compound (AFLOW prototype), on the compound's own lattice
  where it is known, otherwise a scaled or relaxed one (the ``source`` says which prototype and how);
- ``model-built``: a bcc superstructure with the reported space group, relaxed with the shipped potential
  (``scripts/build_library_phases.py``); its coordinates are a model, to be checked with DFT.

Entries with Wyckoff sites are built with :func:`ase.spacegroup.crystal`; entries known only by space group (or
only as a hypothetical database structure) are listed (``buildable=False``) and left to structure search.

>>> from limace.data import get_structure, list_phases
>>> atoms = get_structure("LiSn")            # conventional cell, ASE Atoms
>>> prim = get_structure("Li13Sn5", primitive=True)
>>> [p.id for p in list_phases(system="Li-Sn", buildable=True)]   # doctest: +SKIP
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

import numpy as np
import yaml
from ase import Atoms

from limace.core.errors import UnknownNameError

SYSTEMS = ("element", "Li-In", "Li-Sn")
PROVENANCE_CLASSES = ("refined", "isotypic prototype", "model-built")


@dataclass(frozen=True)
class Phase:
    """One entry of the structure library."""

    id: str
    formula: str
    system: str
    status: str
    spacegroup_number: int | None
    spacegroup_symbol: str | None
    source: str
    verified: str
    cellpar: tuple[float, ...] | None = None
    sites: tuple[dict, ...] | None = None
    ase_setting: int = 1
    natoms_conv: int | None = None
    natoms_prim: int | None = None
    cellpar_source: str | None = None
    notes: str | None = None
    materials_project_id: str | None = None
    aliases: tuple[str, ...] = field(default_factory=tuple)
    provenance: str | None = None

    @property
    def buildable(self) -> bool:
        """True when both sites and a lattice are known."""
        return bool(self.sites) and self.cellpar is not None

    @property
    def provenance_label(self) -> str:
        """The provenance class of a built entry; ``"space group only"`` or ``"not built"`` otherwise."""
        if self.buildable and self.provenance:
            return self.provenance
        return "space group only" if self.spacegroup_number else "not built"

    def build(self, primitive: bool = False) -> Atoms:
        """The conventional (default) or primitive cell as ASE Atoms, with ``info['phase']`` set."""
        if not self.buildable:
            raise UnknownNameError(
                f"phase {self.id!r} has no coordinates in the library ({self.spacegroup_symbol or 'space group unknown'}); "
                "its structure must come from structure search"
            )
        from ase.spacegroup import crystal

        atoms = crystal(
            symbols=[s["element"] for s in self.sites],
            basis=[s["xyz"] for s in self.sites],
            spacegroup=self.spacegroup_number,
            setting=self.ase_setting,
            cellpar=list(self.cellpar),
            primitive_cell=False,
        )
        if primitive:
            atoms = primitive_cell(atoms)
        atoms = sort_species(atoms)
        atoms.info["phase"] = self.id
        return atoms


def sort_species(atoms: Atoms) -> Atoms:
    """Return a copy ordered Li, In, Sn (stable), keeping info; makes hashes and vacancy indices predictable."""
    order = {"Li": 0, "In": 1, "Sn": 2}
    idx = sorted(range(len(atoms)), key=lambda i: (order.get(atoms[i].symbol, 9), i))
    new = atoms[idx]
    new.info = dict(atoms.info)
    return new


def primitive_cell(atoms: Atoms, symprec: float = 1e-4) -> Atoms:
    """Primitive cell found with spglib (standardised), as ASE Atoms."""
    import spglib

    cell = (atoms.cell[:], atoms.get_scaled_positions(), atoms.numbers)
    lattice, positions, numbers = spglib.standardize_cell(cell, to_primitive=True, no_idealize=False, symprec=symprec)
    prim = Atoms(numbers=numbers, cell=lattice, scaled_positions=positions, pbc=True)
    prim.wrap()
    prim.info = dict(atoms.info)
    return prim


@cache
def _load() -> dict[str, Phase]:
    return parse_phases(resources.files("limace.data").joinpath("phases.yaml").read_text())


def parse_phases(text: str) -> dict[str, Phase]:
    """The :class:`Phase` entries of a phases.yaml text, by id (a built entry must name its provenance class)."""
    raw = yaml.safe_load(text)
    phases: dict[str, Phase] = {}
    for p in raw["phases"]:
        sg = p.get("spacegroup") or {}
        built = bool(p.get("sites")) and bool(p.get("cellpar"))
        prov = p.get("provenance")
        # packaged data, not user input: a built entry without a known provenance class is a bug in phases.yaml
        if built and prov not in PROVENANCE_CLASSES:
            raise ValueError(f"phases.yaml: {p['id']}: provenance {prov!r} is not one of {PROVENANCE_CLASSES}")
        if not built and prov is not None:
            raise ValueError(f"phases.yaml: {p['id']}: provenance {prov!r} given for an entry that is not built")
        phases[p["id"]] = Phase(
            id=p["id"],
            formula=p["formula"],
            system=p["system"],
            status=p["status"],
            spacegroup_number=sg.get("number"),
            spacegroup_symbol=sg.get("symbol"),
            ase_setting=sg.get("ase_setting", 1),
            source=p["source"],
            verified=str(p["verified"]),
            cellpar=tuple(p["cellpar"]) if p.get("cellpar") else None,
            sites=tuple(p["sites"]) if p.get("sites") else None,
            natoms_conv=p.get("natoms_conv"),
            natoms_prim=p.get("natoms_prim"),
            cellpar_source=p.get("cellpar_source"),
            notes=p.get("notes"),
            materials_project_id=p.get("materials_project_id"),
            aliases=tuple(p.get("aliases") or ()),
            provenance=prov,
        )
    return phases


def _resolve(name: str) -> Phase:
    phases = _load()
    if name in phases:
        return phases[name]
    # A plain formula picks the buildable entry with that formula (e.g. "Li" -> Li_bcc, "Sn" -> Sn_beta first).
    by_formula = [p for p in phases.values() if p.formula == name and p.buildable]
    if by_formula:
        return by_formula[0]
    close = difflib.get_close_matches(name, list(phases), n=3)
    hint = f"; closest: {', '.join(close)}" if close else ""
    raise UnknownNameError(f"unknown phase {name!r}{hint}")


def get_phase(name: str) -> Phase:
    """The :class:`Phase` for an id (``"LiSn"``, ``"Sn_alpha"``) or a formula of a buildable phase (``"Li"``)."""
    return _resolve(name)


def get_structure(name: str, primitive: bool = False) -> Atoms:
    """The phase as ASE Atoms (conventional cell by default, ``primitive=True`` for the primitive cell)."""
    return _resolve(name).build(primitive=primitive)


def list_phases(system: str | None = None, buildable: bool | None = None) -> list[Phase]:
    """All phases, optionally of one system (``"Li-In"``, ``"Li-Sn"``, ``"element"``) and/or only buildable ones.

    A binary system includes its elements.
    """
    if system is not None and system not in SYSTEMS:
        raise UnknownNameError(f"unknown system {system!r}; choose one of {', '.join(SYSTEMS)}")
    out = []
    for p in _load().values():
        if system is not None and p.system != system:
            if not (p.system == "element" and system != "element" and p.formula in system.split("-")):
                continue
        if buildable is not None and p.buildable != buildable:
            continue
        out.append(p)
    return out


def min_distance(atoms: Atoms) -> float:
    """Shortest interatomic distance including periodic images (Angstrom)."""
    from ase.neighborlist import neighbor_list

    if len(atoms) == 1:
        return float(min(np.linalg.norm(atoms.cell[:], axis=1)))
    d = neighbor_list("d", atoms, 4.0)
    if len(d) == 0:
        return float("inf")
    return float(d.min())
