"""Langevin MD of a Li13Sn5 alloy cell (72 atoms, 600 K) with the pretrained limace potential, in plain ASE."""
from ase import units
from ase.md.langevin import Langevin

import limace.potentials
from limace.data import get_structure

atoms = get_structure("Li13Sn5").repeat((2, 2, 1))
atoms.calc = limace.potentials.load("limace-lisnin-small")  # downloaded once, then cached; or a path to a .model
md = Langevin(atoms, timestep=2 * units.fs, temperature_K=600, friction=0.01 / units.fs, logfile="-", loginterval=20)
md.run(200)
