"""The MD runner: loops an integrator over a batch, logs, writes trajectories and checkpoints, guards against blow-ups.

:func:`run_md` is the Python API, :func:`run_config` what ``limace md CONFIG.yaml`` calls. Outputs in ``output_dir``:

- ``thermo.csv``: one row per system every ``log_every`` steps: step, time_fs, system, T_K, E_pot_eV, E_kin_eV,
  E_cons_eV, P_GPa (with the kinetic term), volume_A3. E_cons_eV is the quantity the integrator conserves, so that
  its drift measures the integration error: E_pot + E_kin for NVE, the Nose-Hoover chain's extended energy for NHC,
  E_pot + E_kin minus the heat the thermostat gave the particles for Langevin and CSVR, E_pot + E_kin + P0 V minus
  the heat and the barostat's work for NPT. With a committee (``committee:``), E_std_meV_per_atom and
  F_std_max_eV_A: its energy spread per atom and the largest atom's force spread (empty otherwise).
- ``traj_0000.extxyz`` ...: one file per system, a frame every ``trajectory_every`` steps (unwrapped positions,
  momenta, energy, forces; ``info`` has step and time_fs).
- ``checkpoint.pt``: everything needed to continue (state, thermostat, random generators, stopped systems, the sizes
  of the output files); written atomically. A run started again on the same ``output_dir`` continues from it and cuts
  the outputs back to the checkpoint, so a kill at any moment loses at most the steps since the last checkpoint.
- ``final.extxyz`` (every system's last frame) and ``summary.json`` (status of each system, timings).

The loop integrates and hands the state to small observers with one interface (:class:`Observer`):
:class:`BlowUpGuard`, :class:`ThermoLog`, :class:`TrajectoryWriter` and :class:`Checkpointer`.

Blow-up guard: every ``guard.check_every`` steps (and before each output) a system with non-finite numbers, a
temperature above ``max_temperature_K`` or two atoms closer than ``min_distance_A`` is stopped, its last frame is
written to ``stopped_KKKK.extxyz`` and the reason to ``summary.json``; the other systems go on.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from ase import Atoms

from limace.core.errors import LimaceInputError, ValidationError
from limace.core.fileio import atomic_write, atomic_write_json
from limace.core.state import BatchedState, MDState, as_dtype, per_system
from limace.core.units import GPA
from limace.md import integrators as integ
from limace.md.config import GuardConfig, MDConfig

CHECKPOINT = "checkpoint.pt"
THERMO = "thermo.csv"
THERMO_COLUMNS = ("step", "time_fs", "system", "T_K", "E_pot_eV", "E_kin_eV", "E_cons_eV", "P_GPa", "volume_A3",
                  "E_std_meV_per_atom", "F_std_max_eV_A")


@dataclass
class StoppedSystem:
    system: int
    step: int
    reason: str

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class MDResult:
    """What a run gives back: the last frame of every system, which were stopped and why, and timings."""

    final: list[Atoms]
    stopped: list[StoppedSystem]
    steps: int
    wall_s: float
    atom_steps_per_s: float
    output_dir: Path | None = None
    thermo: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"steps": self.steps, "wall_s": round(self.wall_s, 3), "atom_steps_per_s": round(self.atom_steps_per_s, 2),
                "n_systems": len(self.final), "stopped": [s.as_dict() for s in self.stopped],
                "output_dir": str(self.output_dir) if self.output_dir else None}


# -- integrator table ------------------------------------------------------------------------------------------------


@dataclass
class _Targets:
    """Per-system tensors of the run's parameters (subset with the state when systems stop)."""

    temperature: torch.Tensor | None
    pressure: torch.Tensor
    friction: torch.Tensor
    compressibility: torch.Tensor

    def select(self, keep: torch.Tensor) -> "_Targets":
        return _Targets(*(None if v is None else v[keep] for v in
                          (self.temperature, self.pressure, self.friction, self.compressibility)))


