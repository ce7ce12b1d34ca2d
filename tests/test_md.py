"""The batched MD engine (tiny random-weight MACE, CPU): batch = alone, NVE drift, ASE equality, thermostats,
barostat, runner (outputs, restart, blow-up guard), config/CLI, and diffusion analysis."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.build import bulk

from limace.errors import LimaceInputError, ValidationError
from limace.md import integrators as md
from limace.md.state import BatchedState, MDState
from limace.potentials.batched import BatchedMACE


def lisn16(seed: int = 0, a: float = 3.45) -> Atoms:
    """bcc Li12Sn4 (2x2x2 conventional cells), rattled."""
    atoms = bulk("Li", "bcc", a=a, cubic=True).repeat((2, 2, 2))
    atoms.numbers[[1, 6, 11, 12]] = 50
    atoms.rattle(0.05, seed=seed)
    return atoms


def liin8(seed: int = 0) -> Atoms:
    atoms = bulk("Li", "bcc", a=3.45, cubic=True).repeat((2, 2, 1))
    atoms.numbers[[0, 5]] = 49
    atoms.rattle(0.05, seed=seed)
    return atoms


def skewed2() -> Atoms:
    return Atoms("LiSn", positions=[[0, 0, 0], [1.4, 1.3, 1.1]], cell=[[2.9, 0, 0], [1.9, 2.5, 0], [0.7, -1.1, 2.8]],
                 pbc=True)


@pytest.fixture(scope="module")
def model64(tiny_mace_model_path):
    return BatchedMACE.from_file(tiny_mace_model_path, dtype=torch.float64)


@pytest.fixture(scope="module")
def model32(tiny_mace_model_path):
    return BatchedMACE.from_file(tiny_mace_model_path, dtype=torch.float32)


def gens(seeds, device="cpu"):
    return [torch.Generator(device=device).manual_seed(s) for s in seeds]


# -- state -----------------------------------------------------------------------------------------------------------


def test_state_roundtrip_select_and_validation():
    cells = [lisn16(), skewed2(), liin8()]
    for a in cells:
        a.set_momenta(np.random.default_rng(0).normal(size=(len(a), 3)))
    st = BatchedState.from_atoms(cells, dtype=torch.float32)
    assert st.n_systems == 3 and st.n_atoms == 26 and st.n_atoms_per_system.tolist() == [16, 2, 8]
    back = st.to_atoms()
    for a, b in zip(cells, back):
        np.testing.assert_allclose(a.positions, b.positions, atol=1e-5)
        np.testing.assert_allclose(a.get_momenta(), b.get_momenta(), atol=1e-5)
        assert (a.numbers == b.numbers).all() and np.allclose(a.cell, b.cell, atol=1e-5)
    sub = st.select([2, 0])
    assert sub.n_atoms_per_system.tolist() == [16, 8] and sub.system_idx.max() == 1
    again = BatchedState.concatenate(st.split())
    assert torch.equal(again.positions, st.positions) and torch.equal(again.system_idx, st.system_idx)
    with pytest.raises(ValidationError, match="momenta"):
        BatchedState(**{**st.__dict__, "momenta": st.momenta[:5]})
    with pytest.raises(ValidationError, match="system_idx"):
        BatchedState(**{**st.__dict__, "system_idx": st.system_idx.flip(0)})
    with pytest.raises(ValidationError, match="dtype"):
        BatchedState(**{**st.__dict__, "masses": st.masses.double()})
    with pytest.raises(ValidationError, match="zero volume"):
        BatchedState.from_atoms([Atoms("Li2", positions=[[0, 0, 0], [1, 1, 1]], pbc=True)])


# -- correctness of the engine ---------------------------------------------------------------------------------------


def test_batch_gives_the_same_trajectory_as_each_system_alone(model64):
    """Three systems of 16, 2 and 8 atoms run together = each run alone with its seed, to 1e-6 A over 100 steps
    (Langevin, so the random streams must be per system)."""
    cells = [lisn16(1), skewed2(), liin8(2)]
    seeds = [11, 12, 13]

    def run(atoms_list, seed_list):
        state = BatchedState.from_atoms(atoms_list)
        g = gens(seed_list)
        state = md.init_md(state, model64, temperature=500, generator=g)
        for _ in range(100):
            state = md.langevin_step(state, model64, dt=2.0, temperature=[500] * len(atoms_list), friction=0.02,
                                     generator=g)
        return state

    batch = run(cells, seeds)
    moved = (batch.positions - BatchedState.from_atoms(cells).positions).norm(dim=1)
    assert float(moved.max()) > 0.3  # the atoms did move
    for k, (a, b) in enumerate(batch.atom_ranges()):
        alone = run([cells[k]], [seeds[k]])
        assert float((alone.positions - batch.positions[a:b]).abs().max()) < 1e-6
        assert float((alone.momenta - batch.momenta[a:b]).abs().max()) < 1e-6


def test_velocity_verlet_step_equals_ase(model64, tiny_mace_model_path):
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
    from ase.md.verlet import VelocityVerlet
    from mace.calculators import MACECalculator

    atoms = lisn16(3)
    MaxwellBoltzmannDistribution(atoms, temperature_K=600, rng=np.random.default_rng(0))
    Stationary(atoms)
    state = md.evaluate(BatchedState.from_atoms([atoms]), model64)
    ours = md.nve_step(state, model64, dt=2.0)
    ase_atoms = atoms.copy()
    ase_atoms.calc = MACECalculator(model_paths=str(tiny_mace_model_path), device="cpu", default_dtype="float64")
    VelocityVerlet(ase_atoms, timestep=2.0 * units.fs).run(1)
    np.testing.assert_allclose(ours.positions.numpy(), ase_atoms.positions, atol=1e-10)
    np.testing.assert_allclose(ours.momenta.numpy(), ase_atoms.get_momenta(), atol=1e-10)
    assert not np.allclose(atoms.positions, ase_atoms.positions, atol=1e-4)


NVE_DRIFT_BOUND = 1e-4  # max |E_tot(t) - E_tot(0)| / |E_tot(0)| over 1000 steps of 1 fs


def test_nve_energy_drift_lisn(model64):
    """NVE, 1 fs, 1000 steps, Li12Sn4 at ~600-800 K, float64: the total energy stays within 1e-4 of its start
    (relative) and within 1e-4 eV/atom (measured here: 7e-6 and 2e-5 eV/atom)."""
    state = md.init_md(BatchedState.from_atoms([lisn16(4)]), model64, temperature=600, generator=gens([0]))
    e0 = float(state.energy[0] + state.kinetic_energy()[0])
    worst = 0.0
    for _ in range(1000):
        state = md.nve_step(state, model64, dt=1.0)
        worst = max(worst, abs(float(state.energy[0] + state.kinetic_energy()[0]) - e0))
    assert worst / abs(e0) < NVE_DRIFT_BOUND
    assert worst / 16 < 1e-4
    assert float(state.temperature()[0]) > 100  # it is dynamics, not a frozen cell
    assert float(state.center_of_mass_momentum().abs().max()) < 1e-8


def test_nose_hoover_chain_conserves_its_energy(model64):
    state = md.init_md(BatchedState.from_atoms([liin8(1), lisn16(2)]), model64, temperature=400, generator=gens([1, 2]))
    state = md.nhc_init(state, temperature=[400, 700], tau=20.0)
    h0 = md.nhc_conserved(state, [400, 700])
    for _ in range(150):
        state = md.nhc_step(state, model64, dt=1.0, temperature=[400, 700])
    h1 = md.nhc_conserved(state, [400, 700])
    assert float((h1 - h0).abs().max()) < 2e-3
    assert float(state.v_eta.abs().max()) > 0  # the chain acted


@pytest.mark.slow
@pytest.mark.parametrize("thermostat", ["langevin", "nhc", "csvr"])
def test_thermostats_reach_and_hold_the_target_temperature(model32, thermostat):
    """Eight Li-Sn cells (float32) start at 300 K with target 600 K: after 200 fs the mean temperature over the next
    1200 fs (all systems) is within 3 % of 600 K."""
    target = 600.0
    cells = [lisn16(10 + k) for k in range(8)]
    g = gens(range(100, 108))
    state = md.init_md(BatchedState.from_atoms(cells, dtype=torch.float32), model32, temperature=300, generator=g)
    if thermostat == "nhc":
        state = md.nhc_init(state, temperature=target, tau=20.0)
    temps = []
    for i in range(700):
        if thermostat == "langevin":
            state = md.langevin_step(state, model32, dt=2.0, temperature=target, friction=0.05, generator=g)
        elif thermostat == "nhc":
            state = md.nhc_step(state, model32, dt=2.0, temperature=target)
        else:
            state = md.csvr_step(state, model32, dt=2.0, temperature=target, tau=20.0, generator=g)
        if i >= 100:
            temps.append(state.temperature())
    mean = float(torch.stack(temps).mean())
    assert abs(mean - target) / target < 0.03, mean


# -- thermostat and barostat distributions (cheap Morse crystals, fast enough for `make test`) ------------------------

MORSE = dict(epsilon=0.2, rho0=6.0, r0=2.5, rcut1=1.1, rcut2=1.3)  # fcc nearest neighbours only, B ~ 140 GPa


def morse_crystals(n: int) -> list[Atoms]:
    """``n`` rattled fcc Cu8 cells (nearest-neighbour distance r0 of :data:`MORSE`)."""
    cells = []
    for k in range(n):
        atoms = bulk("Cu", "fcc", a=MORSE["r0"] * np.sqrt(2), cubic=True).repeat((1, 1, 2))
        atoms.rattle(0.02, seed=k)
        cells.append(atoms)
    return cells


@pytest.mark.parametrize("thermostat", ["langevin", "nhc", "csvr", "nve"])
def test_thermostat_samples_the_canonical_kinetic_energy_distribution(thermostat):
    """In the canonical ensemble the kinetic energy of N_f degrees of freedom is Gamma(N_f/2, kT): the instantaneous
    temperature has mean T and variance 2 T^2 / N_f. 32 Morse cells of 8 atoms (N_f = 21), equilibrated by 200
    Langevin steps, then 800 steps of the thermostat (every 4th step sampled): mean within 3 %, variance (over all
    samples, and of each system over time) within 20 % of the canonical ones (measured: Langevin 0.99/0.95/0.94,
    NHC 1.00/0.99/0.97, CSVR 1.01/1.02/0.99). NVE is the control that the check can fail: the variance of each
    system over time is half the canonical one (0.50)."""
    from limace.potentials.pair import BatchedMorse

    model = BatchedMorse(**MORSE, dtype=torch.float64)
    target, dt = 300.0, 4.0
    g = torch.Generator().manual_seed(1)
    state = md.init_md(BatchedState.from_atoms(morse_crystals(32)), model, temperature=target, generator=g)
    for _ in range(200):
        state = md.langevin_step(state, model, dt=dt, temperature=target, friction=0.05, generator=g)
    if thermostat == "nhc":
        state = md.nhc_init(state, temperature=target, tau=50.0)
    temps = []
    for i in range(800):
        if thermostat == "langevin":
            state = md.langevin_step(state, model, dt=dt, temperature=target, friction=0.02, generator=g)
        elif thermostat == "nhc":
            state = md.nhc_step(state, model, dt=dt, temperature=target)
        elif thermostat == "csvr":
            state = md.csvr_step(state, model, dt=dt, temperature=target, tau=50.0, generator=g)
        else:
            state = md.nve_step(state, model, dt=dt)
        if i % 4 == 0:
            temps.append(state.temperature())
    t = torch.stack(temps)
    n_f = float(state.degrees_of_freedom()[0])
    mean_ratio = float(t.mean()) / target
    var_ratio = float(t.var()) / (2 * target**2 / n_f)  # over all samples of all systems
    within = float(t.var(dim=0).mean()) / (2 * target**2 / n_f)  # each system over time, averaged
    if thermostat == "nve":
        assert within < 0.8, within
    else:
        assert abs(mean_ratio - 1) < 0.03, mean_ratio
        assert abs(var_ratio - 1) < 0.2 and abs(within - 1) < 0.2, (var_ratio, within)


def test_npt_volume_fluctuations_match_the_compressibility():
    """Isothermal-isobaric sampling: Var(V) = kT <V> kappa_T, with kappa_T = -(1/V) d<V>/dP measured from the mean
    volumes of the same runs at -3, 0 and +3 GPa (16 Morse cells each, 800 steps). The barostat's compressibility
    guess is set 2x off: it may change how fast the volume moves, not the distribution."""
    from limace.potentials.pair import BatchedMorse

    model = BatchedMorse(**MORSE, dtype=torch.float64, compute_stress=True)
    target, n = 300.0, 16
    p_gpa = torch.tensor([-3.0] * n + [0.0] * n + [3.0] * n, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    state = md.init_md(BatchedState.from_atoms(morse_crystals(3 * n)), model, temperature=target, generator=g,
                       compute_stress=True)
    vols = []
    for i in range(800):
        state = md.npt_step(state, model, dt=4.0, temperature=target, pressure=p_gpa * units.GPa, friction=0.05,
                            tau_p=100.0, compressibility=2 / (140 * units.GPa), generator=g)
        if i >= 200 and i % 4 == 0:
            vols.append(state.volume())
    v = torch.stack(vols)  # [samples, systems]
    lo, mid, hi = (float(v[:, k * n:(k + 1) * n].mean()) for k in range(3))
    assert lo > mid > hi
    kappa = (lo - hi) / (6.0 * units.GPa) / mid
    var_ratio = float(v[:, n:2 * n].var()) / (units.kB * target * mid * kappa)
    assert 80 < 1 / (kappa * units.GPa) < 160  # bulk modulus in GPa, near the static 142 GPa
    assert abs(var_ratio - 1) < 0.25, var_ratio


def zbl_mace(seed: int = 0):
    """The tiny test MACE plus mace's ZBL pair repulsion: a random-weight model with a repulsive wall, so compressed
    cells push back like a solid (bulk modulus of a few GPa around 0.7 of the bcc Li volume)."""
    from e3nn import o3
    from mace import modules

    block = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = modules.ScaleShiftMACE(
            r_max=4.5, num_bessel=6, num_polynomial_cutoff=5, max_ell=2, interaction_cls=block,
            interaction_cls_first=block, num_interactions=2, num_elements=3, hidden_irreps=o3.Irreps("8x0e + 8x1o"),
            MLP_irreps=o3.Irreps("8x0e"), gate=torch.nn.functional.silu, atomic_energies=np.array([-1.9, -2.6, -3.8]),
            avg_num_neighbors=12.0, atomic_numbers=[3, 49, 50], correlation=2, radial_type="bessel",
            pair_repulsion=True, atomic_inter_scale=2.0, atomic_inter_shift=0.0)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.3 * (p.abs().mean() + 0.1) * torch.randn_like(p))
    return model.double().eval()


@pytest.mark.slow
def test_npt_reaches_and_holds_the_target_pressure():
    """Stochastic cell rescaling: four compressed Li-Sn cells (~5.5 GPa) relax to the 2 GPa target; over the last
    800 fs the mean pressure matches the target within max(3 standard errors, 10 %)."""
    model = BatchedMACE(zbl_mace(0), dtype=torch.float32, compute_stress=True)
    target_gpa = 2.0
    cells = [lisn16(20 + k, a=3.45 * 0.68) for k in range(4)]
    g = gens(range(200, 204))
    state = md.init_md(BatchedState.from_atoms(cells, dtype=torch.float32), model, temperature=300, generator=g,
                       compute_stress=True)
    p_start = state.pressure() / units.GPa
    v_start = state.volume().clone()
    pressures = []
    for i in range(700):
        state = md.npt_step(state, model, dt=2.0, temperature=300, pressure=target_gpa * units.GPa, friction=0.05,
                            tau_p=100.0, compressibility=1 / (5 * units.GPa), generator=g)
        if i >= 300:
            pressures.append(state.pressure() / units.GPa)
    p = torch.stack(pressures)  # [400, 4]
    mean = float(p.mean())
    blocks = p.reshape(8, 50, -1).mean(1).flatten()  # block averages of 100 fs, per system
    sem = float(blocks.std() / np.sqrt(blocks.numel()))
    assert bool((p_start > target_gpa + 2.0).all())  # started far from the target
    assert abs(mean - target_gpa) < max(3 * sem, 0.1 * target_gpa), (mean, sem)
    assert bool((state.volume() > 1.2 * v_start).all())  # the barostat expanded the compressed cells
    assert abs(float(state.temperature().mean()) - 300) < 60


# -- runner ----------------------------------------------------------------------------------------------------------


def test_runner_outputs_restart_and_guard(model64, tmp_path):
    """A run writes thermo/trajectories/checkpoint; a run killed after its checkpoint and started again ends as the
    uninterrupted run; a system with two atoms 0.3 A apart is stopped and reported while the others go on."""
    from ase.io import read

    from limace.md.runner import run_md

    bad = liin8(5)
    bad.positions[1] = bad.positions[0] + [0.3, 0, 0]
    cells = [lisn16(6), bad, skewed2()]
    kw = dict(ensemble="nvt_langevin", timestep_fs=2.0, temperature_K=[400, 500, 600], log_every=5,
              trajectory_every=10, checkpoint_every=20, progress=False)
    ref = run_md(cells, model64, output_dir=tmp_path / "ref", steps=40, **kw)
    assert [(s.system, s.step) for s in ref.stopped] == [(1, 0)] and "apart" in ref.stopped[0].reason
    thermo = (tmp_path / "ref" / "thermo.csv").read_text().splitlines()
    assert thermo[0].startswith("step,time_fs,system,T_K,E_pot_eV,E_kin_eV,E_cons_eV,P_GPa,volume_A3")
    assert len(thermo) == 1 + 2 * 9  # header, then the two good systems at step 0 and every 5 steps
    assert len(read(tmp_path / "ref" / "traj_0000.extxyz", ":")) == 5
    assert (tmp_path / "ref" / "stopped_0001.extxyz").exists()
    summary = json.loads((tmp_path / "ref" / "summary.json").read_text())
    assert summary["stopped"][0]["system"] == 1 and summary["config"]["ensemble"] == "nvt_langevin"

    part = run_md(cells, model64, output_dir=tmp_path / "cut", steps=20, **kw)  # "killed" after its checkpoint
    assert part.steps == 20
    with open(tmp_path / "cut" / "thermo.csv", "a") as fh:  # lines a killed run wrote after the checkpoint
        fh.write("25,50,0,garbage\n")
    resumed = run_md(cells, model64, output_dir=tmp_path / "cut", steps=40, **kw)
    assert resumed.steps == 40 and [s.system for s in resumed.stopped] == [1]
    assert (tmp_path / "cut" / "thermo.csv").read_text() == (tmp_path / "ref" / "thermo.csv").read_text()
    for k in (0, 2):
        np.testing.assert_allclose(resumed.final[k].positions, ref.final[k].positions, atol=1e-10)
        a = read(tmp_path / "cut" / f"traj_{k:04d}.extxyz", ":")
        b = read(tmp_path / "ref" / f"traj_{k:04d}.extxyz", ":")
        assert len(a) == len(b) == 5 and np.allclose(a[-1].positions, b[-1].positions, atol=1e-10)


def test_runner_nve_nhc_npt_run(model64, tiny_mace_model_path):
    from limace.md.runner import run_md

    cells = [lisn16(7), liin8(8)]
    for ens in ("nve", "nvt_nhc", "nvt_csvr"):
        res = run_md(cells, model64, ensemble=ens, steps=10, timestep_fs=1.0, temperature_K=500,
                     init_temperature_K=500, progress=False, log_every=5)
        assert res.steps == 10 and not res.stopped and len(res.thermo) == 3 * 2
        assert all(np.isfinite(r["P_GPa"]) for r in res.thermo)
    npt_model = BatchedMACE.from_file(tiny_mace_model_path, compute_stress=True)
    res = run_md(cells, npt_model, ensemble="npt", steps=10, temperature_K=500, pressure_GPa=[0.0, 1.0],
                 progress=False, log_every=5)
    assert res.final[0].cell.volume != pytest.approx(cells[0].cell.volume, rel=1e-9)


def test_e_cons_is_conserved_where_it_is_written(model64, tmp_path):
    """thermo.csv's E_cons_eV: for Langevin and CSVR, E_pot + E_kin less the heat the thermostat exchanged stays
    constant to the integration error while E_pot + E_kin moves by far more; for NPT, E_pot + E_kin + P0 V less the
    thermostat's heat and the barostat's work does, while the volume moves, and the error shrinks with the step."""
    from limace.md.runner import run_md

    for ens in ("nvt_langevin", "nvt_csvr"):
        res = run_md([lisn16(3)], model64, ensemble=ens, steps=40, timestep_fs=1.0, temperature_K=600,
                     init_temperature_K=300, friction_per_fs=0.05, tau_fs=20, progress=False, log_every=5)
        e_tot = np.array([r["E_pot_eV"] + r["E_kin_eV"] for r in res.thermo])
        e_cons = np.array([r["E_cons_eV"] for r in res.thermo])
        assert np.ptp(e_tot) > 0.1 and np.ptp(e_cons) < 1e-3, (ens, np.ptp(e_tot), np.ptp(e_cons))
    spread = {}
    for dt in (2.0, 0.5):
        res = run_md([lisn16(3)], model64, ensemble="npt", steps=int(40 / dt), timestep_fs=dt, temperature_K=600,
                     init_temperature_K=300, friction_per_fs=0.05, tau_p_fs=50, pressure_GPa=1.0, progress=False,
                     log_every=int(5 / dt), output_dir=tmp_path / f"npt{dt}")
        e_tot = np.array([r["E_pot_eV"] + r["E_kin_eV"] for r in res.thermo])
        e_cons = np.array([r["E_cons_eV"] for r in res.thermo])
        vol = np.array([r["volume_A3"] for r in res.thermo])
        assert np.ptp(e_tot) > 0.1 and np.ptp(vol) > 1.0 and np.ptp(e_cons) < 1e-3, (dt, np.ptp(e_tot), np.ptp(vol),
                                                                                        np.ptp(e_cons))
        spread[dt] = np.ptp(e_cons)
        rows = (tmp_path / f"npt{dt}" / "thermo.csv").read_text().splitlines()
        col = rows[0].split(",").index("E_cons_eV")
        assert [float(line.split(",")[col]) for line in rows[1:]] == pytest.approx(e_cons.tolist(), abs=1e-5)
    assert spread[0.5] < spread[2.0] / 4, spread  # an integration error (~dt^2: 0.2 and 0.01 meV here)


def test_guard_stops_hot_and_nonfinite_systems(model64):
    from limace.md.config import GuardConfig
    from limace.md.runner import check_systems

    state = md.init_md(BatchedState.from_atoms([lisn16(1), liin8(1), lisn16(2)]), model64, temperature=300,
                       generator=gens([1, 2, 3]))
    p = state.momenta.clone()
    p[16:24] *= 10  # system 1 at ~30000 K
    pos = state.positions.clone()
    pos[30] = float("nan")  # system 2
    bad = check_systems(state.replace(momenta=p, positions=pos), model64, GuardConfig(max_temperature_K=5000))
    assert [k for k, _ in bad] == [1, 2] and "temperature" in bad[0][1] and "non-finite" in bad[1][1]


# -- config and CLI --------------------------------------------------------------------------------------------------


def test_config_rejects_unknown_keys_and_bad_values(tmp_path):
    from limace.md.config import MDConfig

    (tmp_path / "c.extxyz").write_text("")
    good = {"structures": "c.extxyz", "potential": "x.model", "ensemble": "nvt_langevin", "temperature_K": 300}
    cfg = MDConfig.from_dict(good, base_dir=tmp_path)
    assert cfg.structures == [str(tmp_path / "c.extxyz")] and cfg.temperature_K == 300.0
    with pytest.raises(ValidationError, match="unknown key 'temprature_K'.*did you mean 'temperature_K'"):
        MDConfig.from_dict({**good, "temprature_K": 300})
    with pytest.raises(ValidationError, match="unknown key 'guard.max_T'"):
        MDConfig.from_dict({**good, "guard": {"max_T": 3}})
    with pytest.raises(ValidationError, match="steps = 'many' is not an integer"):
        MDConfig.from_dict({**good, "steps": "many"})
    with pytest.raises(ValidationError, match="ensemble"):
        MDConfig.from_dict({**good, "ensemble": "nvx"})
    with pytest.raises(ValidationError, match="needs temperature_K"):
        MDConfig.from_dict({"ensemble": "npt"})


def test_cli_md_runs_a_config_and_reports_bad_keys(tmp_path, tiny_mace_model_path, limace_exe):
    from ase.io import write

    write(tmp_path / "cells.extxyz", [lisn16(1), liin8(2)])
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"structures: cells.extxyz\npotential: {tiny_mace_model_path}\nensemble: nvt_csvr\nsteps: 6\n"
                   "temperature_K: [300, 600]\nlog_every: 3\ntrajectory_every: 3\noutput_dir: out\n")
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    done = subprocess.run([limace_exe, "md", str(cfg), "--no-progress"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["steps"] == 6  # stdout is the JSON and nothing else (`limace md cfg | json.load`)
    assert len((tmp_path / "out" / "thermo.csv").read_text().splitlines()) == 1 + 2 * 3
    cfg.write_text(cfg.read_text() + "temprature: 5\n")
    bad = subprocess.run([limace_exe, "md", str(cfg)], capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2 and "unknown key 'temprature'" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    # a run whose every system is stopped (here by a 1 K guard) is a failure: exit 1, the JSON still on stdout
    cfg.write_text(cfg.read_text().replace("temprature: 5\n", "guard: {max_temperature_K: 1.0}\n"))
    stopped = subprocess.run([limace_exe, "md", str(cfg), "--fresh"], capture_output=True, text=True, env=env,
                             timeout=300)
    assert stopped.returncode == 1, stopped.stderr[-2000:]
    assert len(json.loads(stopped.stdout)["stopped"]) == 2
    assert "all 2 systems were stopped" in stopped.stderr and "Traceback" not in stopped.stderr


def test_md_logs_a_committees_spread(tmp_path, tiny_mace_model_factory):
    """`committee:` in an md config: the dynamics run on `potential` alone (the same trajectory as without), and
    thermo.csv gets each logged frame's committee spread (energy std per atom, largest atom force spread) — the
    members' spread computed directly at the final frame; without a committee the columns are empty."""
    from ase.io import write

    from limace.core.model import committee_spread
    from limace.md.config import MDConfig
    from limace.md.runner import run_config
    from limace.potentials import load_batched

    write(tmp_path / "cells.extxyz", [lisn16(1), liin8(2)])
    a, b = (str(tiny_mace_model_factory(s)) for s in (0, 1))
    base = dict(structures=[str(tmp_path / "cells.extxyz")], potential=a, ensemble="nvt_langevin", steps=4,
                temperature_K=500, log_every=2, trajectory_every=0, checkpoint_every=0, progress=False)
    one = run_config(MDConfig(**base, output_dir=str(tmp_path / "one")), load_model=load_batched)
    com = run_config(MDConfig(**base, committee=[b], output_dir=str(tmp_path / "com")), load_model=load_batched)
    assert [r["E_pot_eV"] for r in com.thermo] == [r["E_pot_eV"] for r in one.thermo]
    assert all(r["E_std_meV_per_atom"] is None and r["F_std_max_eV_A"] is None for r in one.thermo)
    last = [r for r in com.thermo if r["step"] == 4]
    state = BatchedState.from_atoms(com.final)
    es, fs = committee_spread([load_batched(a), load_batched(b)], state)
    n = np.array([len(x) for x in com.final])
    assert [r["E_std_meV_per_atom"] for r in last] == pytest.approx((es.numpy() / n * 1000).tolist(), rel=1e-6)
    assert [r["F_std_max_eV_A"] for r in last] == pytest.approx(fs.tolist(), rel=1e-6)
    assert all(r["E_std_meV_per_atom"] > 0 for r in com.thermo)
    rows = (tmp_path / "com" / "thermo.csv").read_text().splitlines()
    assert rows[0].endswith(",E_std_meV_per_atom,F_std_max_eV_A") and rows[1].split(",")[-1] != ""
    assert (tmp_path / "one" / "thermo.csv").read_text().splitlines()[1].endswith(",,")


