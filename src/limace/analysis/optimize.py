"""Batched FIRE: many independent minimisations advanced together, as two small pure functions.

The optimiser knows nothing about atoms, cells or potentials. It moves rows of a ``[N, 3]`` tensor ``x`` of degrees of
freedom along ``forces`` (``-dE/dx``, same shape), and ``group_idx [N]`` (long, values ``0..n_groups-1``, any order)
says which rows belong to the same independent problem (a *group*): one structure of a batch of relaxations, or one
NEB band (all its moving images). Every group has its own FIRE time step, mixing parameter and reset counter.

Usage (the caller owns the loop, the force evaluation and the stopping rule)::

    from limace.analysis.optimize import fire_init, fire_step, group_max_force

    fire = fire_init(x, group_idx, n_groups, dt_start=0.1, dt_max=1.0, max_step=0.2)
    for step in range(max_steps):
        forces = my_forces(x)                            # [N, 3], -gradient of the objective w.r.t. x
        x, fire = fire_step(fire, x, forces, fmax=0.05)  # converged groups do not move
        if bool(fire.converged.all()):
            break

After each call ``fire.converged [G]`` and ``fire.max_force [G]`` describe the ``forces`` that were passed in, i.e.
the configuration *before* the step (as in ASE: forces are evaluated, convergence is checked, then a step is taken).
A group whose largest row force norm is below ``fmax`` is *frozen* for that step: its rows of ``x`` are returned
unchanged and its velocity is zeroed (a later step starts from rest, as a fresh FIRE run would). Pass ``fmax=None``
to move every group. ``active [G]`` (bool) freezes groups explicitly, whatever their forces (e.g. an NEB band the
caller wants to hold).

The update is ASE's FIRE (``ase.optimize.FIRE``: unit masses, Euler step) applied per group, with power
``P_g = sum over the group's rows of F . v``:

- first step of a group (velocity all zero): no mixing, ``v += dt F``;
- ``P_g > 0``: ``v <- (1 - a) v + a |v|_g F / |F|_g`` (norms over the whole group); after more than ``n_min``
  consecutive downhill steps ``dt <- min(dt * f_inc, dt_max)`` and ``a <- a * f_alpha``;
- ``P_g <= 0``: ``v <- 0``, ``a <- alpha_start``, ``dt <- dt * f_dec``;
- then ``v += dt F``, ``dx = dt v``, and each row's step is capped to length ``max_step`` (per row; ASE caps the norm
  of the whole step vector instead, which is the same whenever the cap is not hit, i.e. near convergence).

To drop finished groups from a batch or add new ones, use :func:`fire_select` (``keep [G]`` bool) and
:func:`fire_concat`, and select/concatenate the rows of ``x`` the same way (``x[keep[fire.group_idx]]``,
``torch.cat``); :func:`limace.analysis.relax.relax_structures` refills its batch like that.

All tensors stay on the device and dtype of ``x``; nothing is synchronised with the host except what the caller asks
(``bool(fire.converged.all())``). Both functions are pure: they return new tensors and a new :class:`FireState`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from limace.errors import LimaceInputError

__all__ = ["FireParams", "FireState", "fire_concat", "fire_init", "fire_select", "fire_step", "group_max_force",
           "group_sum"]


@dataclass(frozen=True)
class FireParams:
    """FIRE hyper-parameters (ASE's defaults; times in the units of ``x`` and ``forces``, unit masses)."""

    dt_start: float = 0.1
    dt_max: float = 1.0
    max_step: float = 0.2  # largest displacement of one row per step
    n_min: int = 5  # downhill steps before dt may grow
    f_inc: float = 1.1
    f_dec: float = 0.5
    alpha_start: float = 0.1
    f_alpha: float = 0.99

    def __post_init__(self):
        for name in ("dt_start", "dt_max", "max_step", "f_inc", "f_dec", "alpha_start", "f_alpha"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value > 0):
                raise LimaceInputError(f"FIRE {name} must be a positive number, got {value!r}")
        if not (isinstance(self.n_min, int) and self.n_min >= 0):
            raise LimaceInputError(f"FIRE n_min must be a non-negative integer, got {self.n_min!r}")
        if self.dt_start > self.dt_max:
            raise LimaceInputError(f"FIRE dt_start ({self.dt_start}) is larger than dt_max ({self.dt_max})")


@dataclass(frozen=True, eq=False)
class FireState:
    """The optimiser's memory between steps (tensors on the device of ``x``).

    velocity [N, 3]; group_idx [N] long; dt, alpha [G] (dtype of x); n_pos [G] long (consecutive downhill steps);
    converged [G] bool and max_force [G] of the forces given to the last :func:`fire_step` (all False / inf before
    the first); n_steps [G] long, steps each group actually moved.
    """

    velocity: torch.Tensor
    group_idx: torch.Tensor
    dt: torch.Tensor
    alpha: torch.Tensor
    n_pos: torch.Tensor
    converged: torch.Tensor
    max_force: torch.Tensor
    n_steps: torch.Tensor
    params: FireParams

    @property
    def n_groups(self) -> int:
        return self.dt.shape[0]

    def replace(self, **changes) -> "FireState":
        return dataclasses.replace(self, **changes)


def group_sum(values: torch.Tensor, group_idx: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Sum ``values [N]`` over the rows of each group -> ``[G]``."""
    out = torch.zeros(n_groups, dtype=values.dtype, device=values.device)
    return out.index_add_(0, group_idx, values)


def group_max_force(forces: torch.Tensor, group_idx: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Largest row norm of ``forces [N, 3]`` within each group -> ``[G]`` (0 for a group without rows)."""
    norms = torch.linalg.vector_norm(forces, dim=-1)
    out = torch.zeros(n_groups, dtype=norms.dtype, device=norms.device)
    return out.scatter_reduce_(0, group_idx, norms, reduce="amax", include_self=True)


def fire_init(x: torch.Tensor, group_idx: torch.Tensor, n_groups: int, *, dt_start: float = 0.1,
              dt_max: float = 1.0, max_step: float = 0.2, n_min: int = 5, f_inc: float = 1.1, f_dec: float = 0.5,
              alpha_start: float = 0.1, f_alpha: float = 0.99) -> FireState:
    """A fresh FIRE state for the degrees of freedom ``x [N, 3]`` split into ``n_groups`` groups by ``group_idx [N]``.

    Raises :class:`LimaceInputError` for wrong shapes, a non-integer ``group_idx`` or group numbers outside
    ``0..n_groups-1``. Groups may be empty (they are simply never moved) and rows of a group need not be contiguous.
    """
    params = FireParams(dt_start=dt_start, dt_max=dt_max, max_step=max_step, n_min=n_min, f_inc=f_inc, f_dec=f_dec,
                        alpha_start=alpha_start, f_alpha=f_alpha)
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[1] != 3 or not x.is_floating_point():
        raise LimaceInputError(f"fire_init: x must be a float [N, 3] tensor, got "
                               f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if not isinstance(group_idx, torch.Tensor) or group_idx.shape != (x.shape[0],) or \
            group_idx.dtype not in (torch.long, torch.int32, torch.int64):
        raise LimaceInputError(f"fire_init: group_idx must be an integer [N] tensor with N = {x.shape[0]}")
    if not (isinstance(n_groups, int) and n_groups >= 1):
        raise LimaceInputError(f"fire_init: n_groups must be a positive integer, got {n_groups!r}")
    group_idx = group_idx.to(device=x.device, dtype=torch.long)
    if x.shape[0] and (int(group_idx.min()) < 0 or int(group_idx.max()) >= n_groups):
        raise LimaceInputError(f"fire_init: group_idx has values outside 0..{n_groups - 1}")
    kw = {"dtype": x.dtype, "device": x.device}
    return FireState(
        velocity=torch.zeros_like(x),
        group_idx=group_idx,
        dt=torch.full((n_groups,), float(dt_start), **kw),
        alpha=torch.full((n_groups,), float(alpha_start), **kw),
        n_pos=torch.zeros(n_groups, dtype=torch.long, device=x.device),
        converged=torch.zeros(n_groups, dtype=torch.bool, device=x.device),
        max_force=torch.full((n_groups,), float("inf"), **kw),
        n_steps=torch.zeros(n_groups, dtype=torch.long, device=x.device),
        params=params,
    )


def fire_step(state: FireState, x: torch.Tensor, forces: torch.Tensor, *, fmax: float | None = None,
              active: torch.Tensor | None = None) -> tuple[torch.Tensor, FireState]:
    """One FIRE step of every group that is not converged: ``(new x, new state)``.

    Args:
        state: from :func:`fire_init` or the previous :func:`fire_step`.
        x: ``[N, 3]`` current degrees of freedom (same rows as at init).
        forces: ``[N, 3]`` forces on them (minus the gradient of the objective) at ``x``.
        fmax: groups whose largest row force norm is below ``fmax`` are converged and do not move (``None``: all move).
        active: optional ``[G]`` bool; groups that are False do not move this step (their velocity is kept).

    Returns:
        the new ``x`` and a new :class:`FireState` whose ``converged``/``max_force`` describe ``forces``.
    """
    if x.shape != state.velocity.shape or forces.shape != x.shape:
        raise LimaceInputError(f"fire_step: x {tuple(x.shape)} and forces {tuple(forces.shape)} must both have the "
                               f"shape of the state, {tuple(state.velocity.shape)}")
    p = state.params
    g, n_groups = state.group_idx, state.n_groups
    forces = forces.to(x.dtype)
    max_force = group_max_force(forces, g, n_groups)
    converged = max_force < fmax if fmax is not None else torch.zeros_like(state.converged)
    moving = ~converged
    if active is not None:
        active = torch.as_tensor(active, dtype=torch.bool, device=x.device)
        if active.shape != (n_groups,):
            raise LimaceInputError(f"fire_step: active must be a [{n_groups}] bool tensor, got {tuple(active.shape)}")
        moving = moving & active

    v = state.velocity
    power = group_sum((forces * v).sum(-1), g, n_groups)
    f_norm = group_sum((forces * forces).sum(-1), g, n_groups).sqrt()
    v_norm = group_sum((v * v).sum(-1), g, n_groups).sqrt()
    started = v_norm > 0  # a group at rest takes a plain first step (ASE: vel is None)
    downhill = started & (power > 0)
    uphill = started & ~(power > 0)

    # Downhill: mix the velocity towards the force direction, then maybe accelerate.
    mix = state.alpha * v_norm / f_norm.clamp_min(torch.finfo(x.dtype).tiny)
    v_mixed = (1 - state.alpha)[g, None] * v + mix[g, None] * forces
    grow = downhill & (state.n_pos > p.n_min)
    dt = torch.where(grow, (state.dt * p.f_inc).clamp(max=p.dt_max), state.dt)
    alpha = torch.where(grow, state.alpha * p.f_alpha, state.alpha)
    n_pos = torch.where(downhill, state.n_pos + 1, state.n_pos)
    # Uphill: stop, restart mixing, shrink the time step.
    dt = torch.where(uphill, dt * p.f_dec, dt)
    alpha = torch.where(uphill, torch.full_like(alpha, p.alpha_start), alpha)
    n_pos = torch.where(uphill, torch.zeros_like(n_pos), n_pos)
    v_new = torch.where(downhill[g, None], v_mixed, torch.where(uphill[g, None], torch.zeros_like(v), v))

    v_new = v_new + dt[g, None] * forces
    dx = dt[g, None] * v_new
    row = torch.linalg.vector_norm(dx, dim=-1, keepdim=True)
    dx = dx * (p.max_step / row.clamp_min(p.max_step))  # rows longer than max_step are scaled down to it

    move_rows = moving[g, None]
    x_new = torch.where(move_rows, x + dx, x)
    frozen_by_convergence = converged[g, None]
    velocity = torch.where(move_rows, v_new, torch.where(frozen_by_convergence, torch.zeros_like(v), v))
    new = state.replace(
        velocity=velocity,
        dt=torch.where(moving, dt, state.dt),
        alpha=torch.where(moving, alpha, state.alpha),
        n_pos=torch.where(moving, n_pos, state.n_pos),
        converged=converged,
        max_force=max_force,
        n_steps=state.n_steps + moving.long(),
    )
    return x_new, new


def fire_select(state: FireState, keep: torch.Tensor) -> FireState:
    """The FIRE state of some groups only: ``keep [G]`` bool; kept groups are renumbered ``0..k-1`` in order and
    their rows keep their relative order (select ``x`` the same way: ``x[keep[state.group_idx]]``)."""
    keep = torch.as_tensor(keep, dtype=torch.bool, device=state.dt.device)
    if keep.shape != (state.n_groups,):
        raise LimaceInputError(f"fire_select: keep must be a [{state.n_groups}] bool tensor, got {tuple(keep.shape)}")
    if not bool(keep.any()):
        raise LimaceInputError("fire_select: no group kept")
    rows = keep[state.group_idx]
    new_index = torch.cumsum(keep.long(), 0) - 1
    return state.replace(velocity=state.velocity[rows], group_idx=new_index[state.group_idx[rows]],
                         dt=state.dt[keep], alpha=state.alpha[keep], n_pos=state.n_pos[keep],
                         converged=state.converged[keep], max_force=state.max_force[keep],
                         n_steps=state.n_steps[keep])


def fire_concat(states: list[FireState]) -> FireState:
    """One FIRE state from several (rows and groups in order; group numbers of later states are offset). All must
    share the same :class:`FireParams` (concatenate ``x`` the same way)."""
    states = list(states)
    if not states:
        raise LimaceInputError("fire_concat: got no states")
    if any(s.params != states[0].params for s in states[1:]):
        raise LimaceInputError("fire_concat: the states have different FIRE parameters")
    offsets, total = [], 0
    for s in states:
        offsets.append(total)
        total += s.n_groups
    return states[0].replace(
        velocity=torch.cat([s.velocity for s in states]),
        group_idx=torch.cat([s.group_idx + o for s, o in zip(states, offsets)]),
        **{name: torch.cat([getattr(s, name) for s in states])
           for name in ("dt", "alpha", "n_pos", "converged", "max_force", "n_steps")},
    )