def _step(cfg: MDConfig, state, model, t: _Targets, gens, stress: bool):
    dt = cfg.timestep_fs
    ens = cfg.ensemble
    if ens == "nve":
        return integ.nve_step(state, model, dt=dt, stress=stress)
    if ens == "nvt_langevin":
        return integ.langevin_step(state, model, dt=dt, temperature=t.temperature, friction=t.friction, generator=gens,
                                   stress=stress)
    if ens == "nvt_nhc":
        return integ.nhc_step(state, model, dt=dt, temperature=t.temperature, stress=stress)
    if ens == "nvt_csvr":
        return integ.csvr_step(state, model, dt=dt, temperature=t.temperature, tau=cfg.tau_fs, generator=gens,
                               stress=stress)
    return integ.npt_step(state, model, dt=dt, temperature=t.temperature, pressure=t.pressure, friction=t.friction,
                          tau_p=cfg.tau_p_fs, compressibility=t.compressibility, generator=gens)


def _conserved(cfg: MDConfig, state, t: _Targets) -> torch.Tensor | None:
    """``[S]`` the conserved energy of the run's ensemble (:func:`limace.md.integrators.conserved_energy`)."""
    return integ.conserved_energy(cfg.ensemble, state, t.temperature, t.pressure)


# -- guard -----------------------------------------------------------------------------------------------------------


def _min_distances(state: BatchedState, model, limit: float) -> torch.Tensor:
    """``[S]`` shortest interatomic distance per system (inf when none below the list's cutoff)."""
    from limace.core.neighbors import VerletList, neighbor_list

    nl = getattr(model, "neighbors", None)
    if isinstance(nl, VerletList) and nl.cutoff >= limit:
        edge_index, shifts = nl.get(state.positions, state.cell, state.pbc, state.system_idx)
    else:
        edge_index, shifts = neighbor_list(state.positions, state.cell, state.pbc, state.system_idx, limit,
                                           n_systems=state.n_systems)
    out = torch.full((state.n_systems,), float("inf"), dtype=state.dtype, device=state.device)
    if edge_index.shape[1] == 0:
        return out
    snd, rcv = edge_index
    sys_e = state.system_idx[snd]
    vec = state.positions[rcv] - state.positions[snd] + torch.einsum("ei,eij->ej", shifts.to(state.dtype),
                                                                      state.cell[sys_e])
    return out.scatter_reduce_(0, sys_e, torch.linalg.norm(vec, dim=1), "amin", include_self=True)


def check_systems(state: MDState, model, guard: GuardConfig, step: int | None = None,
                  committee=None) -> list[tuple[int, str]]:
    """``[(system, reason), ...]`` for the systems of ``state`` that blew up (see the module docstring); the
    domain check and the committee's (``guard.committee_max_meV_per_atom`` with ``committee``, batched models) run
    when ``step`` is None or a multiple of ``guard.domain_every``."""
    bad: dict[int, str] = {}

    def flag(mask: torch.Tensor, reason: Callable[[int], str]):
        for k in torch.nonzero(mask).flatten().tolist():
            bad.setdefault(k, reason(k))

    nonfinite_atom = ~torch.isfinite(state.positions).all(1) | ~torch.isfinite(state.momenta).all(1)
    if state.forces is not None:
        nonfinite_atom |= ~torch.isfinite(state.forces).all(1)
    nonfinite = state.sum_per_system(nonfinite_atom.to(state.dtype)) > 0
    nonfinite |= ~torch.isfinite(state.cell).all(dim=(1, 2))
    if state.energy is not None:
        nonfinite |= ~torch.isfinite(state.energy)
    flag(nonfinite, lambda k: "non-finite positions, momenta, forces or energy")
    temp = state.temperature()
    flag(temp > guard.max_temperature_K, lambda k: f"temperature {float(temp[k]):.0f} K > {guard.max_temperature_K:g} K")
    if guard.min_distance_A > 0 and not bool(nonfinite.all()):
        ok = ~nonfinite
        dmin = torch.full((state.n_systems,), float("inf"), dtype=state.dtype, device=state.device)
        if bool(ok.all()):
            dmin = _min_distances(state, model, guard.min_distance_A)
        else:
            dmin[ok] = _min_distances(state.select(ok), model, guard.min_distance_A)
        flag(dmin < guard.min_distance_A,
             lambda k: f"atoms {float(dmin[k]):.3f} A apart < min_distance_A {guard.min_distance_A:g}")
    def running(values_of: Callable) -> np.ndarray:  # values_of(state of the systems not flagged yet); -inf for those
        ok = torch.tensor([k not in bad for k in range(state.n_systems)], device=state.device)
        out = np.full(state.n_systems, -np.inf)
        out[ok.cpu().numpy()] = values_of(state if bool(ok.all()) else state.select(ok))
        return out

    slow_check = step is None or step % guard.domain_every == 0
    dom = getattr(model, "domain", None)
    if guard.domain and dom is not None and slow_check and len(bad) < state.n_systems:
        scores = running(lambda s: dom.state_scores(model, s))
        flag(torch.as_tensor(scores > dom.threshold, device=state.device),
             lambda k: f"outside the potential's training domain (descriptor distance {scores[k]:.1f} > "
                       f"{dom.threshold:.1f}): an extrapolation, not a result")
    thr = guard.committee_max_meV_per_atom
    if committee and thr is not None and slow_check and len(bad) < state.n_systems:
        from limace.core.model import member_spread

        def spread_per_atom(s):  # energies only: the spread thermo.csv logs, without the members' backward passes
            es, _ = member_spread([m(s, compute_forces=False) for m in committee])
            return (es / torch.bincount(s.system_idx, minlength=s.n_systems).to(es.dtype) * 1000).cpu().numpy()

        spread = running(spread_per_atom)
        flag(torch.as_tensor(spread > thr, device=state.device),
             lambda k: f"committee energy spread {spread[k]:.1f} meV/atom > committee_max_meV_per_atom {thr:g}: "
                       "an extrapolation, not a result")
    return sorted(bad.items())