def test_md_stops_a_system_its_committee_disagrees_on(tmp_path, tiny_mace_model_factory):
    """guard.committee_max_meV_per_atom: a system whose committee spread exceeds it is stopped and reported as an
    extrapolation (its last frame kept), the others go on; the guard needs a committee (one-line config error)."""
    from ase.io import write

    from limace.md.config import MDConfig
    from limace.md.runner import run_config
    from limace.potentials import load_batched

    write(tmp_path / "cells.extxyz", [lisn16(1), liin8(2)])
    a, b = (str(tiny_mace_model_factory(s)) for s in (0, 1))
    base = dict(structures=[str(tmp_path / "cells.extxyz")], potential=a, committee=[b], ensemble="nvt_langevin",
                steps=4, temperature_K=500, log_every=2, trajectory_every=0, checkpoint_every=0, progress=False)
    free = run_config(MDConfig.from_dict({**base, "output_dir": str(tmp_path / "free"),
                                          "guard": {"committee_max_meV_per_atom": 1e9, "domain_every": 2}}),
                      load_model=load_batched)
    assert free.stopped == []
    spread = {r["system"]: r["E_std_meV_per_atom"] for r in free.thermo if r["step"] == 0}
    lo, hi = sorted(spread.values())
    assert hi > 1.5 * lo  # two random models disagree more on one cell than on the other
    cut = run_config(MDConfig.from_dict({**base, "output_dir": str(tmp_path / "cut"),
                                         "guard": {"committee_max_meV_per_atom": (lo + hi) / 2, "domain_every": 2}}),
                     load_model=load_batched)
    worst = max(spread, key=spread.get)
    assert [s.system for s in cut.stopped] == [worst]
    assert "committee energy spread" in cut.stopped[0].reason and "extrapolation" in cut.stopped[0].reason
    assert (tmp_path / "cut" / f"stopped_{worst:04d}.extxyz").is_file()
    assert {r["system"] for r in cut.thermo if r["step"] == 4} == set(spread) - {worst}
    with pytest.raises(ValidationError, match="committee_max_meV_per_atom needs a committee"):
        MDConfig.from_dict({**base, "committee": [], "guard": {"committee_max_meV_per_atom": 5.0}})
    with pytest.raises(ValidationError, match="committee_max_meV_per_atom must be > 0"):
        MDConfig.from_dict({**base, "guard": {"committee_max_meV_per_atom": 0.0}})


