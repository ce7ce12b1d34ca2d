"""Write a candidate-judging set of DFT labels that no compared potential trained on (examples/fresh29/README.md).

    python scripts/fresh_set.py dft/li-in-sn-v1/screen_verify.extxyz --from 201 \
        --exclude examples/candidate25/train.extxyz examples/candidate28/learn_new.extxyz \
        -o examples/fresh29/fresh.extxyz

Keeps the labels of ``LABELS`` from frame ``--from`` on whose configuration id (and, for labels written before ids
were kept, whose geometry) is in none of the ``--exclude`` files and in no split of the shipped pack (train, test,
extrapolation); prints what it left out and why on stderr and the count on stdout. Refuses to overwrite ``-o``
unless ``--force``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv=None) -> int:
    from ase.io import read, write

    from limace.data.datasets import load_dataset
    from limace.data.hashing import structure_hash

    def geometry(a) -> str:  # a key independent of the id, for labels written before ids were kept
        return structure_hash(a, decimals=4)

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("labels")
    ap.add_argument("--from", dest="start", type=int, default=0, help="first frame of LABELS to consider")
    ap.add_argument("--exclude", nargs="*", default=[], help="training files of the compared potentials")
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    out = Path(args.output)
    if out.exists() and not args.force:
        print(f"fresh_set: error: {out} exists (use --force to replace it)", file=sys.stderr)
        return 2
    seen_ids, seen_geo = {}, {}
    sources = [(f, read(f, ":")) for f in args.exclude]
    sources += [(f"pack {s}", load_dataset("li-in-sn-v1", s)) for s in ("train", "test", "extrapolation")]
    for name, frames in sources:
        for a in frames:
            if "config_id" in a.info:
                seen_ids.setdefault(str(a.info["config_id"]), name)
            seen_geo.setdefault(geometry(a), name)
    kept = []
    for i, a in enumerate(read(args.labels, f"{args.start}:")):
        where = seen_ids.get(str(a.info.get("config_id"))) or seen_geo.get(geometry(a))
        if where:
            print(f"left out frame {args.start + i} ({a.info.get('name', a.get_chemical_formula())}): in {where}",
                  file=sys.stderr)
            continue
        kept.append(a)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.extxyz")
    write(tmp, kept, format="extxyz")
    tmp.replace(out)
    print(len(kept))
    return 0


if __name__ == "__main__":
    sys.exit(main())
