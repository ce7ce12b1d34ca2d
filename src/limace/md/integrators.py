"""MD integrators as small pure step functions on a batched state.

Every step takes an :class:`MDState` (positions, momenta and the potential's results at those positions) and a
potential ``model(state) -> {"energy": [S], "forces": [N, 3], ("stress": [S, 3, 3])}``, and returns the next state;
nothing is changed in place. Targets are per system: ``temperature`` (K), ``pressure`` (eV/A^3) and friction may be a
number, one value per system, or a ``[S]`` tensor. Units: ``dt`` and time constants in fs, temperature in K.

Random numbers come only from the ``generator`` argument: a :class:`torch.Generator` (one stream for the whole
batch), or one generator per system, in which case every system draws from its own stream and gives the same
trajectory alone or in any batch.

Integrators (all keep the centre-of-mass momentum of each system at zero; temperatures use 3N - 3 degrees of freedom):

- :func:`nve_step`: velocity Verlet.
- :func:`langevin_step`: Langevin dynamics, BAOAB splitting (Leimkuhler & Matthews 2013).
- :func:`nhc_init` / :func:`nhc_step`: Nose-Hoover chain (Martyna, Klein & Tuckerman 1992), deterministic;
  :func:`nhc_conserved` is the quantity it conserves.
- :func:`csvr_step`: canonical sampling through velocity rescaling (Bussi, Donadio & Parrinello 2007).
- :func:`npt_step`: isotropic NPT, stochastic cell rescaling (Bernetti & Bussi 2020) with BAOAB Langevin particles.

Conserved quantities (:func:`conserved_energy`): NVE conserves E_pot + E_kin, the Nose-Hoover chain its extended
energy (:func:`nhc_conserved`); Langevin and CSVR count the energy their thermostat exchanges with the particles in
``state.heat`` (eV per system), so that E_pot + E_kin - heat is conserved up to the integration error (its drift
measures the time step's quality as NVE's drift does). NPT conserves E_pot + E_kin + P0 V - heat, where heat also
counts the work of each cell rescaling: its kinetic part and P0 dV exactly, its potential part by the trapezoidal
rule over the stresses before and after the move (an error of the order of the integration error).

>>> state = init_md(BatchedState.from_atoms(structures), model, temperature=300, generator=gen)  # doctest: +SKIP
>>> for _ in range(1000):                                                                          # doctest: +SKIP
...     state = langevin_step(state, model, dt=2.0, temperature=300, friction=0.01, generator=gen)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from limace.core.errors import ValidationError
from limace.core.state import SYSTEM, BatchedState, MDState, per_system
from limace.core.units import FS, KB_EV
from limace.core.units import GPA as _GPA_IN_EV_PER_A3

Model = Callable[..., dict]
Generator = torch.Generator | Sequence[torch.Generator]


# -- helpers ---------------------------------------------------------------------------------------------------------


def evaluate(state: BatchedState, model: Model, compute_stress: bool = False) -> MDState:
    """An :class:`MDState` with the potential's energy, forces (and stress) at the state's positions."""
    out = model(state, compute_stress=True) if compute_stress else model(state)
    base = state if isinstance(state, MDState) else None
    if base is not None:
        return base.replace(energy=out["energy"], forces=out["forces"], stress=out.get("stress"))
    values = {f: getattr(state, f) for f in ("positions", "momenta", "masses", "numbers", "cell", "pbc", "system_idx")}
    return MDState(**values, energy=out["energy"], forces=out["forces"], stress=out.get("stress"))


def kT_of(temperature, state: BatchedState) -> torch.Tensor:
    """``[S]`` k_B T (eV) from temperatures in K."""
    t = per_system(temperature, state.n_systems, state.positions, "temperature")
    if bool((t < 0).any()):
        raise ValidationError("temperature: must be >= 0 K")
    return KB_EV * t


def _checked_generators(state: BatchedState, generator: Generator) -> torch.Generator | list[torch.Generator]:
    """The one generator, or the list of one generator per system (checked against the number of systems)."""
    if generator is None:
        raise ValidationError("this integrator is stochastic: pass generator= (a torch.Generator or one per system)")
    if isinstance(generator, torch.Generator):
        return generator
    gens = list(generator)
    if len(gens) != state.n_systems:
        raise ValidationError(f"generator: got {len(gens)} generators for {state.n_systems} systems")
    return gens


def randn_atoms(state: BatchedState, generator: Generator, per_atom: int = 3) -> torch.Tensor:
    """``[N, per_atom]`` standard normals: from one generator, or system by system from one generator each."""
    gens = _checked_generators(state, generator)
    kw = dict(dtype=state.dtype, device=state.device)
    if isinstance(gens, torch.Generator):
        return torch.randn((state.n_atoms, per_atom), generator=gens, **kw)
    return torch.cat([torch.randn((b - a, per_atom), generator=g, **kw) for g, (a, b) in zip(gens, state.atom_ranges())])


def randn_systems(state: BatchedState, generator: Generator, n: int = 1) -> torch.Tensor:
    """``[S, n]`` standard normals, one row per system (from its own generator when given one per system)."""
    gens = _checked_generators(state, generator)
    kw = dict(dtype=state.dtype, device=state.device)
    if isinstance(gens, torch.Generator):
        return torch.randn((state.n_systems, n), generator=gens, **kw)
    return torch.cat([torch.randn((1, n), generator=g, **kw) for g in gens])


def remove_com_momentum(state: BatchedState, momenta: torch.Tensor) -> torch.Tensor:
    """``momenta`` with each system's total momentum removed (mass-weighted; systems of one atom are left alone)."""
    total = state.sum_per_system(momenta)
    mass = state.sum_per_system(state.masses)
    keep = (state.n_atoms_per_system > 1).to(momenta.dtype)[:, None]
    return momenta - state.masses[:, None] * (keep * total / mass[:, None])[state.system_idx]


