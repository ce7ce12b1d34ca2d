"""Accuracy against universal potentials on the held-out test split of li-in-sn-v1.

Models: our potential(s) (registry names or .model paths), CHGNet (`chgnet` wheel with its weights, same venv) and
SevenNet-0 (`sevenn`, needs e3nn >= 0.5, so it runs in its own venv `.venv-sevenn`, created by
`make sevenn-venv`). Compared on quantities that do not depend on a DFT code's energy zero:

- forces: MAE and RMSE (meV/A) over all atoms;
- energies after fitting one energy offset per element (least squares on the evaluated set itself, the most
  favourable choice for the baselines): MAE and RMSE (meV/atom) — equivalent to comparing formation energies.

    python bench/baselines.py --models limace-lisnin-small chgnet sevenn [--split test] [--out bench/baselines.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
ROOT = Path(__file__).resolve().parents[1]
SEVENN_PY = ROOT / ".venv-sevenn" / "bin" / "python"

_SEVENN_SCRIPT = """
import sys, numpy as np
from ase.io import read
from sevenn.calculator import SevenNetCalculator
calc = SevenNetCalculator("7net-0", device="cpu")
frames = read(sys.argv[1], ":")
E, F = [], []
for a in frames:
    a.calc = calc
    E.append(a.get_potential_energy()); F.append(a.get_forces())
np.savez(sys.argv[2], energy=np.array(E), forces=np.concatenate(F))
"""


def predict_ase(frames, calc):
    energies, forces = [], []
    for a in frames:
        b = a.copy()
        b.calc = calc
        energies.append(b.get_potential_energy())
        forces.append(b.get_forces())
    return np.array(energies), np.concatenate(forces)


def predict(model: str, frames):
    if model == "chgnet":
        from chgnet.model import CHGNet, CHGNetCalculator

        return predict_ase(frames, CHGNetCalculator(model=CHGNet.load(verbose=False), use_device="cpu"))
    if model == "sevenn":
        if not SEVENN_PY.exists():
            raise SystemExit(f"{SEVENN_PY} missing: run `make sevenn-venv` first")
        from ase.io import write

        with tempfile.TemporaryDirectory() as tmp:
            inp, out = Path(tmp) / "in.extxyz", Path(tmp) / "out.npz"
            write(inp, [a.copy() for a in frames], format="extxyz")
            subprocess.run([str(SEVENN_PY), "-c", _SEVENN_SCRIPT, str(inp), str(out)], check=True)
            d = np.load(out)
            return d["energy"], d["forces"]
    from limace.potentials import load

    return predict_ase(frames, load(model))


def offset_fit_errors(frames, e_pred, e_ref):
    """Per-atom energy errors after one energy offset per element, fitted by least squares on the per-atom errors
    (the metric reported; a fit on total energies would favour the large cells)."""
    elements = sorted({s for a in frames for s in a.get_chemical_symbols()})
    counts = np.array([[a.get_chemical_symbols().count(el) for el in elements] for a in frames], dtype=float)
    n = np.array([len(a) for a in frames], dtype=float)
    resid = e_ref - e_pred
    offsets, *_ = np.linalg.lstsq(counts / n[:, None], resid / n, rcond=None)
    return (e_pred + counts @ offsets - e_ref) / n, dict(zip(elements, offsets))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["limace-lisnin-small", "chgnet", "sevenn"])
    p.add_argument("--dataset", default="li-in-sn-v1")
    p.add_argument("--split", default="test")
    p.add_argument("--out", default=None, help="write the table as JSON here")
    args = p.parse_args()

    from limace.data.datasets import load_dataset
    from limace.keys import ENERGY_KEY, FORCES_KEY

    frames = load_dataset(args.dataset, args.split)
    e_ref = np.array([a.info[ENERGY_KEY] for a in frames])
    f_ref = np.concatenate([a.arrays[FORCES_KEY] for a in frames])
    print(f"{args.dataset} {args.split}: {len(frames)} configurations, {len(f_ref)} atoms")
    rows = {}
    for model in args.models:
        t0 = time.perf_counter()
        e_pred, f_pred = predict(model, frames)
        de, offsets = offset_fit_errors(frames, e_pred, e_ref)
        df = (f_pred - f_ref).ravel()
        rows[model] = {"energy_mae_meV_per_atom": 1000 * float(np.mean(np.abs(de))),
                       "energy_rmse_meV_per_atom": 1000 * float(np.sqrt(np.mean(de**2))),
                       "forces_mae_meV_per_A": 1000 * float(np.mean(np.abs(df))),
                       "forces_rmse_meV_per_A": 1000 * float(np.sqrt(np.mean(df**2))),
                       "offsets_eV": {k: float(v) for k, v in offsets.items()},
                       "wall_s": round(time.perf_counter() - t0, 1)}
    print("\n| model | E MAE (meV/atom) | E RMSE (meV/atom) | F MAE (meV/Å) | F RMSE (meV/Å) |")
    print("| --- | --- | --- | --- | --- |")
    for m, r in rows.items():
        print(f"| {m} | {r['energy_mae_meV_per_atom']:.1f} | {r['energy_rmse_meV_per_atom']:.1f} | "
              f"{r['forces_mae_meV_per_A']:.1f} | {r['forces_rmse_meV_per_A']:.1f} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"dataset": args.dataset, "split": args.split, "n": len(frames),
                                              "energy_offsets": "least squares per element on the evaluated set",
                                              "models": rows}, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
