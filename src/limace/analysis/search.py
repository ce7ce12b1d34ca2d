"""Structure search for a Li-M binary: enumerate candidates, relax them all in batches, keep the lowest per composition.

Candidates (every one tagged with ``info["source"] = "search"`` and a ``info["name"]``):

- orderings of Li and M on bcc, fcc and body-centred-tetragonal parents with up to ``max_atoms`` sites
  (icet's Hart-Forcade enumeration, :func:`limace.data.generate.enumerate_orderings`), pure cells included
  (the elements' polymorphs);
- the structure library's prototypes decorated with the other host: every built Li-Sn phase becomes a Li-In
  candidate and the reverse (``Li13Sn5`` -> ``Li13In5``), up to ``max_prototype_atoms`` atoms.

The library phases themselves are relaxed with the same potential and enter the hull with source ``library``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ase import Atoms

from limace.errors import LimaceInputError


@dataclass(frozen=True)
class SearchSettings:
    max_atoms: int = 4
    parents: tuple[str, ...] = ("bcc", "fcc", "bct")
    prototypes: bool = True
    max_prototype_atoms: int = 24
    fmax: float = 0.02
    max_steps: int = 300
    # sanity bounds on relaxed structures (a potential's holes: a cell that collapses into a region without training
    # data can reach absurd energies and would then be "the" stable phase); see reject_unphysical
    min_volume_ratio: float = 0.7
    min_formation_energy: float = -1.0


def _host(system: str) -> str:
    from limace.analysis.hull import SYSTEMS

    if system not in SYSTEMS:
        raise LimaceInputError(f"unknown system {system!r}; choose one of {', '.join(SYSTEMS)}")
    return system.split("-")[1]


def library_structures(system: str, max_atoms: int = 24) -> list[Atoms]:
    """The built library phases of ``system`` (elements included, all Sn polymorphs), primitive cells."""
    from limace.data.structures import list_phases

    out = []
    for p in list_phases(system=system, buildable=True):
        a = p.build(primitive=True)
        if len(a) <= max_atoms:
            a.info.update(name=p.id, phase=p.id, source="library")
            out.append(a)
    return out


def search_candidates(system: str, settings: SearchSettings = SearchSettings()) -> list[Atoms]:
    """Enumerated orderings and decorated prototypes for ``system`` (see the module docstring)."""
    from limace.data.generate import enumerate_orderings, estimated_volume_per_atom, scale_to_volume
    from limace.data.structures import list_phases, sort_species

    host = _host(system)
    other = {"In": "Sn", "Sn": "In"}[host]
    out: list[Atoms] = []
    for parent in settings.parents:
        for k, a in enumerate(enumerate_orderings(parent, ("Li", host), range(1, settings.max_atoms + 1))):
            a.info.update(name=f"{parent}-{k}-{a.get_chemical_formula(mode='metal')}", source="search")
            out.append(a)
    if settings.prototypes:
        for p in list_phases(system=f"Li-{other}", buildable=True):
            if p.system == "element":
                continue
            a = p.build(primitive=True)
            if len(a) > settings.max_prototype_atoms:
                continue
            a.symbols = [host if s == other else s for s in a.get_chemical_symbols()]
            a = sort_species(scale_to_volume(a, estimated_volume_per_atom(a.get_chemical_symbols())))
            a.info = {"name": f"{p.id}-type-{a.get_chemical_formula(mode='metal')}", "source": "search",
                      "prototype": p.id}
            out.append(a)
    return out


def relax_all(structures: Sequence[Atoms], model, fmax: float, max_steps: int, progress: bool = True) -> list[Atoms]:
    """Relax positions and cell of every structure (batched); keeps ``info`` (name, source, phase)."""
    from limace.analysis.relax import relax_structures

    relaxed = relax_structures(list(structures), model, fmax=fmax, max_steps=max_steps, relax_cell=True,
                               progress=progress)
    for src, new in zip(structures, relaxed):
        for key in ("name", "phase", "source", "prototype"):
            if key in src.info:
                new.info[key] = src.info[key]
    return relaxed


def lowest_per_composition(structures: Sequence[Atoms]) -> list[Atoms]:
    """The lowest energy per atom (``info["energy"]``) of each reduced composition among converged structures."""
    from limace.data.io import composition_label

    best: dict[str, Atoms] = {}
    for a in structures:
        if not a.info.get("converged", True) or "relax_error" in a.info:
            continue
        key = composition_label(a)
        if key not in best or a.info["energy"] / len(a) < best[key].info["energy"] / len(best[key]):
            best[key] = a
    return list(best.values())


def experimental_volumes(elements: Sequence[str]) -> dict[str, list[float]]:
    """Volumes per atom (A^3) of each element's phases in the structure library (experimental cells)."""
    from limace.data import get_structure, list_phases

    out: dict[str, list[float]] = {}
    for p in list_phases():
        if not p.buildable:
            continue
        a = get_structure(p.id)
        syms = set(a.get_chemical_symbols())
        if len(syms) == 1 and (el := next(iter(syms))) in elements:
            out.setdefault(el, []).append(a.get_volume() / len(a))
    return out


