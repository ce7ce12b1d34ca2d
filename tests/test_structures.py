import numpy as np
import pytest

from limace.data import get_phase, get_structure, list_phases
from limace.data.structures import min_distance
from limace.errors import LimaceInputError

BUILDABLE = [p.id for p in list_phases(buildable=True)]


def test_library_has_the_known_phases():
    ids = {p.id for p in list_phases()}
    for pid in ("Li_bcc", "In_tI2", "Sn_beta", "Sn_alpha", "LiSn", "Li13Sn5", "Li7Sn3", "Li2Sn5", "Li17Sn4", "LiIn"):
        assert pid in ids
    # every entry says where its facts come from
    assert all(p.source for p in list_phases())


@pytest.mark.parametrize("pid", BUILDABLE)
def test_every_phase_with_sites_builds_right(pid):
    phase = get_phase(pid)
    conv = get_structure(pid)
    prim = get_structure(pid, primitive=True)
    from pymatgen.core import Composition

    assert Composition(conv.get_chemical_formula()).reduced_formula == Composition(prim.get_chemical_formula()).reduced_formula
    assert Composition(conv.get_chemical_formula()).reduced_formula == Composition(phase.formula).reduced_formula
    assert len(conv) == phase.natoms_conv
    assert len(prim) == phase.natoms_prim
    assert min_distance(conv) >= 2.3
    assert min_distance(prim) >= 2.3
    # primitive and conventional cells have the same density
    assert conv.get_volume() / len(conv) == pytest.approx(prim.get_volume() / len(prim), rel=1e-6)
    assert conv.info["phase"] == pid


def test_space_group_is_the_recorded_one():
    import spglib

    for pid in ("Li_bcc", "Sn_beta", "Sn_alpha", "LiSn", "Li13Sn5", "Li7Sn3", "Li2Sn5", "LiIn"):
        a = get_structure(pid)
        sg = spglib.get_symmetry_dataset((a.cell[:], a.get_scaled_positions(), a.numbers), symprec=1e-3)
        assert sg.number == get_phase(pid).spacegroup_number, pid


def test_phases_known_only_by_space_group_are_listed_not_built():
    unbuilt = list_phases(buildable=False)
    assert {"Li5Sn2", "Li3In2", "Li2In"} <= {p.id for p in unbuilt}
    with pytest.raises(LimaceInputError, match="structure search"):
        get_structure("Li5Sn2")


def test_list_phases_by_system_includes_its_elements():
    li_sn = {p.id for p in list_phases(system="Li-Sn")}
    assert {"LiSn", "Li_bcc", "Sn_beta", "Sn_alpha"} <= li_sn
    assert "In_tI2" not in li_sn and "LiIn" not in li_sn
    with pytest.raises(LimaceInputError, match="unknown system"):
        list_phases(system="Li-Pb")


def test_formula_lookup_and_unknown_name():
    assert get_structure("Li").info["phase"] == "Li_bcc"
    with pytest.raises(LimaceInputError, match="closest: LiSn"):
        get_structure("LiSnn")


def test_species_are_sorted_li_first():
    a = get_structure("Li13Sn5")
    sym = a.get_chemical_symbols()
    assert sym == sorted(sym, key=lambda s: {"Li": 0, "In": 1, "Sn": 2}[s])
    assert np.isclose(a.get_volume() / len(a), 18.2, atol=0.1)
