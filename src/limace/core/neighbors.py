"""Neighbour lists for many periodic systems at once, in torch, on the device of the positions.

:func:`neighbor_list` returns every ordered pair ``(i, j, S)`` of atoms of the same system with
``|r_j - r_i + S @ cell| < cutoff`` (``S`` integer lattice shifts), the convention of matscipy and mace-torch
(``edge_index = [sender i, receiver j]``). It works on unwrapped positions, handles any cell however small or skewed
(all images within the cutoff, found from the spacing of the lattice planes) and systems that are periodic in only
some directions. The pair search is brute force over the atoms of each system times the needed images, in chunks that
bound memory: right for the 1-1000 atom cells of MD screening, and quadratic beyond.

Edges are returned in a canonical order (system, sender, receiver, shift), so a system gives the same list, in the
same order, alone or in a batch. :class:`VerletList` adds a skin: the list is built for ``cutoff + skin`` and reused
until some pair may have crossed the skin (atoms moved more than skin/2, cell changes included).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

_CHUNK = 1 << 22  # pair-image candidates per chunk


def _safe_cells(cell: torch.Tensor, pbc: torch.Tensor) -> torch.Tensor:
    """Cells usable for fractional coordinates: a system with no periodic direction whose cell is singular gets the
    identity (it is never wrapped and has no images)."""
    vol = torch.linalg.det(cell).abs()
    ok = torch.isfinite(cell).all(dim=(1, 2)) & (vol > 1e-6)
    eye = torch.eye(3, dtype=cell.dtype, device=cell.device).expand_as(cell)
    return torch.where(ok[:, None, None], cell, eye)


def neighbor_list(positions: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor, system_idx: torch.Tensor,
                  cutoff: float, n_systems: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """All pairs within ``cutoff`` (Angstrom) in each system.

    Args:
        positions: ``[N, 3]`` (unwrapped is fine); cell ``[S, 3, 3]`` (rows = lattice vectors); pbc ``[S, 3]`` bool;
            system_idx ``[N]`` sorted system index of each atom.

    Returns:
        ``edge_index [2, E]`` (long; row 0 sender i, row 1 receiver j) and ``unit_shifts [E, 3]`` (dtype of the
        positions) with ``r_j - r_i + unit_shifts @ cell[s]`` the vector from i to j. Atoms of a system with
        non-finite positions or cell get no edges.
    """
    dev, dt = positions.device, positions.dtype
    s = int(n_systems if n_systems is not None else cell.shape[0])
    counts = torch.bincount(system_idx, minlength=s)
    offsets = torch.cumsum(counts, 0) - counts
    bad_atoms = (~torch.isfinite(positions).all(dim=1)).to(dt)
    finite = torch.isfinite(cell).all(dim=(1, 2)) & ~(
        torch.zeros(s, dtype=dt, device=dev).index_add_(0, system_idx, bad_atoms) > 0)
    h = _safe_cells(cell, pbc)
    inv = torch.linalg.inv(h)
    pos = torch.where(finite[system_idx, None], positions, torch.zeros_like(positions))
    frac = torch.einsum("ni,nij->nj", pos, inv[system_idx])
    per = pbc[system_idx]
    n_img = torch.where(per, torch.floor(frac), torch.zeros_like(frac))
    frac = frac - n_img
    # floor round-off: x = -1e-17 gives frac = 1.0 exactly; wrap it and count the image, so that
    # positions == wrapped + n_img @ cell stays exact (an uncounted wrap shifts every pair of that atom)
    round_off = per & (frac >= 1)
    frac = torch.where(round_off, frac - 1, frac)
    n_img = n_img.long() + round_off.long()
    wrapped = torch.einsum("ni,nij->nj", frac, h[system_idx])
    # images per direction: planes of lattice direction k are 1/|column k of inv| apart
    reach = torch.ceil(cutoff * torch.linalg.norm(inv, dim=1)).long()  # [S, 3]
    reach = torch.where(pbc & finite[:, None], reach, torch.zeros_like(reach))
    reach_cpu = reach.cpu()
    groups: dict[tuple[int, int, int], list[int]] = {}
    for k in range(s):
        if finite[k]:
            groups.setdefault(tuple(int(x) for x in reach_cpu[k]), []).append(k)
    senders, receivers, shifts = [], [], []
    for (r1, r2, r3), members in groups.items():
        images = torch.tensor(list(itertools.product(range(-r1, r1 + 1), range(-r2, r2 + 1), range(-r3, r3 + 1))),
                              dtype=dt, device=dev)  # [K, 3]
        zero_image = (images == 0).all(dim=1)
        mem = torch.tensor(members, device=dev)
        n_mem = counts[mem]
        n_pairs = n_mem * n_mem
        pair_sys = torch.repeat_interleave(mem, n_pairs)
        pair_local = torch.arange(int(n_pairs.sum()), device=dev) - torch.repeat_interleave(
            torch.cumsum(n_pairs, 0) - n_pairs, n_pairs)
        n_of_pair = counts[pair_sys]
        i_all = offsets[pair_sys] + pair_local // n_of_pair
        j_all = offsets[pair_sys] + pair_local % n_of_pair
        del n_of_pair, pair_local
        k_img = images.shape[0]
        step = max(1, _CHUNK // k_img)
        cut2 = cutoff * cutoff
        for start in range(0, i_all.shape[0], step):
            i = i_all[start:start + step]
            j = j_all[start:start + step]
            ps = pair_sys[start:start + step]
            d = wrapped[j] - wrapped[i]  # [P, 3]
            img = images @ h[ps]  # [P, K, 3]
            vec = d[:, None, :] + img
            keep = (vec * vec).sum(-1) < cut2
            keep &= ~((i == j)[:, None] & zero_image[None, :])
            p_idx, k_idx = torch.nonzero(keep, as_tuple=True)
            ii, jj = i[p_idx], j[p_idx]
            senders.append(ii)
            receivers.append(jj)
            # shift for the unwrapped positions: r = wrapped + n_img @ cell
            shifts.append(images[k_idx] + (n_img[ii] - n_img[jj]).to(dt))
    if not senders:
        return torch.zeros((2, 0), dtype=torch.long, device=dev), torch.zeros((0, 3), dtype=dt, device=dev)
    snd, rcv, sh = torch.cat(senders), torch.cat(receivers), torch.cat(shifts)
    if len(groups) > 1:  # groups interleave systems: order edges by system, keeping the order within each
        order = torch.sort(system_idx[snd], stable=True).indices
        snd, rcv, sh = snd[order], rcv[order], sh[order]
    return torch.stack([snd, rcv]), sh


@dataclass
class _Built:
    edge_index: torch.Tensor
    unit_shifts: torch.Tensor
    positions: torch.Tensor  # fractional positions at build time, [N, 3]
    cell: torch.Tensor
    pbc: torch.Tensor
    system_idx: torch.Tensor


class VerletList:
    """A neighbour list with a skin, rebuilt only when some pair may have come within ``cutoff``.

    ``get(positions, cell, pbc, system_idx)`` returns ``(edge_index, unit_shifts)`` for ``cutoff + skin``; the list is
    rebuilt when the systems change (atom count, system index, pbc) or when
    ``2 * max |displacement| + ||cell_0^-1 cell - 1|| * (cutoff + skin) > skin``, where displacements are measured at
    fixed fractional coordinates in the new cell, plus the strain of the cell (so cell rescaling in NPT is
    accounted for). ``n_builds`` counts rebuilds.
    """

    def __init__(self, cutoff: float, skin: float = 0.5):
        if skin < 0:
            raise ValueError(f"skin must be >= 0, got {skin}")
        self.cutoff = float(cutoff)
        self.skin = float(skin)
        self.n_builds = 0
        self._built: _Built | None = None

    def reset(self) -> None:
        self._built = None

    def needs_rebuild(self, positions, cell, pbc, system_idx) -> bool:
        b = self._built
        if b is None or b.system_idx.shape != system_idx.shape or b.cell.shape != cell.shape:
            return True
        if b.system_idx.device != system_idx.device or not torch.equal(b.system_idx, system_idx) \
                or not torch.equal(b.pbc, pbc):
            return True
        if self.skin == 0:
            return True
        h = _safe_cells(cell, pbc)
        frac = torch.einsum("ni,nij->nj", positions, torch.linalg.inv(h)[system_idx])
        disp = torch.einsum("ni,nij->nj", frac - b.positions, h[system_idx])
        max_disp = torch.zeros(cell.shape[0], dtype=positions.dtype, device=positions.device).scatter_reduce_(
            0, system_idx, torch.linalg.norm(disp, dim=1), "amax", include_self=False)
        strain = torch.linalg.inv(_safe_cells(b.cell, pbc)) @ h - torch.eye(3, dtype=h.dtype, device=h.device)
        strain = torch.linalg.matrix_norm(strain, ord=2)
        need = 2 * max_disp + strain * (self.cutoff + self.skin) > self.skin
        return bool(need.any())  # NaN compares False: a blown-up system is left to the caller's guard

    def get(self, positions, cell, pbc, system_idx) -> tuple[torch.Tensor, torch.Tensor]:
        positions = positions.detach()
        cell = cell.detach()
        if self.needs_rebuild(positions, cell, pbc, system_idx):
            edge_index, shifts = neighbor_list(positions, cell, pbc, system_idx, self.cutoff + self.skin,
                                               n_systems=cell.shape[0])
            h = _safe_cells(cell, pbc)
            frac = torch.einsum("ni,nij->nj", positions, torch.linalg.inv(h)[system_idx])
            self._built = _Built(edge_index, shifts, frac, cell.clone(), pbc.clone(), system_idx.clone())
            self.n_builds += 1
        return self._built.edge_index, self._built.unit_shifts
