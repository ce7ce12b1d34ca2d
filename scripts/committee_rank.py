"""How well a committee's spread ranks the first member's errors: Spearman per structure between the spread (energy
spread per atom, largest atom force spread) and |E error| per atom of member 0, on a labelled file.

    python scripts/committee_rank.py --file dft/li-in-sn-v1/extrapolation.extxyz \
        --members src/limace/potentials/models/limace-lisnin-small-1.6.model other.model ...

For reporting: a committee chosen by this number on a held-out set would no longer be judged on held-out data.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--file", required=True)
    ap.add_argument("--members", nargs="+", required=True, help="member 0 first: the potential whose errors are ranked")
    ap.add_argument("--dtype", default="float64")
    args = ap.parse_args()

    from limace.learn import _load_models, evaluate_committee

    models = _load_models([Path(p) for p in args.members], args.dtype)
    rep = evaluate_committee(models, [args.file])[Path(args.file).name]
    print(json.dumps({"members": args.members, "n": rep["n"],
                      "energy_mae_mev_per_atom": round(rep["energy_mae_mev_per_atom"], 2),
                      "spearman_energy_spread": rep["spearman_energy_spread_vs_error"],
                      "spearman_force_spread": rep["spearman_force_spread_vs_energy_error"]}))


if __name__ == "__main__":
    main()
