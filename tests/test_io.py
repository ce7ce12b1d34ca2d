"""Readers (extxyz, ASE trajectory, vasprun.xml, GPAW .gpw) into one labelled form; validation; `limace data info`."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from ase.units import GPa

from limace.data import get_structure
from limace.data.io import read_configurations, summarize
from limace.errors import ValidationError
from limace.keys import ENERGY_KEY, FORCES_KEY, STRESS_KEY

from conftest import needs_gpaw

DATA = Path(__file__).parent / "data"
BAD = sorted((DATA / "bad").glob("*"))
EXPECTED_ERRORS = {
    "atoms_too_close.extxyz": "frame 0: atoms closer than 1.2 A",
    "empty.extxyz": "empty file",
    "forces_wrong_shape.extxyz": "frame 0: key 'REF_forces' has shape (21,), expected (6, 3)",
    "foreign_element.extxyz": "frame 0: element(s) Cu not allowed",
    "garbage.extxyz": "cannot be read as extxyz",
    "missing_energy.extxyz": "frame 1: missing key 'REF_energy'",
    "missing_stress.extxyz": "frame 0: missing key 'REF_stress'",
    "nan_energy.extxyz": "frame 0: key 'REF_energy' is nan",
    "nan_forces.extxyz": "frame 0: key 'REF_forces' has NaN/inf",
    "not_periodic.extxyz": "frame 0: key 'pbc' is [True, True, False]",
}


def labelled_cell(seed=0):
    rng = np.random.default_rng(seed)
    a = get_structure("LiSn", primitive=True)
    a.positions += rng.normal(scale=0.05, size=a.positions.shape)
    e = -20.0 + rng.normal()
    f = rng.normal(size=(len(a), 3))
    s = rng.normal(scale=0.01, size=6)
    return a, e, f, s


def test_corpus_is_complete():
    assert {p.name for p in BAD} == set(EXPECTED_ERRORS)


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.name)
def test_each_bad_file_gets_its_one_line_error(path, limace_exe):
    with pytest.raises(ValidationError) as err:
        read_configurations(path)
    assert str(path) in str(err.value) and EXPECTED_ERRORS[path.name] in str(err.value)
    res = subprocess.run([limace_exe, "data", "validate", str(path)], capture_output=True, text=True)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("limace: error: ") and EXPECTED_ERRORS[path.name] in lines[0]


def test_good_file_validates(limace_exe):
    res = subprocess.run([limace_exe, "data", "validate", str(DATA / "good.extxyz")], capture_output=True, text=True)
    assert res.returncode == 0 and "2 configurations OK" in res.stdout


def test_info_counts_structures_still_to_be_labelled(limace_exe, tmp_path):
    """`limace data info` on a plan's input file (no labels yet): counts, and no label statistics."""
    from ase.build import bulk

    write(tmp_path / "inputs.extxyz", [bulk("Li", "bcc", a=3.44, cubic=True), bulk("LiSn", "cesiumchloride", a=3.2)])
    res = subprocess.run([limace_exe, "data", "info", str(tmp_path / "inputs.extxyz"), "--json"], capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["n_configs"] == 2 and info["elements"] == {"Li": 2, "Sn": 1} and info["energy_eV_per_atom"] is None


def test_missing_file_is_an_input_error(limace_exe):
    res = subprocess.run([limace_exe, "data", "info", "no/such/file.extxyz"], capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.count("\n") == 1


def test_trajectory_labels_move_to_ref_keys(tmp_path):
    a, e, f, s = labelled_cell()
    a.calc = SinglePointCalculator(a, energy=e, free_energy=e, forces=f, stress=s)
    write(tmp_path / "x.traj", [a, a])
    frames = read_configurations(tmp_path / "x.traj")
    assert len(frames) == 2
    assert frames[0].info[ENERGY_KEY] == pytest.approx(e)
    np.testing.assert_allclose(frames[0].arrays[FORCES_KEY], f)
    np.testing.assert_allclose(frames[0].info[STRESS_KEY], s)


def _write_vasprun(path, atoms, energy, forces, stress_voigt):
    """A vasprun.xml as VASP writes it (kbar, VASP's stress sign), with the tags readers use."""
    s = np.zeros((3, 3))
    s[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]] = stress_voigt
    s = s + np.triu(s, 1).T
    kbar = -s / (0.1 * GPa)
    v = lambda rows: "\n".join(f"    <v> {' '.join(f'{x:.10f}' for x in r)} </v>" for r in rows)  # noqa: E731
    species = "\n".join(f"   <rc><c>{sym:2s}</c><c>   1</c></rc>" for sym in atoms.get_chemical_symbols())
    structure = f"""  <crystal>
   <varray name="basis">
{v(atoms.cell[:])}
   </varray>
  </crystal>
  <varray name="positions">
{v(atoms.get_scaled_positions())}
  </varray>"""
    path.write_text(f"""<?xml version="1.0" encoding="ISO-8859-1"?>
<modeling>
 <kpoints>
  <varray name="kpointlist">
    <v>       0.00000000       0.00000000       0.00000000 </v>
  </varray>
  <varray name="weights">
    <v>       1.00000000 </v>
  </varray>
 </kpoints>
 <parameters><separator name="general"><i name="ENCUT">    400.0</i></separator></parameters>
 <atominfo>
  <atoms>{len(atoms)}</atoms>
  <array name="atoms"><set>
{species}
  </set></array>
 </atominfo>
 <structure name="initialpos">
{structure}
 </structure>
 <calculation>
  <scstep><energy><i name="e_fr_energy">{energy:.8f}</i><i name="e_0_energy">{energy - 0.01:.8f}</i></energy></scstep>
  <structure>
{structure}
  </structure>
  <varray name="forces">
{v(forces)}
  </varray>
  <varray name="stress">
{v(kbar)}
  </varray>
  <energy><i name="e_fr_energy">{energy:.8f}</i><i name="e_0_energy">{energy - 0.01:.8f}</i></energy>
 </calculation>
</modeling>
""")


def test_vasprun_xml_reads_the_free_energy_and_converts_stress(tmp_path):
    a, e, f, s = labelled_cell(1)
    path = tmp_path / "vasprun.xml"
    _write_vasprun(path, a, e, f, s)
    [frame] = read_configurations(path)
    assert frame.get_chemical_symbols() == a.get_chemical_symbols()
    assert frame.info[ENERGY_KEY] == pytest.approx(e, abs=1e-7)  # free energy (force-consistent), not e_0
    np.testing.assert_allclose(frame.arrays[FORCES_KEY], f, atol=1e-9)
    np.testing.assert_allclose(frame.info[STRESS_KEY], s, atol=1e-9)


def test_summary_counts():
    frames = read_configurations(DATA / "good.extxyz")
    s = summarize(frames)
    assert s["n_configs"] == 2 and s["compositions"] == {"LiSn": 2}
    assert s["config_types"] == {"equilibrium": 2} and s["sizes"] == {6: 2}


@needs_gpaw
@pytest.mark.dft
def test_gpaw_outputs_read_as_labels(tmp_path):
    from gpaw import GPAW, PW

    a = get_structure("Li_bcc")
    a.positions[1] += [0.05, 0.02, 0.0]
    a.calc = GPAW(mode=PW(200), kpts=(2, 2, 2), txt=str(tmp_path / "li.txt"))
    e = a.get_potential_energy(force_consistent=True)  # the free energy is the label
    f = a.get_forces()
    st = a.get_stress()
    a.calc.write(tmp_path / "li.gpw")
    [frame] = read_configurations(tmp_path / "li.gpw")
    assert frame.info[ENERGY_KEY] == pytest.approx(e, abs=1e-8)
    np.testing.assert_allclose(frame.arrays[FORCES_KEY], f, atol=1e-8)
    np.testing.assert_allclose(frame.info[STRESS_KEY], st, atol=1e-8)
    with pytest.raises(ValidationError, match="read the .gpw file instead"):
        read_configurations(tmp_path / "li.txt")


def test_read_structures_takes_any_ase_format_and_checks_geometry(tmp_path):
    """Structure files (cif, POSCAR, extxyz ...) for MD/NEB/relaxations: ASE's own format detection, labels neither
    needed nor checked, the frames as ASE read them; NaN and overlapping atoms are one-line errors."""
    from limace.data.io import read_structures

    a = get_structure("LiSn", primitive=True)
    write(tmp_path / "cell.cif", a, format="cif")
    write(tmp_path / "POSCAR", a, format="vasp")
    a.set_momenta(np.full((len(a), 3), 0.1))
    write(tmp_path / "cell.extxyz", a, format="extxyz")
    for name in ("cell.cif", "POSCAR", "cell.extxyz"):
        [got] = read_structures(tmp_path / name)
        assert got.get_chemical_formula() == a.get_chemical_formula()
        np.testing.assert_allclose(got.get_volume(), a.get_volume(), rtol=1e-6)
    assert np.allclose(read_structures(tmp_path / "cell.extxyz")[0].get_momenta(), 0.1)  # kept for NVE
    b = a.copy()
    b.positions[1] = b.positions[0] + [0.3, 0, 0]
    write(tmp_path / "close.extxyz", b, format="extxyz")
    with pytest.raises(ValidationError, match=r"frame 0: atoms closer than 0.5 A \(shortest 0.300 A\)"):
        read_structures(tmp_path / "close.extxyz")
    (tmp_path / "cut.extxyz").write_text((tmp_path / "cell.extxyz").read_text()[:120])
    with pytest.raises(ValidationError, match="cut.extxyz: cannot be read"):
        read_structures(tmp_path / "cut.extxyz")


def test_check_output_path_and_atomic_write_leave_nothing_behind(tmp_path):
    from limace.errors import LimaceInputError
    from limace.fileio import atomic_write_text, check_output_path

    (tmp_path / "f").write_text("x")
    (tmp_path / "d").mkdir()
    assert check_output_path(tmp_path / "new" / "deeper", directory=True) == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checked, nothing created
    assert check_output_path(tmp_path / "f") == tmp_path / "f"  # an existing file may be replaced
    for path, directory, msg in ((tmp_path / "f", True, "is a file, not a directory"),
                                 (tmp_path / "d", False, "is a directory, not a file"),
                                 (tmp_path / "f" / "x.json", False, "is a file, not a directory")):
        with pytest.raises(LimaceInputError, match=msg):
            check_output_path(path, "--out", directory=directory)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(OSError):
        atomic_write_text(tmp_path / "d", "text")  # the rename onto a directory fails ...
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # ... and no temporary file is left
