"""Reference-protocol DFT energy-volume curve of a phase, and the same curve with a potential, side by side.

    python scripts/dft_eos.py LiIn --out eos_LiIn_B32.json                  # a library phase (primitive cell)
    python scripts/dft_eos.py cell.extxyz --scales 0.95 1.03 7 --potential limace-lisnin-small

Each cell is scaled isotropically (positions scaled with it) and labelled with the reference protocol
(shared/reference/dft-protocol.md); a Birch-Murnaghan fit gives the minimum energy per atom, the volume per atom and
the bulk modulus. For phases without free internal coordinates (B2, B32, L1_2 ...) and a cubic cell this minimum *is*
the relaxed energy. GPAW's plane-wave stress at 400 eV carries a Pulay term (our stress labels are fitted with an
offset for it), so a stress-driven cell relaxation at this protocol goes to the wrong volume: use this curve instead.
Writes one JSON (atomically) with every point; a rerun with the same --out reuses the points it has.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("structure", help="a library phase name (limace data phases) or a structure file")
    ap.add_argument("--scales", nargs=3, type=float, default=[0.95, 1.03, 7], metavar=("LO", "HI", "N"),
                    help="linear scale factors of the cell: N points from LO to HI")
    ap.add_argument("--potential", default=None, help="also the potential's curve (registered name or .model)")
    ap.add_argument("--out", type=Path, required=True, help="JSON with the points and the fits (resumable)")
    args = ap.parse_args()

    from ase.eos import EquationOfState
    from ase.io import read

    from limace.core.fileio import atomic_write_text
    from limace.data import get_structure
    from limace.data.label import _gpaw_calculator

    p = Path(args.structure)
    a0 = read(p) if p.is_file() else get_structure(args.structure, primitive=True)
    a0.calc = None
    lo, hi, n = args.scales
    scales = [round(float(s), 6) for s in np.linspace(lo, hi, int(n))]
    res = json.loads(args.out.read_text()) if args.out.is_file() else {}
    res.update({"structure": args.structure, "formula": a0.get_chemical_formula(), "natoms": len(a0),
                "protocol": "pbe-pw400"})
    pts = {float(k): v for k, v in res.get("dft_points", {}).items()}

    def fit(points):
        v = [points[s][0] for s in sorted(points)]
        e = [points[s][1] for s in sorted(points)]
        v0, e0, b = EquationOfState(v, e, eos="birchmurnaghan").fit()
        return {"v0_A3_per_atom": round(float(v0), 4), "e0_eV_per_atom": round(float(e0), 6),
                "bulk_modulus_GPa": round(float(b) * 160.21766, 1)}

    for s in scales:
        if s in pts:
            continue
        a = a0.copy()
        a.set_cell(a0.cell * s, scale_atoms=True)
        a.calc = _gpaw_calculator()
        pts[s] = (a.get_volume() / len(a), a.get_potential_energy(force_consistent=True) / len(a))
        res["dft_points"] = {str(k): v for k, v in sorted(pts.items())}
        atomic_write_text(args.out, json.dumps(res, indent=1))
        print(f"scale {s}: V {pts[s][0]:.3f} A^3/atom, E {pts[s][1]:.6f} eV/atom", flush=True)
    res["dft_fit"] = fit(pts)
    if args.potential:
        from limace.potentials import load

        calc = load(args.potential)
        mp = {}
        for s in scales:
            a = a0.copy()
            a.set_cell(a0.cell * s, scale_atoms=True)
            a.calc = calc
            mp[s] = (a.get_volume() / len(a), float(a.get_potential_energy()) / len(a))
        res["potential"] = args.potential
        res["potential_points"] = {str(k): v for k, v in sorted(mp.items())}
        res["potential_fit"] = fit(mp)
    atomic_write_text(args.out, json.dumps(res, indent=1))
    print(json.dumps({k: res[k] for k in ("formula", "dft_fit", "potential_fit") if k in res}))


if __name__ == "__main__":
    main()
