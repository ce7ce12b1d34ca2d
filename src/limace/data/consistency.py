"""Checks that a labelled dataset is self-consistent, and its own formation energies.

- :func:`equal_structure_groups`: configurations that are the same crystal (same structure up to the choice of cell,
  found with pymatgen's StructureMatcher without scaling) must have the same energy per atom; the spread in each
  group measures k-point/basis consistency of the labels.
- :func:`formation_energy_structures`: the unstrained, unrattled phases of the dataset with their energies, whose
  formation energies against the dataset's own elemental references (science.md: bcc Li, tetragonal In, Sn lowest or
  beta) :func:`limace.analysis.hull.dataset_formation_energies` gives, per binary system.
"""

from __future__ import annotations

from collections.abc import Sequence

from ase import Atoms

from limace.keys import CONFIG_TYPE_KEY, ENERGY_KEY

UNDISTORTED = ("equilibrium",)  # plus enumerated orderings ("enum_*")


def label_pressure(stress) -> float:
    """Pressure -tr(stress)/3 of a stress label (Voigt or 3x3), in the label's units."""
    from limace.data.io import to_voigt

    return float(-to_voigt(stress)[:3].mean())


def _undistorted(a: Atoms) -> bool:
    t = str(a.info.get(CONFIG_TYPE_KEY, ""))
    return t in UNDISTORTED or t.startswith("enum_")


def equal_structure_groups(frames: Sequence[Atoms], ltol: float = 1e-3, stol: float = 1e-3,
                           angle_tol: float = 0.05) -> list[dict]:
    """Groups (>= 2 members) of undistorted configurations that are the same crystal, with their E/atom spread."""
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.io.ase import AseAtomsAdaptor

    cands = [a for a in frames if _undistorted(a) and ENERGY_KEY in a.info]
    structs = []
    for k, a in enumerate(cands):
        s = AseAtomsAdaptor.get_structure(a)
        s.properties["index"] = k
        structs.append(s)
    matcher = StructureMatcher(ltol=ltol, stol=stol, angle_tol=angle_tol, primitive_cell=True, scale=False,
                               attempt_supercell=True)
    out = []
    for group in matcher.group_structures(structs):
        if len(group) < 2:
            continue
        members = [cands[s.properties["index"]] for s in group]
        e = [m.info[ENERGY_KEY] / len(m) for m in members]
        out.append({"formula": members[0].get_chemical_formula(mode="metal"), "n": len(members),
                    "sizes": [len(m) for m in members],
                    "names": [str(m.info.get("phase") or m.info.get(CONFIG_TYPE_KEY)) for m in members],
                    "spread_meV_per_atom": 1000 * (max(e) - min(e))})
    return sorted(out, key=lambda g: -g["spread_meV_per_atom"])


def formation_energy_structures(frames: Sequence[Atoms], system: str) -> list[Atoms]:
    """The undistorted configurations of ``system`` with their DFT energies, as the structures a convex hull takes
    (``info``: ``name``, ``source``, ``energy``; library phases named by ``info['phase']``, orderings by their formula
    and index). :func:`limace.analysis.hull.dataset_formation_energies` builds the hull of them."""
    els = set(system.split("-"))
    picked = []
    for k, a in enumerate(frames):
        if not _undistorted(a) or not set(a.get_chemical_symbols()) <= els:
            continue
        b = a.copy()
        b.info = {"name": a.info.get("phase") or f"{a.info.get(CONFIG_TYPE_KEY)}-{k}-{a.get_chemical_formula(mode='metal')}",
                  "source": "library" if a.info.get("phase") else "search",
                  "energy": float(a.info[ENERGY_KEY])}
        picked.append(b)
    return picked


