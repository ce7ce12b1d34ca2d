"""The release gate's formation-energy errors (limace.training.evaluate): each side against its own references."""

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from limace.core.errors import ValidationError
from limace.keys import CONFIG_TYPE_KEY, ENERGY_KEY
from limace.training.evaluate import elemental_references, formation_energy_errors, gate_frames, is_undistorted


class _PerElement(Calculator):
    """A toy potential: a fixed energy per element plus a per-structure extra, keyed by the formula."""

    implemented_properties = ["energy"]

    def __init__(self, mu, extra):
        super().__init__()
        self.mu, self.extra = mu, extra

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        syms = self.atoms.get_chemical_symbols()
        self.results = {"energy": sum(self.mu[s] for s in syms) + self.extra.get(self.atoms.get_chemical_formula(), 0.0)}


def _frame(symbols, energy, config_type, phase=None):
    a = Atoms(symbols, cell=[10, 10, 10], pbc=True)
    a.positions = 2.5 * np.arange(3 * len(a)).reshape(-1, 3) / 3
    a.info.update({ENERGY_KEY: energy, CONFIG_TYPE_KEY: config_type})
    if phase:
        a.info["phase"] = phase
    return a


def test_formation_errors_ignore_per_element_offsets_and_see_the_rest():
    refs_frames = [_frame("Li2", -3.8, "equilibrium", "Li_bcc"), _frame("In2", -5.3, "equilibrium", "In_tI2"),
                   _frame("Sn2", -7.8, "enum_bcc"), _frame("Sn2", -7.9, "equilibrium", "Sn_alpha"),
                   _frame("Sn2", -7.0, "strain_iso")]
    refs = elemental_references(refs_frames)
    assert refs["Sn"].info[ENERGY_KEY] == -7.9 and refs["Li"].info["phase"] == "Li_bcc"
    compound = _frame("LiSn", -1.9 - 3.95 - 0.4, "enum_bcc")  # DFT: E_f = -0.2 eV/atom
    assert is_undistorted(compound) and not is_undistorted(refs_frames[-1])
    # the model: other elemental energies (an offset per element) and the compound 20 meV/atom lower than that
    model = _PerElement({"Li": -1.0, "In": -2.0, "Sn": -3.0}, {"LiSn": -0.4 - 0.04})
    err = formation_energy_errors(model, [compound], refs)
    assert err == pytest.approx([20.0], abs=1e-9)
    with pytest.raises(ValidationError, match="no elemental reference for In"):
        formation_energy_errors(model, [_frame("LiIn", -4.0, "enum_bcc")], {k: refs[k] for k in ("Li", "Sn")})


def test_the_gate_reads_hull_structures_only():
    """Library phases, orderings and relaxed hull checks of two elements enter the gate; strained, rattled and
    single-element cells do not."""
    frames = [_frame("LiSn", -6.0, "enum_bcc"), _frame("Li3In2", -9.0, "screen_verify"),
              _frame("LiIn", -4.0, "equilibrium", "LiIn"), _frame("LiSn", -5.9, "strain_iso"),
              _frame("LiSn", -5.8, "rattle"), _frame("Sn2", -7.9, "screen_verify"), _frame("Li2", -3.8, "enum_bcc")]
    assert [a.get_chemical_formula() for a in gate_frames(frames)] == ["LiSn", "In2Li3", "InLi"]
    assert [a.get_chemical_formula() for a in gate_frames(frames, hull_checks=False)] == ["LiSn", "InLi"]