# -- outputs ---------------------------------------------------------------------------------------------------------


class _Outputs:
    """The run's files; appended to as the run goes, cut back to the checkpoint's sizes on restart."""

    def __init__(self, out: Path | None, n_systems: int):
        self.out = out
        self.n = n_systems
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)

    def traj(self, k: int) -> Path:
        return self.out / f"traj_{k:04d}.extxyz"

    def files(self) -> list[Path]:
        return [self.out / THERMO] + [self.traj(k) for k in range(self.n)]

    def sizes(self) -> dict[str, int]:
        return {p.name: p.stat().st_size for p in self.files() if p.exists()}

    def fresh(self) -> None:
        if self.out is None:
            return
        for p in self.files() + [self.out / CHECKPOINT, self.out / "final.extxyz", self.out / "summary.json"]:
            p.unlink(missing_ok=True)
        for p in self.out.glob("stopped_*.extxyz"):
            p.unlink()
        (self.out / THERMO).write_text(",".join(THERMO_COLUMNS) + "\n")

    def cut_back(self, sizes: dict[str, int]) -> None:
        for p in self.files():
            size = sizes.get(p.name, 0)
            if p.exists() and p.stat().st_size > size:
                with open(p, "r+b") as fh:
                    fh.truncate(size)
            elif not p.exists() and p.name == THERMO:
                p.write_text(",".join(THERMO_COLUMNS) + "\n")

    def thermo(self, rows: list[dict]) -> None:
        if self.out is None or not rows:
            return
        with open(self.out / THERMO, "a") as fh:
            for r in rows:
                fh.write(",".join(_fmt(r[c]) for c in THERMO_COLUMNS) + "\n")

    def frames(self, atoms: list[Atoms], systems: list[int]) -> None:
        from ase.io import write

        for a, k in zip(atoms, systems):
            with open(self.traj(k), "a") as fh:
                write(fh, a, format="extxyz")


def _say(message: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stderr)


def _fmt(v) -> str:
    if v is None:  # a column without a value for this run (E_cons_eV of NPT): left empty
        return ""
    return str(v) if isinstance(v, int) else f"{v:.10g}"


def _frames(state: MDState, step: int, dt_fs: float, systems: list[int]) -> list[Atoms]:
    atoms = state.to_atoms()
    for a, k in zip(atoms, systems):
        a.info.update(step=step, time_fs=round(step * dt_fs, 6), system=k)
    return atoms