def maxwell_boltzmann(state: BatchedState, temperature, generator: Generator) -> torch.Tensor:
    """``[N, 3]`` momenta drawn at ``temperature`` (K, per system), zero total momentum per system."""
    kT = kT_of(temperature, state)
    p = randn_atoms(state, generator) * torch.sqrt(state.masses * kT[state.system_idx])[:, None]
    return remove_com_momentum(state, p)


def init_md(state: BatchedState, model: Model, *, temperature=None, generator: Generator = None,
            compute_stress: bool = False) -> MDState:
    """Evaluate the potential at the start; with ``temperature``, first draw Maxwell-Boltzmann momenta (else the
    state's momenta are kept, less their centre-of-mass part)."""
    if temperature is not None:
        state = state.replace(momenta=maxwell_boltzmann(state, temperature, generator))
    else:
        state = state.replace(momenta=remove_com_momentum(state, state.momenta))
    return evaluate(state, model, compute_stress)


def _add_heat(state: MDState, before: torch.Tensor, after: BatchedState) -> torch.Tensor:
    """``state.heat`` (zero if not counted yet) plus the kinetic energy a thermostat move added: ``after`` minus
    ``before`` (``[S]`` kinetic energies before the move)."""
    heat = state.heat if state.heat is not None else torch.zeros_like(before)
    return heat + (after.kinetic_energy() - before)


def _fs(dt: float) -> float:
    if not dt > 0:
        raise ValidationError(f"dt: must be > 0 fs, got {dt}")
    return float(dt) * FS


def _check(state) -> MDState:
    if not isinstance(state, MDState) or state.forces is None:
        raise ValidationError("the state has no forces: start with init_md(state, model, ...)")
    return state


# -- NVE -------------------------------------------------------------------------------------------------------------


def _verlet(state: MDState, model: Model, dt: float, compute_stress: bool = False) -> MDState:
    """Velocity Verlet with ``dt`` in ASE time units."""
    m = state.masses[:, None]
    p = state.momenta + 0.5 * dt * state.forces
    r = state.positions + dt * p / m
    new = evaluate(state.replace(positions=r, momenta=p), model, compute_stress)
    return new.replace(momenta=new.momenta + 0.5 * dt * new.forces)


def _want_stress(state: MDState, stress: bool | None) -> bool:
    return state.stress is not None if stress is None else bool(stress)


def nve_step(state: MDState, model: Model, *, dt: float, stress: bool | None = None) -> MDState:
    """One velocity Verlet step of ``dt`` fs (the same update as ASE's ``VelocityVerlet``).

    ``stress``: also compute the stress at the new positions (default: if the state carries stress); the same
    argument exists on every NVE/NVT step."""
    return _verlet(_check(state), model, _fs(dt), _want_stress(state, stress))


