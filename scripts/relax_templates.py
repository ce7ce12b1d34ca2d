"""Lattice parameters for template phases (sites known, lattice not): relax the template with CHGNet under its
space-group symmetry (ase FixSymmetry + FrechetCellFilter, fmax 0.01 eV/A) and print the cellpar to store in
src/limace/data/phases.yaml with ``cellpar_source``. Run once; the result is committed, not recomputed at run time.

    python scripts/relax_templates.py
"""
import numpy as np
import yaml
from ase.constraints import FixSymmetry
from ase.filters import FrechetCellFilter
from ase.optimize import BFGS
from ase.spacegroup import crystal
from chgnet.model import CHGNet, CHGNetCalculator
from limace.data.structures import _load, min_distance

phases = _load()
raw = {q["id"]: q for q in yaml.safe_load(open("src/limace/data/phases.yaml"))["phases"]}
model = CHGNet.load(verbose=False)
starts = {"LiIn": [6.8, 6.8, 6.8, 90, 90, 90], "Li7Sn2": None}
for pid, start in starts.items():
    p = phases[pid]
    if start is None:  # prototype cell scaled to 18 A^3/atom (Li-Sn compounds are 18-18.4 A^3/atom)
        proto = crystal([s["element"] for s in p.sites], [s["xyz"] for s in p.sites], spacegroup=p.spacegroup_number,
                        cellpar=raw[pid]["prototype_cellpar"])
        s = (18.0 * len(proto) / proto.get_volume()) ** (1 / 3)
        start = list(proto.cell.cellpar()); start[:3] = [x * s for x in start[:3]]
    atoms = crystal([s["element"] for s in p.sites], [s["xyz"] for s in p.sites], spacegroup=p.spacegroup_number, cellpar=start)
    atoms.calc = CHGNetCalculator(model=model, use_device="cpu")
    atoms.set_constraint(FixSymmetry(atoms))
    BFGS(FrechetCellFilter(atoms), logfile=None).run(fmax=0.01, steps=300)
    cp = atoms.cell.cellpar()
    print(pid, len(atoms), "cellpar", [round(float(x), 4) for x in cp], "V/atom", round(atoms.get_volume() / len(atoms), 3),
          "dmin", round(min_distance(atoms), 3))
    print("  scaled positions drift (max):", np.abs(atoms.get_scaled_positions() - crystal([s["element"] for s in p.sites], [s["xyz"] for s in p.sites], spacegroup=p.spacegroup_number, cellpar=start).get_scaled_positions()).max())
