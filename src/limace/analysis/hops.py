"""Symmetry-distinct Li hops, vacancy supercells and the endpoints of vacancy hops.

A *hop* joins Li site ``i`` of the unit cell to Li site ``j`` in the cell translated by the integer vector
``offset`` (fractional lattice coordinates). Two hops are equivalent when a space-group operation maps one unordered
pair of sites onto the other (science.md); :func:`distinct_hops` groups all pairs within a cutoff into such orbits,
keeping every copy (the percolation graph needs them all).

>>> from limace.data import get_structure
>>> hops = distinct_hops(get_structure("Li_bcc", primitive=True), cutoff=3.6)
>>> [round(h.length, 3) for h in hops]       # bcc Li: first (8 neighbours) and second (6) shells
[3.039, 3.509]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from ase import Atoms

from limace.core.errors import LimaceInputError

Copy = tuple[int, int, tuple[int, int, int]]  # (site i, site j, lattice offset of j)


@dataclass
class Hop:
    """One symmetry-distinct hop and all its copies in the unit cell."""

    index: int
    i: int
    j: int
    offset: tuple[int, int, int]
    length: float
    copies: list[Copy] = field(default_factory=list)
    site_class_i: int = 0
    site_class_j: int = 0

    @property
    def multiplicity(self) -> int:
        return len(self.copies)

    @property
    def symmetric_endpoints(self) -> bool:
        """True when the two end sites are symmetry-equivalent (forward and backward barriers are then equal)."""
        return self.site_class_i == self.site_class_j

    def as_dict(self) -> dict:
        return {"index": self.index, "i": self.i, "j": self.j, "offset": list(self.offset),
                "length_A": round(self.length, 4), "multiplicity": self.multiplicity,
                "site_classes": [self.site_class_i, self.site_class_j],
                "copies": [[a, b, list(o)] for a, b, o in self.copies]}


def _symmetry(atoms: Atoms, symprec: float):
    import spglib

    ds = spglib.get_symmetry_dataset((atoms.cell[:], atoms.get_scaled_positions(), atoms.numbers), symprec=symprec)
    if ds is None:
        raise LimaceInputError(f"{atoms.get_chemical_formula()}: spglib found no symmetry (symprec={symprec})")
    return ds


def _canonical(i: int, j: int, off) -> Copy:
    a = (i, j, tuple(int(x) for x in off))
    b = (j, i, tuple(-int(x) for x in off))
    return min(a, b)


def distinct_hops(atoms: Atoms, species: str = "Li", cutoff: float = 3.6, symprec: float = 1e-3) -> list[Hop]:
    """Symmetry-distinct hops between ``species`` sites no longer than ``cutoff`` (A), shortest first."""
    from ase.neighborlist import neighbor_list

    sym = np.array(atoms.get_chemical_symbols())
    sites = np.flatnonzero(sym == species)
    if len(sites) == 0:
        raise LimaceInputError(f"{atoms.get_chemical_formula()} has no {species} sites")
    ds = _symmetry(atoms, symprec)
    frac = atoms.get_scaled_positions(wrap=False)
    ii, jj, SS, dd = neighbor_list("ijSd", atoms, cutoff)
    pairs = {}
    for a, b, s, d in zip(ii, jj, SS, dd):
        if sym[a] == species and sym[b] == species:
            pairs.setdefault(_canonical(int(a), int(b), s), float(d))
    if not pairs:
        raise LimaceInputError(f"{atoms.get_chemical_formula()}: no {species}-{species} pair within {cutoff} A")

    def image(op_r, op_t, k):
        p = op_r @ frac[k] + op_t
        diff = p[None, :] - frac
        shift = np.round(diff)
        err = np.linalg.norm((diff - shift) @ atoms.cell[:], axis=1)
        m = int(np.argmin(err))
        if err[m] > 10 * symprec * max(1.0, atoms.cell.lengths().max()):
            raise LimaceInputError(f"symmetry operation maps atom {k} onto no atom (try a larger symprec)")
        return m, shift[m].astype(int)

    # site classes (equivalent atoms)
    equiv = np.asarray(ds.equivalent_atoms)
    classes = {int(c): n for n, c in enumerate(sorted(set(equiv[sites].tolist())))}
    seen: set[Copy] = set()
    hops: list[Hop] = []
    for key in sorted(pairs, key=lambda k: (round(pairs[k], 4), k)):
        if key in seen:
            continue
        i, j, off = key
        orbit = set()
        for R, t in zip(ds.rotations, ds.translations):
            mi, si = image(R, t, i)
            mj, sj = image(R, t, j)
            new_off = sj + R @ np.asarray(off) - si
            orbit.add(_canonical(mi, mj, new_off))
        seen |= orbit
        hops.append(Hop(index=len(hops), i=i, j=j, offset=tuple(off), length=pairs[key], copies=sorted(orbit),
                        site_class_i=classes[int(equiv[i])], site_class_j=classes[int(equiv[j])]))
    return hops


def li_coordination(atoms: Atoms, site: int, cutoff: float = 3.5) -> dict:
    """Number and species of neighbours of ``site`` within ``cutoff`` (A): ``{"n": 8, "Li": 4, "Sn": 4}``."""
    from ase.neighborlist import neighbor_list

    i, j = neighbor_list("ij", atoms, cutoff)
    neigh = [atoms[k].symbol for k in j[i == site]]
    out = {"n": len(neigh)}
    for s in sorted(set(neigh)):
        out[s] = neigh.count(s)
    return out


def primitive_cell(atoms: Atoms, symprec: float = 1e-3) -> Atoms:
    """The primitive cell of ``atoms`` (spglib, positions and orientation not idealised), so that the same crystal
    given in any cell gets the same vacancy supercell and the same barriers. ``atoms`` itself when it is primitive."""
    import spglib

    lattice, pos, numbers = spglib.standardize_cell((atoms.cell[:], atoms.get_scaled_positions(), atoms.numbers),
                                                     to_primitive=True, no_idealize=True, symprec=symprec)
    if len(numbers) == len(atoms):
        return atoms
    prim = Atoms(numbers=numbers, cell=lattice, scaled_positions=pos, pbc=True)
    prim.info = dict(atoms.info)
    return prim


def shortest_lattice_vector(cell) -> float:
    """Length (A) of the shortest non-zero lattice vector of ``cell`` (rows): the distance between periodic images."""
    from ase.geometry.minkowski_reduction import minkowski_reduce

    red, _ = minkowski_reduce(np.asarray(cell, dtype=float))
    combos = np.array([(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1) if (a, b, c) != (0, 0, 0)])
    return float(np.linalg.norm(combos @ red, axis=1).min())


def _widths(cell: np.ndarray) -> np.ndarray:
    vol = abs(np.linalg.det(cell))
    return np.array([vol / np.linalg.norm(np.cross(cell[(i + 1) % 3], cell[(i + 2) % 3])) for i in range(3)])


def vacancy_supercell_matrix(atoms: Atoms, min_image_distance: float = 13.0, min_width: float = 7.2) -> np.ndarray:
    """The diagonal repetition with the fewest atoms whose periodic images of a vacancy are at least
    ``min_image_distance`` apart (the shortest lattice vector of the supercell) and whose every perpendicular width is
    at least ``min_width`` (A; twice the longest hop keeps the minimum image of every displacement along a band
    unambiguous); among equal sizes the most isotropic one."""
    cell = atoms.cell[:]
    w0 = _widths(cell)
    top = [max(1, int(np.ceil(max(min_image_distance, min_width) / w - 1e-9))) for w in w0]
    best = None
    for n1 in range(1, top[0] + 1):
        for n2 in range(1, top[1] + 1):
            for n3 in range(1, top[2] + 1):
                sc = np.diag([n1, n2, n3]) @ cell
                w = _widths(sc)
                if w.min() < min_width - 1e-9 or shortest_lattice_vector(sc) < min_image_distance - 1e-9:
                    continue
                key = (n1 * n2 * n3, w.max() / w.min(), (n1, n2, n3))
                if best is None or key < best:
                    best = key
    return np.diag(best[2])


def _index_in_supercell(atoms: Atoms, sc: Atoms, site: int, offset, reps: np.ndarray) -> int:
    target = (atoms.get_scaled_positions(wrap=False)[site] + np.asarray(offset)) / np.diag(reps)
    diff = sc.get_scaled_positions(wrap=False) - target[None, :]
    diff -= np.round(diff)
    err = np.linalg.norm(diff @ sc.cell[:], axis=1)
    m = int(np.argmin(err))
    if err[m] > 1e-4:
        raise LimaceInputError(f"site {site} + {list(offset)} not found in the supercell")
    return m


@dataclass
class HopEndpoints:
    hop: Hop
    initial: Atoms
    final: Atoms
    supercell_repeat: tuple[int, int, int]
    vacancy_index: int  # index in the supercell (before removal) of the vacant site i
    mover_index: int  # index in the supercell (before removal) of the Li that jumps (site j + offset)


def hop_endpoints_for(atoms: Atoms, hop: Hop, min_image_distance: float = 13.0) -> HopEndpoints:
    """Vacancy at site ``hop.i``; the Li at ``hop.j + offset`` moves into it. Both endpoints in a supercell whose
    vacancy images are >= ``min_image_distance`` apart (:func:`vacancy_supercell_matrix`); the mover is the last atom
    of both."""
    from limace.data.generate import hop_endpoints

    reps = vacancy_supercell_matrix(atoms, min_image_distance)
    sc = atoms.repeat(tuple(int(x) for x in np.diag(reps)))
    sc.info = dict(atoms.info)
    v = _index_in_supercell(atoms, sc, hop.i, (0, 0, 0), reps)
    m = _index_in_supercell(atoms, sc, hop.j, hop.offset, reps)
    ini, fin = hop_endpoints(sc, vacancy=v, mover=m)
    return HopEndpoints(hop, ini, fin, tuple(int(x) for x in np.diag(reps)), v, m)


# -- one relaxation per distinct vacancy site ---------------------------------------------------------------------------


@dataclass
class VacancySites:
    """The vacancy structures a set of hops needs, relaxed once per symmetry-distinct site and mapped onto the others.

    The supercell is ``atoms.repeat(reps)`` (ASE's order: atom ``site`` of cell ``(m0, m1, m2)`` has index
    ``((m0 * r1 + m1) * r2 + m2) * n + site``). A vacancy at site ``s`` (cell 0) is described by the displacements
    ``U_s [N, 3]`` of every atom from its ideal position (row ``s`` unused). Sites of one class share a relaxation when
    a space-group operation maps the class's representative onto them and maps the supercell onto itself; the
    displacements are then rotated and permuted (exact: the relaxed structures are symmetry images, same energy).
    """

    atoms: Atoms
    reps: tuple[int, int, int]
    supercell: Atoms
    representative: dict[int, int]  # site -> the site whose relaxation it uses
    ops: dict[int, tuple[np.ndarray, np.ndarray]]  # site -> (R, t) mapping its representative onto it (frac coords)
    site_class: dict[int, int] = field(default_factory=dict)  # every site of the species -> its equivalence class
    displacements: dict[int, np.ndarray] = field(default_factory=dict)  # representative -> U [N, 3]
    energies: dict[int, float] = field(default_factory=dict)  # representative -> relaxed energy (eV)
    converged: dict[int, bool] = field(default_factory=dict)

    @property
    def representatives(self) -> list[int]:
        return sorted(set(self.representative.values()))

    def index(self, site: int, offset=(0, 0, 0)) -> int:
        n = len(self.atoms)
        m = [int(o) % r for o, r in zip(offset, self.reps)]
        return ((m[0] * self.reps[1] + m[1]) * self.reps[2] + m[2]) * n + int(site)

    def _prim_frac(self) -> np.ndarray:
        n = len(self.atoms)
        frac = self.atoms.get_scaled_positions(wrap=False)
        cells = np.array([(a, b, c) for a in range(self.reps[0]) for b in range(self.reps[1])
                          for c in range(self.reps[2])])
        return (cells[:, None, :] + frac[None, :, :]).reshape(-1, 3)[: n * int(np.prod(self.reps))]

    def vacancy_structure(self, rep: int) -> Atoms:
        """The unrelaxed supercell with a vacancy at representative site ``rep`` (cell 0)."""
        sc = self.supercell.copy()
        del sc[self.index(rep)]
        return sc

    def set_relaxed(self, rep: int, relaxed: Atoms) -> None:
        from ase.geometry import find_mic

        v = self.index(rep)
        keep = [k for k in range(len(self.supercell)) if k != v]
        u = np.zeros((len(self.supercell), 3))
        d, _ = find_mic(relaxed.positions - self.supercell.positions[keep], self.supercell.cell, True)
        u[keep] = d
        self.displacements[rep] = u
        self.energies[rep] = float(relaxed.info["energy"])
        self.converged[rep] = bool(relaxed.info.get("converged", True))

    def energy(self, site: int) -> float:
        """Relaxed energy of a vacancy at ``site``: its own relaxation, or that of any equivalent site (the copies of
        a hop touch sites equivalent to the ones relaxed)."""
        if site in self.representative:
            return self.energies[self.representative[site]]
        c = self.site_class[site]
        for s, r in self.representative.items():
            if self.site_class.get(s) == c:
                return self.energies[r]
        raise KeyError(f"no relaxed vacancy equivalent to site {site}")

    def has_energy(self, site: int) -> bool:
        return site in self.representative or (
            site in self.site_class and any(self.site_class.get(s) == self.site_class[site] for s in self.representative))

    def displacement(self, site: int, offset=(0, 0, 0)) -> np.ndarray:
        """``U [N, 3]`` of a vacancy at ``site`` in cell ``offset`` (ideal-supercell atom order)."""
        rep = self.representative[site]
        R, t = self.ops[site]
        t = np.asarray(t, dtype=float) + np.asarray(offset, dtype=float)
        perm = _permutation(self._prim_frac(), np.asarray(self.reps), R, t)
        cell = self.atoms.cell[:]
        rot = cell.T @ R @ np.linalg.inv(cell.T)
        u = np.zeros_like(self.displacements[rep])
        u[perm] = self.displacements[rep] @ rot.T
        return u

    def hop_endpoints(self, hop: Hop) -> tuple[Atoms, Atoms]:
        """Relaxed initial (vacancy at ``hop.i``) and final (vacancy at ``hop.j + offset``) states of ``hop``; the same
        atom order (as :func:`hop_endpoints_for`: the mover last), energies in ``info["energy"]``."""
        from ase.geometry import find_mic

        sc = self.supercell
        v, m = self.index(hop.i), self.index(hop.j, hop.offset)
        keep = [k for k in range(len(sc)) if k not in (v, m)] + [m]
        u_i = self.displacement(hop.i)
        u_f = self.displacement(hop.j, hop.offset)
        ini = sc[keep]
        ini.positions = sc.positions[keep] + u_i[keep]
        fin = sc[keep]
        fin.positions = sc.positions[keep] + u_f[keep]
        # the mover ends on the vacant site v, reached by the hop vector (minimum image)
        target = sc.positions[v] + u_f[v]
        jump, _ = find_mic(target - ini.positions[-1], sc.cell, True)
        fin.positions[-1] = ini.positions[-1] + jump
        for a, site in ((ini, hop.i), (fin, hop.j)):
            a.info = {"energy": self.energy(site), "vacancy_site": int(site),
                      "converged": self.converged[self.representative[site]]}
        return ini, fin


def _supercell_op(R: np.ndarray, reps: np.ndarray) -> bool:
    """True when the rotation ``R`` (primitive fractional coordinates) maps the lattice of the diagonal supercell
    ``reps`` onto itself."""
    m = np.diag(1.0 / reps) @ R @ np.diag(reps)
    return bool(np.allclose(m, np.round(m), atol=1e-8))


def _permutation(prim_frac: np.ndarray, reps: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``perm[k]``: the supercell atom onto which atom ``k`` is mapped by ``p -> R p + t`` (primitive frac coords)."""
    new = (prim_frac @ R.T + t) / reps
    old = prim_frac / reps
    diff = new[:, None, :] - old[None, :, :]
    diff -= np.round(diff)
    err = np.abs(diff).max(axis=2)
    perm = np.argmin(err, axis=1)
    if err[np.arange(len(perm)), perm].max() > 1e-3 or len(set(perm.tolist())) != len(perm):
        raise LimaceInputError("a symmetry operation does not map the vacancy supercell onto itself")
    return perm


