"""Li vacancy-hop barriers of whole phases: hops -> endpoints -> batched NEB -> percolation -> table, JSON, plots.

``barriers.json`` (written with ``--out DIR`` by ``limace barriers``) has the schema::

    {"potential": str, "settings": {...},
     "phases": [{"phase": str, "formula": str, "supercell": [n1, n2, n3], "n_atoms": int,
                 "hops": [{"hop": int, "length_A": float, "multiplicity": int,
                           "barrier_eV": float | null,            # max(forward, backward): the percolation weight
                           "forward_eV": float | null, "backward_eV": float | null,
                           "converged": bool, "steps": int,
                           "li_coordination": {"initial_site": {"n": int, "<el>": int}, "final_site": {...}}}],
                 "percolation": {"1d" | "2d" | "3d": {"barrier_eV": float | null, "hops": [int]}}}]}

Barriers of hops whose NEB did not converge are null (never reported silently as barriers) and such hops are left
out of the percolation analysis. Work is resumable: each phase's NEB results are stored in ``DIR/<phase>/neb.json``
(atomic write) and not recomputed.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from ase import Atoms

from limace.errors import LimaceInputError
from limace.fileio import atomic_write_json


@dataclass(frozen=True)
class BarrierSettings:
    cutoff: float = 3.6  # A, longest Li-Li hop considered
    min_image_distance: float = 9.0  # A, between periodic images of the vacancy
    n_images: int = 5
    interpolation: str = "idpp"
    fmax: float = 0.03  # eV/A, NEB convergence
    optimizer: str = "lbfgs"  # NEB and endpoint-relaxation optimizer: lbfgs (fewer steps) or fire (ASE's defaults)
    endpoint_fmax: float = 0.01  # eV/A
    max_steps: int = 400
    spring: float = 0.1
    relax_bulk: bool = True
    coordination_cutoff: float = 3.5


def resolve_phase(spec: str) -> tuple[str, Atoms]:
    """A structure-library name (``"LiSn"``) or a structure file."""
    from limace.data.structures import get_phase

    if os.path.exists(spec):
        from ase.io import read

        return Path(spec).stem, read(spec)
    phase = get_phase(spec)
    return phase.id, phase.build(primitive=True)


def phase_barriers(name: str, bulk: Atoms, model, settings: BarrierSettings = BarrierSettings(),
                   progress: bool = True) -> tuple[dict, list]:
    """Barriers of every distinct hop of one phase (batched: all hops' bands in one NEB run)."""
    from limace.analysis.hops import distinct_hops, hop_endpoints_for, li_coordination
    from limace.analysis.neb import check_band, run_neb
    from limace.analysis.percolation import percolation
    from limace.analysis.relax import relax_structures
    from limace.data.generate import hop_images

    if settings.relax_bulk:
        bulk = relax_structures([bulk], model, fmax=settings.endpoint_fmax, relax_cell=True, progress=False)[0]
    hops = distinct_hops(bulk, cutoff=settings.cutoff)
    endpoints = [hop_endpoints_for(bulk, h, settings.min_image_distance) for h in hops]
    ends = [a for ep in endpoints for a in (ep.initial, ep.final)]
    relaxed = relax_structures(ends, model, fmax=settings.endpoint_fmax, relax_cell=False,
                               optimizer=settings.optimizer, progress=progress)
    bands, end_e, errors = [], [], {}
    for k, ep in enumerate(endpoints):
        ini, fin = relaxed[2 * k], relaxed[2 * k + 1]
        images = hop_images(ini, fin, n_images=settings.n_images, method=settings.interpolation)
        band = [ini, *images, fin]
        try:  # e.g. a relaxation that rearranged the crystal: the interpolated path puts atoms on top of each other
            check_band(band, where=f"{name} hop {hops[k].index}")
        except LimaceInputError as exc:
            errors[k] = str(exc)
            continue
        bands.append(band)
        end_e.append((float(ini.info["energy"]), float(fin.info["energy"])))
    results = run_neb(bands, model, fmax=settings.fmax, max_steps=settings.max_steps, k=settings.spring,
                      optimizer=settings.optimizer,
                      endpoint_energies=end_e, progress=progress) if bands else []
    it = iter(results)
    results = [None if k in errors else next(it) for k in range(len(hops))]
    rows = []
    for k, (h, ep, res) in enumerate(zip(hops, endpoints, results)):
        ok = res is not None and res.converged
        fwd = res.barrier_forward if ok else None
        bwd = res.barrier_backward if ok else None
        row = {
            "hop": h.index, "length_A": round(h.length, 4), "multiplicity": h.multiplicity,
            "barrier_eV": None if fwd is None else max(fwd, bwd),
            "forward_eV": fwd, "backward_eV": bwd, "converged": ok, "steps": 0 if res is None else res.steps,
            "li_coordination": {"initial_site": li_coordination(bulk, h.i, settings.coordination_cutoff),
                                "final_site": li_coordination(bulk, h.j, settings.coordination_cutoff)},
            "profile": None if res is None else res.as_dict(),
        }
        if k in errors:
            row["error"] = errors[k]
        rows.append(row)
    n_sites = len(bulk)
    perc = percolation(n_sites, [h.copies for h in hops], [r["barrier_eV"] for r in rows])
    entry = {"phase": name, "formula": bulk.get_chemical_formula(),
             "supercell": list(endpoints[0].supercell_repeat) if endpoints else None,
             "n_atoms": len(endpoints[0].initial) if endpoints else None,
             "hops": rows, "percolation": perc.as_dict()}
    return entry, results


def run_barriers(specs: Sequence[str], model, out: str | Path | None = None, potential_name: str = "",
                 settings: BarrierSettings = BarrierSettings(), progress: bool = True,
                 potential_sha256: str | None = None) -> dict:
    """Barriers for several phases; with ``out`` writes barriers.json, barriers.md and PNG profiles, resumably.

    A phase finished earlier in ``out`` is reused only when its settings, ``potential_name`` and
    ``potential_sha256`` (the model file's checksum: a retrained potential keeps its name) all match."""
    out = Path(out) if out else None
    phases = []
    for spec in specs:
        name, bulk = resolve_phase(spec)
        if "Li" not in bulk.get_chemical_symbols():
            raise LimaceInputError(f"{spec}: has no Li, no Li hops to compute")
        cache = out / name / "neb.json" if out else None
        if cache is not None and cache.exists():
            saved = json.loads(cache.read_text())
            if (saved.get("settings") == asdict(settings) and saved.get("potential") == potential_name
                    and saved.get("potential_sha256") == potential_sha256):
                phases.append(saved["entry"])
                continue
        t0 = time.perf_counter()
        entry, results = phase_barriers(name, bulk, model, settings, progress=progress)
        entry["wall_s"] = round(time.perf_counter() - t0, 2)
        if out is not None:
            _plot_profiles(entry, results, out / name / "neb_profiles.png")
            atomic_write_json(cache, {"settings": asdict(settings), "potential": potential_name,
                                      "potential_sha256": potential_sha256, "entry": entry})
        phases.append(entry)
    report = {"potential": potential_name, "potential_sha256": potential_sha256, "settings": asdict(settings),
              "phases": phases}
    if out is not None:
        # profiles (energies along each path) stay in DIR/<phase>/neb.json; barriers.json keeps the table
        public = {**report, "phases": [{**p, "hops": [{k: v for k, v in h.items() if k != "profile"} for h in p["hops"]]}
                                       for p in phases]}
        atomic_write_json(out / "barriers.json", public)
        (out / "barriers.md").write_text(markdown_table(report))
        _plot_percolation(report, out / "barriers.png")
    return report


def markdown_table(report: dict) -> str:
    lines = ["| phase | hop | length (Å) | ×/cell | barrier (eV) | fwd / bwd (eV) | converged | Li coordination (i → j) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    fmt = lambda x: "—" if x is None else f"{x:.3f}"  # noqa: E731
    for p in report["phases"]:
        for h in p["hops"]:
            c = h["li_coordination"]
            cs = " → ".join(", ".join(f"{k}{v}" for k, v in s.items() if k != "n") for s in (c["initial_site"], c["final_site"]))
            lines.append(f"| {p['phase']} | {h['hop']} | {h['length_A']:.3f} | {h['multiplicity']} | {fmt(h['barrier_eV'])} "
                         f"| {fmt(h['forward_eV'])} / {fmt(h['backward_eV'])} | {'yes' if h['converged'] else '**no**'} | {cs} |")
    lines += ["", "| phase | 1D percolation (eV) | 2D (eV) | 3D (eV) | hops (3D) |", "| --- | --- | --- | --- | --- |"]
    for p in report["phases"]:
        pc = p["percolation"]
        lines.append(f"| {p['phase']} | {fmt(pc['1d']['barrier_eV'])} | {fmt(pc['2d']['barrier_eV'])} | "
                     f"{fmt(pc['3d']['barrier_eV'])} | {', '.join(map(str, pc['3d']['hops'])) or '—'} |")
    return "\n".join(lines) + "\n"


def _plot_profiles(entry: dict, results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for h, res in zip(entry["hops"], results):
        if res is not None:
            res.plot(ax=ax, label=f"hop {h['hop']} ({h['length_A']:.2f} Å)")
    ax.set_title(entry["phase"])
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_percolation(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [p["phase"] for p in report["phases"]]
    fig, ax = plt.subplots(figsize=(max(4, 1.1 * len(names)), 3.5))
    width = 0.25
    for k, d in enumerate(("1d", "2d", "3d")):
        vals = [p["percolation"][d]["barrier_eV"] for p in report["phases"]]
        xs = np.arange(len(names)) + (k - 1) * width
        ax.bar(xs, [np.nan if v is None else v for v in vals], width, label=f"{d.upper()} percolation")
    ax.set_xticks(np.arange(len(names)), names, rotation=30)
    ax.set_ylabel("barrier (eV)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
