"""The extrapolation set: configurations a screen meets that the training plan never had, made by fixed rules.

Issue 23: the test split of ``li-in-sn-v1`` stopped being held out once plan stages nine and ten were designed from
its errors, so it was frozen as ``test-v1`` and a second evaluation set is drawn here by **rules fixed before any
label is seen** (no error of any model chose what is in it). Classes (``config_type`` ``extrap_<class>``):

``volume``
    every library phase (primitive cell) and element at -15, -12, -8, +8, +12, +15 % volume (the plan strains by at
    most 5 % linear, ~ +-15 % volume only for the elements)
``rattle``
    library phases with <= 12 atoms in the primitive cell and the elements' conventional cells rattled by 0.2 and
    0.3 A (the plan rattles by <= 0.15 A)
``ordering``
    binary Li-In / Li-Sn orderings larger than the plan's: 5- and 7-atom cells on bcc, 5-atom cells on fcc and bct
    (icet enumeration, sampled), and random decorations of 9-12-site bcc supercells, unrelaxed at Vegard's volume
``vacancy``
    one Li vacancy in a supercell of every library phase with all widths >= 6 A (the plan's vacancy cells are
    12-24 atoms and one per phase)
``interstitial``
    one extra Li at the largest hole of the same supercells

Model-made classes (MD snapshots at 600-900 K, NEB saddle images) need a potential and are added by the layers
above (``limace.md`` / ``limace.analysis``) to the same inputs file with ``config_type`` ``extrap_md`` /
``extrap_saddle``.

Every configuration is drawn from its own random stream, seeded from the rule's name and the phase id, so adding a
phase to the library adds its configurations without moving any other one; configurations that coincide with a plan
configuration (same ``config_id``) are dropped, so the set never overlaps the training plan.
"""

from __future__ import annotations

import hashlib

import numpy as np
from ase import Atoms
from ase.build import make_supercell
from ase.geometry import get_distances

from limace.data import generate as g
from limace.data.hashing import ensure_config_id
from limace.data.structures import get_structure, list_phases, sort_species

SEED = 20261204
VOLUME_STRAINS = (-0.15, -0.12, -0.08, 0.08, 0.12, 0.15)  # fractional volume change
RATTLE_AMPLITUDES = (0.2, 0.3)
RATTLE_MAX_PRIM_ATOMS = 12
DEFECT_MIN_WIDTH = 6.0  # A, every perpendicular width of the vacancy / interstitial supercell
DEFECT_MAX_ATOMS = 64
ORDERINGS = (("bcc", 5, 6), ("bcc", 7, 4), ("fcc", 5, 3), ("bct", 5, 3))  # parent, size, sampled per system
RANDOM_BCC_SIZES = (9, 10, 11, 12)
SYSTEMS = (("Li", "In"), ("Li", "Sn"))


def _rng(*key) -> np.random.Generator:
    """A stream of its own for each rule and phase (see module docstring)."""
    digest = hashlib.sha256(":".join(map(str, (SEED, *key))).encode()).hexdigest()
    return np.random.default_rng(int(digest[:16], 16))


def _tag(atoms: Atoms, cls: str, **info) -> Atoms:
    a = sort_species(atoms)
    a.info = {k: v for k, v in atoms.info.items() if k in ("phase",)}
    a.info.update(config_type=f"extrap_{cls}", **info)
    a.info.pop("config_id", None)
    ensure_config_id(a)
    return a


def _phases() -> list[tuple[str, Atoms]]:
    return [(p.id, p.build(primitive=True)) for p in list_phases(buildable=True)]


def volume_cells() -> list[Atoms]:
    out = []
    for pid, prim in _phases():
        for dv in VOLUME_STRAINS:
            a = prim.copy()
            a.set_cell(prim.cell[:] * (1 + dv) ** (1 / 3), scale_atoms=True)
            out.append(_tag(a, "volume", phase=pid, volume_strain=dv))
    return out


def rattle_cells() -> list[Atoms]:
    out = []
    for pid, prim in _phases():
        base = get_structure(pid) if len(set(prim.get_chemical_symbols())) == 1 else prim
        if len(base) > RATTLE_MAX_PRIM_ATOMS:
            continue
        for amp in RATTLE_AMPLITUDES:
            (r,) = g.rattled(base, (amp,), seed=_rng("rattle", pid, amp))
            out.append(_tag(r, "rattle", phase=pid, rattle_amplitude=amp))
    return out