def reject_unphysical(structures: Sequence[Atoms], min_volume_ratio: float = 0.7,
                      min_formation_energy: float = -1.0, max_element_expansion: float = 1.3,
                      reference_volumes: dict[str, float] | None = None) -> tuple[list[Atoms], list[dict], list[str]]:
    """Split relaxed structures into (kept, rejected, warnings) by physical bounds, so that a hole of the potential
    cannot put a collapsed cell on the hull (for Li-In and Li-Sn, DFT formation energies lie above -0.45 eV/atom and
    alloy volumes within ~20 % of Vegard's law):

    - a compound whose volume per atom is below ``min_volume_ratio`` x Vegard's volume from ``reference_volumes``
      (default: the elements' experimental volumes from the structure library) is rejected;
    - so is one whose formation energy against the lowest pure structure of each element is below
      ``min_formation_energy`` (eV/atom);
    - pure elements are never rejected (they are the hull's references), but one whose relaxed volume exceeds
      ``max_element_expansion`` x the element's largest experimental volume gives a warning: the potential does not bind that
      crystal (its isolated-atom energy lies below the bulk energy), so formation energies against it mean nothing.

    Rejected entries are ``{"name", "formula", "reason"}``. Structures without ``info["energy"]`` (failed
    relaxations) are kept for the caller's own handling.
    """
    from collections import Counter

    elements = sorted({s for a in structures for s in a.get_chemical_symbols()})
    if reference_volumes is not None:
        ref_v = loose_v = dict(reference_volumes)
    else:  # Vegard from each element's densest phase; the expansion warning against its loosest
        volumes = experimental_volumes(elements)
        ref_v = {el: min(v) for el, v in volumes.items()}
        loose_v = {el: max(v) for el, v in volumes.items()}
    pure_e: dict[str, float] = {}
    warnings = []
    for a in structures:
        syms = set(a.get_chemical_symbols())
        if len(syms) == 1 and a.info.get("converged", False) and "energy" in a.info:
            (el,) = syms
            pure_e[el] = min(pure_e.get(el, float("inf")), a.info["energy"] / len(a))
            v = a.get_volume() / len(a)
            if el in loose_v and v > max_element_expansion * loose_v[el]:
                warnings.append(f"{a.info.get('name', el)}: relaxed to {v / loose_v[el]:.1f} x the experimental volume "
                                f"per atom of {el} (the potential does not bind it: its isolated-atom energy is below "
                                "the crystal's); formation energies against it are not meaningful")
    kept, rejected = [], []
    for a in structures:
        counts = Counter(a.get_chemical_symbols())
        if len(counts) == 1 or "energy" not in a.info or not set(counts) <= set(ref_v):
            kept.append(a)
            continue
        n = len(a)
        ratio = a.get_volume() / n / (sum(c * ref_v[el] for el, c in counts.items()) / n)
        reason = None
        if ratio < min_volume_ratio:
            reason = f"volume {ratio:.2f} x Vegard < {min_volume_ratio}"
        elif set(counts) <= set(pure_e):
            e_form = (a.info["energy"] - sum(c * pure_e[el] for el, c in counts.items())) / n
            if e_form < min_formation_energy:
                reason = f"formation energy {e_form:.2f} eV/atom < {min_formation_energy}"
        if reason is None:
            kept.append(a)
        else:
            rejected.append({"name": a.info.get("name", a.get_chemical_formula()), "formula": a.get_chemical_formula(),
                             "reason": reason})
    return kept, rejected, warnings
