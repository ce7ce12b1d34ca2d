"""Write the extrapolation set's inputs (dft/li-in-sn-v1/extrapolation_inputs.extxyz), cheapest first.

The rule-made classes come from :func:`limace.data.extrapolation.extrapolation_v1` (every library phase), the
hot-MD snapshots from :func:`limace.md.explore.md_snapshots` run with the shipped potential. Configurations already
in the file are kept as they are (labels are keyed by config_id), so re-running after the library grows only adds.

    python scripts/extrapolation_inputs.py [--no-md]
"""

import sys
from pathlib import Path

from ase.io import read, write

from limace.data.extrapolation import extrapolation_v1
from limace.data.plan import cheapest_first

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "dft/li-in-sn-v1/extrapolation_inputs.extxyz"


def main(md: bool = True) -> None:
    plan_ids = {a.info["config_id"] for a in read(ROOT / "dft/li-in-sn-v1/inputs.extxyz", ":")}
    old = read(OUT, ":") if OUT.exists() else []
    have = {a.info["config_id"] for a in old}
    new = [a for a in extrapolation_v1(plan_ids | have)]
    if md:
        import limace.potentials
        from limace.md.explore import md_cells, md_snapshots

        done = {a.info.get("phase") for a in old if a.info.get("config_type") == "extrap_md"}
        cells = [(p, c) for p, c in md_cells() if p not in done]
        if cells:
            model = limace.potentials.load("limace-lisnin-small", dtype="float32", batched=True, progress=False)
            new += [a for a in md_snapshots(cells, model, steps=1000) if a.info["config_id"] not in plan_ids | have]
    write(OUT, cheapest_first(old + new), format="extxyz")
    print(f"{OUT}: {len(old)} kept, {len(new)} added", file=sys.stderr)


if __name__ == "__main__":
    main(md="--no-md" not in sys.argv)
