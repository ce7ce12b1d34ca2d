import numpy as np
import pytest

from limace.data import get_phase, get_structure, list_phases
from limace.data.structures import PROVENANCE_CLASSES, min_distance, parse_phases
from limace.errors import LimaceInputError

BUILDABLE = [p.id for p in list_phases(buildable=True)]

# every phase of the assessed Li-In (Sangster & Pelton) and Li-Sn phase diagrams, and the elements' polymorphs
ASSESSED = {
    "element": ("Li_bcc", "In_tI2", "Sn_beta", "Sn_alpha"),
    "Li-In": ("LiIn", "Li3In2", "Li2In", "Li13In3"),
    "Li-Sn": ("Li2Sn5", "LiSn", "Li7Sn3", "Li5Sn2", "Li13Sn5", "Li8Sn3", "Li7Sn2", "Li17Sn4", "Li22Sn5"),
}


def _spacegroup(atoms, symprec=1e-3):
    import spglib

    return spglib.get_symmetry_dataset((atoms.cell[:], atoms.get_scaled_positions(), atoms.numbers),
                                       symprec=symprec).number


def test_library_has_the_known_phases():
    ids = {p.id for p in list_phases()}
    for pid in ("Li_bcc", "In_tI2", "Sn_beta", "Sn_alpha", "LiSn", "Li13Sn5", "Li7Sn3", "Li2Sn5", "Li17Sn4", "LiIn"):
        assert pid in ids
    # every entry says where its facts come from
    assert all(p.source for p in list_phases())


@pytest.mark.parametrize("system", sorted(ASSESSED))
def test_every_assessed_phase_is_built(system):
    for pid in ASSESSED[system]:
        phase = get_phase(pid)
        assert phase.buildable, pid
        assert phase.system == system
        assert phase.provenance in PROVENANCE_CLASSES, pid


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
    # the recorded space group, in the conventional and the primitive cell
    assert _spacegroup(conv) == phase.spacegroup_number
    assert _spacegroup(prim) == phase.spacegroup_number
    # a provenance class, and a source that names where the numbers came from
    assert phase.provenance in PROVENANCE_CLASSES
    assert phase.provenance_label == phase.provenance
    assert len(phase.source) > 40


def test_provenance_classes_say_what_they_are():
    by_class = {c: {p.id for p in list_phases(buildable=True) if p.provenance == c} for c in PROVENANCE_CLASSES}
    assert {"Li_bcc", "LiSn", "Li7Sn3", "Li13Sn5"} <= by_class["refined"]
    assert {"Li17Sn4", "Li8Sn3", "Li22Sn5"} <= by_class["isotypic prototype"]
    assert {"Li3In2", "Li2In", "Li13In3", "Li13In3_hR16", "Li5Sn2"} <= by_class["model-built"]
    for pid in by_class["isotypic prototype"]:  # which prototype the coordinates come from
        assert "prototype" in get_phase(pid).source, pid
    for pid in by_class["model-built"]:  # how the model was made, and with what
        src = get_phase(pid).source
        assert "scripts/build_library_phases.py" in src and "limace-lisnin-small" in src, pid
    # entries not built have no class
    for p in list_phases(buildable=False):
        assert p.provenance is None
        assert p.provenance_label in ("space group only", "not built")


def test_phases_yaml_without_a_provenance_class_is_refused():
    entry = """phases:
- id: X
  formula: Li
  system: element
  status: test
  spacegroup: {number: 229, symbol: Im-3m}
  cellpar: [3.5, 3.5, 3.5, 90, 90, 90]
  sites: [{element: Li, wyckoff: 2a, xyz: [0, 0, 0]}]
  source: test
  verified: 'no'
"""
    assert parse_phases(entry.replace("  source:", "  provenance: refined\n  source:"))["X"].provenance == "refined"
    with pytest.raises(ValueError, match="provenance None"):
        parse_phases(entry)
    with pytest.raises(ValueError, match="provenance 'guessed'"):
        parse_phases(entry.replace("  source:", "  provenance: guessed\n  source:"))
    unbuilt = entry.replace("  cellpar: [3.5, 3.5, 3.5, 90, 90, 90]\n", "")
    assert parse_phases(unbuilt)["X"].provenance_label == "space group only"
    assert parse_phases(unbuilt.replace("number: 229", "number: null"))["X"].provenance_label == "not built"
    with pytest.raises(ValueError, match="not built"):
        parse_phases(unbuilt.replace("  source:", "  provenance: refined\n  source:"))


def test_model_built_rhombohedral_phases_are_bcc_stackings():
    """hR5 Li3In2, hR7 Li5Sn2, hR16 Li13In3: one atom per (111) layer, and the c/a of an N-layer bcc stacking
    (N sqrt(3) / (2 sqrt(2))) within the relaxation's distortion."""
    for pid, n in (("Li3In2", 5), ("Li5Sn2", 7), ("Li13In3_hR16", 16)):
        a, _, c = get_phase(pid).cellpar[:3]
        assert c / a == pytest.approx(n * np.sqrt(3) / (2 * np.sqrt(2)), rel=0.06), pid
        assert len(get_structure(pid, primitive=True)) == n


def test_phases_known_only_by_space_group_are_listed_not_built():
    unbuilt = list_phases(buildable=False)
    assert {"Li5In4", "LiIn3", "Li3In"} <= {p.id for p in unbuilt}
    with pytest.raises(LimaceInputError, match="structure search"):
        get_structure("Li5In4")


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


def test_cli_data_phases_shows_the_provenance(capsys):
    from limace.cli import main

    main(["data", "phases", "--system", "Li-In"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[-1] == "provenance"
    rows = {line.split()[0]: line for line in lines[1:]}
    assert "Li_bcc" in rows and "In_tI2" in rows and "LiSn" not in rows
    assert rows["Li2In"].endswith("model-built")
    assert rows["LiIn"].endswith("isotypic prototype")
    assert rows["Li_bcc"].endswith("refined")
    assert rows["Li5In4"].endswith("not built")  # hypothetical (a database entry), no reported space group
