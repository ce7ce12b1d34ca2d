"""How much of a potential's energy error on the frozen test split is the labels' own k-point error?

Every label follows the reference protocol: k-point density 6 per Å⁻¹ (Methfessel-Paxton 0.2 eV). This script
recomputes a rule-chosen part of a labelled split (every configuration with at most ``--max-atoms`` atoms, the
smallest first) with the same protocol but a denser mesh (``pbe-pw400-kD``, a diagnostic protocol that never enters a
dataset) and prints, per configuration and as mean absolute values over the recomputed ones:

- label - dense: the protocol's k-point error of each label (what no potential trained on such labels can know);
- model - label: the error a potential is judged by (issue 23: test-v1 energy MAE <= 2 meV/atom);
- model - dense: the same potential against the converged-mesh energy of the same protocol.

    python scripts/kpoint_floor.py OUT_DIR [--split test-v1] [--max-atoms 2] [--density 12] \
        [--model limace-lisnin-small ...] [--workers 1]

Resumable (the labelling is ``limace.data.label``'s: run it again after a kill); with ``--no-label`` it only reports
what is labelled so far. Writes ``OUT_DIR/dense.extxyz`` (the recomputed labels), ``kpoint_floor.json``, ``.md`` and
a PNG of the three errors per configuration.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def chosen(frames, max_atoms: int) -> list:
    """The rule: every configuration with at most ``max_atoms`` atoms, in the split's order (labelled smallest
    first)."""
    return [a for a in frames if len(a) <= max_atoms]


def unlabelled_copy(a):
    from ase import Atoms

    from limace.keys import CONFIG_ID_KEY

    b = Atoms(a.numbers, positions=a.positions, cell=a.cell, pbc=a.pbc)
    b.info = {k: a.info[k] for k in (CONFIG_ID_KEY, "config_type") if k in a.info}
    return b


def report(frames, dense, models: list[str]) -> dict:
    """Per configuration: label, dense and model energies per atom; mean absolute differences (meV/atom)."""
    from limace.keys import CONFIG_ID_KEY, ENERGY_KEY
    from limace.potentials import load
    from limace.training.evaluate import predict_calculator

    by_id = {str(a.info[CONFIG_ID_KEY]): a for a in dense}
    pairs = [(a, by_id[str(a.info[CONFIG_ID_KEY])]) for a in frames if str(a.info[CONFIG_ID_KEY]) in by_id]
    rows = []
    for a, d in pairs:
        rows.append({"config_id": str(a.info[CONFIG_ID_KEY]), "config_type": a.info.get("config_type"),
                     "formula": a.get_chemical_formula(), "atoms": len(a),
                     "label_minus_dense": 1000.0 * (a.info[ENERGY_KEY] - d.info[ENERGY_KEY]) / len(a)})
    summary = {"n": len(rows), "mae_label_minus_dense": _mae([r["label_minus_dense"] for r in rows]), "models": {}}
    for name in models:
        calc = load(name, domain=False)
        pred = predict_calculator(calc, [a for a, _ in pairs]).energy if pairs else np.zeros(0)
        for r, (a, d), e in zip(rows, pairs, pred):
            r[f"{name}: model_minus_label"] = 1000.0 * (e - a.info[ENERGY_KEY]) / len(a)
            r[f"{name}: model_minus_dense"] = 1000.0 * (e - d.info[ENERGY_KEY]) / len(a)
        summary["models"][name] = {
            "mae_model_minus_label": _mae([r[f"{name}: model_minus_label"] for r in rows]),
            "mae_model_minus_dense": _mae([r[f"{name}: model_minus_dense"] for r in rows]),
        }
    return {"summary": summary, "rows": rows}


def _mae(x) -> float | None:
    return round(float(np.mean(np.abs(x))), 3) if len(x) else None


def markdown(res: dict, models: list[str], density: float, split: str, max_atoms: int) -> str:
    s = res["summary"]
    lines = [f"{split}, every configuration with at most {max_atoms} atoms: {s['n']} recomputed at k-point density "
             f"{density:g}/Å (the protocol's 6 otherwise); meV/atom.", ""]
    head = "| config | type | atoms | label - dense |" + "".join(f" {m}: model - label | model - dense |" for m in models)
    lines += [head, "|" + " --- |" * (4 + 2 * len(models))]
    for r in res["rows"]:
        cells = [r["formula"], str(r["config_type"]), str(r["atoms"]), f"{r['label_minus_dense']:+.2f}"]
        for m in models:
            cells += [f"{r[f'{m}: model_minus_label']:+.2f}", f"{r[f'{m}: model_minus_dense']:+.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"mean |label - dense| {s['mae_label_minus_dense']}"]
    for m, v in s["models"].items():
        lines.append(f"{m}: mean |model - label| {v['mae_model_minus_label']}, mean |model - dense| "
                     f"{v['mae_model_minus_dense']}")
    return "\n".join(lines) + "\n"


def plot(res: dict, models: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = res["rows"]
    if not rows:
        return
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(rows)), 4.0))
    ax.bar(x - 0.3, [r["label_minus_dense"] for r in rows], width=0.3, label="label - dense (k-point error)")
    for i, m in enumerate(models[:1]):
        ax.bar(x, [r[f"{m}: model_minus_label"] for r in rows], width=0.3, label=f"{m} - label")
        ax.bar(x + 0.3, [r[f"{m}: model_minus_dense"] for r in rows], width=0.3, label=f"{m} - dense")
    ax.axhline(0.0, color="k", lw=0.5)
    ax.set_xticks(x, [f"{r['formula']} {r['config_type']}" for r in rows], rotation=90, fontsize=7)
    ax.set_ylabel("energy difference (meV/atom)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    from ase.io import read

    from limace.core.fileio import atomic_write_json, atomic_write_text
    from limace.data.datasets import load_dataset
    from limace.data.label import label_configurations

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--split", default="test-v1")
    ap.add_argument("--max-atoms", type=int, default=2)
    ap.add_argument("--density", type=int, default=12, choices=(9, 12, 16))
    ap.add_argument("--model", nargs="+", default=["limace-lisnin-small"])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--no-label", action="store_true", help="report what is labelled so far, label nothing")
    args = ap.parse_args(argv)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frames = chosen(load_dataset("li-in-sn-v1", args.split), args.max_atoms)
    dense_path = out / "dense.extxyz"
    if not args.no_label:
        label_configurations([unlabelled_copy(a) for a in frames], dense_path, protocol=f"pbe-pw400-k{args.density}",
                             workers=args.workers, smallest_first=True, log_dir=out / "gpaw")
    dense = read(dense_path, ":") if dense_path.exists() else []
    res = report(frames, dense, args.model)
    res["settings"] = {"split": args.split, "max_atoms": args.max_atoms, "density": args.density,
                       "chosen": len(frames)}
    atomic_write_json(out / "kpoint_floor.json", res)
    md = markdown(res, args.model, args.density, args.split, args.max_atoms)
    atomic_write_text(out / "kpoint_floor.md", md)
    plot(res, args.model, out / "kpoint_floor.png")
    print(md, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
