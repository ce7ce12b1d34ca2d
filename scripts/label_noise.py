"""How consistent are the reference-protocol labels with themselves? The same crystal in two cells (a primitive
cell and a supercell of it) gets a different k-point mesh from the protocol's density rule (6 points per Å⁻¹), so
its energy per atom differs by the protocol's k-point (and smearing) error. No potential can be more consistent
than its labels: this difference is the floor under any energy MAE measured against them.

    python scripts/label_noise.py OUT.extxyz [--workers 1]
    python scripts/label_noise.py OUT.extxyz --structure runs/screen-19/work/Li-Sn/structures/Li5Sn2.extxyz --repeat 2 1 1

(the second form: given structures, each against its repeat, instead of the built-in crystals)

Labels (resumably, `limace.data.label`) a few crystals of the training data's kinds in two cells each and prints the
per-atom energy difference of each pair in meV/atom, and their mean absolute value.
"""

from __future__ import annotations

import argparse
import sys


def pairs():
    """(name, primitive cell, supercell) of crystals of both systems: the same atoms, a different cell."""
    import numpy as np
    from ase import Atoms
    from ase.build import bulk, make_supercell

    out = []
    b2 = bulk("LiIn", "cesiumchloride", a=3.40)
    out.append(("B2 LiIn", b2, b2.repeat((2, 2, 2))))
    l12 = bulk("Li", "fcc", a=4.68, cubic=True)
    l12.symbols[0] = "Sn"  # Cu3Au-type Li3Sn
    out.append(("L1_2 Li3Sn", l12, l12.repeat((2, 1, 1))))
    b2s = bulk("LiSn", "cesiumchloride", a=3.32)
    out.append(("B2 LiSn", b2s, make_supercell(b2s, np.array([[1, 1, 0], [-1, 1, 0], [0, 0, 2]]))))
    li = bulk("Li", "bcc", a=3.44)
    out.append(("bcc Li", li, li.repeat((2, 2, 2))))
    ins = bulk("In", "fcc", a=4.74)
    out.append(("fcc In", ins, make_supercell(ins, np.array([[1, 1, 0], [-1, 1, 0], [0, 0, 1]]))))
    # conventional cells of the same crystals, and two more phases (cells whose meshes do not fold onto each other)
    out.append(("fcc In (cubic)", ins, bulk("In", "fcc", a=4.74, cubic=True)))
    out.append(("bcc Li (cubic)", li, bulk("Li", "bcc", a=3.44, cubic=True)))
    sn = bulk("Sn", "diamond", a=6.65)
    out.append(("alpha Sn", sn, bulk("Sn", "diamond", a=6.65, cubic=True)))
    # NaTl (B32): two interpenetrating diamond lattices, Li on 8a, In on 8b; the fcc primitive cell has four atoms
    natl = Atoms("Li2In2", cell=bulk("In", "fcc", a=6.80).cell, pbc=True,
                 scaled_positions=[(0, 0, 0), (0.25, 0.25, 0.25), (0.5, 0.5, 0.5), (0.75, 0.75, 0.75)])
    natl_conv = make_supercell(natl, np.array([[-1, 1, 1], [1, -1, 1], [1, 1, -1]]))
    out.append(("NaTl LiIn", natl, natl_conv))
    out.append(("B2 LiIn (2x1x1)", b2, b2.repeat((2, 1, 1))))
    return out


def given_pairs(files, repeat):
    """(name, cell, repeated cell) of each structure file (its first frame, without its labels)."""
    from pathlib import Path

    from ase.io import read

    out = []
    for f in files:
        a = read(f)
        a.calc = None
        a.info = {}
        out.append((Path(f).stem, a, a.repeat(tuple(repeat))))
    return out


def main(argv=None) -> int:
    from ase.io import read

    from limace.data.hashing import structure_hash
    from limace.data.label import label_configurations
    from limace.keys import CONFIG_ID_KEY, ENERGY_KEY

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--protocol", default="pbe-pw400")
    ap.add_argument("--structure", nargs="+", default=None, help="structure files to check instead of the built-in "
                    "crystals, each against its --repeat")
    ap.add_argument("--repeat", nargs=3, type=int, default=[2, 1, 1])
    args = ap.parse_args(argv)
    pairs_ = (lambda: given_pairs(args.structure, args.repeat)) if args.structure else pairs
    frames = []
    for name, a, b in pairs_():
        for tag, x in (("primitive", a), ("supercell", b)):
            x = x.copy()
            x.info.update({"name": f"{name} {tag}", "config_type": "label_noise"})
            frames.append(x)
    frames.sort(key=len)
    label_configurations(frames, args.out, protocol=args.protocol, workers=args.workers)
    # one crystal may serve two pairs (its label is made once, under the first name): find labels by config_id
    done = {str(a.info[CONFIG_ID_KEY]): a for a in read(args.out, ":")}
    diffs = []
    print("| crystal | atoms | E/atom primitive (eV) | supercell - primitive (meV/atom) |\n| --- | --- | --- | --- |")
    for name, a, b in pairs_():
        p, s = done.get(structure_hash(a)), done.get(structure_hash(b))
        if p is None or s is None:
            print(f"| {name} | {len(a)} / {len(b)} | not labelled | |")
            continue
        ep, es = p.info[ENERGY_KEY] / len(p), s.info[ENERGY_KEY] / len(s)
        diffs.append(1000 * (es - ep))
        print(f"| {name} | {len(a)} / {len(b)} | {ep:.4f} | {1000 * (es - ep):+.2f} |")
    if diffs:
        print(f"\nmean |difference| {sum(abs(d) for d in diffs) / len(diffs):.2f} meV/atom over {len(diffs)} pairs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
