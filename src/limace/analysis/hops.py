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

from limace.errors import LimaceInputError

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


def vacancy_supercell_matrix(atoms: Atoms, min_image_distance: float = 9.0) -> np.ndarray:
    """Diagonal repetition whose every perpendicular width is >= ``min_image_distance``, so that periodic images of
    a vacancy are at least that far apart."""
    from limace.data.generate import supercell_matrix

    return supercell_matrix(atoms, min_image_distance)


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


def hop_endpoints_for(atoms: Atoms, hop: Hop, min_image_distance: float = 9.0) -> HopEndpoints:
    """Vacancy at site ``hop.i``; the Li at ``hop.j + offset`` moves into it. Both endpoints in a supercell whose
    vacancy images are >= ``min_image_distance`` apart; the mover is the last atom of both."""
    from limace.data.generate import hop_endpoints

    reps = vacancy_supercell_matrix(atoms, min_image_distance)
    sc = atoms.repeat(tuple(int(x) for x in np.diag(reps)))
    sc.info = dict(atoms.info)
    v = _index_in_supercell(atoms, sc, hop.i, (0, 0, 0), reps)
    m = _index_in_supercell(atoms, sc, hop.j, hop.offset, reps)
    ini, fin = hop_endpoints(sc, vacancy=v, mover=m)
    return HopEndpoints(hop, ini, fin, tuple(int(x) for x in np.diag(reps)), v, m)