def pressure_consistency(frames: Sequence[Atoms], min_points: int = 3) -> list[dict]:
    """Stress labels against the labelled energies: per phase, the pressure -dE/dV of a polynomial through the
    phase's equilibrium and isotropically strained cells (degree min(3, n-1), so exact for three points) against the
    pressure -tr(stress)/3 of the labels, in GPa.

    A constant offset is a Pulay stress (a plane-wave basis of fixed cutoff): the stress labels then contradict the
    energies a potential learns, and weighting them in the loss pulls its E(V) away from the labelled one.
    """
    import numpy as np

    from limace.core.units import EV_PER_A3_TO_GPA
    from limace.keys import STRESS_KEY

    by_phase: dict[str, list[Atoms]] = {}
    for a in frames:
        if a.info.get(CONFIG_TYPE_KEY) in ("equilibrium", "strain_iso") and a.info.get("phase") \
                and ENERGY_KEY in a.info and STRESS_KEY in a.info:
            by_phase.setdefault(str(a.info["phase"]), []).append(a)
    out = []
    for phase, fr in by_phase.items():
        v = np.array([a.get_volume() / len(a) for a in fr])
        if len(np.unique(v.round(6))) < min_points:
            continue
        e = np.array([a.info[ENERGY_KEY] / len(a) for a in fr])
        p_label = np.array([label_pressure(a.info[STRESS_KEY]) for a in fr]) * EV_PER_A3_TO_GPA
        c = np.polyfit(v, e, min(3, len(fr) - 1))
        p_energy = -np.polyval(np.polyder(c), v) * EV_PER_A3_TO_GPA
        diff = p_label - p_energy
        out.append({"phase": phase, "formula": fr[0].get_chemical_formula(empirical=True), "n": len(fr),
                    "offset_GPa": float(np.mean(diff)), "spread_GPa": float(np.ptp(diff)),
                    "volumes_A3_per_atom": [float(x) for x in np.sort(v)]})
    return sorted(out, key=lambda r: r["phase"])


def fit_pulay_stress(frames: Sequence[Atoms], min_points: int = 3) -> dict[str, float]:
    """Per-element Pulay stress in GPa: the offsets of :func:`pressure_consistency` (label pressure minus -dE/dV, per
    phase) fitted by least squares as sum_e x_e p_e over the phase's atom fractions x_e.

    The Pulay stress of a fixed plane-wave cutoff grows with the density of hard (semicore) electrons, so one value
    per element, weighted by composition, describes the alloys (here: LiIn and LiSn sit at half of In and Sn).
    Elements without a phase of at least ``min_points`` volumes in ``frames`` get 0.
    """
    import numpy as np
    from ase.formula import Formula

    rows = pressure_consistency(frames, min_points=min_points)
    if not rows:
        return {}
    counts = [Formula(r["formula"]).count() for r in rows]
    els = sorted({e for c in counts for e in c})
    x = np.array([[c.get(e, 0) / sum(c.values()) for e in els] for c in counts], dtype=float)
    y = np.array([r["offset_GPa"] for r in rows])
    p, *_ = np.linalg.lstsq(x, y, rcond=None)
    return {e: float(v) for e, v in zip(els, p)}


def remove_pulay_stress(frames: Sequence[Atoms], per_element_GPa: dict[str, float]) -> list[Atoms]:
    """Copies of ``frames`` whose stress labels have the Pulay stress of :func:`fit_pulay_stress` removed (a
    hydrostatic shift of the diagonal), so that -tr(stress)/3 is the pressure -dE/dV of the labelled energies.
    Frames without a stress label are copied unchanged; elements missing from ``per_element_GPa`` count 0."""
    import numpy as np
    from ase.stress import voigt_6_to_full_3x3_stress

    from limace.data.io import to_voigt
    from limace.core.units import EV_PER_A3_TO_GPA
    from limace.keys import STRESS_KEY

    out = []
    for a in frames:
        b = a.copy()
        if STRESS_KEY in a.info:
            syms = a.get_chemical_symbols()
            offset = sum(per_element_GPa.get(s, 0.0) for s in syms) / len(syms)  # GPa, in label-pressure terms
            s = to_voigt(a.info[STRESS_KEY]).copy()
            s[:3] += offset / EV_PER_A3_TO_GPA  # pressure = -tr/3: raising the diagonal lowers it
            b.info[STRESS_KEY] = s if np.shape(a.info[STRESS_KEY]) == (6,) else voigt_6_to_full_3x3_stress(s)
        out.append(b)
    return out
