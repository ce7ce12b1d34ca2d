"""The shipped potential against the shipped DFT labels.

The release gate: formation energies of every undistorted two-element structure (library phases, orderings and
relaxed hull checks) of the validation file the default is chosen on (examples/candidate25/valid14.extxyz), with the
model's elemental references vs the DFT ones, agree within 10 meV/atom. The frozen test split (test-v1) only
reports (`limace evaluate MODEL li-in-sn-v1:test-v1`, README); it never decides what ships.
"""
from pathlib import Path

import numpy as np
import pytest

from limace.data.datasets import available, load_dataset
from limace.keys import CONFIG_TYPE_KEY

NAME = "limace-lisnin-small"


def test_the_potential_and_its_dataset_are_shipped():
    """Both ship with limace: a missing or broken one is a failure here, never a skipped test."""
    from limace.potentials.registry import get_potential

    entry = get_potential(NAME, offline=True)
    assert entry.source == "limace" and entry.weights.file is not None and entry.weights.file.is_file()
    assert "li-in-sn-v1" in available()


def test_formation_energies_of_validation_phases_within_10_mev():
    from ase.io import read

    from limace.potentials import load
    from limace.training.evaluate import elemental_references, formation_energy_errors, gate_frames

    calc = load(NAME)
    refs = elemental_references(load_dataset("li-in-sn-v1"))
    assert set(refs) == {"Li", "In", "Sn"}, "the dataset lacks an elemental reference"
    valid = read(Path(__file__).resolve().parents[1] / "examples" / "candidate25" / "valid14.extxyz", ":")
    frames = gate_frames(valid)
    assert len(frames) >= 20 and {"In", "Sn"} <= {s for a in frames for s in a.get_chemical_symbols()}
    errors = formation_energy_errors(calc, frames, refs)
    assert max(errors) <= 10.0, f"max |dE_f| {max(errors):.1f} meV/atom (mean {np.mean(errors):.1f})"


@pytest.mark.parametrize("name", [NAME, "limace-lisnin-medium"])
def test_the_shipped_committee_is_less_sure_far_from_training(name):
    """The committee registered with the potential (`shipped`) loads with it, leaves its predictions as they are
    and disagrees more on a cell compressed by a fifth of its volume than on the same training cell at equilibrium."""
    from limace.potentials import get_potential, load

    assert len(get_potential(name, offline=True).committee) >= 3  # with the potential itself: >= 4 members
    committee, alone = load([name, "shipped"], domain=False), load(name, domain=False)
    train = [a for a in load_dataset("li-in-sn-v1", "train") if a.info.get(CONFIG_TYPE_KEY) == "equilibrium"
             and len(set(a.get_chemical_symbols())) > 1]
    assert len(train) >= 3
    for a in train[:3]:
        near, far = a.copy(), a.copy()
        far.set_cell(a.cell * 0.8 ** (1 / 3), scale_atoms=True)
        spread = {}
        for key, b in (("near", near), ("far", far)):
            b.calc = committee
            e = b.get_potential_energy()
            spread[key] = committee.results["energy_std"] / len(b)
            c = b.copy()
            c.calc = alone
            assert abs(e - c.get_potential_energy()) < 1e-8  # the potential's own prediction, the members add only the spread
        # measured on the first 8 such cells, far / near: 1.7-4.9x with 1.12 and the members (Li13Sn5 1.97x; 1.11:
        # 1.8-4.8x, Li13Sn5 2.1x), so the margin is 1.5x, not 2x
        assert spread["far"] > 1.5 * spread["near"], (a.get_chemical_formula(), spread)


def test_the_screen_and_the_demo_use_the_shipped_committee_by_default():
    """`limace screen -p NAME` and the demo flag uncertain hull entries and barriers with NAME's registered
    committee when it ships one; a .model file or a member (which ships none) gets none."""
    from limace.demo import DEMO_POTENTIAL, demo_settings
    from limace.potentials import get_potential
    from limace.potentials.registry import registered_committee

    members = registered_committee(NAME, offline=True)
    assert members == get_potential(NAME, offline=True).committee and len(members) >= 3
    assert registered_committee(members[0], offline=True) == ()
    assert registered_committee("my/own.model") == ()
    assert demo_settings(DEMO_POTENTIAL).committee == registered_committee(DEMO_POTENTIAL, offline=True)
    assert demo_settings().committee == ()


def test_every_shipped_potential_says_what_it_is_for():
    """The registry marks which potential to use for what: `limace potentials list` shows it in its own column."""
    from limace.potentials.registry import list_potentials

    shipped = [e for e in list_potentials(offline=True) if e.source == "limace"]
    assert {NAME, "limace-lisnin-medium"} <= {e.name for e in shipped}
    assert all(e.use for e in shipped), [e.name for e in shipped if not e.use]


def test_the_medium_potential_is_more_accurate_off_the_training_set():
    """What `use` promises for limace-lisnin-medium: on the extrapolation split (never trained on by either) its
    energy and force errors are well below the default's, and it is less wrong on the structure the default is
    worst on (a close contact)."""
    from limace.potentials import load
    from limace.training.evaluate import evaluate_model

    frames = load_dataset("li-in-sn-v1", "extrapolation")
    res = {n: evaluate_model(load(n, domain=False), frames, name=n) for n in (NAME, "limace-lisnin-medium")}
    small, medium = (res[n].summary()["all"] for n in (NAME, "limace-lisnin-medium"))
    # energies: below the default's (5.77 against 7.05 meV/atom with 1.14; the gap has closed from 5.77 against 12.2
    # with 1.4 as the default was fine-tuned on more hull checks); forces and the worst structure: well below
    assert medium["energy_mae"] < small["energy_mae"], (medium["energy_mae"], small["energy_mae"])
    assert medium["forces_mae"] < 0.75 * small["forces_mae"], (medium["forces_mae"], small["forces_mae"])
    err = {n: np.abs(r.energy_pred - r.energy_ref) / r.n_atoms for n, r in res.items()}
    worst = int(np.argmax(err[NAME]))
    assert err["limace-lisnin-medium"][worst] < 0.75 * err[NAME][worst]
