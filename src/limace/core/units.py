"""Unit constants in one place. limace works in ASE's units (Angstrom, eV, amu, ASE time; temperatures in K); the
values here are ASE's (CODATA 2014), so that temperatures, pressures and rates agree across the package.

>>> pressure_GPa = pressure_eV_per_A3 * EV_PER_A3_TO_GPA    # doctest: +SKIP
"""

from ase import units as _ase

KB_EV = float(_ase.kB)  # Boltzmann constant, eV/K (8.617330e-5)
GPA = float(_ase.GPa)  # 1 GPa in eV/A^3 (0.0062415)
EV_PER_A3_TO_GPA = 1.0 / GPA  # 160.21766208 GPa per eV/A^3
FS = float(_ase.fs)  # 1 fs in ASE time units

__all__ = ["EV_PER_A3_TO_GPA", "FS", "GPA", "KB_EV"]
