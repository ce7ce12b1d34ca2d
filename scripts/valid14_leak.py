"""valid14 split by whether 1.3, the parent 1.4 was fine-tuned from, trained on it; energy MAE of each model on
both parts (bench/RESULTS.md, twenty-fifth session).

1.3 was trained on the train split of the pack at df9f3ad with valid_fraction 0.1 and seed 20261128; its training
portion is recomputed with the same split function.

    python scripts/candidate_data.py examples/candidate25 ...   # writes examples/candidate25/valid14.extxyz
    python scripts/valid14_leak.py examples/candidate25/valid14.extxyz limace-lisnin-small limace-lisnin-medium
"""
from __future__ import annotations

import sys

import numpy as np

from candidate_data import _train_split_at, split_of

PACK_13 = "df9f3ad"  # the pack 1.3 was trained on
SEED_13 = 20261128


def main(valid_path: str, models: list[str]) -> None:
    from ase.io import read

    from limace.potentials import load
    from limace.training.evaluate import evaluate_model

    valid = read(valid_path, ":")
    trained, _ = split_of(_train_split_at(PACK_13), SEED_13)
    seen = {a.info["config_id"] for a in trained}
    mask = np.array([a.info["config_id"] in seen for a in valid])
    print(f"| model | all {len(valid)} | the {mask.sum()} 1.3 trained on | the {(~mask).sum()} it did not |")
    print("|---|---:|---:|---:|")
    for name in models:
        res = evaluate_model(load(name, domain=False), valid, name=name)
        err = np.abs(res.energy_pred - res.energy_ref) / res.n_atoms * 1000.0
        print(f"| {name} | {err.mean():.2f} | {err[mask].mean():.2f} | {err[~mask].mean():.2f} |")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
