"""Cluster expansion of a Li-M binary on the bcc lattice and a simulated-annealing ground-state search.

The structure search (:mod:`limace.analysis.search`) enumerates bcc orderings up to ~11 atoms per cell. Larger
orderings are reached through a cluster expansion (icet) fitted to the potential's relaxed energies of those
orderings:

- :func:`fit_cluster_expansion`: an icet :class:`~icet.ClusterSpace` on the bcc lattice (lattice constant 1, so the
  cutoffs are in units of the cubic lattice constant: 1.75 takes pairs to the 5th neighbour shell, 1.05 triplets of
  1st/2nd neighbours), a :class:`~icet.StructureContainer` of the *ideal* orderings with their relaxed energies per
  atom (the standard lattice mapping), and a least-squares fit with k-fold cross-validation (trainstation, which icet
  depends on);
- :func:`anneal_ground_states`: canonical simulated annealing (mchammer :class:`~mchammer.ensembles.CanonicalAnnealing`)
  at every composition of a set of compact bcc supercells of up to ~32 sites; each run's lowest configuration is
  reduced to its primitive cell and rated with the exact CE prediction (the annealing's local energy changes may be
  approximate when a cell is smaller than twice the cutoff, so the final energy is recomputed);
- :func:`lower_hull_distance`: the distance of points (x, E) above their lower convex envelope, to pick the
  proposals that the potential then relaxes (``source: "ce"`` in the hull).

>>> fit = fit_cluster_expansion(orderings, e_per_atom, ("Li", "In"))                      # doctest: +SKIP
>>> props = anneal_ground_states(fit.ce, ("Li", "In"), cell_sizes=(16, 24, 32), seed=0)   # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import product

import numpy as np
from ase import Atoms

from limace.core.errors import LimaceInputError

__all__ = ["CEFit", "Proposal", "fit_cluster_expansion", "anneal_ground_states", "lower_hull_distance",
           "to_unit_bcc", "compact_supercell", "structure_key", "primitive_in_frame"]

# volume per site of the unit bcc lattice (a = 1): the cluster space's frame
UNIT_BCC_VOLUME = 0.5


@contextmanager
def _quiet_icet():
    """icet warns (through logging) about self-interaction in small MC cells; the final energies are recomputed exactly."""
    loggers = [logging.getLogger(n) for n in ("icet", "mchammer")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, lev in zip(loggers, levels):
            lg.setLevel(lev)


def _bcc_primitive(species: Sequence[str]) -> Atoms:
    from ase.build import bulk

    return bulk(species[0], "bcc", a=1.0)


def to_unit_bcc(atoms: Atoms) -> Atoms:
    """A copy of an (ideal, isotropically scaled) bcc ordering scaled to the unit lattice constant of the cluster
    space (0.5 A^3 per site); ``info`` is dropped."""
    a = Atoms(symbols=atoms.get_chemical_symbols(), cell=atoms.cell[:], scaled_positions=atoms.get_scaled_positions(),
              pbc=True)
    s = (UNIT_BCC_VOLUME * len(a) / a.get_volume()) ** (1 / 3)
    a.set_cell(a.cell[:] * s, scale_atoms=True)
    return a


@dataclass
class CEFit:
    """A fitted cluster expansion and its quality (energies in eV/atom)."""

    ce: object  # icet.ClusterExpansion
    n_structures: int
    n_parameters: int
    rmse_train: float
    rmse_cv: float
    cutoffs: tuple[float, ...]

    def predict(self, structures: Sequence[Atoms]) -> np.ndarray:
        """CE energy per atom of ideal bcc orderings (any scale)."""
        return np.array([self.ce.predict(to_unit_bcc(a)) for a in structures])

    def summary(self) -> dict:
        return {"n_structures": self.n_structures, "n_parameters": self.n_parameters,
                "rmse_train_meV_per_atom": round(1000 * self.rmse_train, 2),
                "rmse_cv_meV_per_atom": round(1000 * self.rmse_cv, 2), "cutoffs": list(self.cutoffs)}


def fit_cluster_expansion(structures: Sequence[Atoms], energies: Sequence[float], species: Sequence[str],
                          cutoffs: Sequence[float] = (1.75, 1.05), n_splits: int = 5, seed: int = 0) -> CEFit:
    """Fit a cluster expansion to energies per atom (eV/atom) of ideal bcc orderings of ``species``.

    ``structures`` are the ideal orderings (the lattice positions, any isotropic scale); ``energies`` the relaxed
    energies per atom to learn (formation energies or any common zero). Least squares on the cluster vectors,
    validated by ``n_splits``-fold cross-validation (``rmse_cv``), then trained on all structures.
    """
    from icet import ClusterExpansion, ClusterSpace, StructureContainer
    from trainstation import CrossValidationEstimator

    structures, energies = list(structures), [float(e) for e in energies]
    if len(structures) != len(energies):
        raise LimaceInputError(f"{len(energies)} energies for {len(structures)} structures")
    if not cutoffs or any(not (isinstance(c, (int, float)) and c > 0) for c in cutoffs):
        raise LimaceInputError(f"cluster-expansion cutoffs must be positive numbers (units of the bcc lattice "
                               f"constant), got {list(cutoffs)}")
    with _quiet_icet():
        cs = ClusterSpace(_bcc_primitive(species), [float(c) for c in cutoffs], [list(species)])
        if len(structures) < max(2 * len(cs), n_splits + 1):
            raise LimaceInputError(f"cluster expansion: {len(structures)} training structures for {len(cs)} "
                                   f"parameters; need at least {max(2 * len(cs), n_splits + 1)}")
        container = StructureContainer(cs)
        for k, (a, e) in enumerate(zip(structures, energies)):
            container.add_structure(to_unit_bcc(a), user_tag=str(k), properties={"energy": e})
        fit_data = container.get_fit_data(key="energy")
        cve = CrossValidationEstimator(fit_data, fit_method="least-squares", validation_method="k-fold",
                                       n_splits=n_splits, seed=seed)
        cve.validate()
        cve.train()
        ce = ClusterExpansion(cs, cve.parameters)
    return CEFit(ce=ce, n_structures=len(structures), n_parameters=len(cs), rmse_train=float(cve.rmse_train),
                 rmse_cv=float(cve.rmse_validation), cutoffs=tuple(float(c) for c in cutoffs))


def _min_width(cell: np.ndarray) -> float:
    vol = abs(np.linalg.det(cell))
    return min(vol / np.linalg.norm(np.cross(cell[(i + 1) % 3], cell[(i + 2) % 3])) for i in range(3))


def compact_supercell(n_sites: int, species: Sequence[str] = ("Li", "In")) -> Atoms:
    """The most compact bcc supercell of ``n_sites`` sites: among all Hermite-normal-form supercell matrices of that
    determinant, Minkowski-reduced, the one with the largest smallest perpendicular width (first in a fixed order on ties), unit lattice
    constant, all sites ``species[0]``."""
    from ase.build import make_supercell
    from ase.geometry import minkowski_reduce

    if not (isinstance(n_sites, (int, np.integer)) and n_sites >= 2):
        raise LimaceInputError(f"supercell size must be an integer >= 2, got {n_sites!r}")
    prim = _bcc_primitive(species)
    p = prim.cell[:]
    best, best_w = None, -1.0
    n = int(n_sites)
    for a in (d for d in range(1, n + 1) if n % d == 0):
        for c in (d for d in range(1, n // a + 1) if (n // a) % d == 0):
            f = n // (a * c)
            for b, d, e in product(range(a), range(a), range(c)):  # row-style HNF: reduced by earlier rows
                h = np.array([[a, 0, 0], [b, c, 0], [d, e, f]])
                _, op = minkowski_reduce(h @ p)
                w = _min_width(op @ h @ p)
                if w > best_w + 1e-9:
                    best, best_w = op @ h, w
    sc = make_supercell(prim, best)
    sc.pbc = True
    return sc


def primitive_in_frame(atoms: Atoms, symprec: float = 1e-3) -> Atoms:
    """The primitive cell of an ordering on the lattice, in the same Cartesian frame (spglib without idealisation:
    no rotation) with its first atom at the origin, so that every atom stays on a site of the cluster space's
    lattice."""
    import spglib

    lat, pos, num = spglib.standardize_cell((atoms.cell[:], atoms.get_scaled_positions(), atoms.numbers),
                                            to_primitive=True, no_idealize=True, symprec=symprec)
    prim = Atoms(numbers=num, cell=lat, scaled_positions=pos, pbc=True)
    prim.positions -= prim.positions[0]
    prim.wrap(eps=1e-6)
    return prim


def structure_key(cluster_space, atoms: Atoms) -> tuple:
    """An identity key of a bcc ordering for a cluster space: its cluster vector (rounded; the same for every cell of
    the same ordering) and its number of atoms per primitive cell."""
    n_prim = len(primitive_in_frame(to_unit_bcc(atoms)))
    return (n_prim,) + tuple(np.round(cluster_space.get_cluster_vector(to_unit_bcc(atoms)), 6))


@dataclass
class Proposal:
    """One annealing result: the primitive cell of the lowest configuration found (unit bcc lattice), its CE energy
    per atom, the supercell size it was found in and the Li fraction."""

    atoms: Atoms
    energy: float
    x_li: float
    cell_size: int
    key: tuple = field(repr=False, default=())


def anneal_ground_states(ce, species: Sequence[str], cell_sizes: Sequence[int] = (12, 16, 18, 20, 24, 27, 32),
                         sweeps: int = 200, t_start: float = 2000.0, t_stop: float = 5.0, seed: int = 0,
                         progress: bool = False) -> list[Proposal]:
    """Simulated annealing (canonical, exponential cooling from ``t_start`` to ``t_stop`` K over ``sweeps`` trial
    swaps per site) at every composition 1..N-1 of the most compact bcc supercell of each size N in
    ``cell_sizes``. Returns the distinct lowest configurations (by :func:`structure_key`), primitive cells, each with
    its exact CE energy per atom; the lowest one wins where several runs found the same structure."""
    from mchammer.calculators import ClusterExpansionCalculator
    from mchammer.ensembles import CanonicalAnnealing
    from tqdm.auto import tqdm

    if sweeps < 1:
        raise LimaceInputError(f"annealing sweeps must be >= 1, got {sweeps}")
    rng = np.random.default_rng(seed)
    li, host = species
    found: dict[tuple, Proposal] = {}
    cs = ce.get_cluster_space_copy()
    runs = [(n, k) for n in cell_sizes for k in range(1, n)]
    bar = tqdm(total=len(runs), desc="CE annealing", unit="run", disable=not progress)
    with _quiet_icet():
        for n in cell_sizes:
            cell = compact_supercell(n, species)
            calc = ClusterExpansionCalculator(cell, ce)
            for k in range(1, n):
                occ = np.array([li] * k + [host] * (n - k))
                rng.shuffle(occ)
                start = cell.copy()
                start.symbols = list(occ)
                mc = CanonicalAnnealing(start, calc, T_start=t_start, T_stop=t_stop, n_steps=sweeps * n,
                                        random_seed=int(rng.integers(2**31 - 1)))
                mc.run()
                gs = mc.estimated_ground_state
                prim = to_unit_bcc(primitive_in_frame(gs))
                key = structure_key(cs, prim)
                e = float(ce.predict(prim))
                if key not in found or e < found[key].energy:
                    found[key] = Proposal(atoms=prim, energy=e, x_li=k / n, cell_size=n, key=key)
                bar.update(1)
    bar.close()
    return sorted(found.values(), key=lambda p: (p.x_li, p.energy))


def lower_hull_distance(x: Sequence[float], e: Sequence[float]) -> np.ndarray:
    """Distance (same units as ``e``) of each point above the lower convex envelope of all points (x, e)."""
    x, e = np.asarray(x, float), np.asarray(e, float)
    if x.shape != e.shape or x.ndim != 1 or len(x) == 0:
        raise LimaceInputError("lower_hull_distance: x and e must be equal-length 1-D sequences")
    order = np.lexsort((e, x))
    pts = []
    for i in order:  # monotone chain, lower part; one point per x (the lowest)
        if pts and abs(x[pts[-1]] - x[i]) < 1e-12:
            continue
        while len(pts) >= 2:
            (x1, e1), (x2, e2) = (x[pts[-2]], e[pts[-2]]), (x[pts[-1]], e[pts[-1]])
            if (x2 - x1) * (e[i] - e1) - (e2 - e1) * (x[i] - x1) <= 0:
                pts.pop()
            else:
                break
        pts.append(i)
    hx, he = x[pts], e[pts]
    return e - np.interp(x, hx, he)
