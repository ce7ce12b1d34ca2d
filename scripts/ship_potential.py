"""Ship a trained potential: copy its .model into the package, evaluate it on the dataset's held-out test split and
write (or replace) its entry in src/limace/potentials/registry.yaml with checksums and metrics.

    python scripts/ship_potential.py RUN_DIR/limace-lisnin-small.model --name limace-lisnin-small --version 0.1 \
        --description "..." [--dataset li-in-sn-v1]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
REGISTRY = ROOT / "src" / "limace" / "potentials" / "registry.yaml"
MODELS = ROOT / "src" / "limace" / "potentials" / "models"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--name", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--description", required=True)
    p.add_argument("--dataset", default="li-in-sn-v1")
    p.add_argument("--license", default="CC-BY-4.0")
    args = p.parse_args()

    from limace.data.datasets import datasets_root, load_dataset, manifest, sha256
    from limace.potentials.registry import sha256_file
    from limace.training.evaluate import evaluate_model

    man = manifest(args.dataset)
    test = load_dataset(args.dataset, "test")
    res = evaluate_model(args.model, test, name=args.name, dtype="float64")
    summ = res.summary()["all"]
    print(res.table())
    MODELS.mkdir(parents=True, exist_ok=True)
    fname = f"{args.name}-{args.version}.model"
    shutil.copyfile(args.model, MODELS / fname)
    train_file = datasets_root() / args.dataset / man["files"]["train"]["path"]

    def r(x, n=2):
        return None if x is None else round(float(x), n)

    entry = {
        "name": args.name,
        "version": str(args.version),
        "description": args.description,
        "elements": ["Li", "In", "Sn"],
        "dft_protocol": man["protocol"]["name"],
        "dataset": {"name": args.dataset, "sha256": sha256(train_file)},
        "metrics": {"split": "test", "n_configs": int(summ["n_configs"]),
                    "energy_mae_mev_per_atom": r(summ["energy_mae"]), "energy_rmse_mev_per_atom": r(summ["energy_rmse"]),
                    "forces_mae_mev_per_a": r(summ["forces_mae"]), "forces_rmse_mev_per_a": r(summ["forces_rmse"]),
                    "stress_mae_gpa": r(summ.get("stress_mae"), 3)},
        "license": args.license,
        "weights": {"sha256": sha256_file(MODELS / fname), "file": fname, "size": (MODELS / fname).stat().st_size},
    }
    text = REGISTRY.read_text()
    header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    data = yaml.safe_load(text)
    others = [e for e in data.get("potentials") or [] if not (e["name"] == args.name)]
    data["potentials"] = others + [entry]
    REGISTRY.write_text(header + yaml.safe_dump(data, sort_keys=False, width=120))
    print(f"registered {args.name} {args.version} -> {REGISTRY}")


if __name__ == "__main__":
    main()