def vacancy_sites(atoms: Atoms, hops: list[Hop], reps, symprec: float = 1e-3) -> VacancySites:
    """The distinct vacancy sites the ``hops`` need in the supercell ``atoms.repeat(reps)`` (see :class:`VacancySites`;
    relax each ``vacancy_structure(rep)`` for ``rep`` in ``representatives`` and pass it to ``set_relaxed``)."""
    reps = np.asarray(reps)
    reps = tuple(int(x) for x in (np.diag(reps) if reps.ndim == 2 else reps))
    ds = _symmetry(atoms, symprec)
    equiv = np.asarray(ds.equivalent_atoms)
    frac = atoms.get_scaled_positions(wrap=False)
    needed = sorted({h.i for h in hops} | {h.j for h in hops})
    r = np.asarray(reps)
    rep_of: dict[int, int] = {}
    ops: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    class_rep: dict[int, int] = {}
    for s in needed:
        c = int(equiv[s])
        if c not in class_rep:
            class_rep[c] = s
        rep = class_rep[c]
        found = None
        if rep == s:
            found = (np.eye(3, dtype=int), np.zeros(3))
        else:
            for R, t in zip(ds.rotations, ds.translations):
                if not _supercell_op(R, r):
                    continue
                p = R @ frac[rep] + t
                shift = p - frac[s]
                if np.allclose(shift, np.round(shift), atol=1e-3):
                    found = (R, t - np.round(shift))
                    break
        if found is None:  # no operation maps the supercell onto itself: relax this site on its own
            rep = s
            found = (np.eye(3, dtype=int), np.zeros(3))
        rep_of[s] = rep
        ops[s] = (np.asarray(found[0], dtype=float), np.asarray(found[1], dtype=float))
    sc = atoms.repeat(reps)
    sc.info = {}
    species = atoms.numbers[hops[0].i] if hops else 3
    site_class = {int(k): int(equiv[k]) for k in range(len(atoms)) if atoms.numbers[k] == species}
    return VacancySites(atoms=atoms, reps=reps, supercell=sc, representative=rep_of, ops=ops, site_class=site_class)
