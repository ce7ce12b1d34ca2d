"""Copy DFT labels made elsewhere (e.g. `limace screen --verify-dft` into its run directory's
work/SYSTEM/dft_verify.extxyz) into a dataset label file, without computing anything: frames whose config_id is
already in DEST are skipped, the rest are appended atomically, with --config-type set if given.

    python scripts/append_labels.py runs/screen-medium/work/Li-In/dft_verify.extxyz \
        dft/li-in-sn-v1/screen_verify.extxyz --config-type screen_verify --protocol pbe-pw400

Then `limace data validate DEST` and commit; `make dataset` packs it.
"""
from __future__ import annotations

import argparse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", nargs="+")
    ap.add_argument("dest")
    ap.add_argument("--config-type", default=None)
    ap.add_argument("--protocol", default="pbe-pw400", help="only frames labelled with this protocol are copied")
    args = ap.parse_args()

    from pathlib import Path

    from ase.io import read

    from limace.core.fileio import atomic_append
    from limace.data.label import _frame_text, read_done_ids

    done = read_done_ids(Path(args.dest))
    text, n = "", 0
    for src in args.src:
        for a in read(src, ":"):
            cid = str(a.info.get("config_id"))
            if cid in done or a.info.get("label_protocol") != args.protocol:
                continue
            if args.config_type:
                a.info["config_type"] = args.config_type
            text += _frame_text(a)
            done.add(cid)
            n += 1
    if text:
        atomic_append(args.dest, text)
    print(f"{n} frame(s) appended to {args.dest}")


if __name__ == "__main__":
    main()
