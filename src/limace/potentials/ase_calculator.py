"""The ASE calculator of limace potentials: mace-torch's own :class:`~mace.calculators.MACECalculator` with two
additions (see :mod:`limace.potentials.calculator`, whose :func:`~limace.potentials.calculator.load` builds it).

This module imports mace at import; :mod:`limace.potentials.calculator` (names, paths, model files) does not.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from ase.calculators.calculator import all_changes
from ase.data import chemical_symbols
from ase.stress import full_3x3_to_voigt_6_stress

from limace.core.compat import import_mace
from limace.core.errors import UnsupportedElementError
from limace.core.state import as_dtype
from limace.potentials.calculator import _check_dtype, model_elements
from limace.potentials.committee import check_prediction
from limace.potentials.registry import PotentialEntry

import_mace("mace.calculators")  # e3nn's import-time torch.load under torch >= 2.6, the environment restored
from mace.calculators import MACECalculator  # noqa: E402


class LimaceCalculator(MACECalculator):
    """mace-torch's MACECalculator that refuses unknown elements up front and reports a committee's spread.

    ``names`` labels the members (registry names or paths) in error messages; ``entries`` are their registry
    entries (``None`` for a plain file).
    """

    def __init__(self, models: list[torch.nn.Module], *, device: str = "cpu", dtype: str = "float64",
                 names: Sequence[str] = (), entries: Sequence[PotentialEntry | None] = (), domain=None,
                 copy: bool = True, prediction: str = "mean", **kwargs):
        dtype = _check_dtype(dtype)
        self.prediction = check_prediction(prediction)  # a committee's results: the members' mean or the first's
        if copy:  # the caller's modules stay as they were (dtype, device); load() passes copy=False for its own
            import copy as _copy

            models = [_copy.deepcopy(m) for m in models]
        models = [m.to(dtype=as_dtype(dtype)) for m in models]
        super().__init__(models=models, device=device, default_dtype=dtype, **kwargs)
        self.implemented_properties = list(self.implemented_properties)  # mace extends the class-level list
        if self.num_models > 1:
            self.implemented_properties += ["energy_std", "forces_std", "stress_std"]
        # the domain check of the (first) potential (limace.potentials.domain): results["domain_score"], the largest
        # distance of an atom's descriptor to the training atoms, and results["outside_domain"]
        self.domain = domain
        if domain is not None:
            self.implemented_properties += ["domain_score", "outside_domain"]
        self.names = tuple(names) or tuple(f"model {i}" for i in range(len(models)))
        self.entries = tuple(entries) or (None,) * len(models)
        self.elements = model_elements(self.models[0])
        self._known_z = {int(z) for z in self.models[0].atomic_numbers}

    def check_elements(self, atoms) -> None:
        """Raise UnsupportedElementError when ``atoms`` holds elements the potential was not trained on."""
        unknown = sorted({int(z) for z in atoms.numbers} - self._known_z)
        if unknown:
            bad = ", ".join(f"{chemical_symbols[z]} (Z={z})" for z in unknown)
            who = self.names[0] if len(self.names) == 1 else "the committee " + ", ".join(self.names)
            raise UnsupportedElementError(f"the structure contains {bad}, which {who} was not trained on "
                                          f"(it knows {', '.join(self.elements)})")

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        target = atoms if atoms is not None else self.atoms
        if target is not None:
            self.check_elements(target)
        super().calculate(atoms, properties, system_changes)
        if self.num_models > 1:
            self.results["energy_std"] = float(np.std(self.results["energy_comm"]))
            self.results["forces_std"] = np.std(self.results["forces_comm"], axis=0)
            if "stress_comm" in self.results:
                self.results["stress_std"] = full_3x3_to_voigt_6_stress(np.std(self.results["stress_comm"], axis=0))
            if self.prediction == "first":  # the first potential's own results; the others only give the spread
                self.results["energy"] = self.results["free_energy"] = float(self.results["energy_comm"][0])
                self.results["forces"] = np.array(self.results["forces_comm"][0])
                if "stress_comm" in self.results:
                    self.results["stress"] = full_3x3_to_voigt_6_stress(self.results["stress_comm"][0])
                for key in ("energies", "node_energy"):  # the members' mean per atom: not the first's
                    self.results.pop(key, None)
        if self.domain is not None and target is not None:
            desc = np.asarray(self.get_descriptors(target, invariants_only=True, num_layers=-1))
            desc = desc[0] if desc.ndim == 3 else desc  # a committee gives one block per member: the first's
            score = float(self.domain._atom_scores(desc, np.asarray(target.numbers)).max())
            self.results["domain_score"] = score
            self.results["outside_domain"] = bool(score > self.domain.threshold)
