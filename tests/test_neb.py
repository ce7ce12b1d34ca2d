"""Batched CI-NEB against ASE's NEB (improved tangent, climbing image) with the same potential and images."""

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.morse import MorsePotential
from ase.mep import NEB
from ase.optimize import BFGS, FIRE

from limace.analysis.neb import BatchedNEB, run_neb
from limace.data.generate import hop_endpoints, hop_images, li_neighbour_pairs
from limace.errors import LimaceInputError
from limace.potentials.pair import BatchedMorse

MORSE = dict(epsilon=0.15, rho0=4.0, r0=3.0, rcut1=1.6, rcut2=2.1)  # a Morse solid, nearest neighbours at 3 A


def morse_band(repeat=3, pair=0, n_images=5, rattle=0.0):
    """A vacancy hop in an fcc Morse crystal at its nearest-neighbour distance (stable, one saddle)."""
    sc = bulk("Li", "fcc", a=3.0 * np.sqrt(2), cubic=True).repeat((repeat,) * 3)
    if rattle:
        sc.rattle(rattle, seed=3)
    i, j, _ = li_neighbour_pairs(sc, 3.6)[pair]
    ini, fin = hop_endpoints(sc, vacancy=i, mover=j)
    for a in (ini, fin):
        a.calc = MorsePotential(**MORSE)
        BFGS(a, logfile=None).run(fmax=0.005, steps=300)
        a.calc = None
    return [ini, *hop_images(ini, fin, n_images=n_images, method="idpp"), fin]


def ase_neb(band, calc_factory, fmax=0.03):
    images = [a.copy() for a in band]
    for a in images:
        a.calc = calc_factory()
    neb = NEB(images, method="improvedtangent", climb=True)
    FIRE(neb, logfile=None).run(fmax=fmax, steps=1000)
    e = np.array([a.get_potential_energy() for a in images])
    return e.max() - e[0], e.max() - e[-1]


@pytest.fixture(scope="module")
def bands():
    return [morse_band(3, 0), morse_band(3, 0, rattle=0.05), morse_band(2, 1, n_images=3)]


@pytest.mark.parametrize("optimizer", ["fire", "lbfgs"])
def test_barriers_agree_with_ase_neb_within_5_mev(bands, optimizer):
    results = run_neb(bands, BatchedMorse(**MORSE), fmax=0.03, optimizer=optimizer)
    for band, res in zip(bands, results):
        fwd, bwd = ase_neb(band, lambda: MorsePotential(**MORSE))
        assert res.converged
        assert res.barrier_forward == pytest.approx(fwd, abs=0.005)
        assert res.barrier_backward == pytest.approx(bwd, abs=0.005)
        assert res.barrier_forward > 0.05  # a real barrier, not a flat path
        assert res.climbing_image == int(np.argmax(res.energies))


@pytest.mark.parametrize("optimizer", ["fire", "lbfgs"])
def test_a_batch_gives_what_each_band_gives_alone(bands, optimizer):
    model = BatchedMorse(**MORSE)
    together = run_neb(bands, model, fmax=0.03, optimizer=optimizer)
    for band, res in zip(bands, together):
        alone = run_neb([band], BatchedMorse(**MORSE), fmax=0.03, optimizer=optimizer)[0]
        assert alone.steps == res.steps
        np.testing.assert_allclose(alone.energies, res.energies, atol=1e-9)


@pytest.mark.parametrize("optimizer", ["fire", "lbfgs"])
def test_each_image_is_evaluated_once_per_step(bands, optimizer):
    res = run_neb(bands[:1], BatchedMorse(**MORSE), fmax=0.03, optimizer=optimizer)[0]
    n_images = len(bands[0]) - 2
    assert res.info["image_evaluations"] == n_images * (res.steps + 1)
    assert res.info["model_calls"] == res.steps + 1