def _thermo_rows(state: MDState, step: int, cfg: MDConfig, t: _Targets, systems: list[int],
                 committee=None, model=None) -> list[dict]:
    temp = state.temperature().tolist()
    epot = state.energy.tolist()
    ekin = state.kinetic_energy().tolist()
    econs = _conserved(cfg, state, t)
    econs = econs.tolist() if econs is not None else [None] * len(systems)
    vol = state.volume().tolist()
    pres = (state.pressure() / GPA).tolist() if state.stress is not None else \
        [float("nan")] * len(systems)
    e_std = f_std = [None] * len(systems)
    if committee:  # the committee's spread at this frame (its members evaluated here, every log_every steps)
        from limace.core.model import committee_spread

        # the first member is usually the dynamics' own model: its energy and forces at this frame are in the state
        known = {"energy": state.energy, "forces": state.forces} if committee[0] is model else None
        es, fs = committee_spread(committee, state, first=known)
        n = torch.bincount(state.system_idx, minlength=state.n_systems).to(es.dtype)
        e_std, f_std = (es / n * 1000).tolist(), fs.tolist()
    return [dict(step=step, time_fs=step * cfg.timestep_fs, system=k, T_K=temp[i], E_pot_eV=epot[i], E_kin_eV=ekin[i],
                 E_cons_eV=econs[i], P_GPa=pres[i], volume_A3=vol[i], E_std_meV_per_atom=e_std[i],
                 F_std_max_eV_A=f_std[i]) for i, k in enumerate(systems)]


# -- the run ---------------------------------------------------------------------------------------------------------


@dataclass
class _Live:
    """What changes as systems are stopped: the state of the running systems, their targets and generators, their
    original indices, and the stopped systems' reports and last frames."""

    state: MDState | None
    targets: _Targets
    gens: list
    active: list[int]
    stopped: list[StoppedSystem] = field(default_factory=list)
    final: dict[int, Atoms] = field(default_factory=dict)

    def stop_bad(self, step: int, model, cfg: MDConfig, out: Path | None, say: Callable[[str], None],
                 committee=None) -> None:
        bad = check_systems(self.state, model, cfg.guard, step, committee=committee)
        if not bad:
            return
        local = [k for k, _ in bad]
        frames = _frames(self.state.select(local), step, cfg.timestep_fs, [self.active[k] for k in local])
        for (k, reason), frame in zip(bad, frames):
            system = self.active[k]
            self.stopped.append(StoppedSystem(system, step, reason))
            self.final[system] = frame
            if out is not None:
                from ase.io import write

                write(out / f"stopped_{system:04d}.extxyz", frame, format="extxyz")
            say(f"md: system {system} stopped at step {step}: {reason}")
        keep = torch.ones(self.state.n_systems, dtype=torch.bool, device=self.state.device)
        keep[local] = False
        self.active = [a for i, a in enumerate(self.active) if bool(keep[i])]
        self.gens = [g for i, g in enumerate(self.gens) if bool(keep[i])]
        if self.active:
            self.state = self.state.select(keep)
            self.targets = self.targets.select(keep)


@dataclass
class _Run:
    """What the observers see: the config, the model, the output files and the live systems."""

    cfg: MDConfig
    model: object
    out: Path | None
    outputs: _Outputs
    live: _Live
    n_systems: int
    thermo: list[dict] = field(default_factory=list)
    committee: list | None = None  # batched models whose spread is logged (the first is usually `model`)


class Observer:
    """One thing the MD loop does besides integrating. After each step the loop asks every observer whether it is
    :meth:`due`; if any output is due (or the guard's own period has come), the blow-up guard runs first, then the
    observers that are due, in order, each with :meth:`observe`. :meth:`start` is called once on a fresh run (step 0,
    after the guard); :meth:`needs_stress` says whether the step that leads to ``step`` must compute the stress."""

    is_output = True  # its output needs the guard to have run at that step

    def due(self, step: int, run: _Run) -> bool:
        return False

    def needs_stress(self, step: int, run: _Run) -> bool:
        return False

    def start(self, run: _Run) -> None:
        pass

    def observe(self, step: int, run: _Run) -> None:
        pass


class BlowUpGuard(Observer):
    """Stops systems that blew up (see :func:`check_systems`), every ``guard.check_every`` steps and before any
    output."""

    is_output = False

    def due(self, step, run):
        return step % run.cfg.guard.check_every == 0

    def start(self, run):
        self.observe(0, run)

    def observe(self, step, run):
        run.live.stop_bad(step, run.model, run.cfg, run.out, _say, committee=run.committee)