# -- diffusion -------------------------------------------------------------------------------------------------------


def test_msd_fft_equals_direct_average_over_time_origins():
    from limace.analysis.diffusion import msd_per_atom

    r = np.cumsum(np.random.default_rng(0).normal(size=(60, 4, 3)), axis=0)
    fast = msd_per_atom(r, max_lag=30)
    direct = np.stack([((r[m:] - r[:len(r) - m]) ** 2).sum(-1).mean(0) for m in range(31)])
    np.testing.assert_allclose(fast, direct, atol=1e-9)


def test_diffusion_recovers_known_D_from_a_random_walk():
    """Gaussian random walks with D = 1e-4 cm^2/s (Li) and a slower species: the fit recovers D within its error
    estimate, and the error is a sensible fraction of D; wrapping then unwrapping changes nothing."""
    from limace.analysis.diffusion import DiffusionAnalysis, unwrap

    rng = np.random.default_rng(42)
    dt_fs, n_frames = 10.0, 3000
    d_true = {"Li": 1e-4, "Sn": 1e-5}  # cm^2/s
    symbols = ["Li"] * 48 + ["Sn"] * 16
    sigma = np.array([np.sqrt(2 * d_true[s] * 10 * dt_fs) for s in symbols])  # A per axis per frame (A^2/fs = 10x)
    steps = rng.normal(size=(n_frames - 1, len(symbols), 3)) * sigma[None, :, None]
    pos = np.concatenate([rng.uniform(0, 10, (1, len(symbols), 3)), steps]).cumsum(axis=0)
    ana = DiffusionAnalysis.from_positions(pos, symbols, dt_fs, remove_drift=False, temperature=600)
    for s, d in d_true.items():
        assert abs(ana.D[s] - d) < 3 * ana.D_err[s], (s, ana.D[s], ana.D_err[s])
        assert 0.01 < ana.D_err[s] / d < 0.2
    cell = np.diag([10.0, 11.0, 12.0])
    wrapped = pos - np.floor(pos @ np.linalg.inv(cell)) @ cell
    np.testing.assert_allclose(unwrap(wrapped, cell), pos - pos[0] + wrapped[0], atol=1e-9)
    again = DiffusionAnalysis.from_dict(json.loads(json.dumps(ana.as_dict())))
    assert again.D == ana.D and np.allclose(again.msd["Li"], ana.msd["Li"])


