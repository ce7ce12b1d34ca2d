"""Relax many structures at once (positions and, by default, the cell) on the batched engine.

:func:`relax_structures` puts as many structures as fit (``max_atoms``) into one
:class:`~limace.core.state.BatchedState`, evaluates them with one call of a batched potential
(:class:`~limace.potentials.batched.BatchedMACE`) per step and advances them with the batched FIRE (default) or
L-BFGS of :mod:`limace.core.optimize`, each structure being its own optimizer group. A structure that is done (converged or out of
steps) leaves the batch and the next one waiting takes its place, so the batch stays full.

The cell is relaxed as ASE's :class:`~ase.filters.FrechetCellFilter` does: each structure gets three extra rows of
degrees of freedom, ``n_atoms * log(F)`` with ``F`` the deformation gradient from the starting cell
(``cell = cell_0 @ F.T``), and atoms move in the undeformed frame (``positions = u @ F.T``). Their forces are
``f @ F`` for the atoms and, for the cell rows, the virial ``-V (stress + p I)`` carried through the Frechet
derivative of the matrix exponential, divided by ``n_atoms``. A structure is converged when every row (atoms and
cell) has a force below ``fmax``, exactly ASE's criterion for ``FIRE(FrechetCellFilter(atoms)).run(fmax)``; for the
cell rows this means ``|stress| * V / n_atoms < fmax``.

>>> relaxed = relax_structures(candidates, "limace-lisnin-small", fmax=0.02)          # doctest: +SKIP
>>> [(a.info["energy"], a.info["converged"], a.info["relax_steps"]) for a in relaxed]   # doctest: +SKIP
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from ase import Atoms

from limace.core.optimize import OPTIMIZERS, FireState, optimizer_for
from limace.core.errors import LimaceInputError

__all__ = ["relax_structures"]

_FIRE_KEYS = ("dt_start", "dt_max", "max_step", "n_min", "f_inc", "f_dec", "alpha_start", "f_alpha")
_LBFGS_KEYS = ("memory", "max_step", "h0", "growth")


def _expm_frechet(a: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """Frechet derivative of the matrix exponential at ``a`` in direction ``e`` (``[S, 3, 3]`` each), from the
    exponential of the block matrix ``[[a, e], [0, a]]``."""
    s = a.shape[0]
    block = torch.zeros((s, 6, 6), dtype=a.dtype, device=a.device)
    block[:, :3, :3] = a
    block[:, 3:, 3:] = a
    block[:, :3, 3:] = e
    return torch.linalg.matrix_exp(block)[:, :3, 3:]


@dataclass
class _Batch:
    """The structures currently being relaxed together."""

    ids: list[int]  # index of each system in the user's list
    state: object  # BatchedState
    cell0: torch.Tensor  # [S, 3, 3] starting cells
    x: torch.Tensor  # [R, 3] degrees of freedom: per system its atoms' rows then (relax_cell) 3 cell rows
    opt: object  # FireState or LBFGSState (the optimizer's state; one group per structure)

    def layout(self, relax_cell: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Row of each atom in ``x`` ``[N]`` and the 3 cell rows of each system ``[S, 3]`` (None without cell)."""
        st = self.state
        n = st.n_atoms_per_system
        extra = 3 if relax_cell else 0
        rows_per = n + extra
        row_off = torch.cumsum(rows_per, 0) - rows_per
        atom_off = torch.cumsum(n, 0) - n
        local = torch.arange(st.n_atoms, device=st.device) - atom_off[st.system_idx]
        atom_rows = row_off[st.system_idx] + local
        if not relax_cell:
            return atom_rows, None
        cell_rows = row_off[:, None] + n[:, None] + torch.arange(3, device=st.device)
        return atom_rows, cell_rows


def _load_model(model, device, dtype):
    if isinstance(model, (str, Path)):
        from limace.core.state import dtype_name
        from limace.potentials import load_batched

        return load_batched(model, device=str(device or "cpu"), dtype=dtype_name(dtype or "float64"))
    if not callable(model):
        raise LimaceInputError(f"model: expected a BatchedMACE, a registry name or a .model path, got "
                               f"{type(model).__name__}")
    return model


