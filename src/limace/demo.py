"""`limace demo`: the main job on a small scale.

Until the screening report exists (issue: hull, voltage, search and `limace screen`), the demo runs the data
pipeline end to end on a tiny example: structure library -> configuration generators -> DFT labels at the
reference protocol (GPAW) -> validation and summary, in ``limace-demo/``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path


def run_demo(out: Path = Path("limace-demo"), workers: int = 1) -> dict:
    from ase.io import write

    from limace.data import generate as g
    from limace.data import get_structure, list_phases
    from limace.data.io import read_configurations, summarize
    from limace.data.label import label_configurations

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    built = [p.id for p in list_phases(buildable=True)]
    print(f"structure library: {len(built)} phases built ({', '.join(built)}); "
          f"{len(list_phases(buildable=False))} known by space group only")
    li = get_structure("Li_bcc", primitive=True)
    li.info["config_type"] = "equilibrium"
    # symmetric cells only: a rattled cell has no symmetry left and costs minutes at the reference k-point density
    configs = [li] + g.strained(li, (-0.05, -0.025, 0.025, 0.05), "iso", seed=0)
    write(out / "configs.extxyz", configs, format="extxyz")
    print(f"generated {len(configs)} configurations -> {out / 'configs.extxyz'}")
    rep = label_configurations(configs, out / "labels.extxyz", protocol="pbe-pw400", workers=workers)
    frames = read_configurations(out / "labels.extxyz")
    summary = summarize(frames)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    e = [a.info["REF_energy"] / len(a) for a in frames]
    print(f"labelled {rep.labelled} (skipped {rep.skipped_done} already done) with GPAW at the reference protocol; "
          f"E/atom {min(e):.4f} .. {max(e):.4f} eV")
    print(f"done in {time.perf_counter() - t0:.1f} s; results in {out.resolve()}")
    return summary