def _random_bcc_decoration(n_sites: int, elements: tuple[str, str], rng: np.random.Generator) -> Atoms:
    """A random binary decoration of an n-site bcc supercell (a random Hermite normal form of determinant n)."""
    prim = g.parent_lattice("bcc")
    # lower-triangular Hermite normal form with diagonal a*c*f = n
    divisors = [(a, c, n_sites // (a * c)) for a in range(1, n_sites + 1) for c in range(1, n_sites + 1)
                if n_sites % (a * c) == 0]
    a, c, f = divisors[int(rng.integers(len(divisors)))]
    b, d, e = int(rng.integers(c)), int(rng.integers(f)), int(rng.integers(f))
    hnf = np.array([[a, 0, 0], [b, c, 0], [d, e, f]])
    sc = make_supercell(prim, hnf)
    n_li = int(rng.integers(1, n_sites))
    symbols = np.array([elements[0]] * n_li + [elements[1]] * (n_sites - n_li))
    rng.shuffle(symbols)
    sc.symbols = list(symbols)
    sc.pbc = True
    return g.scale_to_volume(sc, g.estimated_volume_per_atom(list(symbols)))


def ordering_cells() -> list[Atoms]:
    out = []
    for els in SYSTEMS:
        for parent, size, n in ORDERINGS:
            cands = [a for a in g.enumerate_orderings(parent, els, [size]) if len(set(a.get_chemical_symbols())) == 2]
            for k in _rng("ordering", parent, size, *els).choice(len(cands), size=min(n, len(cands)), replace=False):
                a = cands[int(k)]
                out.append(_tag(a, "ordering", parent=parent, enum_index=int(a.info["enum_index"])))
        for size in RANDOM_BCC_SIZES:
            a = _random_bcc_decoration(size, els, _rng("random_bcc", size, *els))
            out.append(_tag(a, "ordering", parent="bcc", enum_index=-1))
    return out


def _defect_supercell(prim: Atoms) -> Atoms | None:
    m = g.supercell_matrix(prim, DEFECT_MIN_WIDTH)
    if len(prim) * int(round(abs(np.linalg.det(m)))) > DEFECT_MAX_ATOMS:
        return None
    return make_supercell(prim, m)


def largest_hole(atoms: Atoms, grid: int = 16) -> np.ndarray:
    """Cartesian position farthest from every atom: the best point of a ``grid``^3 fractional grid, refined by
    Nelder-Mead on the distance to the nearest atom."""
    from scipy.optimize import minimize

    f = np.stack(np.meshgrid(*[np.arange(grid) / grid] * 3, indexing="ij"), -1).reshape(-1, 3)
    pts = f @ atoms.cell[:]

    def nearest(p):
        return get_distances(np.atleast_2d(p), atoms.positions, cell=atoms.cell, pbc=True)[1].min(axis=1)

    best = pts[int(np.argmax(nearest(pts)))]
    res = minimize(lambda p: -nearest(p)[0], best, method="Nelder-Mead",
                   options={"xatol": 1e-4, "fatol": 1e-6, "initial_simplex": best + 0.2 * np.vstack([np.zeros(3), np.eye(3)])})
    return res.x if -res.fun >= nearest(best)[0] else best


def defect_cells() -> list[Atoms]:
    out = []
    for pid, prim in _phases():
        if "Li" not in prim.get_chemical_symbols():
            continue
        sc = _defect_supercell(prim)
        if sc is None:
            continue
        vac = g.li_vacancy(sc, seed=_rng("vacancy", pid))
        out.append(_tag(vac, "vacancy", phase=pid, vacancy_site=vac.info["vacancy_site"]))
        inter = sc.copy()
        inter += Atoms("Li", positions=[largest_hole(sc)])
        out.append(_tag(inter, "interstitial", phase=pid))
    return out


def extrapolation_v1(plan_ids: set[str] | None = None) -> list[Atoms]:
    """The rule-made extrapolation configurations (unlabelled), without any whose ``config_id`` is in ``plan_ids``."""
    plan_ids = plan_ids or set()
    seen, out = set(plan_ids), []
    for a in volume_cells() + rattle_cells() + ordering_cells() + defect_cells():
        cid = a.info["config_id"]
        if cid not in seen:
            seen.add(cid)
            out.append(a)
    return out