# -- NVT: Langevin (BAOAB) -------------------------------------------------------------------------------------------


def _ou(state: MDState, momenta, kT, friction_per_fs, dt: float, generator) -> torch.Tensor:
    """The exact Ornstein-Uhlenbeck update of the momenta over ``dt`` (ASE time), centre of mass kept at zero."""
    gamma = per_system(friction_per_fs, state.n_systems, state.positions, "friction") / FS
    c1 = torch.exp(-gamma * dt)[state.system_idx, None]
    c2 = torch.sqrt((1 - c1 * c1) * state.masses[:, None] * kT[state.system_idx, None])
    p = c1 * momenta + c2 * randn_atoms(state, generator)
    return remove_com_momentum(state, p)


def langevin_step(state: MDState, model: Model, *, dt: float, temperature, friction=0.01,
                  generator: Generator, stress: bool | None = None) -> MDState:
    """One BAOAB Langevin step: ``dt`` fs, ``temperature`` K, ``friction`` 1/fs (per system)."""
    state = _check(state)
    dt = _fs(dt)
    kT = kT_of(temperature, state)
    m = state.masses[:, None]
    p = state.momenta + 0.5 * dt * state.forces
    r = state.positions + 0.5 * dt * p / m
    k_before = state.replace(momenta=p).kinetic_energy()
    p = _ou(state, p, kT, friction, dt, generator)
    heat = _add_heat(state, k_before, state.replace(momenta=p))
    r = r + 0.5 * dt * p / m
    new = evaluate(state.replace(positions=r, momenta=p, heat=heat), model, _want_stress(state, stress))
    return new.replace(momenta=new.momenta + 0.5 * dt * new.forces)


# -- NVT: Nose-Hoover chain ------------------------------------------------------------------------------------------


@dataclass(eq=False)
class NHCState(MDState):
    """An :class:`MDState` with a Nose-Hoover chain per system: positions ``eta [S, L]``, velocities
    ``v_eta [S, L]`` (1/ASE time) and masses ``Q [S, L]`` (eV * ASE time^2)."""

    eta: torch.Tensor | None = field(default=None, metadata=SYSTEM)
    v_eta: torch.Tensor | None = field(default=None, metadata=SYSTEM)
    Q: torch.Tensor | None = field(default=None, metadata=SYSTEM)


def nhc_init(state: MDState, *, temperature, tau: float = 100.0, chain_length: int = 3) -> NHCState:
    """Attach a Nose-Hoover chain (``chain_length`` thermostats, time constant ``tau`` fs) to an evaluated state."""
    state = _check(state)
    if chain_length < 1:
        raise ValidationError(f"chain_length: must be >= 1, got {chain_length}")
    kT = kT_of(temperature, state)
    t = _fs(tau)
    q = kT[:, None] * t * t * torch.ones((state.n_systems, chain_length), dtype=state.dtype, device=state.device)
    q[:, 0] *= state.degrees_of_freedom()
    zeros = torch.zeros_like(q)
    values = {f: getattr(state, f) for f in state.__dataclass_fields__}
    return NHCState(**values, eta=zeros, v_eta=zeros.clone(), Q=q)


def _nhc_half(state: NHCState, kT: torch.Tensor, dt: float) -> NHCState:
    """Propagate the chain and scale the momenta over ``dt`` (half a step, ASE time)."""
    q, v, eta = state.Q, state.v_eta.clone(), state.eta.clone()
    n = q.shape[1]
    dof = state.degrees_of_freedom()
    k2 = 2 * state.kinetic_energy()

    def g(j):
        if j == 0:
            return (k2 - dof * kT) / q[:, 0]
        return (q[:, j - 1] * v[:, j - 1] ** 2 - kT) / q[:, j]

    v[:, n - 1] = v[:, n - 1] + 0.5 * dt * g(n - 1)
    for j in range(n - 2, -1, -1):
        a = torch.exp(-0.25 * dt * v[:, j + 1])
        v[:, j] = v[:, j] * a * a + 0.5 * dt * g(j) * a
    scale = torch.exp(-dt * v[:, 0])
    k2 = k2 * scale * scale
    eta = eta + dt * v
    for j in range(n - 1):
        a = torch.exp(-0.25 * dt * v[:, j + 1])
        v[:, j] = v[:, j] * a * a + 0.5 * dt * g(j) * a
    v[:, n - 1] = v[:, n - 1] + 0.5 * dt * g(n - 1)
    return state.replace(momenta=state.momenta * scale[state.system_idx, None], v_eta=v, eta=eta)