def test_neb_forces_equal_ase_for_a_mace_model(tiny_mace_model_path):
    """Projection, springs and climbing image: our NEB forces on one band equal ASE's for the same MACE model."""
    from limace.potentials import load

    calc = load(tiny_mace_model_path)
    model = load(tiny_mace_model_path, batched=True)
    band = morse_band(2, 0, n_images=3)
    images = [a.copy() for a in band]
    for a in images:
        a.calc = calc
    ref = NEB(images, method="improvedtangent", climb=True, allow_shared_calculator=True).get_forces()
    e_end = [(band[0].copy(), band[-1].copy())]
    for a in e_end[0]:
        a.calc = calc
    neb = BatchedNEB([band], model, climb=True,
                     endpoint_energies=[(e_end[0][0].get_potential_energy(), e_end[0][1].get_potential_energy())])
    f, _, _ = neb.forces(neb.state.positions.clone())
    np.testing.assert_allclose(f.numpy(), ref, atol=1e-6)


def test_unconverged_neb_is_reported_as_such(bands):
    res = run_neb(bands[:1], BatchedMorse(**MORSE), fmax=0.03, max_steps=2)[0]
    assert not res.converged and res.steps == 2
    d = res.as_dict()
    assert d["barrier_forward_eV"] is None and d["converged"] is False and d["unconverged_estimate_eV"] is not None


def test_result_plot_and_saddle(bands):
    res = run_neb(bands[:1], BatchedMorse(**MORSE), fmax=0.03)[0]
    ax = res.plot(label="bcc Li")
    assert ax.get_ylabel().startswith("E")
    assert len(ax.lines[0].get_xdata()) == len(bands[0])
    saddle = res.saddle
    assert len(saddle) == len(bands[0][0])
    # the moving Li sits near the middle of the hop at the saddle
    mid = 0.5 * (bands[0][0].positions[-1] + bands[0][-1].positions[-1])
    assert np.linalg.norm(saddle.positions[-1] - mid) < 0.3


def test_bad_bands_are_one_line_errors(bands):
    band = bands[0]
    model = BatchedMorse(**MORSE)
    with pytest.raises(LimaceInputError, match="image 6 has 106 atoms"):
        run_neb([band[:-1] + [band[-1][:-1]]], model)
    swapped = band[-1].copy()
    swapped.numbers[0] = 50
    with pytest.raises(LimaceInputError, match="different species order"):
        run_neb([band[:-1] + [swapped]], model)
    overlap = band[2].copy()
    overlap.positions[1] = overlap.positions[0] + 0.1
    with pytest.raises(LimaceInputError, match="closer than 0.6 A"):
        run_neb([band[:2] + [overlap] + band[3:]], model)
    with pytest.raises(LimaceInputError, match="at least one image"):
        run_neb([[band[0], band[-1]]], model)
    with pytest.raises(LimaceInputError, match="optimizer must be one of fire, lbfgs, got 'bfgs'"):
        run_neb([band], model, optimizer="bfgs")


def test_lbfgs_converges_tightly_to_the_same_saddle_as_fire(bands):
    """Both optimizers, converged tightly, find the same saddle (the barrier is a property of the potential)."""
    model = BatchedMorse(**MORSE)
    fire = run_neb(bands, model, fmax=0.002, optimizer="fire", max_steps=2000)
    lbfgs = run_neb(bands, model, fmax=0.002, optimizer="lbfgs", max_steps=2000)
    for a, b in zip(fire, lbfgs):
        assert a.converged and b.converged
        assert b.barrier_forward == pytest.approx(a.barrier_forward, abs=1e-3)
        assert b.steps < a.steps