class ThermoLog(Observer):
    """``thermo.csv`` rows (and ``MDResult.thermo`` when ``keep``) every ``log_every`` steps and at the last one."""

    def __init__(self, keep: bool = True, bar=None):
        self.keep, self.bar = keep, bar

    def due(self, step, run):
        return step % run.cfg.log_every == 0 or step == run.cfg.steps

    def needs_stress(self, step, run):  # the pressure column
        return self.due(step, run)

    def _log(self, step, run):
        live = run.live
        rows = _thermo_rows(live.state, step, run.cfg, live.targets, live.active, run.committee, run.model)
        run.outputs.thermo(rows)
        if self.keep:
            run.thermo.extend(rows)

    def start(self, run):
        if run.live.active:
            self._log(0, run)

    def observe(self, step, run):
        if run.live.active:
            self._log(step, run)
            if self.bar is not None:
                self.bar.set_postfix(T=f"{float(run.live.state.temperature().mean()):.0f}K",
                                     active=len(run.live.active))


class TrajectoryWriter(Observer):
    """A frame of every running system every ``trajectory_every`` steps (``traj_KKKK.extxyz``)."""

    def due(self, step, run):
        return run.out is not None and bool(run.cfg.trajectory_every) and step % run.cfg.trajectory_every == 0

    def start(self, run):
        if run.live.active and run.cfg.trajectory_every and run.out is not None:
            self.observe(0, run)

    def observe(self, step, run):
        live = run.live
        if live.active:
            run.outputs.frames(_frames(live.state, step, run.cfg.timestep_fs, live.active), live.active)


class Checkpointer(Observer):
    """``checkpoint.pt`` (atomically) every ``checkpoint_every`` steps, at the last step and when every system has
    stopped: what a run started again on the same ``output_dir`` continues from."""

    def due(self, step, run):
        return run.out is not None and bool(run.cfg.checkpoint_every) and step % run.cfg.checkpoint_every == 0

    def due_after(self, step, run) -> bool:
        """Also at the end: the last step, or no system left."""
        return run.out is not None and (step == run.cfg.steps or not run.live.active)

    def observe(self, step, run):
        live, cfg = run.live, run.cfg
        ck = {"step": step, "ensemble": cfg.ensemble, "n_systems": run.n_systems, "active": live.active,
              "state_type": type(live.state), "state": dict(live.state.__dict__),
              "generators": [g.get_state() for g in live.gens],
              "stopped": [s.as_dict() for s in live.stopped], "final": live.final,
              "sizes": run.outputs.sizes(), "config": cfg.as_dict()}
        atomic_write(run.out / CHECKPOINT, lambda tmp: torch.save(ck, tmp))


def make_generators(n_systems: int, seed: int, device) -> list[torch.Generator]:
    """One generator per system, system ``k`` seeded with ``seed + k`` (so a system's trajectory does not depend on
    the batch it runs in)."""
    return [torch.Generator(device=device).manual_seed(int(seed) + k) for k in range(n_systems)]


def _resume(run: _Run, ckpt_path: Path, targets: _Targets, gens: list, device) -> int:
    """Load the checkpoint into ``run.live``, cut the outputs back to it; the step it was written at."""
    cfg, n_sys = run.cfg, run.n_systems
    ck = torch.load(ckpt_path, map_location=device, weights_only=False)
    if ck["ensemble"] != cfg.ensemble or ck["n_systems"] != n_sys:
        raise LimaceInputError(f"{ckpt_path}: checkpoint of a {ck['ensemble']} run of {ck['n_systems']} systems, "
                               f"config asks for {cfg.ensemble} with {n_sys}; use another output_dir or start "
                               "afresh (--fresh)")
    live = run.live
    live.state = ck["state_type"](**ck["state"])
    live.active = list(ck["active"])
    live.stopped = [StoppedSystem(**s) for s in ck["stopped"]]
    live.final = {int(k): v for k, v in ck["final"].items()}
    keep = torch.tensor([k in set(live.active) for k in range(n_sys)], device=device)
    live.targets = targets.select(keep)
    live.gens = [gens[k] for k in live.active]
    for g, s in zip(live.gens, ck["generators"]):
        g.set_state(s)
    run.outputs.cut_back(ck["sizes"])
    return ck["step"]


def _start(run: _Run, state0: BatchedState, targets: _Targets, gens: list) -> None:
    """A fresh run: old outputs removed, momenta drawn, the potential evaluated, the thermostat attached."""
    cfg = run.cfg
    run.outputs.fresh()
    init_t = cfg.init_temperature_K if cfg.init_temperature_K is not None else (
        None if cfg.ensemble == "nve" else cfg.temperature_K)
    state = integ.init_md(state0, run.model, temperature=init_t, generator=gens if init_t is not None else None,
                          compute_stress=True)
    if cfg.ensemble == "nvt_nhc":
        state = integ.nhc_init(state, temperature=targets.temperature, tau=cfg.tau_fs, chain_length=cfg.chain_length)
    run.live.state = state