def nhc_step(state: NHCState, model: Model, *, dt: float, temperature, stress: bool | None = None) -> NHCState:
    """One Nose-Hoover chain step of ``dt`` fs at ``temperature`` K (chain half step, velocity Verlet, half step)."""
    if not isinstance(state, NHCState) or state.Q is None:
        raise ValidationError("nhc_step needs an NHCState: state = nhc_init(init_md(...), temperature=...)")
    dt = _fs(dt)
    kT = kT_of(temperature, state)
    want = _want_stress(state, stress)
    state = _nhc_half(state, kT, 0.5 * dt)
    state = _verlet(state, model, dt, want)
    return _nhc_half(state, kT, 0.5 * dt)


def nhc_conserved(state: NHCState, temperature) -> torch.Tensor:
    """``[S]`` the extended energy a Nose-Hoover chain conserves (eV)."""
    kT = kT_of(temperature, state)
    chain = 0.5 * (state.Q * state.v_eta ** 2).sum(1) + state.degrees_of_freedom() * kT * state.eta[:, 0]
    chain = chain + kT * state.eta[:, 1:].sum(1)
    return state.energy + state.kinetic_energy() + chain


def conserved_energy(ensemble: str, state: MDState, temperature=None, pressure=None) -> torch.Tensor | None:
    """``[S]`` the energy the integrator of ``ensemble`` conserves (eV; see the module docstring): E_pot + E_kin for
    ``"nve"``, the extended energy for ``"nvt_nhc"``, E_pot + E_kin - heat for ``"nvt_langevin"`` and ``"nvt_csvr"``,
    E_pot + E_kin + P0 V - heat for ``"npt"`` (``pressure`` P0 in eV/A^3); None for an unknown ensemble."""
    if ensemble == "nve":
        return state.energy + state.kinetic_energy()
    if ensemble == "nvt_nhc":
        return nhc_conserved(state, temperature)
    if ensemble in ("nvt_langevin", "nvt_csvr", "npt"):
        total = state.energy + state.kinetic_energy()
        if ensemble == "npt":
            if pressure is None:
                raise ValidationError("conserved_energy('npt', ...) needs the target pressure")
            total = total + per_system(pressure, state.n_systems, state.positions, "pressure") * state.volume()
        return total if state.heat is None else total - state.heat
    return None


# -- NVT: CSVR (Bussi) -----------------------------------------------------------------------------------------------


def _csvr_rescale(state: MDState, kT: torch.Tensor, dt: float, tau: float, generator) -> MDState:
    """Rescale the momenta of each system to a kinetic energy drawn by Bussi's stochastic velocity rescaling."""
    dof = state.degrees_of_freedom()
    kin = state.kinetic_energy()
    target = 0.5 * dof * kT
    c = math.exp(-dt / tau)
    # R1 and the sum of (dof - 1) squared normals, from each system's own stream when one generator per system
    n_extra = (dof - 1).long()
    if isinstance(generator, torch.Generator):
        r1 = torch.randn(state.n_systems, generator=generator, dtype=state.dtype, device=state.device)
        z = torch.randn(int(n_extra.sum()), generator=generator, dtype=state.dtype, device=state.device)
        owner = torch.repeat_interleave(torch.arange(state.n_systems, device=state.device), n_extra)
        s = torch.zeros_like(r1).index_add_(0, owner, z * z)
    else:
        gens = list(generator) if generator is not None else []
        if len(gens) != state.n_systems:
            raise ValidationError(f"generator: got {len(gens)} generators for {state.n_systems} systems")
        r1_list, s_list = [], []
        for g, k in zip(gens, n_extra.tolist()):
            d = torch.randn(k + 1, generator=g, dtype=state.dtype, device=state.device)
            r1_list.append(d[0])
            s_list.append((d[1:] ** 2).sum())
        r1, s = torch.stack(r1_list), torch.stack(s_list)
    new = kin + (1 - c) * (target * (s + r1 * r1) / dof - kin) + 2 * r1 * torch.sqrt(c * (1 - c) * target * kin / dof)
    alpha = torch.sqrt(torch.clamp(new, min=0) / torch.clamp(kin, min=torch.finfo(kin.dtype).tiny))
    rescaled = state.replace(momenta=state.momenta * alpha[state.system_idx, None])
    return rescaled.replace(heat=_add_heat(state, kin, rescaled))


