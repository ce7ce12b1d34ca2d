"""`limace demo`: the main job on a small scale.

With a shipped potential: a reduced ``limace screen`` of Li-In and Li-Sn (orderings up to 3 atoms and the decorated
prototypes, hull, voltage, and barriers of the smallest stable Li phase per system), in about ten minutes on
two CPU cores. ``--pipeline`` instead runs the data pipeline end to end (structure library -> generators -> DFT
labels at the reference protocol -> validation) on a tiny example.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

DEMO_POTENTIAL = "limace-lisnin-small"


def demo_settings(potential: str | None = None):
    """The demo's reduced screen; with ``potential``, its registered committee (if any) flags uncertain results."""
    from limace.analysis.barriers import BarrierSettings
    from limace.analysis.screen import ScreenSettings
    from limace.analysis.search import SearchSettings
    from limace.potentials.registry import registered_committee

    return ScreenSettings(
        search=SearchSettings.reduced(),
        barriers=BarrierSettings(min_image_distance=8.0, n_images=3, max_steps=200),
        max_barrier_phases=1, max_barrier_atoms=60,
        committee=registered_committee(potential) if potential else ())


def _num(x) -> str:
    """A summary number at meV precision (``0.480``), or ``-`` where there is none."""
    return "-" if x is None else f"{x:.3f}"


def run_screen_demo(out: Path = Path("limace-demo"), workers: int = 2, potential: str = DEMO_POTENTIAL) -> dict:
    from limace.analysis.screen import run_screen

    t0 = time.perf_counter()
    results = run_screen(["Li-In", "Li-Sn"], potential, out, demo_settings(potential), workers=workers, dtype="float32",
                         progress=sys.stderr.isatty())  # progress bars only on a terminal
    for s, r in results["systems"].items():
        v = r["voltage"]
        bar = [f"{p['phase']}: 1D {_num(p['percolation']['1d']['barrier_eV'])} eV" for p in r["barriers"]["phases"]]
        print(f"{s}: stable {', '.join(r['stable'])}; average voltage {_num(v['average_V'])} V; "
              f"barriers {'; '.join(bar)}")
    print(f"done in {time.perf_counter() - t0:.0f} s; report: {(out / 'report.md').resolve()}")
    return results


def run_pipeline_demo(out: Path = Path("limace-demo-data"), workers: int = 1) -> dict:
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
    rep = label_configurations(configs, out / "labels.extxyz", protocol="pbe-pw400", workers=workers,
                               progress=sys.stderr.isatty())  # progress bars only on a terminal
    frames = read_configurations(out / "labels.extxyz")
    summary = summarize(frames)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    e = [a.info["REF_energy"] / len(a) for a in frames]
    print(f"labelled {rep.labelled} (skipped {rep.skipped_done} already done) with GPAW at the reference protocol; "
          f"E/atom {min(e):.4f} .. {max(e):.4f} eV")
    print(f"done in {time.perf_counter() - t0:.1f} s; results in {out.resolve()}")
    return summary