def test_wrapped_band_gives_ase_neb_forces_of_the_unwrapped_band(tiny_mace_model_path):
    """Minimum image: a band whose atoms were wrapped into the cell (as read from files) gets the NEB forces that
    ASE's NEB gives on the same band unwrapped, to 1e-6 eV/A; raw differences would be off by far more."""
    import torch

    from limace.analysis.neb import NEBResult, neb_forces
    from limace.potentials import load

    calc = load(tiny_mace_model_path)
    model = load(tiny_mace_model_path, batched=True)
    band = morse_band(2, 0, n_images=3)
    shift = np.array([2.1, -1.3, 0.7]) - band[0].positions[-1]  # the mover ends up near a cell face
    unwrapped = []
    for a in band:
        b = a.copy()
        b.positions += shift
        unwrapped.append(b)
    wrapped = []
    for a in unwrapped:
        b = a.copy()
        b.wrap()
        wrapped.append(b)
    # the wrapping really splits atoms across the cell between images
    jumps = np.abs(np.diff([w.positions for w in wrapped], axis=0)).max()
    assert jumps > 0.5 * wrapped[0].cell.lengths().min()
    images = [a.copy() for a in unwrapped]
    for a in images:
        a.calc = calc
    ref = NEB(images, method="improvedtangent", climb=True, allow_shared_calculator=True).get_forces()
    ends = [unwrapped[0].copy(), unwrapped[-1].copy()]
    for a in ends:
        a.calc = calc
    e_end = [(ends[0].get_potential_energy(), ends[1].get_potential_energy())]
    neb = BatchedNEB([wrapped], model, climb=True, endpoint_energies=e_end)
    f, energies, _ = neb.forces(neb.state.positions.clone())
    np.testing.assert_allclose(f.numpy(), ref, atol=1e-6)
    # without the minimum image the same wrapped band is far off
    pos = torch.as_tensor(np.array([w.positions for w in wrapped]))
    raw, _ = neb_forces(pos, energies[0], neb._f.reshape(3, -1, 3), 0.1, True)
    assert np.abs(raw.reshape(-1, 3).numpy() - ref).max() > 1e-3  # 1000x the tolerance above
    # path length too
    kw = dict(energies=np.zeros(5), converged=True, steps=0, fmax=0.03, max_force=0.0, climbing_image=2)
    length_w = NEBResult(positions=[w.positions for w in wrapped], cell=wrapped[0].cell[:], pbc=wrapped[0].pbc, **kw)
    length_u = NEBResult(positions=[u.positions for u in unwrapped], **kw)
    np.testing.assert_allclose(length_w.path_length, length_u.path_length, atol=1e-9)


@pytest.mark.parametrize("optimizer", ["fire", "lbfgs"])
def test_frozen_images_save_evaluations_and_keep_the_barrier(bands, optimizer):
    """Frozen images keep the barrier and never cost evaluations; they save some where a band's images converge at
    different steps (FIRE here, a few). L-BFGS brings these short Morse bands' images below fmax together, within 6-8
    steps, so there it only has to cost nothing (what it saves depends on the platform's last bits)."""
    model = BatchedMorse(**MORSE)
    plain = run_neb(bands, model, fmax=0.01, optimizer=optimizer, max_steps=1000)
    frozen = run_neb(bands, model, fmax=0.01, optimizer=optimizer, max_steps=1000, freeze=True)
    for a, b in zip(plain, frozen):
        assert a.converged and b.converged and b.max_force < 0.01
        assert b.barrier_forward == pytest.approx(a.barrier_forward, abs=2e-3)
    per_band = [r.info["band_evaluations"] for r in frozen]
    full = [(len(band) - 2) * (r.steps + 1) for band, r in zip(bands, frozen)]
    assert all(e <= n for e, n in zip(per_band, full))
    if optimizer == "fire":
        assert sum(per_band) < sum(full)


def test_low_barriers_converge_at_the_tight_fmax(bands):
    model = BatchedMorse(**MORSE)
    loose = run_neb(bands[:1], model, fmax=0.05, optimizer="lbfgs", tight_fmax=0.005, tight_below=0.01)[0]
    tight = run_neb(bands[:1], model, fmax=0.05, optimizer="lbfgs", tight_fmax=0.005, tight_below=5.0)[0]
    assert loose.fmax == 0.05 and loose.max_force < 0.05
    assert tight.fmax == 0.005 and tight.max_force < 0.005 and tight.steps > loose.steps