def run_md(structures: Sequence[Atoms] | BatchedState, model, config: MDConfig | None = None, *,
           output_dir: str | Path | None = None, generators: Sequence[torch.Generator] | None = None,
           restart: bool = True, keep_thermo: bool = True, committee: Sequence | None = None,
           **overrides) -> MDResult:
    """Run MD of many systems at once.

    Args:
        structures: ASE Atoms (one system each; momenta are used for NVE without ``init_temperature_K``) or a
            :class:`BatchedState`.
        model: a batched potential (:class:`limace.core.model.BatchedModel`: ``state -> {"energy", "forces",
            ("stress")}``), e.g. :class:`limace.potentials.batched.BatchedMACE`; NPT needs one that gives stress.
        config: an :class:`MDConfig`; keyword ``overrides`` replace its fields (``run_md(atoms, model,
            ensemble="nve", steps=100, timestep_fs=1.0)``).
        output_dir: where to write (default ``config.output_dir`` when a config is given, else nothing is written).
        generators: one torch.Generator per system (default: seeded ``config.seed + k``).
        restart: continue from ``output_dir/checkpoint.pt`` when it exists (else start afresh, deleting old outputs).
        keep_thermo: also keep the thermo rows in memory (``MDResult.thermo``).
        committee: batched models (usually ``model`` and others trained like it): at every logged frame their
            spread goes into the thermo columns ``E_std_meV_per_atom`` (energy std per atom) and ``F_std_max_eV_A``
            (the largest atom's force spread); the dynamics run on ``model`` alone. Without it the columns are empty.
    """
    import dataclasses

    if config is None:
        cfg = MDConfig(**overrides)
        out = Path(output_dir) if output_dir is not None else None
    else:
        cfg = dataclasses.replace(config, **overrides) if overrides else config
        out = Path(output_dir if output_dir is not None else cfg.output_dir)
    dtype = getattr(model, "dtype", None) or as_dtype(cfg.dtype)
    device = getattr(model, "device", None) or torch.device(cfg.device)
    if isinstance(structures, BatchedState):
        state0 = structures
    else:
        state0 = BatchedState.from_atoms(list(structures), device=device, dtype=dtype)
    n_sys = state0.n_systems
    like = state0.positions
    targets = _Targets(
        temperature=None if cfg.temperature_K is None else per_system(cfg.temperature_K, n_sys, like, "temperature_K"),
        pressure=per_system(cfg.pressure_GPa, n_sys, like, "pressure_GPa") * GPA,
        friction=per_system(cfg.friction_per_fs, n_sys, like, "friction_per_fs"),
        compressibility=1 / (per_system(cfg.bulk_modulus_GPa, n_sys, like, "bulk_modulus_GPa") * GPA),
    )
    gens = list(generators) if generators is not None else make_generators(n_sys, cfg.seed, state0.device)
    if len(gens) != n_sys:
        raise ValidationError(f"generators: got {len(gens)} for {n_sys} systems")
    committee = list(committee) if committee is not None else None
    if committee is not None and len(committee) < 2:
        raise ValidationError(f"committee: needs at least 2 models, got {len(committee)}")
    if cfg.guard.committee_max_meV_per_atom is not None and committee is None:
        raise ValidationError("guard: committee_max_meV_per_atom needs the committee's models (run_md(committee=...))")
    run = _Run(cfg=cfg, model=model, out=out, outputs=_Outputs(out, n_sys), n_systems=n_sys, committee=committee,
               live=_Live(state=None, targets=targets, gens=gens, active=list(range(n_sys))))
    from tqdm.auto import tqdm

    guard, checkpoint = BlowUpGuard(), Checkpointer()
    ckpt_path = out / CHECKPOINT if out is not None else None
    resuming = restart and ckpt_path is not None and ckpt_path.exists()
    start = _resume(run, ckpt_path, targets, gens, state0.device) if resuming else 0
    thermo = ThermoLog(keep_thermo)
    outputs = [thermo, TrajectoryWriter()]
    if not resuming:
        _start(run, state0, targets, gens)
        for obs in (guard, *outputs):
            obs.start(run)
    bar = thermo.bar = tqdm(total=cfg.steps, initial=start, desc=f"md {cfg.ensemble} x{n_sys}", unit="step",
                            disable=not cfg.progress, dynamic_ncols=True)
    t0 = time.perf_counter()
    atom_steps = 0
    step = start
    npt = cfg.ensemble == "npt"
    try:
        while step < cfg.steps and run.live.active:
            nxt = step + 1
            due = [obs for obs in outputs if obs.due(nxt, run)]
            stress = npt or any(obs.needs_stress(nxt, run) for obs in outputs)
            live = run.live
            live.state = _step(cfg, live.state, model, live.targets, live.gens, stress=stress)
            atom_steps += live.state.n_atoms
            step = nxt
            ckpt_due = checkpoint.due(step, run)
            if due or ckpt_due or guard.due(step, run):
                guard.observe(step, run)
            for obs in due:
                obs.observe(step, run)
            if ckpt_due or checkpoint.due_after(step, run):
                checkpoint.observe(step, run)
            bar.update(1)
    finally:
        bar.close()
    wall = time.perf_counter() - t0
    live = run.live
    if live.active:
        for a, k in zip(_frames(live.state, step, cfg.timestep_fs, live.active), live.active):
            live.final[k] = a
    final_list = [live.final[k] for k in range(n_sys)]
    result = MDResult(final=final_list, stopped=sorted(live.stopped, key=lambda s: s.system), steps=step, wall_s=wall,
                      atom_steps_per_s=atom_steps / wall if wall > 0 else 0.0, output_dir=out, thermo=run.thermo)
    if out is not None:
        from ase.io import write

        atomic_write(out / "final.extxyz", lambda tmp: write(tmp, final_list, format="extxyz"))
        atomic_write_json(out / "summary.json", {**result.as_dict(), "config": cfg.as_dict()})
    return result