def _check_inputs(atoms_list, fmax, max_steps, relax_cell, pressure, max_atoms) -> list[Atoms]:
    if isinstance(atoms_list, Atoms):
        atoms_list = [atoms_list]
    atoms_list = list(atoms_list)
    if not atoms_list:
        raise LimaceInputError("relax_structures: got no structures")
    for k, a in enumerate(atoms_list):
        if not isinstance(a, Atoms):
            raise LimaceInputError(f"structure {k}: expected ase.Atoms, got {type(a).__name__}")
        if len(a) == 0:
            raise LimaceInputError(f"structure {k} ({a.get_chemical_formula()}): has no atoms")
        if a.constraints:
            raise LimaceInputError(f"structure {k} ({a.get_chemical_formula()}): has constraints "
                                   f"({', '.join(type(c).__name__ for c in a.constraints)}), which relax_structures "
                                   "does not apply; remove them (atoms.set_constraint())")
        if relax_cell and not a.pbc.all():
            raise LimaceInputError(f"structure {k} ({a.get_chemical_formula()}): relax_cell needs a cell periodic in "
                                   f"all three directions, pbc is {a.pbc.tolist()}")
    if not (isinstance(fmax, (int, float)) and fmax > 0):
        raise LimaceInputError(f"fmax must be a positive number (eV/A), got {fmax!r}")
    if not (isinstance(max_steps, (int, np.integer)) and max_steps >= 0):
        raise LimaceInputError(f"max_steps must be a non-negative integer, got {max_steps!r}")
    if not isinstance(pressure, (int, float)) or not np.isfinite(pressure):
        raise LimaceInputError(f"pressure must be a finite number (eV/A^3), got {pressure!r}")
    if pressure != 0 and not relax_cell:
        raise LimaceInputError("pressure acts only on the cell; it needs relax_cell=True")
    if max_atoms is not None and not (isinstance(max_atoms, (int, np.integer)) and max_atoms >= 1):
        raise LimaceInputError(f"max_atoms must be a positive integer or None, got {max_atoms!r}")
    return atoms_list


def relax_structures(atoms_list: Sequence[Atoms] | Atoms, model, fmax: float = 0.02, max_steps: int = 500,
                     relax_cell: bool = True, pressure: float = 0.0, *, max_atoms: int | None = None,
                     device: str | torch.device | None = None, dtype: torch.dtype | str | None = None,
                     fire: dict | None = None, optimizer: str = "fire", lbfgs: dict | None = None,
                     progress: bool = True) -> list[Atoms]:
    """Relax every structure (atom positions and, with ``relax_cell``, the cell) with batched FIRE or L-BFGS.

    Args:
        atoms_list: ASE Atoms (any sizes; the input objects are not modified).
        model: a :class:`~limace.potentials.batched.BatchedMACE` (or any callable with its contract:
            ``model(state, compute_stress=bool) -> {"energy" [S], "forces" [N, 3], "stress" [S, 3, 3]}``), or a
            registry name / ``.model`` path loaded with :func:`limace.potentials.load_batched`.
        fmax: convergence threshold (eV/A) on every force row, atoms and cell rows (see the module docstring).
        max_steps: most FIRE steps per structure (ASE's ``steps``); a structure still above ``fmax`` after them is
            returned with ``info["converged"] = False``.
        relax_cell: also relax the cell (FrechetCellFilter-like); ``False`` relaxes positions in a fixed cell.
        pressure: external pressure (eV/A^3; 1 GPa = 1/160.2177 eV/A^3) for the cell; minimises the enthalpy.
        max_atoms: most atoms evaluated together (``None``: all structures in one batch); structures that finish
            are replaced by waiting ones.
        device, dtype: where the structures live; default the model's (when loading by name: ``"cpu"`` and
            ``float64``).
        fire: FIRE parameters for :func:`limace.core.optimize.fire_init` (``dt_start``, ``dt_max``,
            ``max_step``, ``n_min``, ``f_inc``, ``f_dec``, ``alpha_start``, ``f_alpha``; ASE's defaults).
        optimizer: ``"fire"`` or ``"lbfgs"`` (:func:`limace.core.optimize.lbfgs_step`, one history per structure;
            usually fewer steps to a tight ``fmax``).
        lbfgs: L-BFGS parameters (``memory``, ``max_step``, ``h0``).
        progress: show a tqdm progress bar (structures done).

    Returns:
        new Atoms in the input order, with ``info["energy"]`` (eV, potential energy of the final structure),
        ``info["enthalpy"]`` (when ``pressure`` is not 0), ``info["converged"]``, ``info["relax_steps"]`` (FIRE steps
        taken), ``info["relax_fmax"]`` (largest force row at the end, eV/A) and, if the potential gave non-finite
        results, ``info["relax_error"]``; a SinglePointCalculator holds energy, forces and (with the cell) stress.
        With a committee (:class:`~limace.potentials.committee.BatchedCommittee`, e.g. ``load_batched([name,
        "shipped"])``) also its spread at the final structure: ``info["committee_std_meV_per_atom"]`` (energy) and
        ``info["committee_forces_std_max_eV_A"]`` (the largest atom's force spread).
    """
    from tqdm.auto import tqdm

    from limace.core.state import BatchedState, as_dtype

    atoms_list = _check_inputs(atoms_list, fmax, max_steps, relax_cell, pressure, max_atoms)
    if optimizer not in OPTIMIZERS:
        raise LimaceInputError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    params = dict((fire if optimizer == "fire" else lbfgs) or {})
    keys = _FIRE_KEYS if optimizer == "fire" else _LBFGS_KEYS
    unknown = sorted(set(params) - set(keys))
    if unknown:
        raise LimaceInputError(f"{optimizer}: unknown parameter(s) {', '.join(unknown)}; known: {', '.join(keys)}")
    opt_spec = (optimizer, params)
    model = _load_model(model, device, dtype)
    device = torch.device(device) if device is not None else getattr(model, "device", torch.device("cpu"))
    dtype = as_dtype(dtype) if dtype is not None else getattr(model, "dtype", torch.float64)

    queue = deque(range(len(atoms_list)))
    results: dict[int, Atoms] = {}
    batch: _Batch | None = None
    bar = tqdm(total=len(atoms_list), desc="relax", unit="structure", disable=not progress)
    iterations = 0
    try:
        while queue or batch is not None:
            batch = _refill(batch, queue, atoms_list, max_atoms, relax_cell, device, dtype, opt_spec, BatchedState)
            iterations += 1
            done = _advance(batch, model, fmax, max_steps, relax_cell, pressure, atoms_list, results)
            if bool(done.any()):
                bar.update(int(done.sum()))
                keep = ~done
                batch = None if not bool(keep.any()) else _select(batch, keep)
            bar.set_postfix(step=iterations, batch=0 if batch is None else len(batch.ids), refresh=False)
    finally:
        bar.close()
    return [results[k] for k in range(len(atoms_list))]


