"""Percolation of Li hops through the periodic crystal (science.md, "Percolation").

Every hop copy is an edge (i, j, offset) of the periodic Li-site graph. Each Li site i has a vacancy energy E_i (the
relaxed supercell with a vacancy at i) and each distinct hop an absolute saddle energy S_ij (the highest energy of its
converged band, same supercell, same potential). For an absolute threshold T the edges with S_ij <= T split the sites
into components; a component percolates in d dimensions when its edges connect a site to its own periodic images
along d independent lattice directions. The dD percolation barrier is

    E*_d = min over thresholds T and components C of the edges S <= T that percolate in >= d dimensions
           of  T - E_min(C),          E_min(C) = the lowest site energy in C,

i.e. the smallest E* such that the hops with S_ij <= E_min + E* connect the component whose lowest site is E_min
through the crystal in d dimensions. Only the saddle levels can be such thresholds, so edges are added in order of
saddle energy (all edges of one level together) into a union-find that keeps, for every site, its lattice offset
relative to the root of its component and, per component, its lowest site energy and the lattice translations of its
cycles (their rank is the dimension through which it percolates); after each level every percolating component is a
candidate.

With equivalent sites (all E_i equal) this is the classical rule: the smallest hop barrier at which the network
percolates. When sites differ, a per-hop max(forward, backward) is not the right weight: a path climbs from the
lowest site it visits to the highest saddle it crosses, and these need not belong to the same hop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

DIMS = ("1d", "2d", "3d")


def _rank(vectors: list[np.ndarray]) -> int:
    if not vectors:
        return 0
    return int(np.linalg.matrix_rank(np.asarray(vectors, dtype=float), tol=1e-8))


class _PeriodicUnionFind:
    def __init__(self, n: int, site_energies: Sequence[float]):
        self.parent = list(range(n))
        self.shift = [np.zeros(3, dtype=int) for _ in range(n)]  # position of node relative to its parent
        self.translations: dict[int, list[np.ndarray]] = {k: [] for k in range(n)}
        self.e_min = {k: (float(site_energies[k]), k) for k in range(n)}  # lowest (energy, site) per root

    def find(self, a: int) -> tuple[int, np.ndarray]:
        """Root of ``a`` and the lattice offset of ``a`` relative to it (path compression keeps offsets right)."""
        path = []
        while self.parent[a] != a:
            path.append(a)
            a = self.parent[a]
        root = a
        total = np.zeros(3, dtype=int)
        for node in reversed(path):
            total = total + self.shift[node]
            self.shift[node] = total.copy()
            self.parent[node] = root
        return root, (self.shift[path[0]] if path else np.zeros(3, dtype=int))

    def _add_translation(self, root: int, t: np.ndarray) -> None:
        if np.any(t != 0) and _rank(self.translations[root] + [t]) > _rank(self.translations[root]):
            self.translations[root].append(t)

    def add_edge(self, i: int, j: int, offset: Sequence[int]) -> None:
        """Edge from site i (cell 0) to site j in cell ``offset``."""
        ri, oi = self.find(i)
        rj, oj = self.find(j)
        off = np.asarray(offset, dtype=int)
        if ri == rj:
            self._add_translation(ri, oi + off - oj)  # i -> j(off) and back to j's own position in the component
            return
        self.parent[rj] = ri  # attach rj under ri so that j sits at oi + off
        self.shift[rj] = oi + off - oj
        for t in self.translations.pop(rj):
            self._add_translation(ri, t)
        self.e_min[ri] = min(self.e_min[ri], self.e_min.pop(rj))

    def roots(self) -> list[int]:
        return [k for k in range(len(self.parent)) if self.parent[k] == k]

    def dimension(self, root: int) -> int:
        return _rank(self.translations[root])


@dataclass
class PercolationResult:
    """Percolation barrier (eV) in 1D/2D/3D and what makes it.

    ``barriers[d]``: E*_d (None: no percolation in d dimensions with the hops given); ``hops[d]``: the distinct hops
    with a copy in the percolating component and a saddle at or below its threshold (the path); ``saddle[d]``: that
    absolute threshold E_min + E*_d (eV, the highest saddle crossed); ``lowest_site[d]``: the site of E_min;
    ``site_energy_min[d]``: E_min (eV)."""

    barriers: dict[str, float | None]
    hops: dict[str, list[int]]
    saddle: dict[str, float | None] = field(default_factory=lambda: dict.fromkeys(DIMS))
    lowest_site: dict[str, int | None] = field(default_factory=lambda: dict.fromkeys(DIMS))
    site_energy_min: dict[str, float | None] = field(default_factory=lambda: dict.fromkeys(DIMS))

    def as_dict(self) -> dict:
        return {d: {"barrier_eV": self.barriers[d], "hops": self.hops[d], "saddle_eV": self.saddle[d],
                    "lowest_site": self.lowest_site[d], "lowest_site_energy_eV": self.site_energy_min[d]}
                for d in DIMS}

    @classmethod
    def from_dict(cls, d: dict) -> "PercolationResult":
        return cls(barriers={k: d[k]["barrier_eV"] for k in DIMS}, hops={k: list(d[k]["hops"]) for k in DIMS},
                   saddle={k: d[k].get("saddle_eV") for k in DIMS},
                   lowest_site={k: d[k].get("lowest_site") for k in DIMS},
                   site_energy_min={k: d[k].get("lowest_site_energy_eV") for k in DIMS})


def percolation(n_sites: int, hop_copies: Sequence[Sequence[tuple[int, int, Sequence[int]]]],
                saddle_energies: Sequence[float | None],
                site_energies: Sequence[float | None] | None = None) -> PercolationResult:
    """Percolation barriers of a periodic site graph (see the module docstring).

    ``hop_copies[h]``: all copies (i, j, offset) of distinct hop h (site indices in ``range(n_sites)``);
    ``saddle_energies[h]``: its absolute saddle energy (eV), or None when unknown (the hop is then left out);
    ``site_energies[i]``: the vacancy energy of site i (eV; None for sites no hop touches). Without site energies
    all sites count as 0 and ``saddle_energies`` are the hop barriers themselves (equivalent sites).
    """
    if len(hop_copies) != len(saddle_energies):
        raise ValueError("one saddle energy per distinct hop")
    if site_energies is None:
        site_energies = [0.0] * n_sites
    if len(site_energies) != n_sites:
        raise ValueError(f"one site energy per site: {n_sites} sites, {len(site_energies)} energies")
    e_site = [np.inf if e is None else float(e) for e in site_energies]
    for h, s in enumerate(saddle_energies):
        if s is None or not np.isfinite(s):
            continue
        for i, j, _ in hop_copies[h]:
            if not (np.isfinite(e_site[int(i)]) and np.isfinite(e_site[int(j)])):
                raise ValueError(f"hop {h} joins site {i} and {j}; both need a site energy")
    order = sorted((float(s), h) for h, s in enumerate(saddle_energies) if s is not None and np.isfinite(s))
    uf = _PeriodicUnionFind(n_sites, e_site)
    best: dict[str, tuple | None] = dict.fromkeys(DIMS)
    added: list[int] = []
    k = 0
    while k < len(order):
        level = order[k][0]
        while k < len(order) and order[k][0] <= level + 1e-12:  # ties percolate together
            h = order[k][1]
            for i, j, off in hop_copies[h]:
                uf.add_edge(int(i), int(j), off)
            added.append(h)
            k += 1
        for root in uf.roots():
            dim = uf.dimension(root)
            if dim == 0:
                continue
            e_min, site = uf.e_min[root]
            value = level - e_min
            for d in range(1, dim + 1):
                key = f"{d}d"
                if best[key] is None or value < best[key][0] - 1e-12:
                    path = sorted({h for h in added if any(uf.find(int(c[0]))[0] == root for c in hop_copies[h])})
                    best[key] = (value, level, e_min, site, path)
    return PercolationResult(
        barriers={d: None if best[d] is None else float(best[d][0]) for d in DIMS},
        hops={d: [] if best[d] is None else best[d][4] for d in DIMS},
        saddle={d: None if best[d] is None else float(best[d][1]) for d in DIMS},
        lowest_site={d: None if best[d] is None else int(best[d][3]) for d in DIMS},
        site_energy_min={d: None if best[d] is None else float(best[d][2]) for d in DIMS})


def percolation_bounds(n_sites: int, hop_copies, site_energies, known: Sequence[float | None],
                       lower: Sequence[float]) -> tuple[PercolationResult, PercolationResult, dict[str, bool]]:
    """Certified percolation with some saddles still unknown.

    ``known[h]``: the converged saddle energy of hop h, or None; ``lower[h]``: a lower bound of every hop's saddle
    (e.g. max(E_i, E_j)). E*_d only grows when a saddle grows, so E*_d with the unknown hops at their lower bounds is
    a lower bound and E*_d without them an upper bound; where they are equal the value is certified.
    Returns (upper = result from the known hops only, lower, certified per dimension)."""
    upper = percolation(n_sites, hop_copies, known, site_energies)
    low = percolation(n_sites, hop_copies, [k if k is not None else lo for k, lo in zip(known, lower)],
                      site_energies)
    cert = {}
    for d in DIMS:
        a, b = upper.barriers[d], low.barriers[d]
        cert[d] = (a is None and b is None) or (a is not None and b is not None and abs(a - b) <= 1e-9)
    return upper, low, cert


@dataclass
class CertifiedPercolation:
    """Result of :func:`certify_percolation`: the percolation from the computed saddles, whether each dimension is
    certified, which hops were computed and which only bounded, in order."""

    result: PercolationResult
    certified: dict[str, bool]
    computed: list[int]
    refined: list[int]
    rounds: int
    rechecked: list[int] = field(default_factory=list)


def certify_percolation(n_sites: int, hop_copies, site_energies, lower: Sequence[float],
                        compute: Callable[[list[int]], dict[int, float | None]],
                        refine: Callable[[list[int]], dict[int, float]] | None = None,
                        usable: Sequence[int] | None = None,
                        recheck: Callable[[list[int]], dict[int, float | None]] | None = None) -> CertifiedPercolation:
    """The 1D/2D/3D percolation barriers with as few saddles computed as the answer needs (lazy certification).

    ``lower[h]``: a lower bound of hop h's absolute saddle (at least max(E_i, E_j)); ``compute(hops)`` returns each
    hop's converged saddle (None: not converged; such a hop stays unknown and a dimension that needs it is reported
    as not certified); ``refine(hops)`` (optional) returns better lower bounds, cheaper than a saddle; ``usable``: the
    hops that can be computed at all (default: every hop).

    A dimension is open while E*_d from the known saddles differs from E*_d with every unknown hop at its lower
    bound. The component that makes that lower value contains unknown hops, and only they can close the
    dimension: were they all known, the same component would exist among the known hops and the two values would be
    equal. So each round refines the bounds of those hops (once per hop) or, when all are refined, computes them;
    every round raises a bound or adds a saddle, and hops that never reach such a component are never computed.

    ``recheck(hops)`` (optional): a second, independent saddle search of the hops that set a certified value (on a
    dimension's path, saddle at its level), each at most once; it returns a saddle no higher than the first (or
    None: keep the first). An NEB can converge to a higher one of two saddles between the same endpoints; the
    percolation value is only as good as the hop that sets it. A lowered saddle can open a dimension again, and the
    rounds go on.
    """
    n = len(hop_copies)
    lower = [float(x) for x in lower]
    usable_set = set(range(n)) if usable is None else set(usable)
    known: list[float | None] = [None] * n
    tried: set[int] = set()
    refined: list[int] = []
    computed: list[int] = []
    rounds = 0
    rechecked: list[int] = []
    while True:
        bounds = [lower[h] if h in usable_set else np.inf for h in range(n)]
        up, low, cert = percolation_bounds(n_sites, hop_copies, site_energies, known, bounds)
        need = sorted({h for d in DIMS if not cert[d] for h in low.hops[d] if h in usable_set and h not in tried},
                      key=lambda h: lower[h])
        if not need:  # certified, or only hops that did not converge are left: their dimensions stay open
            setting = sorted({h for d in DIMS if cert[d] and up.saddle[d] is not None for h in up.hops[d]
                              if known[h] is not None and known[h] >= up.saddle[d] - 1e-9 and h not in rechecked})
            if recheck is None or not setting:
                break
            for h, value in recheck(setting).items():
                if value is not None:
                    known[h] = min(known[h], float(value))
            rechecked.extend(setting)
            continue
        fresh = [h for h in need if h not in refined]
        if refine is not None and fresh:
            for h, value in refine(fresh).items():
                lower[h] = max(lower[h], float(value))
            refined.extend(fresh)
            continue
        # Of those, first the ones the lower value cannot do without (left out, it rises): a hop that only adds a
        # redundant link to the component may never need a saddle. Without such hops (parallel links), the one with
        # the lowest bound: once one link of a pair is known, the other is not needed.
        at_bounds = [k if k is not None else b for k, b in zip(known, bounds)]
        critical = set()
        for h in need:
            trial = list(at_bounds)
            trial[h] = None
            without = percolation(n_sites, hop_copies, trial, site_energies)
            for d in DIMS:
                if not cert[d] and h in low.hops[d] and (without.barriers[d] is None
                                                         or without.barriers[d] > low.barriers[d] + 1e-9):
                    critical.add(h)
        need = [h for h in need if h in critical] or need[:1]
        saddles = compute(need)
        rounds += 1
        for h in need:
            tried.add(h)
            computed.append(h)
            s = saddles.get(h)
            known[h] = None if s is None else float(s)
    return CertifiedPercolation(result=up, certified=cert, computed=computed, refined=refined, rounds=rounds,
                                rechecked=rechecked)
