"""The extrapolation set (issue 23): made by fixed rules, disjoint from the plan, stable as the library grows;
frozen test splits and the extrapolation split of a packed dataset."""

import json
from pathlib import Path

import numpy as np
import pytest
from ase.geometry import get_distances
from ase.io import read, write

from limace.data import extrapolation as x
from limace.data import get_structure
from limace.data.datasets import freeze_test, load_dataset, manifest, pack
from limace.errors import ValidationError
from limace.keys import CONFIG_ID_KEY
from test_datasets import fake_labelled

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def extrap():
    return x.extrapolation_v1()


def test_every_class_is_there_and_reproducible(extrap):
    classes = {a.info["config_type"] for a in extrap}
    assert {"extrap_volume", "extrap_rattle", "extrap_ordering", "extrap_vacancy", "extrap_interstitial"} <= classes
    again = x.extrapolation_v1()
    assert [a.info[CONFIG_ID_KEY] for a in again] == [a.info[CONFIG_ID_KEY] for a in extrap]


def test_disjoint_from_the_training_plan(extrap):
    plan_ids = {a.info[CONFIG_ID_KEY] for a in read(ROOT / "dft/li-in-sn-v1/inputs.extxyz", ":")}
    assert not plan_ids & {a.info[CONFIG_ID_KEY] for a in extrap}
    # and the plan-exclusion itself works
    some = {extrap[0].info[CONFIG_ID_KEY], extrap[-1].info[CONFIG_ID_KEY]}
    assert len(x.extrapolation_v1(some)) == len(extrap) - 2


def test_volume_cells_are_strained_by_eight_to_fifteen_percent(extrap):
    vols = [a for a in extrap if a.info["config_type"] == "extrap_volume"]
    li = get_structure("Li_bcc", primitive=True)
    for a in vols:
        assert 0.08 - 1e-9 <= abs(a.info["volume_strain"]) <= 0.15 + 1e-9
    li_vols = sorted(a.get_volume() / len(a) for a in vols if a.info["phase"] == "Li_bcc")
    ref = li.get_volume() / len(li)
    assert np.allclose(li_vols, [ref * (1 + d) for d in sorted(x.VOLUME_STRAINS)])


def test_orderings_are_larger_than_the_plans_and_binary(extrap):
    orders = [a for a in extrap if a.info["config_type"] == "extrap_ordering"]
    assert {len(a) for a in orders} >= {5, 7, 9, 10, 11, 12}
    assert all(len(set(a.get_chemical_symbols())) == 2 and "Li" in a.get_chemical_symbols() for a in orders)


def test_interstitial_sits_in_the_largest_hole(extrap):
    inter = [a for a in extrap if a.info["config_type"] == "extrap_interstitial"]
    assert inter
    for a in inter:
        host = a.copy()
        li_new = [i for i, s in enumerate(a.get_chemical_symbols()) if s == "Li"]
        # the added Li is at least 1.5 A from every other atom (a hole, not an overlap)
        d = a.get_all_distances(mic=True)
        np.fill_diagonal(d, np.inf)
        assert d.min() > 1.5
        assert len(a) == len(host) and li_new


def test_largest_hole_of_bcc_is_an_octahedral_or_tetrahedral_site():
    li = get_structure("Li_bcc").repeat(2)
    p = x.largest_hole(li, grid=16)
    _, d = get_distances([p], li.positions, cell=li.cell, pbc=True)
    a = 3.5093
    # tetrahedral hole of bcc: sqrt(5)/4 a from its four neighbours (the largest hole of bcc)
    assert d.min() == pytest.approx(np.sqrt(5) / 4 * a, abs=0.05)


def test_a_new_library_phase_moves_no_other_configuration(monkeypatch, extrap):
    phases = x._phases()
    monkeypatch.setattr(x, "_phases", lambda: phases[1:])
    fewer = {a.info[CONFIG_ID_KEY] for a in x.extrapolation_v1()}
    dropped = phases[0][0]
    assert fewer == {a.info[CONFIG_ID_KEY] for a in extrap if a.info.get("phase") != dropped}


def test_pack_keeps_extrapolation_apart_and_frozen_tests_fixed(tmp_path):
    frames = fake_labelled()
    for a in frames[:6]:
        a.info["config_type"] = "extrap_volume"
    labels = tmp_path / "labels.extxyz"
    write(labels, frames[:30], format="extxyz")
    man = pack(labels, name="toy", dest=tmp_path / "toy")
    assert man["files"]["extrapolation"]["n"] == 6
    assert not set(man["split"]["extrapolation"]) & (set(man["split"]["train"]) | set(man["split"]["test"]))
    frozen = freeze_test("toy", "test-v1", dest=tmp_path / "toy")["frozen"]["test-v1"]["config_ids"]
    write(labels, frames, format="extxyz")
    grown = pack(labels, name="toy", dest=tmp_path / "toy")
    assert grown["frozen"]["test-v1"]["config_ids"] == frozen
    assert set(frozen) <= set(grown["split"]["test"])
    # a pack that would drop a frozen configuration is refused, and the dataset is left as it was
    before = (tmp_path / "toy/manifest.json").read_text()
    keep = [a for a in frames if a.info[CONFIG_ID_KEY] != frozen[0]]
    write(labels, keep, format="extxyz")
    with pytest.raises(ValidationError, match="frozen"):
        pack(labels, name="toy", dest=tmp_path / "toy")
    assert (tmp_path / "toy/manifest.json").read_text() == before
    # so is a pack without the extrapolation labels (`make dataset` once left them out): the split would vanish
    write(labels, frames[6:], format="extxyz")
    with pytest.raises(ValidationError, match="extrapolation split"):
        pack(labels, name="toy", dest=tmp_path / "toy")
    assert (tmp_path / "toy/manifest.json").read_text() == before


def test_shipped_frozen_test_split_is_the_test_split_it_froze():
    man = manifest("li-in-sn-v1")
    fz = man["frozen"]["test-v1"]
    got = load_dataset("li-in-sn-v1", "test-v1")
    assert len(got) == fz["n"] >= 100
    assert {a.info[CONFIG_ID_KEY] for a in got} <= set(man["split"]["test"])
    assert not {a.info[CONFIG_ID_KEY] for a in got} & set(man["split"]["train"])


def test_md_snapshots_are_hot_frames_tagged_by_rule():
    from limace.md.explore import _repeat_to, md_cells, md_snapshots
    from limace.potentials.pair import BatchedMorse

    cells = md_cells()
    assert cells and all(len(c) >= 8 for _, c in cells)
    # a Morse crystal at its own lattice spacing stands in for the potential: cheap, stable
    li = _repeat_to(get_structure("Li_bcc", primitive=True), 8)
    li.set_cell(li.cell * (2.0 / 3.039), scale_atoms=True)  # nearest neighbours at 2.0 A
    model = BatchedMorse(epsilon=0.1, r0=2.0, rcut1=1.9, rcut2=2.7)
    snaps = md_snapshots([("toy", li)], model, temperatures_K=(300.0, 900.0), steps=60, timestep_fs=1.0)
    assert [a.info["md_temperature_K"] for a in snaps] == [300.0, 900.0]
    for a in snaps:
        assert a.info["config_type"] == "extrap_md" and a.info["config_id"]
        assert len(a) == len(li)
        # the atoms moved off the lattice
        assert np.abs(a.get_all_distances(mic=True) - li.get_all_distances(mic=True)).max() > 0.01
    assert snaps[0].info["config_id"] != snaps[1].info["config_id"]