def _refill(batch, queue, atoms_list, max_atoms, relax_cell, device, dtype, opt_spec, state_cls) -> _Batch:
    """Add waiting structures to the batch while it holds at most ``max_atoms`` atoms (always at least one)."""
    n_now = 0 if batch is None else batch.state.n_atoms
    take = []
    while queue:
        n_next = len(atoms_list[queue[0]])
        if (batch is not None or take) and max_atoms is not None and n_now + n_next > max_atoms:
            break
        take.append(queue.popleft())
        n_now += n_next
    if not take:
        return batch
    new_atoms = [atoms_list[k] for k in take]
    state = state_cls.from_atoms(new_atoms, device=device, dtype=dtype)
    rows = [len(a) + (3 if relax_cell else 0) for a in new_atoms]
    x = torch.zeros((sum(rows), 3), dtype=state.dtype, device=state.device)
    new = _Batch(ids=take, state=state, cell0=state.cell.clone(), x=x, opt=None)
    atom_rows, _ = new.layout(relax_cell)
    x[atom_rows] = state.positions  # u = positions at F = 1; cell rows log(F) = 0
    group_idx = torch.repeat_interleave(torch.arange(len(take), device=state.device),
                                        torch.as_tensor(rows, device=state.device))
    name, params = opt_spec
    opt = OPTIMIZERS[name]
    new.opt = opt.init(x, group_idx, len(take), **params)
    if batch is None:
        return new
    return _Batch(ids=batch.ids + new.ids, state=state_cls.concatenate([batch.state, new.state]),
                  cell0=torch.cat([batch.cell0, new.cell0]), x=torch.cat([batch.x, new.x]),
                  opt=opt.concat([batch.opt, new.opt]))


def _select(batch: _Batch, keep: torch.Tensor) -> _Batch:
    rows = keep[batch.opt.group_idx]
    return _Batch(ids=[i for i, k in zip(batch.ids, keep.tolist()) if k], state=batch.state.select(keep),
                  cell0=batch.cell0[keep], x=batch.x[rows], opt=optimizer_for(batch.opt).select(batch.opt, keep))


def _geometry(batch: _Batch, relax_cell: bool):
    """Positions, cell and deformation gradient ``F`` (``[S, 3, 3]``) and ``log F`` from the degrees of freedom."""
    st = batch.state
    atom_rows, cell_rows = batch.layout(relax_cell)
    u = batch.x[atom_rows]
    if not relax_cell:
        return u, st.cell, None, None
    n = st.n_atoms_per_system.to(st.dtype)
    log_f = batch.x[cell_rows] / n[:, None, None]
    f = torch.linalg.matrix_exp(log_f)
    cell = batch.cell0 @ f.transpose(1, 2)
    positions = torch.einsum("ni,nji->nj", u, f[st.system_idx])
    return positions, cell, f, log_f


