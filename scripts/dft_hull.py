"""The DFT hull of every structure checked so far: reference-protocol single points of screen entries (all screens,
all potentials' relaxed geometries; `dft/li-in-sn-v1/screen_verify.extxyz` and any ``--extra`` files).

    python scripts/dft_hull.py [--extra runs/screen-15/work/Li-Sn/dft_verify.extxyz ...] [--within 15] [--json F]

For each system: per composition the lowest-energy checked structure and its energy above the DFT hull (meV/atom),
the compositions on it, and the library's known phases with theirs. These are single points at the model's
geometries (upper bounds of the DFT-relaxed energies), so a structure above this hull may still be stable in DFT;
one on it is at least as low as every other checked structure. Prints Markdown on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys


def dft_hull(frames, host: str) -> dict:
    from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
    from pymatgen.core import Composition

    from limace.analysis.known import known_compounds

    entries = []
    for a in frames:
        if set(a.get_chemical_symbols()) <= {"Li", host}:
            entries.append(PDEntry(Composition(a.get_chemical_formula()), float(a.info["REF_energy"]),
                                   name=a.info.get("name") or a.get_chemical_formula()))
    pd = PhaseDiagram(entries)
    best = {}
    for e in entries:
        f = e.composition.reduced_formula
        eh = 1000 * pd.get_e_above_hull(e)
        if f not in best or eh < best[f]["e_above_hull_meV_per_atom"]:
            best[f] = {"formula": f, "name": e.name, "x_Li": round(e.composition.get_atomic_fraction("Li"), 4),
                       "e_above_hull_meV_per_atom": round(eh, 1)}
    known = {}
    for k in known_compounds(f"Li-{host}"):
        hits = [1000 * pd.get_e_above_hull(e) for e in entries if e.name in k.ids]
        known[k.formula] = None if not hits else round(min(hits), 1)
    rows = sorted(best.values(), key=lambda r: r["x_Li"])
    return {"n_structures": len(entries), "rows": rows,
            "stable": [r["formula"] for r in rows if r["e_above_hull_meV_per_atom"] <= 0.1],
            "known_phases": known}


def main(argv=None) -> int:
    from ase.io import read

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--labels", default="dft/li-in-sn-v1/screen_verify.extxyz")
    ap.add_argument("--extra", nargs="*", default=[])
    ap.add_argument("--within", type=float, default=15.0, help="list compositions within this of the hull (meV/atom)")
    ap.add_argument("--json", default=None, help="also write the result as JSON here")
    args = ap.parse_args(argv)
    frames = read(args.labels, ":")
    for f in args.extra:
        frames += read(f, ":")
    out = {}
    for host in ("In", "Sn"):
        h = out[f"Li-{host}"] = dft_hull(frames, host)
        print(f"## Li-{host}: DFT hull of {h['n_structures']} checked structures\n")
        print("| formula | x_Li | lowest checked structure | DFT E above hull (meV/atom) |\n| --- | --- | --- | --- |")
        for r in h["rows"]:
            if r["e_above_hull_meV_per_atom"] <= args.within:
                print(f"| {r['formula']} | {r['x_Li']:.3f} | {r['name']} | {r['e_above_hull_meV_per_atom']:.1f} |")
        print(f"\nStable: {', '.join(h['stable'])}.")
        print("Known phases (library structure): " + ", ".join(
            f"{f} {'not checked' if v is None else f'{v:.1f}'}" for f, v in h["known_phases"].items()) + ".\n")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