def test_arrhenius_fit_recovers_activation_energy():
    from limace.analysis.diffusion import KB_EV, ArrheniusFit

    rng = np.random.default_rng(3)
    temps = np.array([500.0, 600.0, 700.0, 800.0, 900.0])
    ea, d0 = 0.35, 2e-3
    d = d0 * np.exp(-ea / (KB_EV * temps)) * np.exp(rng.normal(scale=0.05, size=temps.size))
    fit = ArrheniusFit.fit(temps, d, D_err=0.05 * d)
    lo, hi = fit.Ea_ci
    assert lo < ea < hi and hi - lo < 0.1
    assert fit.D_at(600.0) == pytest.approx(d0 * np.exp(-ea / (KB_EV * 600)), rel=0.15)
    assert ArrheniusFit.from_dict(fit.as_dict()).Ea == fit.Ea
    with pytest.raises(ValidationError, match="> 0"):
        ArrheniusFit.fit([500, 600], [1e-5, -1e-6])


def test_arrhenius_confidence_interval_covers_the_true_activation_energy():
    """Synthetic D(T) with a known Ea = 0.35 eV and 10 % log-normal scatter, 600 draws: the unweighted fit's 95 %
    interval holds the true Ea in 92-98 % of them, and the estimate is unbiased (mean within 3 standard errors) with
    the scatter of least squares; with the errors given the interval holds it at least 95 % of the time."""
    from limace.analysis.diffusion import KB_EV, ArrheniusFit

    rng = np.random.default_rng(11)
    temps = np.array([500.0, 600.0, 700.0, 800.0, 900.0])
    ea, d0, sigma, n = 0.35, 2e-3, 0.1, 600
    x = 1 / (KB_EV * temps)
    sd_slope = sigma / np.sqrt(((x - x.mean()) ** 2).sum())  # least-squares standard deviation of Ea
    for weighted in (False, True):
        hits, estimates = [], []
        for _ in range(n):
            d = d0 * np.exp(-ea / (KB_EV * temps)) * np.exp(rng.normal(scale=sigma, size=temps.size))
            fit = ArrheniusFit.fit(temps, d, D_err=sigma * d if weighted else None)
            hits.append(fit.Ea_ci[0] < ea < fit.Ea_ci[1])
            estimates.append(fit.Ea)
        coverage = np.mean(hits)
        assert abs(np.mean(estimates) - ea) < 3 * sd_slope / np.sqrt(n)
        assert np.std(estimates) == pytest.approx(sd_slope, rel=0.1)
        if weighted:
            assert coverage >= 0.95, coverage
        else:
            assert 0.92 <= coverage <= 0.98, coverage


