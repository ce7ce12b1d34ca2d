"""The data of a fine-tune candidate judged like for like against 1.4: 1.4's own validation set and the current
training data without it.

1.4 was trained on the train split of the pack of 917 (792 configurations, commit e1a3830) with valid_fraction 0.1,
seed 20261128 and valid_exclude [equilibrium, IsolatedAtom]; those 79 validation configurations (1.4: 2.38
meV/atom, 14.4 meV/A, as in its run) are the selection set. The training file is the current train split less them,
plus the labels given with --extra (e.g. dft/li-in-sn-v1/learn_labels.extxyz).

    python scripts/candidate_data.py OUTDIR [--extra dft/li-in-sn-v1/learn_labels.extxyz] [--train-at COMMIT]

writes OUTDIR/valid14.extxyz and OUTDIR/train.extxyz; train a candidate with data.train_file / data.valid_file set
to them (and model.init_from the shipped weights), and ship it only if it beats 1.4 on valid14.
"""
from __future__ import annotations

import argparse
import lzma
import subprocess
from io import StringIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACK_917 = "e1a3830"


def _train_split_at(commit: str) -> list:
    """The train split of the shipped li-in-sn-v1 pack as committed at ``commit``."""
    from ase.io import read

    blob = subprocess.run(["git", "show", f"{commit}:src/limace/data/datasets/li-in-sn-v1/train.extxyz.xz"],
                          cwd=ROOT, capture_output=True, check=True).stdout
    return read(StringIO(lzma.decompress(blob).decode()), ":", format="extxyz")


def split_of(pack: list, seed: int, valid_fraction: float = 0.1) -> tuple[list, list]:
    """(training, validation) frames of a `limace train` run on ``pack`` with ``data.valid_fraction`` and ``seed``:
    the trainer's own split (equilibrium cells and isolated atoms are never drawn for validation), in its order."""
    from limace.training.data import split_indices

    eligible = [str(a.info.get("config_type", "")) not in ("equilibrium", "IsolatedAtom") for a in pack]
    tr, va = split_indices(len(pack), valid_fraction, seed, eligible)
    return [pack[i] for i in tr], [pack[i] for i in va]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("outdir")
    ap.add_argument("--extra", nargs="*", default=[])
    ap.add_argument("--train-at", default=None,
                    help="take the current train split from the pack at this commit (default: the installed one), "
                         "so that a training spanning several sessions keeps its data through later repacks")
    args = ap.parse_args()

    from ase.io import read, write

    from limace.data import load_dataset

    old = _train_split_at(PACK_917)
    _, valid = split_of(old, 20261128)
    ids = {a.info["config_id"] for a in valid}
    current = _train_split_at(args.train_at) if args.train_at else load_dataset("li-in-sn-v1", "train")
    train = [a for a in current if a.info["config_id"] not in ids]
    for path in args.extra:
        train += read(path, ":")
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    write(out / "valid14.extxyz", valid)
    write(out / "train.extxyz", train)
    print(f"{len(old)} configurations in 1.4's train split, {len(valid)} of them its validation set; "
          f"{len(train)} to train on -> {out}")


if __name__ == "__main__":
    main()
