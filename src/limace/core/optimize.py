"""Batched FIRE: many independent minimisations advanced together, as two small pure functions.

The optimiser knows nothing about atoms, cells or potentials. It moves rows of a ``[N, 3]`` tensor ``x`` of degrees of
freedom along ``forces`` (``-dE/dx``, same shape), and ``group_idx [N]`` (long, values ``0..n_groups-1``, any order)
says which rows belong to the same independent problem (a *group*): one structure of a batch of relaxations, or one
NEB band (all its moving images). Every group has its own FIRE time step, mixing parameter and reset counter.

Usage (the caller owns the loop, the force evaluation and the stopping rule)::

    from limace.core.optimize import fire_init, fire_step, group_max_force

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
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from limace.core.errors import LimaceInputError

__all__ = ["FireParams", "FireState", "LBFGSParams", "LBFGSState", "OPTIMIZERS", "Optimizer", "optimizer_for", "fire_concat", "fire_init",
           "fire_select", "fire_step", "group_max_force", "group_sum", "lbfgs_concat", "lbfgs_init", "lbfgs_select",
           "lbfgs_step"]


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
    return _select_groups(state, keep, "fire_select", rows=("velocity",), groups=_FIRE_GROUP_FIELDS)


def fire_concat(states: list[FireState]) -> FireState:
    """One FIRE state from several (rows and groups in order; group numbers of later states are offset). All must
    share the same :class:`FireParams` (concatenate ``x`` the same way)."""
    return _concat_groups(states, "fire_concat", "FIRE", rows=("velocity",), groups=_FIRE_GROUP_FIELDS)


_FIRE_GROUP_FIELDS = ("dt", "alpha", "n_pos", "converged", "max_force", "n_steps")


def _select_groups(state, keep, who: str, rows=(), groups=(), history_rows=(), history_groups=()):
    """``state`` (FireState or LBFGSState) restricted to the groups with ``keep [G]``, renumbered in order. ``rows``
    / ``groups`` name the fields indexed by row / group on their first axis, ``history_*`` on their second."""
    keep = torch.as_tensor(keep, dtype=torch.bool, device=state.group_idx.device)
    if keep.shape != (state.n_groups,):
        raise LimaceInputError(f"{who}: keep must be a [{state.n_groups}] bool tensor, got {tuple(keep.shape)}")
    if not bool(keep.any()):
        raise LimaceInputError(f"{who}: no group kept")
    row_keep = keep[state.group_idx]
    new_index = torch.cumsum(keep.long(), 0) - 1
    return state.replace(group_idx=new_index[state.group_idx[row_keep]],
                         **{f: getattr(state, f)[row_keep] for f in rows},
                         **{f: getattr(state, f)[keep] for f in groups},
                         **{f: getattr(state, f)[:, row_keep] for f in history_rows},
                         **{f: getattr(state, f)[:, keep] for f in history_groups})


def _concat_groups(states, who: str, what: str, rows=(), groups=(), history_rows=(), history_groups=()):
    """One state from several of the same kind and parameters (rows and groups in order, group numbers offset)."""
    states = list(states)
    if not states:
        raise LimaceInputError(f"{who}: got no states")
    if any(s.params != states[0].params for s in states[1:]):
        raise LimaceInputError(f"{who}: the states have different {what} parameters")
    offsets, total = [], 0
    for s in states:
        offsets.append(total)
        total += s.n_groups
    return states[0].replace(
        group_idx=torch.cat([s.group_idx + o for s, o in zip(states, offsets)]),
        **{f: torch.cat([getattr(s, f) for s in states]) for f in (*rows, *groups)},
        **{f: torch.cat([getattr(s, f) for s in states], dim=1) for f in (*history_rows, *history_groups)},
    )


# -- batched L-BFGS ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LBFGSParams:
    """L-BFGS hyper-parameters: pairs kept, largest row displacement per step (A), inverse curvature before the
    first pair (A^2/eV; ASE's ``1/alpha`` with alpha = 70 eV/A^2), and the force growth that undoes a step."""

    memory: int = 20
    max_step: float = 0.2
    h0: float = 1.0 / 70.0
    growth: float = 2.0  # a step after which the largest force grew more than this factor is undone

    def __post_init__(self):
        if not (isinstance(self.memory, int) and self.memory >= 1):
            raise LimaceInputError(f"L-BFGS memory must be an integer >= 1, got {self.memory!r}")
        for name in ("max_step", "h0", "growth"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value > 0):
                raise LimaceInputError(f"L-BFGS {name} must be a positive number, got {value!r}")


@dataclass(frozen=True, eq=False)
class LBFGSState:
    """Histories of all groups, row-aligned with ``x``: ``s, y [m, N, 3]`` (slot 0 the newest), ``rho, valid [m, G]``,
    ``gamma [G]`` (initial inverse-Hessian scale), ``prev_x, prev_g [N, 3]``, ``prev_force, prev_objective [G]`` and
    ``has_prev [G]`` (the last point each group moved from, its gradient, largest force and objective), ``radius [G]``
    (the current step cap),
    ``converged, max_force [G]`` of the last forces, ``n_steps [G]``, ``n_rejected [G]`` (steps undone)."""

    s: torch.Tensor
    y: torch.Tensor
    rho: torch.Tensor
    valid: torch.Tensor
    gamma: torch.Tensor
    prev_x: torch.Tensor
    prev_g: torch.Tensor
    prev_force: torch.Tensor
    prev_objective: torch.Tensor
    has_prev: torch.Tensor
    radius: torch.Tensor
    group_idx: torch.Tensor
    converged: torch.Tensor
    max_force: torch.Tensor
    n_steps: torch.Tensor
    n_rejected: torch.Tensor
    params: LBFGSParams

    @property
    def n_groups(self) -> int:
        return self.gamma.shape[0]

    def replace(self, **changes) -> "LBFGSState":
        return dataclasses.replace(self, **changes)


def lbfgs_init(x: torch.Tensor, group_idx: torch.Tensor, n_groups: int, *, memory: int = 20, max_step: float = 0.2,
               h0: float = 1.0 / 70.0, growth: float = 2.0) -> LBFGSState:
    """A fresh L-BFGS state for ``x [N, 3]`` split into groups, as :func:`fire_init`."""
    params = LBFGSParams(memory=memory, max_step=max_step, h0=h0, growth=growth)
    fire = fire_init(x, group_idx, n_groups)  # the same argument checks
    kw = {"dtype": x.dtype, "device": x.device}
    m = params.memory
    return LBFGSState(
        s=torch.zeros((m, *x.shape), **kw), y=torch.zeros((m, *x.shape), **kw),
        rho=torch.zeros((m, n_groups), **kw), valid=torch.zeros((m, n_groups), dtype=torch.bool, device=x.device),
        gamma=torch.full((n_groups,), params.h0, **kw), prev_x=torch.zeros_like(x), prev_g=torch.zeros_like(x),
        prev_force=torch.full((n_groups,), float("inf"), **kw),
        prev_objective=torch.full((n_groups,), float("inf"), **kw),
        has_prev=torch.zeros(n_groups, dtype=torch.bool, device=x.device),
        radius=torch.full((n_groups,), params.max_step, **kw), group_idx=fire.group_idx,
        converged=fire.converged, max_force=fire.max_force, n_steps=fire.n_steps,
        n_rejected=torch.zeros(n_groups, dtype=torch.long, device=x.device), params=params)


def _gdot(a: torch.Tensor, b: torch.Tensor, g: torch.Tensor, n: int) -> torch.Tensor:
    return group_sum((a * b).sum(-1), g, n)


def lbfgs_step(state: LBFGSState, x: torch.Tensor, forces: torch.Tensor, *, fmax: float | None = None,
               reset: torch.Tensor | None = None, objective: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, LBFGSState]:
    """One L-BFGS step of every group that is not converged: ``(new x, new state)``.

    The same contract as :func:`fire_step` (``forces`` = minus the gradient; convergence is checked on ``forces``
    before moving; converged groups do not move). Per group: the two-loop recursion over its stored pairs with the
    initial scale ``s.y / y.y`` of its newest pair; a pair is stored only if ``s.y > 0``; if the resulting step does
    not point along the forces the group's history is dropped and it takes the step ``h0 * forces``; the step is
    scaled so that no row moves more than the group's ``radius`` (``max_step`` at first). ``reset [G]`` (bool) drops
    the history of some groups first (e.g. an NEB band whose climbing image changed). No line search (as ASE's
    ``LBFGS``); instead a safeguard that also works for NEB forces, which are not the gradient of one energy: when
    a group's largest force grew by more than ``growth`` over the step that led here, the step is undone (the group
    goes back to where it came from), its history is dropped and its radius halved; accepted steps grow the radius
    back (x1.5, up to ``max_step``). This keeps noisy float32 forces near a tight ``fmax`` from driving a band away.
    When the forces are the gradient of an objective (a relaxation), pass its value ``objective [G]`` (eV) at ``x``:
    then a step is undone when the objective rose by more than 1e-4 eV instead.
    """
    if x.shape != state.prev_x.shape or forces.shape != x.shape:
        raise LimaceInputError(f"lbfgs_step: x {tuple(x.shape)} and forces {tuple(forces.shape)} must both have the "
                               f"shape of the state, {tuple(state.prev_x.shape)}")
    p = state.params
    g_idx, n = state.group_idx, state.n_groups
    forces = forces.to(x.dtype)
    grad = -forces
    max_force = group_max_force(forces, g_idx, n)
    converged = max_force < fmax if fmax is not None else torch.zeros_like(state.converged)
    moving = ~converged
    valid, gamma, has_prev = state.valid, state.gamma, state.has_prev
    # undo steps after which the largest force grew too much (back to prev_x, forget the curvature, smaller radius)
    if objective is None:
        worse = max_force > p.growth * state.prev_force
    else:
        objective = objective.to(x.dtype)
        worse = objective > state.prev_objective + 1e-4
    rejected = moving & has_prev & worse
    valid = valid & ~rejected[None]
    gamma = torch.where(rejected, torch.full_like(gamma, p.h0), gamma)
    radius = torch.where(rejected, state.radius * 0.5, state.radius)
    if reset is not None:
        reset = torch.as_tensor(reset, dtype=torch.bool, device=x.device)
        valid = valid & ~reset[None]
        gamma = torch.where(reset, torch.full_like(gamma, p.h0), gamma)
        has_prev = has_prev & ~reset
    # the newest pair (where the group moved last time and is moving on)
    s_new = x - state.prev_x
    y_new = grad - state.prev_g
    sy = _gdot(s_new, y_new, g_idx, n)
    yy = _gdot(y_new, y_new, g_idx, n)
    accept = has_prev & moving & ~rejected & (sy > 1e-12)
    rows_acc = accept[g_idx, None]
    s = torch.cat([torch.where(rows_acc, s_new, torch.zeros_like(s_new))[None], state.s[:-1]])
    y = torch.cat([torch.where(rows_acc, y_new, torch.zeros_like(y_new))[None], state.y[:-1]])
    rho = torch.cat([torch.where(accept, 1.0 / sy.clamp_min(1e-30), torch.zeros_like(sy))[None], state.rho[:-1]])
    valid = torch.cat([accept[None], valid[:-1]])
    gamma = torch.where(accept, sy / yy.clamp_min(1e-30), gamma)
    # two-loop recursion, all groups at once (slots a group does not hold contribute nothing)
    q = grad
    alphas = []
    for k in range(p.memory):
        a = torch.where(valid[k], rho[k] * _gdot(s[k], q, g_idx, n), torch.zeros_like(gamma))
        alphas.append(a)
        q = q - a[g_idx, None] * y[k]
    z = gamma[g_idx, None] * q
    for k in reversed(range(p.memory)):
        b = torch.where(valid[k], rho[k] * _gdot(y[k], z, g_idx, n), torch.zeros_like(gamma))
        z = z + (alphas[k] - b)[g_idx, None] * s[k]
    step = -z
    uphill = _gdot(step, forces, g_idx, n) <= 0
    valid = valid & ~uphill[None]
    step = torch.where(uphill[g_idx, None], p.h0 * forces, step)
    longest = group_max_force(step, g_idx, n)
    step = step * (radius / torch.maximum(longest, radius))[g_idx, None]
    stepping = moving & ~rejected
    rows_step = stepping[g_idx, None]
    x_new = torch.where(rows_step, x + step, torch.where(rejected[g_idx, None], state.prev_x, x))
    new = state.replace(
        s=s, y=y, rho=rho, valid=valid, gamma=gamma,
        prev_x=torch.where(rows_step, x, state.prev_x), prev_g=torch.where(rows_step, grad, state.prev_g),
        prev_force=torch.where(stepping, max_force, state.prev_force), has_prev=has_prev | stepping,
        prev_objective=state.prev_objective if objective is None else
        torch.where(stepping, objective, state.prev_objective),
        radius=torch.where(stepping & state.has_prev, (radius * 1.5).clamp(max=p.max_step), radius),
        converged=converged, max_force=max_force, n_steps=state.n_steps + moving.long(),
        n_rejected=state.n_rejected + rejected.long())
    return x_new, new


_LBFGS_FIELDS = {"rows": ("prev_x", "prev_g"),
                 "groups": ("gamma", "prev_force", "prev_objective", "has_prev", "radius", "converged", "max_force",
                            "n_steps", "n_rejected"),
                 "history_rows": ("s", "y"), "history_groups": ("rho", "valid")}


def lbfgs_select(state: LBFGSState, keep: torch.Tensor) -> LBFGSState:
    """The L-BFGS state of some groups only (as :func:`fire_select`)."""
    return _select_groups(state, keep, "lbfgs_select", **_LBFGS_FIELDS)


def lbfgs_concat(states: list[LBFGSState]) -> LBFGSState:
    """One L-BFGS state from several (as :func:`fire_concat`; all must share the same parameters)."""
    return _concat_groups(states, "lbfgs_concat", "L-BFGS", **_LBFGS_FIELDS)


class Optimizer(NamedTuple):
    """The four functions of one batched optimiser (``OPTIMIZERS["fire"].select(state, keep)``)."""

    init: Callable  # (x, group_idx, n_groups, **params) -> state
    step: Callable  # (state, x, forces, *, fmax, ...) -> (new x, new state)
    select: Callable  # (state, keep [G]) -> state of the kept groups
    concat: Callable  # ([states]) -> one state
    name: str


OPTIMIZERS: dict[str, Optimizer] = {
    "fire": Optimizer(fire_init, fire_step, fire_select, fire_concat, "fire"),
    "lbfgs": Optimizer(lbfgs_init, lbfgs_step, lbfgs_select, lbfgs_concat, "lbfgs"),
}


def optimizer_for(state) -> Optimizer:
    """The :class:`Optimizer` whose ``init`` made ``state`` (a :class:`FireState` or :class:`LBFGSState`)."""
    return OPTIMIZERS["fire" if isinstance(state, FireState) else "lbfgs"]
