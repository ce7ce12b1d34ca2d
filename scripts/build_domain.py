"""Build the domain check (limace.potentials.domain) of a potential from its training split and report how it
ranks errors: `python scripts/build_domain.py [POTENTIAL] [--dataset li-in-sn-v1] [--train FILE ...]`.

Writes <model>.domain.npz beside the weights. The threshold comes from held-out training configurations only
(never from the test split or the extrapolation set); both are scored afterwards, for the report.
"""
from __future__ import annotations

import argparse
import json

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("potential", nargs="?", default="limace-lisnin-small")
    ap.add_argument("--dataset", default="li-in-sn-v1")
    ap.add_argument("--train", nargs="+", default=None,
                    help="the potential's own training files (extxyz), when it was not trained on the dataset's train "
                         "split (e.g. examples/candidate25/train.extxyz examples/candidate28/learn_new.extxyz)")
    ap.add_argument("--extrapolation", default="dft/li-in-sn-v1/extrapolation.extxyz")
    args = ap.parse_args()

    from ase.io import read
    from scipy.stats import spearmanr

    from limace.data import load_dataset
    from limace.potentials import load_batched
    from limace.potentials.domain import DomainCheck, domain_path
    from limace.potentials.calculator import resolve

    model = load_batched(args.potential, dtype="float64")
    train = ([a for f in args.train for a in read(f, ":")] if args.train
             else load_dataset(args.dataset, "train"))
    check = DomainCheck.build(model, train)
    path, _ = resolve(args.potential)
    out = check.save(domain_path(path))
    report = {"file": str(out), "threshold": check.threshold, **check.meta}
    for name, frames in (("test", load_dataset(args.dataset, "test")), ("extrapolation", read(args.extrapolation, ":"))):
        s = check.scores(model, frames)
        n = np.array([len(a) for a in frames])
        e = model(__import__("limace.core.state", fromlist=["BatchedState"]).BatchedState.from_atoms(
            frames, dtype=model.dtype), compute_forces=False)["energy"].cpu().numpy()
        err = np.abs(e - np.array([a.info["REF_energy"] for a in frames])) / n * 1000
        rho = spearmanr(s, err).statistic
        flagged = s > check.threshold
        report[name] = {"n": len(frames), "flagged": int(flagged.sum()), "spearman_score_vs_abs_E_error": float(rho),
                        "max_score": float(s.max()), "E_MAE_meV_per_atom_unflagged": float(err[~flagged].mean()),
                        "E_max_error_unflagged": float(err[~flagged].max()),
                        "flagged_structures": [f"{frames[i].get_chemical_formula()} "
                                               f"{frames[i].info.get('config_type')} score {s[i]:.1f} "
                                               f"|dE| {err[i]:.1f} meV/atom" for i in np.flatnonzero(flagged)]}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