def load_structures(paths: Sequence[str | Path]) -> list[Atoms]:
    """Every frame of every file, in order (extxyz, traj, cif, POSCAR... anything ASE reads)."""
    from ase.io import read

    frames: list[Atoms] = []
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise ValidationError(f"{p}: no such structure file")
        try:
            got = read(p, index=":")
        except Exception as exc:
            raise ValidationError(f"{p}: cannot read structures ({type(exc).__name__}: {exc})") from None
        frames.extend(got if isinstance(got, list) else [got])
    if not frames:
        raise ValidationError("no structures in " + ", ".join(map(str, paths)))
    return frames


def run_config(cfg: MDConfig, restart: bool = True, *, model=None,
               load_model: Callable[..., object] | None = None) -> MDResult:
    """Run what an :class:`MDConfig` describes (what ``limace md CONFIG.yaml`` does; sets torch's CPU threads when
    ``threads`` is given).

    The potential: ``model`` (a :class:`limace.core.model.BatchedModel`), or ``load_model(cfg.potential,
    device=, dtype=, skin=, max_atoms_per_call=, compile=)`` to load it, e.g. :func:`limace.potentials.load_batched`
    (the ``limace md`` command passes that one; the MD engine itself does not import the potentials)."""
    if model is None and load_model is None:
        raise LimaceInputError("run_config needs the potential: model= (a batched model) or load_model= (e.g. "
                               "limace.potentials.load_batched)")
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    structures = load_structures(cfg.structures)
    committee = None
    if cfg.committee:
        if load_model is None:
            raise LimaceInputError("committee: run_config needs load_model= to load the committee's potentials")
        # the potential and the committee read together (checked against each other); the dynamics use the first
        opts = dict(device=cfg.device, dtype=cfg.dtype, skin=cfg.skin_A, max_atoms_per_call=cfg.max_atoms_per_call)
        loaded = load_model([cfg.potential, *cfg.committee], **opts)
        committee = list(loaded.members)
        if model is None:
            model = load_model(cfg.potential, **opts, compile=cfg.compile) if cfg.compile else committee[0]
    if model is None:
        model = load_model(cfg.potential, device=cfg.device, dtype=cfg.dtype, skin=cfg.skin_A,
                           max_atoms_per_call=cfg.max_atoms_per_call, compile=cfg.compile)
    return run_md(structures, model, cfg, restart=restart, committee=committee)
