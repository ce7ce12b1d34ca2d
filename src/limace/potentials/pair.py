"""A batched Morse pair potential with the same output contract as :class:`~limace.potentials.batched.BatchedMACE`.

It is the cheap reference model of our engines: its functional form, smooth cutoff and parameters are those of
ASE's :class:`ase.calculators.morse.MorsePotential`, so anything our batched engines do with it (MD, relaxation,
NEB) can be checked against ASE's own code driven by ASE's own calculator.

    V(r) = epsilon * (exp(-2 rho0 (r/r0 - 1)) - 2 exp(-rho0 (r/r0 - 1))) * fcut(r; rcut1*r0, rcut2*r0)
"""

from __future__ import annotations

import torch

from limace.core.neighbors import VerletList
from limace.core.state import BatchedState, as_device, as_dtype


def _fcut(r: torch.Tensor, r1: float, r2: float) -> torch.Tensor:
    s = 1.0 - (r - r1) / (r2 - r1)
    smooth = 6.0 * s**5 - 15.0 * s**4 + 10.0 * s**3
    return torch.where(s >= 1.0, torch.ones_like(r), torch.where(s > 0.0, smooth, torch.zeros_like(r)))


class BatchedMorse:
    """Morse pair potential over a :class:`BatchedState`: ``energy [S]``, ``forces [N, 3]``, ``stress [S, 3, 3]``."""

    implemented_properties = ("energy", "forces", "stress")

    def __init__(self, epsilon: float = 1.0, rho0: float = 6.0, r0: float = 1.0, rcut1: float = 1.9,
                 rcut2: float = 2.7, *, device: str | torch.device = "cpu", dtype=torch.float64,
                 compute_stress: bool = False, skin: float = 0.5):
        self.epsilon, self.rho0, self.r0 = float(epsilon), float(rho0), float(r0)
        self.r1, self.r2 = float(rcut1) * self.r0, float(rcut2) * self.r0
        self.device = as_device(device)
        self.dtype = as_dtype(dtype)
        self.compute_stress = bool(compute_stress)
        self.neighbors = VerletList(self.r2, skin)

    def __call__(self, state: BatchedState, compute_stress: bool | None = None,
                 compute_forces: bool = True) -> dict[str, torch.Tensor]:
        """The :class:`limace.core.model.BatchedModel` contract (forces are always computed: they cost no more
        than the energy here)."""
        stress = self.compute_stress if compute_stress is None else bool(compute_stress)
        pos = state.positions.detach().to(self.dtype)
        cell = state.cell.detach().to(self.dtype)
        edge_index, unit_shifts = self.neighbors.get(pos, cell, state.pbc, state.system_idx)
        n_sys = cell.shape[0]
        strain = torch.zeros((n_sys, 3, 3), dtype=self.dtype, device=self.device, requires_grad=stress)
        sym = 0.5 * (strain + strain.transpose(1, 2))
        eye = torch.eye(3, dtype=self.dtype, device=self.device)
        pos = pos.clone().requires_grad_(True)
        deform = eye + sym
        p = torch.einsum("ni,nij->nj", pos, deform[state.system_idx])
        c = cell @ deform
        i, j = edge_index
        vec = p[j] - p[i] + torch.einsum("ei,eij->ej", unit_shifts.to(self.dtype), c[state.system_idx[i]])
        r = vec.norm(dim=1)
        x = r / self.r0 - 1.0
        e_pair = self.epsilon * (torch.exp(-2 * self.rho0 * x) - 2 * torch.exp(-self.rho0 * x)) * _fcut(r, self.r1, self.r2)
        energy = torch.zeros(n_sys, dtype=self.dtype, device=self.device).index_add(
            0, state.system_idx[i], 0.5 * e_pair)  # every pair appears as i->j and j->i
        inputs = [pos, strain] if stress else [pos]
        grads = torch.autograd.grad(energy.sum(), inputs)
        out = {"energy": energy.detach().to(state.dtype), "forces": (-grads[0]).detach().to(state.dtype)}
        if stress:
            vol = torch.linalg.det(cell).abs()
            out["stress"] = (grads[1] / vol[:, None, None]).detach().to(state.dtype)
        return out

    def __repr__(self) -> str:
        return (f"BatchedMorse(epsilon={self.epsilon}, rho0={self.rho0}, r0={self.r0}, cutoff={self.r2}, "
                f"dtype={self.dtype})")
