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


def reject_unphysical(structures: Sequence[Atoms], min_volume_ratio: float = 0.7,
                      min_formation_energy: float = -1.0) -> tuple[list[Atoms], list[dict]]:
    """Split relaxed structures into (kept, rejected) by two physical bounds, so that a hole of the potential cannot
    put a collapsed cell on the hull (for Li-In and Li-Sn, DFT formation energies lie above -0.45 eV/atom and
    alloy volumes within ~20 % of Vegard's law):

    - the volume per atom below ``min_volume_ratio`` x the composition-weighted volume per atom of the elements
      (the smallest among the converged pure structures of each element in ``structures``);
    - the formation energy against the lowest converged pure structure of each element below
      ``min_formation_energy`` (eV/atom).

    Rejected entries are ``{"name", "formula", "reason"}``. Structures without ``info["energy"]`` (failed
    relaxations) are kept for the caller's own handling; pure-element structures are never rejected.
    """
    from collections import Counter

    pure_v: dict[str, float] = {}
    pure_e: dict[str, float] = {}
    for a in structures:
        syms = set(a.get_chemical_symbols())
        if len(syms) == 1 and a.info.get("converged", False) and "energy" in a.info:
            (el,) = syms
            pure_v[el] = min(pure_v.get(el, float("inf")), a.get_volume() / len(a))
            pure_e[el] = min(pure_e.get(el, float("inf")), a.info["energy"] / len(a))
    kept, rejected = [], []
    for a in structures:
        counts = Counter(a.get_chemical_symbols())
        if len(counts) == 1 or "energy" not in a.info or not set(counts) <= set(pure_v):
            kept.append(a)
            continue
        n = len(a)
        vegard = sum(c * pure_v[el] for el, c in counts.items()) / n
        ratio = a.get_volume() / n / vegard
        e_form = (a.info["energy"] - sum(c * pure_e[el] for el, c in counts.items())) / n
        reason = None
        if ratio < min_volume_ratio:
            reason = f"volume {ratio:.2f} x Vegard < {min_volume_ratio}"
        elif e_form < min_formation_energy:
            reason = f"formation energy {e_form:.2f} eV/atom < {min_formation_energy}"
        if reason is None:
            kept.append(a)
        else:
            rejected.append({"name": a.info.get("name", a.get_chemical_formula()), "formula": a.get_chemical_formula(),
                             "reason": reason})
    return kept, rejected