def test_diffusion_from_an_md_run_with_plots(model64, tmp_path):
    from matplotlib.axes import Axes

    from limace.analysis.diffusion import ArrheniusFit, analyze_run, save_plots
    from limace.md.runner import run_md

    cells = [liin8(k) for k in range(3)]
    run_md(cells, model64, output_dir=tmp_path / "run", ensemble="nvt_langevin", steps=60, timestep_fs=2.0,
           temperature_K=[600.0, 900.0, 1200.0], trajectory_every=5, log_every=20, progress=False)
    runs = analyze_run(tmp_path / "run", species=["Li", "In"])
    assert [r.temperature for r in runs] == [600.0, 900.0, 1200.0]
    assert all(r.D["Li"] > 0 and r.lags_fs[1] == 10.0 for r in runs)
    fit = ArrheniusFit.from_analyses(runs, species="Li")
    direct = ArrheniusFit.fit([600.0, 900.0, 1200.0], [r.D["Li"] for r in runs], [r.D_err["Li"] for r in runs])
    assert fit.Ea == pytest.approx(direct.Ea) and fit.Ea_ci == pytest.approx(direct.Ea_ci)  # the runs' own D and errors
    assert isinstance(runs[0].plot(), Axes) and isinstance(fit.plot(), Axes)
    paths = save_plots(runs, tmp_path / "plots", arrhenius=fit)
    assert [p.name for p in paths] == ["msd.png", "arrhenius.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)
    from limace.cli import main  # `limace diffusion RUN`, in process

    main(["diffusion", str(tmp_path / "run"), "--out", str(tmp_path / "cli")])
    report = json.loads((tmp_path / "cli" / "diffusion.json").read_text())
    assert len(report["systems"]) == 3 and report["arrhenius"]["Ea_eV"] == pytest.approx(fit.Ea)
    assert (tmp_path / "cli" / "arrhenius.png").exists()


def test_bad_inputs_are_clear(model64):
    state = md.init_md(BatchedState.from_atoms([liin8()]), model64)
    with pytest.raises(ValidationError, match="generator"):
        md.langevin_step(state, model64, dt=1.0, temperature=300, generator=None)
    with pytest.raises(ValidationError, match="dt"):
        md.nve_step(state, model64, dt=0.0)
    with pytest.raises(ValidationError, match="temperature"):
        md.langevin_step(state, model64, dt=1.0, temperature=[300, 400], generator=gens([0]))
    with pytest.raises(ValidationError, match="stress"):
        md.npt_step(state, model64, dt=1.0, temperature=300, pressure=0.0, generator=gens([0]))
    assert isinstance(state, MDState) and issubclass(ValidationError, LimaceInputError)
