"""How noisy are the reference-protocol forces? The protocol converges the SCF with GPAW's defaults (energy 5e-4
eV per valence electron, density 1e-4, eigenstates 4e-8; no force criterion), so a label's forces carry the error
of an SCF stopped there. This script recomputes a few labelled configurations with the same settings (same cell
reduction, k-points, symmetry choice) but a tight SCF (density 1e-6, eigenstates 1e-10, forces 1e-4 eV/A) and
prints how far the shipped labels are from converged ones: a floor under any force MAE measured against them.

    python scripts/scf_noise.py OUT.extxyz [--n 8] [--max-atoms 8] [--model NAME]

Configurations: the dataset's train split (never the held-out ones), force-carrying cells (force RMS above 0.05
eV/A) of at most --max-atoms atoms containing In or Sn, one config_type after another, the cheapest first within
each (atoms, then config_id): chosen by a rule, not by any error. Resumable: OUT holds the tight recomputations (one per config_id).
"""

from __future__ import annotations

import argparse
import sys

TIGHT = {"energy": 1e-6, "density": 1e-6, "eigenstates": 1e-10, "forces": 1e-4}


def choose(frames, n: int, max_atoms: int):
    import numpy as np

    from limace.keys import CONFIG_ID_KEY, FORCES_KEY

    pool = []
    for a in frames:
        if len(a) > max_atoms or not ({"In", "Sn"} & set(a.get_chemical_symbols())):
            continue
        f = a.arrays.get(FORCES_KEY)
        if f is None or float(np.sqrt((f ** 2).mean())) <= 0.05:
            continue
        pool.append(a)
    groups: dict[str, list] = {}
    for a in sorted(pool, key=lambda a: (len(a), str(a.info[CONFIG_ID_KEY]))):
        groups.setdefault(str(a.info.get("config_type")), []).append(a)
    out = []  # round robin over config types (sorted by name), cheapest first within each
    while len(out) < n and any(groups.values()):
        for key in sorted(groups):
            if groups[key] and len(out) < n:
                out.append(groups[key].pop(0))
    return out


def tight_label(atoms):
    from limace.data.label import (GPAW_REFERENCE, _gpaw_calculator, _gpaw_versions, gpaw_symmetry_by_cost,
                                   label_atoms, reduced_cell_copy)

    overrides, _ = gpaw_symmetry_by_cost(reduced_cell_copy(atoms) or atoms, _gpaw_calculator)
    assert "convergence" not in GPAW_REFERENCE
    calc = _gpaw_calculator(**overrides, convergence=TIGHT)
    return label_atoms(atoms, calc, "pbe-pw400-tight-scf", _gpaw_versions())


def main(argv=None) -> int:
    from pathlib import Path

    import numpy as np
    from ase.io import read

    from limace.core.fileio import atomic_append
    from limace.data.label import _frame_text
    from limace.data.datasets import load_dataset
    from limace.keys import CONFIG_ID_KEY, ENERGY_KEY, FORCES_KEY, STRESS_KEY

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-atoms", type=int, default=8)
    ap.add_argument("--model", default=None, help="also print this potential's errors on the same labels")
    args = ap.parse_args(argv)

    chosen = choose(load_dataset("li-in-sn-v1", "train"), args.n, args.max_atoms)
    out = Path(args.out)
    done = {str(a.info[CONFIG_ID_KEY]): a for a in read(out, ":")} if out.exists() else {}
    for i, a in enumerate(chosen):
        cid = str(a.info[CONFIG_ID_KEY])
        if cid in done:
            continue
        print(f"[{i + 1}/{len(chosen)}] {a.get_chemical_formula()} {a.info.get('config_type')} ...", file=sys.stderr,
              flush=True)
        t = tight_label(a)
        atomic_append(out, _frame_text(t))
        done[cid] = t
    model = None
    if args.model:
        from limace.potentials import load

        model = load(args.model)
    rows, fdiff, ediff, sdiff, merr = [], [], [], [], []
    for a in chosen:
        t = done.get(str(a.info[CONFIG_ID_KEY]))
        if t is None:
            continue
        df = 1000 * np.abs(t.arrays[FORCES_KEY] - a.arrays[FORCES_KEY])
        de = 1000 * (t.info[ENERGY_KEY] - a.info[ENERGY_KEY]) / len(a)
        ds = 160.21766 * np.abs(np.asarray(t.info[STRESS_KEY]) - np.asarray(a.info[STRESS_KEY]))
        fdiff.append(df.ravel()), ediff.append(de), sdiff.append(ds)
        row = (f"| {a.get_chemical_formula()} | {a.info.get('config_type')} | {len(a)} | {de:+.3f} | {df.mean():.2f} | "
               f"{df.max():.2f} | {ds.mean():.4f} |")
        if model is not None:
            x = a.copy()
            x.calc = model
            fm = 1000 * np.abs(x.get_forces() - t.arrays[FORCES_KEY])
            merr.append(fm.ravel())
            row += f" {fm.mean():.1f} |"
        rows.append(row)
    head = "| config | type | atoms | E tight - label (meV/atom) | F MAE (meV/A) | F max | stress MAE (GPa) |"
    sep = "| --- | --- | ---: | ---: | ---: | ---: | ---: |"
    if model is not None:
        head, sep = head + f" {args.model} F MAE vs tight |", sep + " ---: |"
    print(head + "\n" + sep)
    print("\n".join(rows))
    if fdiff:
        f = np.concatenate(fdiff)
        print(f"\n{len(rows)} configurations: label force error (against a tight SCF) MAE {f.mean():.2f} meV/A, "
              f"max {f.max():.2f}; energy |error| mean {np.mean(np.abs(ediff)):.3f} meV/atom; "
              f"stress MAE {np.mean(np.concatenate(sdiff)):.4f} GPa")
        if merr:
            print(f"{args.model}: force MAE against the tight labels {np.concatenate(merr).mean():.2f} meV/A")
    return 0


if __name__ == "__main__":
    sys.exit(main())