def csvr_step(state: MDState, model: Model, *, dt: float, temperature, tau: float = 100.0,
              generator: Generator, stress: bool | None = None) -> MDState:
    """One step of velocity Verlet between two half-step CSVR rescalings (time constant ``tau`` fs)."""
    state = _check(state)
    dt = _fs(dt)
    kT = kT_of(temperature, state)
    want = _want_stress(state, stress)
    state = _csvr_rescale(state, kT, 0.5 * dt, _fs(tau), generator)
    state = _verlet(state, model, dt, want)
    return _csvr_rescale(state, kT, 0.5 * dt, _fs(tau), generator)


# -- NPT: stochastic cell rescaling ----------------------------------------------------------------------------------

def npt_step(state: MDState, model: Model, *, dt: float, temperature, pressure, friction=0.01, tau_p: float = 1000.0,
             compressibility=1 / (30 * _GPA_IN_EV_PER_A3), generator: Generator) -> MDState:
    """One isotropic NPT step: BAOAB Langevin particles and stochastic cell rescaling of the volume.

    ``pressure`` in eV/A^3 (``p_gpa * limace.core.units.GPA``), ``tau_p`` the barostat time constant (fs),
    ``compressibility`` the isothermal compressibility guess (A^3/eV; default that of a 30 GPa bulk modulus), which
    with ``tau_p`` sets how fast the volume relaxes. The state must carry stress (``init_md(...,
    compute_stress=True)``); the barostat uses the stress of the previous positions and the current kinetic energy.
    """
    state = _check(state)
    if state.stress is None:
        raise ValidationError("npt_step needs stress: start with init_md(state, model, compute_stress=True)")
    dt = _fs(dt)
    kT = kT_of(temperature, state)
    p0 = per_system(pressure, state.n_systems, state.positions, "pressure")
    beta = per_system(compressibility, state.n_systems, state.positions, "compressibility")
    tau = _fs(tau_p)
    m = state.masses[:, None]
    p = state.momenta + 0.5 * dt * state.forces
    r = state.positions + 0.5 * dt * p / m
    k_before = state.replace(momenta=p).kinetic_energy()
    p = _ou(state, p, kT, friction, dt, generator)
    heat = _add_heat(state, k_before, state.replace(momenta=p))
    r = r + 0.5 * dt * p / m
    moved = state.replace(positions=r, momenta=p)
    vol = moved.volume()
    trace0 = torch.diagonal(state.stress, dim1=-2, dim2=-1).sum(-1)
    k_moved = moved.kinetic_energy()
    p_int = 2 * k_moved / (3 * vol) - trace0 / 3
    noise = randn_systems(moved, generator)[:, 0]
    d_eps = -(beta / tau) * (p0 - p_int - kT / vol) * dt + torch.sqrt(2 * kT * beta * dt / (vol * tau)) * noise
    mu = torch.exp(d_eps / 3)
    mu_atom = mu[state.system_idx, None]
    moved = moved.replace(positions=r * mu_atom, momenta=p / mu_atom, cell=state.cell * mu[:, None, None])
    new = evaluate(moved, model, compute_stress=True)
    # the rescaling's work on E_pot + E_kin + P0 V: dU = V tr(stress) d_eps / 3 (ASE's sign), trapezoidal in d_eps
    vol1 = new.volume()
    trace1 = torch.diagonal(new.stress, dim1=-2, dim2=-1).sum(-1)
    d_pot = 0.5 * (vol * trace0 + vol1 * trace1) * d_eps / 3
    heat = heat + (moved.kinetic_energy() - k_moved) + p0 * (vol1 - vol) + d_pot
    return new.replace(momenta=new.momenta + 0.5 * dt * new.forces, heat=heat)
