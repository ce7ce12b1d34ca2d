"""ASE Atoms -> mace-torch graphs (``AtomicData``) with limace's label keys. Needs mace-torch only (no Lightning)."""

from __future__ import annotations

from collections.abc import Sequence

from limace.keys import ENERGY_KEY, FORCES_KEY, STRESS_KEY
from limace.training._mace import import_mace

import_mace()

from mace import data as mace_data  # noqa: E402
from mace.tools.torch_tools import default_dtype  # noqa: E402


def key_specification():
    """mace-torch KeySpecification for limace's label keys (REF_energy, REF_forces, REF_stress)."""
    return mace_data.KeySpecification(info_keys={"energy": ENERGY_KEY, "stress": STRESS_KEY},
                                      arrays_keys={"forces": FORCES_KEY})


def to_configurations(frames: Sequence) -> list:
    keyspec = key_specification()
    return [mace_data.config_from_atoms(a, key_specification=keyspec) for a in frames]


def to_graphs(frames: Sequence, z_table, r_max: float, dtype) -> list:
    """ASE Atoms -> mace AtomicData in ``dtype`` (torch dtype or 'float32'/'float64')."""
    configs = to_configurations(frames)
    with default_dtype(dtype):
        return [mace_data.AtomicData.from_config(c, z_table=z_table, cutoff=r_max) for c in configs]
