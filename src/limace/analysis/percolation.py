"""Percolation of Li hops through the periodic crystal (science.md).

Every hop copy is an edge (i, j, offset) of the periodic Li-site graph, weighted by its barrier. The dD percolation
barrier is the smallest E* such that the edges with barrier <= E* connect a site to its own periodic images along d
independent lattice directions. Edges are added in order of barrier into a union-find that keeps, for every site, its
lattice offset relative to the root of its component; an edge closing a cycle contributes the cycle's net lattice
translation, and the rank of a component's translations is the dimension through which it percolates.

Edge weight for a hop whose end sites differ (forward != backward barrier): the larger of the two, i.e. the saddle
energy above the lower-energy vacancy site of the pair — crossing the edge in both directions needs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def _rank(vectors: list[np.ndarray]) -> int:
    if not vectors:
        return 0
    return int(np.linalg.matrix_rank(np.asarray(vectors, dtype=float), tol=1e-8))


class _PeriodicUnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))
        self.shift = [np.zeros(3, dtype=int) for _ in range(n)]  # position of node relative to its parent
        self.translations: dict[int, list[np.ndarray]] = {k: [] for k in range(n)}

    def find(self, a: int) -> tuple[int, np.ndarray]:
        """Root of ``a`` and the lattice offset of ``a`` relative to it (path compression keeps offsets right)."""
        path = []
        while self.parent[a] != a:
            path.append(a)
            a = self.parent[a]
        root = a
        # compress: accumulate offsets from the top of the path down
        total = np.zeros(3, dtype=int)
        for node in reversed(path):
            total = total + self.shift[node]
            self.shift[node] = total.copy()
            self.parent[node] = root
        return root, (self.shift[path[0]] if path else np.zeros(3, dtype=int))

    def add_edge(self, i: int, j: int, offset: Sequence[int]) -> None:
        """Edge from site i (cell 0) to site j in cell ``offset``."""
        ri, oi = self.find(i)
        rj, oj = self.find(j)
        off = np.asarray(offset, dtype=int)
        if ri == rj:
            cycle = oi + off - oj  # going i -> j(off) and back to j's own position in the component
            if np.any(cycle != 0) and _rank(self.translations[ri] + [cycle]) > _rank(self.translations[ri]):
                self.translations[ri].append(cycle)
            return
        # attach rj under ri: position of rj relative to ri so that j sits at oi + off
        self.parent[rj] = ri
        self.shift[rj] = oi + off - oj
        for t in self.translations.pop(rj):
            if _rank(self.translations[ri] + [t]) > _rank(self.translations[ri]):
                self.translations[ri].append(t)

    def max_dimension(self) -> int:
        return max((_rank(t) for t in self.translations.values()), default=0)


@dataclass
class PercolationResult:
    """Lowest barrier (eV) at which the hop network percolates in 1D/2D/3D, and the hops that make it."""

    barriers: dict[str, float | None]
    hops: dict[str, list[int]]

    def as_dict(self) -> dict:
        return {d: {"barrier_eV": self.barriers[d], "hops": self.hops[d]} for d in ("1d", "2d", "3d")}

    @classmethod
    def from_dict(cls, d: dict) -> "PercolationResult":
        return cls(barriers={k: d[k]["barrier_eV"] for k in ("1d", "2d", "3d")},
                   hops={k: list(d[k]["hops"]) for k in ("1d", "2d", "3d")})


def percolation(n_sites: int, hop_copies: Sequence[Sequence[tuple[int, int, Sequence[int]]]],
                barriers: Sequence[float | None]) -> PercolationResult:
    """Percolation barriers of a periodic site graph.

    ``hop_copies[h]``: all copies (i, j, offset) of distinct hop h (site indices in ``range(n_sites)``);
    ``barriers[h]``: its barrier in eV, or None when unknown (the hop is then left out).
    """
    if len(hop_copies) != len(barriers):
        raise ValueError("one barrier per distinct hop")
    order = sorted((b, h) for h, b in enumerate(barriers) if b is not None and np.isfinite(b))
    uf = _PeriodicUnionFind(n_sites)
    result_b: dict[str, float | None] = {"1d": None, "2d": None, "3d": None}
    result_h: dict[str, list[int]] = {"1d": [], "2d": [], "3d": []}
    used: list[int] = []
    k = 0
    while k < len(order):
        level = order[k][0]
        # add every hop at this barrier level together (ties percolate together)
        while k < len(order) and order[k][0] <= level + 1e-12:
            h = order[k][1]
            for i, j, off in hop_copies[h]:
                uf.add_edge(int(i), int(j), off)
            used.append(h)
            k += 1
        dim = uf.max_dimension()
        for d in range(1, dim + 1):
            key = f"{d}d"
            if result_b[key] is None:
                result_b[key] = float(level)
                result_h[key] = sorted(used)
        if dim == 3:
            break
    return PercolationResult(result_b, result_h)
