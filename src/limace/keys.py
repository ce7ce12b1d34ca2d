"""Key names in one place (mace-torch's REF_* label keys); unit constants live in :mod:`limace.core.units`."""

from limace.core.units import EV_PER_A3_TO_GPA  # noqa: F401  (re-exported for old imports)

ENERGY_KEY = "REF_energy"  # eV, force-consistent (free) energy
FORCES_KEY = "REF_forces"  # eV/Angstrom, shape (n_atoms, 3)
STRESS_KEY = "REF_stress"  # eV/Angstrom^3, Voigt (xx, yy, zz, yz, xz, xy), ASE sign convention
CONFIG_TYPE_KEY = "config_type"
CONFIG_ID_KEY = "config_id"  # stable hash of the structure (see limace.data.hashing)

ELEMENTS = ("Li", "In", "Sn")