def _advance(batch: _Batch, model, fmax, max_steps, relax_cell, pressure, atoms_list, results) -> torch.Tensor:
    """Evaluate the batch, record the structures that are done, move the others one FIRE step. Returns ``done [S]``."""
    st = batch.state
    positions, cell, f, log_f = _geometry(batch, relax_cell)
    st = st.replace(positions=positions, cell=cell)
    batch.state = st
    out = model(st, compute_stress=relax_cell)
    energy, forces = out["energy"].to(st.dtype), out["forces"].to(st.dtype)
    atom_rows, cell_rows = batch.layout(relax_cell)
    dof_forces = torch.zeros_like(batch.x)
    stress = None
    if relax_cell:
        if "stress" not in out:
            raise LimaceInputError("relax_cell needs stress from the model; it returned none for "
                                   "compute_stress=True")
        stress = out["stress"].to(st.dtype)
        n = st.n_atoms_per_system.to(st.dtype)
        eye = torch.eye(3, dtype=st.dtype, device=st.device)
        volume = st.volume()
        virial = -volume[:, None, None] * (stress + pressure * eye)
        ucf_grad = virial @ torch.linalg.inv(f.transpose(1, 2))
        # d(enthalpy)/d(log F) = adjoint of the Frechet derivative of expm, i.e. the derivative at log(F)^T
        log_force = _expm_frechet(log_f.transpose(1, 2), ucf_grad)
        dof_forces[atom_rows] = torch.einsum("ni,nij->nj", forces, f[st.system_idx])
        dof_forces[cell_rows] = log_force / n[:, None, None]
    else:
        dof_forces[atom_rows] = forces
    finite = torch.isfinite(energy) & torch.isfinite(
        st.sum_per_system(forces.abs().sum(-1)))
    if stress is not None:
        finite &= torch.isfinite(stress).all(dim=(1, 2))
    safe_forces = torch.where(finite[batch.opt.group_idx, None], dof_forces, torch.zeros_like(dof_forces))
    steps_before = batch.opt.n_steps
    step = optimizer_for(batch.opt).step
    if isinstance(batch.opt, FireState):
        x_new, opt = step(batch.opt, batch.x, safe_forces, fmax=fmax)
    else:  # the objective (energy, or enthalpy under pressure) lets L-BFGS undo steps that went uphill
        objective = energy + pressure * st.volume() if pressure != 0 else energy
        objective = torch.where(finite, objective, torch.full_like(objective, float("inf")))
        x_new, opt = step(batch.opt, batch.x, safe_forces, fmax=fmax, objective=objective)
    done = opt.converged | (steps_before >= max_steps) | ~finite
    if bool(done.any()):
        from limace.potentials.committee import spread_summary

        spread = spread_summary(out, st)  # a committee's spread at the final geometry, None for one potential
        _record(batch, done, opt, finite, energy, forces, stress, steps_before, pressure, atoms_list, results,
                spread)
    batch.x = torch.where(done[batch.opt.group_idx, None], batch.x, x_new)
    batch.opt = opt
    return done


def _record(batch, done, opt, finite, energy, forces, stress, steps_before, pressure, atoms_list, results,
            spread=None) -> None:
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.stress import full_3x3_to_voigt_6_stress

    st = batch.state
    ranges = st.atom_ranges()
    pos = st.positions.detach().cpu().double().numpy()
    cell = st.cell.detach().cpu().double().numpy()
    frc = forces.detach().cpu().double().numpy()
    vol = st.volume().detach().cpu().double().numpy()
    for k in torch.nonzero(done).flatten().tolist():
        i = batch.ids[k]
        a, b = ranges[k]
        atoms = atoms_list[i].copy()
        atoms.calc = None
        atoms.set_cell(cell[k], scale_atoms=False)
        atoms.positions = pos[a:b]
        ok = bool(finite[k])
        e = float(energy[k])
        atoms.info["energy"] = e
        if pressure != 0:
            atoms.info["enthalpy"] = e + pressure * float(vol[k])
        atoms.info["converged"] = bool(opt.converged[k]) and ok
        atoms.info["relax_steps"] = int(steps_before[k])
        atoms.info["relax_fmax"] = float(opt.max_force[k]) if ok else float("nan")
        if not ok:
            atoms.info["relax_error"] = "the potential returned non-finite energy, forces or stress"
        if spread is not None and ok:
            atoms.info["committee_std_meV_per_atom"] = float(spread["energy_std_meV_per_atom"][k])
            if "forces_std_max_eV_A" in spread:
                atoms.info["committee_forces_std_max_eV_A"] = float(spread["forces_std_max_eV_A"][k])
        calc_results = {"energy": e, "free_energy": e, "forces": frc[a:b]}
        if stress is not None:
            calc_results["stress"] = full_3x3_to_voigt_6_stress(stress[k].detach().cpu().double().numpy())
        atoms.calc = SinglePointCalculator(atoms, **calc_results)
        results[i] = atoms
