"""What goes into the dataset ``li-in-sn-v1``: a deterministic, seeded list of configurations, cheapest first.

``plan_v1()`` returns unlabelled ASE Atoms (each with ``config_type``, ``config_id`` and a ``stage``);
``limace data plan`` writes them ordered by :func:`estimated_cost` (irreducible k-points x electrons x volume at
the reference protocol; the whole plan is ~21 core-hours here, the cheapest 300 ~2.5), moved forward by
:func:`labelling_priority` for distorted cells and for the element and library phases, and the labelling job
(:mod:`limace.data.label`) works through them in that order and resumes where it stopped, so many cheap, diverse
cells are labelled before the expensive large ones. Reordering the plan never loses labels: they are keyed by
``config_id``.

Stages (cost grows with electrons x irreducible k-points; Li-only cells are cheap):

1. elements (bcc Li, tI2 In, beta/alpha Sn): equilibrium, +-2.5/5 % volume, shear, rattled
2. orderings of Li-In and Li-Sn on bcc/fcc/bct parents with 1-4 atoms (icet), plus Li-In-Sn ternaries of 3 atoms
3. the library phases with <= 24 atoms in the primitive cell at equilibrium
4. rattled and strained copies of the 2-4 atom orderings
5. Li-only cells of 12-24 atoms: vacancies and vacancy-hop images in bcc Li
6. library phases: strained (+-5 %), sheared and rattled (up to 0.15 A)
7. 12-24-atom cells with In/Sn: one Li vacancy per library phase, IDPP and linear hop images, random alloys
8. orderings with 6-8 atoms (sampled)
9. the energy-volume curve, densified: elements at four more strains, 40 small orderings at one more
10. where 1.3 still missed on unseen cells: 56 more small orderings (40 Li-Sn) strained +-3/5 % (half also rattled),
    and 10 Li-rich 16-atom random alloys (half rattled)
11. the library phases built after plan v1 (issue 21: Li3In2, Li2In, Li13In3, Li5Sn2, Li8Sn3, ...): equilibrium,
    +-5 % strain, a shear, two rattles and a Li vacancy each (:func:`new_phase_cells`)
12. the compounds whose primitive cells are too large for stages 6 and 11 (Li17Sn4, Li22Sn5: 105-108 atoms), at
    equilibrium and +-3 % volume (:func:`large_phase_cells`): symmetric cells, 8 irreducible k-points, about 35 min each
    on one core. The DFT check of the 1.4 screen found 1.4 wrong by -7 to +12 meV/atom on them, with Li17Sn4 and
    Li22Sn5 in the wrong order; no training cell was near them.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms

from limace.data import generate as g
from limace.data.hashing import ensure_config_id
from limace.data.structures import get_structure, list_phases, sort_species

ELEMENT_PHASES = ("Li_bcc", "In_tI2", "Sn_beta", "Sn_alpha")
RATTLE_AMPLITUDES = (0.03, 0.07, 0.11, 0.15)
RANDOM_ALLOY_REPEAT = {"bcc": (2, 2, 2), "fcc": (2, 2, 1)}  # of the cubic cell: 16 sites on either parent


def _stage(configs: list[Atoms], stage: int) -> list[Atoms]:
    for a in configs:
        a.info["stage"] = stage
    return configs


def _equilibrium(atoms: Atoms, **info) -> Atoms:
    a = atoms.copy()
    a.info = dict(atoms.info)
    a.info["config_type"] = "equilibrium"
    a.info.update(info)
    return a


def _has_li_and_host(a: Atoms) -> bool:
    s = set(a.get_chemical_symbols())
    return "Li" in s and len(s) > 1


# The library phases of plan v1: the buildable compounds when the plan was made. Phases built later (issue 21) are
# added by a stage of their own, so that the random draws of stages 6-10, and with them the config_ids of the
# labels already made, do not change.
PLAN_V1_LIBRARY = ("LiSn", "Li17Sn4", "Li7Sn2", "Li2Sn5", "Li7Sn3", "Li13Sn5", "LiIn")


def library_phases(max_prim_atoms: int = 24, ids: tuple[str, ...] = PLAN_V1_LIBRARY) -> list[Atoms]:
    """Primitive cells of the library phases ``ids`` (buildable compounds) with at most ``max_prim_atoms`` atoms."""
    out = []
    for p in list_phases(buildable=True):
        if p.system == "element" or p.id not in ids:
            continue
        prim = p.build(primitive=True)
        if len(prim) <= max_prim_atoms:
            out.append(prim)
    return out


def plan_v1(seed: int = 20261128) -> list[Atoms]:
    rng = np.random.default_rng(seed)
    plan: list[Atoms] = []

    # 1. elements
    s1 = []
    for pid in ELEMENT_PHASES:
        conv = get_structure(pid)
        s1.append(_equilibrium(conv))
        s1 += g.strained(conv, (-0.05, -0.025, 0.025, 0.05), "iso", seed=rng)
        s1 += g.strained(conv, (0.03, 0.05), "shear", seed=rng)
        s1 += g.rattled(conv, RATTLE_AMPLITUDES, seed=rng)
    plan += _stage(s1, 1)

    # 2. orderings with 1-4 atoms (binaries) and 3-atom ternaries containing all three elements
    s2, small = [], []
    for parent in g.PARENTS:
        for els in (("Li", "In"), ("Li", "Sn")):
            for a in g.enumerate_orderings(parent, els, range(1, 5)):
                s2.append(a)
                if len(a) >= 2:
                    small.append(a)
        for a in g.enumerate_orderings(parent, ("Li", "In", "Sn"), [3]):
            if len(set(a.get_chemical_symbols())) == 3:
                s2.append(a)
                small.append(a)
    plan += _stage(s2, 2)

    # 3. library phases at equilibrium
    phases = library_phases()
    plan += _stage([_equilibrium(p) for p in phases], 3)

    # 4. rattled / strained small orderings (alloys get both, pure cells one rattle)
    s4 = []
    for a in small:
        amp = float(rng.choice(RATTLE_AMPLITUDES))
        s4 += g.rattled(a, (amp,), seed=rng)
        if _has_li_and_host(a):
            e = float(rng.choice((-0.05, -0.03, 0.03, 0.05)))
            s4 += g.strained(a, (e,), "iso" if rng.random() < 0.5 else "shear", seed=rng)
    plan += _stage(s4, 4)

    # 5. bcc Li, 16-site cell: vacancies (relaxed-like and rattled) and hop images
    li = get_structure("Li_bcc")
    s5 = [g.li_vacancy(li, repeat=(2, 2, 2), seed=rng)]
    s5 += g.rattled(s5[0], (0.05, 0.1, 0.15), seed=rng)
    s5 += g.vacancy_hops(li, repeat=(2, 2, 2), n_hops=2, n_images=3, method="idpp", seed=rng)
    s5 += g.vacancy_hops(li, repeat=(2, 2, 2), n_hops=1, n_images=2, method="linear", seed=rng)
    s5 += g.rattled(li.repeat((2, 2, 2)), (0.05, 0.1, 0.15), seed=rng)
    s5 += g.rattled(g.strained(li.repeat((2, 2, 2)), (-0.04, 0.04), "iso", seed=rng)[0], (0.1,), seed=rng)
    plan += _stage(s5, 5)

    # 6. library phases distorted
    s6 = []
    for p in phases:
        s6 += g.strained(p, (-0.05, 0.05), "iso", seed=rng)
        s6 += g.strained(p, (0.04,), "shear", seed=rng)
        s6 += g.rattled(p, (0.05, 0.1, 0.15), seed=rng)
    plan += _stage(s6, 6)

    # 7. large cells with hosts: vacancies and hops in the library phases, random alloys
    s7 = []
    for p in phases:
        reps = _repeat_for(p, 12, 24)
        s7.append(g.li_vacancy(p, repeat=reps, seed=rng))
        s7 += g.vacancy_hops(p, repeat=reps, n_hops=1, n_images=3, method="idpp", seed=rng)
    for parent in ("bcc", "fcc"):
        for frac_li in (0.25, 0.5, 0.75, 0.875):
            for host in ("In", "Sn"):
                s7.append(g.random_alloy(parent, ("Li", host), (frac_li, 1 - frac_li), repeat=RANDOM_ALLOY_REPEAT[parent], seed=rng))
    plan += _stage(s7, 7)

    # 8. larger orderings, sampled
    s8 = []
    for parent in g.PARENTS:
        for els in (("Li", "In"), ("Li", "Sn")):
            cands = list(g.enumerate_orderings(parent, els, [6]))
            cands = [a for a in cands if _has_li_and_host(a)]
            for k in rng.choice(len(cands), size=min(8, len(cands)), replace=False):
                s8.append(cands[int(k)])
    plan += _stage(s8, 8)

    # 9. the energy-volume curve, densified (added after the first 722 labels: isotropic strain of unseen orderings
    #    was the weakest test spot, 1.6 meV/atom on train vs 10 on test): the elements' primitive cells at four more
    #    strains, and 40 of the 2-4 atom binary orderings (sampled) at one more isotropic strain each
    s9 = []
    for pid in ELEMENT_PHASES:
        s9 += g.strained(get_structure(pid, primitive=True), (-0.04, -0.015, 0.015, 0.04), "iso", seed=rng)
    binaries = [a for a in small if len(set(a.get_chemical_symbols())) == 2]
    for k in rng.choice(len(binaries), size=min(40, len(binaries)), replace=False):
        e = float(rng.choice((-0.04, -0.02, 0.02, 0.04)))
        s9 += g.strained(binaries[int(k)], (e,), "iso", seed=rng)
    plan += _stage(s9, 9)

    # 10. (added after 825 labels: potential 1.3 had 1.6 meV/atom on the strained training cells but 5.5 on the
    #     strained test cells, worst on compressed Li-rich Li-Sn orderings, and 43 on its one unseen random Li3Sn cell)
    #     56 more sampled 2-4 atom orderings, 40 of them Li-Sn, each isotropically strained, every other one rattled
    #     too; and Li-rich random alloys on 16-site bcc/fcc cells, every other one rattled
    s10 = []
    for host, n in (("Sn", 40), ("In", 16)):
        pool = [a for a in binaries if host in a.get_chemical_symbols()]
        for i, k in enumerate(rng.choice(len(pool), size=min(n, len(pool)), replace=False)):
            e = float(rng.choice((-0.05, -0.03, 0.03, 0.05)))
            st = g.strained(pool[int(k)], (e,), "iso", seed=rng)[0]
            s10 += g.rattled(st, (0.05,), seed=rng) if i % 2 else [st]
    randoms = [("bcc", "Sn", 0.75), ("bcc", "Sn", 0.75), ("bcc", "Sn", 0.6875), ("bcc", "Sn", 0.8125),
               ("bcc", "Sn", 0.625), ("fcc", "Sn", 0.75), ("fcc", "Sn", 0.6875), ("bcc", "In", 0.75),
               ("bcc", "In", 0.6875), ("fcc", "In", 0.75)]
    for i, (parent, host, x) in enumerate(randoms):
        r = g.random_alloy(parent, ("Li", host), (x, 1 - x), repeat=RANDOM_ALLOY_REPEAT[parent], seed=rng)
        s10 += g.rattled(r, (0.05,), seed=rng) if i % 2 else [r]
    plan += _stage(s10, 10)

    # 11. (issue 21) the library phases built after plan v1 (the known Li-rich and Li-In phases): equilibrium,
    #     +-5 % isotropic strain, one shear, two rattles and a one-Li-vacancy cell of each, every phase drawn from its
    #     own random stream so that a phase added later adds its cells without moving any other one
    plan += _stage(new_phase_cells(), 11)

    # 12. (issue 21) the library compounds of more than 24 atoms per primitive cell: equilibrium and +-3 % volume
    #     (symmetric: cheap enough at 105-108 atoms), each phase from its own stream as in stage 11
    plan += _stage(large_phase_cells(), 12)

    seen, out = set(), []
    for a in plan:
        a = sort_species(a)
        a.info.pop("config_id", None)
        cid = ensure_config_id(a)
        if cid not in seen:
            seen.add(cid)
            out.append(a)
    return out


def _phase_rng(pid: str, seed: int = 20261204) -> np.random.Generator:
    import hashlib

    return np.random.default_rng(int(hashlib.sha256(f"{seed}:{pid}".encode()).hexdigest()[:16], 16))


def _phase_labelled(cells: list[Atoms], pid: str) -> list[Atoms]:
    """``cells`` of library phase ``pid`` with species sorted, ``phase`` set and a fresh ``config_id``."""
    out = []
    for a in cells:
        a = sort_species(a)
        a.info["phase"] = pid
        a.info.pop("config_id", None)
        ensure_config_id(a)
        out.append(a)
    return out


def new_phase_cells(max_prim_atoms: int = 24) -> list[Atoms]:
    """Stage 11: training cells of the buildable compounds not in :data:`PLAN_V1_LIBRARY`."""
    out = []
    for p in list_phases(buildable=True):
        if p.system == "element" or p.id in PLAN_V1_LIBRARY:
            continue
        prim = p.build(primitive=True)
        if len(prim) > max_prim_atoms:
            continue
        rng = _phase_rng(p.id)
        cells = [_equilibrium(prim, phase=p.id)]
        cells += g.strained(prim, (-0.05, 0.05), "iso", seed=rng)
        cells += g.strained(prim, (0.04,), "shear", seed=rng)
        cells += g.rattled(prim, (0.07, 0.15), seed=rng)
        cells.append(g.li_vacancy(prim, repeat=_repeat_for(prim, 12, 24), seed=rng))
        out += _phase_labelled(cells, p.id)
    return out


def large_phase_cells(min_prim_atoms: int = 25, strains: tuple[float, ...] = (-0.01, 0.01)) -> list[Atoms]:
    """Stage 12: equilibrium and isotropically strained cells (linear strain +-1 %, volume +-3 %: well inside the
    extrapolation set's +-8-15 %, which stays held out) of the buildable compounds with at least ``min_prim_atoms``
    atoms per primitive cell, which stages 6 and 11 leave out. No rattles or vacancies: without symmetry a 105-atom
    cell needs 4-5x the k-points (hours per label on this CPU)."""
    out = []
    for p in list_phases(buildable=True):
        if p.system == "element":
            continue
        prim = p.build(primitive=True)
        if len(prim) < min_prim_atoms:
            continue
        cells = [_equilibrium(prim, phase=p.id)]
        cells += g.strained(prim, strains, "iso", seed=_phase_rng(p.id, seed=20261205))
        out += _phase_labelled(cells, p.id)
    return out


def _repeat_for(atoms: Atoms, lo: int, hi: int, min_width: float = 3.9) -> tuple[int, int, int]:
    """Diagonal repetition with every cell width >= ``min_width`` (so a Li hop never joins an atom to its own
    image) and lo..hi atoms if possible, preferring the most isotropic, then the smallest cell."""
    n = len(atoms)
    base = np.diag(g.supercell_matrix(atoms, min_width)).astype(int)
    best = None
    widths = np.array([atoms.cell.volume / np.linalg.norm(np.cross(atoms.cell[(i + 1) % 3], atoms.cell[(i + 2) % 3]))
                       for i in range(3)])
    for i in range(base[0], base[0] + 3):
        for j in range(base[1], base[1] + 3):
            for k in range(base[2], base[2] + 3):
                m = n * i * j * k
                ws = widths * (i, j, k)
                aniso = ws.max() / ws.min()
                score = (0, aniso, m) if lo <= m <= hi else (1, m, aniso)
                if best is None or score < best[0]:
                    best = (score, (i, j, k))
    return best[1]


VALENCE = {"Li": 1, "In": 13, "Sn": 14}  # PAW setups of the reference protocol


def irreducible_kpoints(atoms: Atoms, density: float = 6.0) -> int:
    """Irreducible k-points of the reference protocol's Gamma-centred mesh (k-point density 6/A) for this cell."""
    import spglib
    from ase.calculators.calculator import kptdensity2monkhorstpack

    mesh = kptdensity2monkhorstpack(atoms, kptdensity=density, even=False)
    cell = (atoms.cell[:], atoms.get_scaled_positions(), atoms.numbers)
    mapping, _ = spglib.get_ir_reciprocal_mesh(mesh, cell, is_shift=[0, 0, 0], symprec=1e-5)
    return int(len(np.unique(mapping)))


def estimated_cost(atoms: Atoms) -> float:
    """Relative DFT cost at the reference protocol: irreducible k-points x bands x plane waves
    (bands ~ valence electrons, plane waves ~ volume)."""
    n_el = sum(VALENCE.get(s, 4) for s in atoms.get_chemical_symbols())
    return irreducible_kpoints(atoms) * max(n_el, 4) * atoms.get_volume()


# Symmetric cells (equilibrium, enumerated, isotropic strain) have zero or symmetry-fixed forces; the force labels a
# potential learns from come from distorted cells, which cost more (no symmetry left). They are moved forward by
# this factor in the labelling order so that every prefix of the labels carries force information. The equilibrium
# cells of the library phases come first of all: they anchor the DFT hull and hold the elemental references of the
# formation energies (docs/dataset.md), and there are only a dozen of them.
DISTORTED_PRIORITY = {"rattle": 2.0, "strain_shear": 2.0, "vacancy": 2.0, "hop_idpp": 2.0, "hop_linear": 2.0,
                      "equilibrium": 100.0}

# Every formation energy rests on the elemental ground states, and the hull on the library phases: a potential
# trained on 392 labels still missed beta-Sn by 47 meV/atom (training error) because, ordered by cost alone, the only
# labelled pure-Sn cells were five undistorted ones while hundreds of alloy orderings came first. The distorted copies
# of the element phases (stage 1) and of the library phases (stage 6) are therefore moved forward by these factors
# (on top of DISTORTED_PRIORITY). Stage 11 (the library phases added for issue 21) likewise: the new hull needs them.
STAGE_PRIORITY = {1: 20.0, 6: 4.0, 11: 4.0, 12: 4.0}


def labelling_priority(atoms: Atoms) -> float:
    """Factor by which ``atoms`` moves forward in the labelling order (1 = by estimated cost alone)."""
    return DISTORTED_PRIORITY.get(atoms.info.get("config_type"), 1.0) * STAGE_PRIORITY.get(int(atoms.info.get("stage", 0)), 1.0)


def cheapest_first(configs: list[Atoms]) -> list[Atoms]:
    """The configurations ordered by :func:`estimated_cost` divided by :func:`labelling_priority` (stable for ties),
    each with ``info['est_cost']``."""
    for a in configs:
        a.info["est_cost"] = round(float(estimated_cost(a)), 1)
    return sorted(configs, key=lambda a: a.info["est_cost"] / labelling_priority(a))
