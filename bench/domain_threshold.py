"""How much the domain check's threshold depends on the random draw that sets it.

The threshold is ``margin x`` a high quantile of the scores of held-out training atoms. Two ways of holding out,
on the same descriptors (computed once) of a potential's training configurations, for ``--seeds`` draws each:

- one random 10 % of the configurations held out against the other 90 % (limace before 2026-12-07);
- ten folds: every configuration held out once against the other nine tenths (``DomainCheck.build`` now).

    python bench/domain_threshold.py [--potential limace-lisnin-small] --train FILE... [--seeds 10]

Prints a table (min / mean / max / spread of the threshold over the seeds) and, with ``--json``, writes it.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _single_holdout(desc, numbers, seed: int, fraction: float = 0.1, quantile: float = 0.999,
                    margin: float = 1.5) -> float:
    import numpy as np

    from limace.potentials.domain import DomainCheck

    n = len(desc)
    scale = DomainCheck.feature_scale(desc)
    held = np.zeros(n, dtype=bool)
    held[np.random.default_rng(seed).choice(n, max(1, int(round(fraction * n))), replace=False)] = True
    rest = DomainCheck._make(desc, numbers, ~held, scale)
    scores = np.concatenate([rest._atom_scores(desc[i], numbers[i]) for i in np.flatnonzero(held)])
    return margin * float(np.quantile(scores[np.isfinite(scores)], quantile))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--potential", default="limace-lisnin-small")
    ap.add_argument("--train", nargs="+", required=True, help="the potential's training configurations (extxyz)")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import numpy as np
    import torch
    from ase.io import read

    from limace.potentials import load_batched
    from limace.potentials.domain import DomainCheck, atom_descriptors

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    frames = [a for f in args.train for a in read(f, ":")]
    model = load_batched(args.potential, dtype="float64")
    desc = atom_descriptors(model, frames)
    numbers = [np.asarray(a.numbers) for a in frames]
    rows = {
        "one 10 % hold-out": [_single_holdout(desc, numbers, s) for s in range(args.seeds)],
        "ten folds": [DomainCheck.from_descriptors(desc, numbers, seed=s).threshold for s in range(args.seeds)],
    }
    print(f"{args.potential}: {len(frames)} training configurations, {sum(len(a) for a in frames)} atoms, "
          f"{args.seeds} seeds\n")
    print("| hold-out | threshold min | mean | max | standard deviation |")
    print("|---|---:|---:|---:|---:|")
    for k, v in rows.items():
        print(f"| {k} | {min(v):.2f} | {np.mean(v):.2f} | {max(v):.2f} | {np.std(v):.2f} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"potential": args.potential, "n_configs": len(frames),
                       "thresholds": {k: [round(x, 3) for x in v] for k, v in rows.items()}}, fh, indent=1)


if __name__ == "__main__":
    main()
