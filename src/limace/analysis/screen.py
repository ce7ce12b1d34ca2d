"""``limace screen``: hull + voltage + structure search + barriers for Li-In and Li-Sn, in one report directory.

Tasks and their order:

1. per system (independent, in parallel): relax the library phases and the search candidates with the potential,
   build the hull (:class:`~limace.analysis.hull.HullAnalysis`) and the voltage curve, list near-hull candidates
   (and, with ``verify_dft``, label them with the reference DFT protocol and report the model's error);
2. per stable Li-M compound (independent, in parallel): vacancy-hop barriers and percolation
   (:func:`~limace.analysis.barriers.run_barriers`);
3. the report: ``report.md`` (tables), ``results.json`` and PNG plots (hull, voltage, barriers, NEB profiles).

Every task writes its result atomically under ``OUT/work/`` and is skipped when that result exists with the same
settings, so a killed screen resumes without recomputing finished work. Tasks run on local processes
(``workers``) or on a Dask cluster (``scheduler``).

``results.json`` schema (per system ``"Li-In"`` / ``"Li-Sn"``)::

    {"potential": str, "settings": {...},
     "systems": {"Li-Sn": {
        "hull": [{"formula", "name", "x_Li", "formation_energy_eV_per_atom", "e_above_hull_eV_per_atom", "stable",
                  "source": "library" | "search" | "ce", "committee_std_meV_per_atom"? (with --committee)}],
        "stable": [formula, ...], "references": {...}, "sn_reference": "Sn_alpha" | "Sn_beta",
        "voltage": {"average_V", "average_kind", "max_li_per_host", "plateaus": [{"y_start", "y_end", "voltage_V",
                    "phases"}]},
        "near_hull": [{"name", "formula", "e_above_hull_eV_per_atom", "source", "dft_error_meV_per_atom"?,
                       "dft_formation_energy_eV_per_atom"?, "dft_e_above_hull_eV_per_atom"?,
                       "dft_reused"? ({"file", "index", "max_displacement_A", "max_strain"}: --verify-reuse)}],
        "search": {"n_candidates", "n_library", "not_converged", "rejected", "left_out" (--max-library-atoms),
                   "funnel": {"enumerated": {parent: n}, "prototypes", "stages": {"single_point", "short_relax",
                              "full_relax": {"candidates", "kept"|"relaxed", ...}}, "ce": {...}, "timings_s"}},
        "barriers": {"phases": [... as in barriers.json of `limace barriers` ...]},
        "known_phases": {... limace.analysis.known.known_phase_check: the assessed phases against the hull ...}}}}
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from limace.analysis.barriers import BarrierSettings
from limace.analysis.known import known_phase_check
from limace.analysis.known import markdown_lines as known_markdown
from limace.analysis.search import SearchSettings
from limace.core.errors import LimaceInputError
from limace.core.fileio import atomic_write_json


@dataclass(frozen=True)
class ScreenSettings:
    search: SearchSettings = field(default_factory=SearchSettings)
    barriers: BarrierSettings = field(default_factory=BarrierSettings)
    barrier_phases: tuple[str, ...] | None = None  # None: every stable Li-M compound (names or formulas otherwise)
    max_barrier_phases: int | None = None  # at most this many per system (cheapest first)
    max_barrier_atoms: int = 256  # skip phases whose vacancy supercell is larger (reported as skipped)
    sn_reference: str = "lowest"
    near_hull: float = 0.025  # eV/atom: candidates listed for DFT verification
    verify_dft: bool = False
    # --verify-dft: label at most this many new structures in this run (0: report the checks made so far; a later run
    # goes on where this one stopped); None: all of them
    verify_limit: int | None = None
    # --verify-reuse: labelled files (extxyz, same protocol) whose structure stands in for a new single point when it
    # is the same one within these tolerances (the model's error is then taken at the labelled geometry)
    verify_reuse: tuple[str, ...] = ()
    reuse_max_displacement: float = 0.1  # A, largest atomic displacement (mean shift removed)
    reuse_max_strain: float = 0.01  # largest component of the Green strain between the two cells
    # more potentials: with the screen's potential a committee whose spread is reported (hull entries: energy std per
    # atom, flagged above committee_threshold_meV; barriers: each barrier's std, flagged above 0.05 eV)
    committee: tuple[str, ...] = ()
    committee_threshold_meV: float = 10.0

    def as_dict(self) -> dict:
        return asdict(self)


def _cached(path: Path, key: dict):
    if path.exists():
        data = json.loads(path.read_text())
        if data.get("key") == json.loads(json.dumps(key)):  # as stored: tuples became lists
            return data["result"]
    return None


def _model(potential: str, device: str, dtype: str, committee: Sequence[str] = ()):
    """``(model, members)``: the batched model of ``potential`` and, with ``committee``, the committee's members
    (``potential`` first, all read together and checked against each other; None without)."""
    from limace.potentials import load_batched

    loaded = load_batched([potential, *committee], device=device, dtype=dtype)
    return (loaded.members[0], loaded.members) if committee else (loaded, None)


def _committee_flags(members, entries: list, threshold_meV: float) -> tuple[dict, list[str]]:
    """Each hull entry's committee spread (std of the members' energies per atom, meV/atom) and warnings for those
    above ``threshold_meV``: their place on the hull is uncertain."""
    import numpy as np

    from limace.core.model import member_energies

    if not entries:
        return {}, []
    e = member_energies(members, entries)
    n = np.array([len(a) for a in entries])
    spread = e.std(0) / n * 1000
    out, warn = {}, []
    for a, sd in zip(entries, spread):
        a.info["committee_std_meV_per_atom"] = round(float(sd), 2)
        out[a.info.get("name")] = round(float(sd), 2)
        if sd > threshold_meV:
            warn.append(f"{a.info.get('name')}: committee spread {sd:.1f} meV/atom > {threshold_meV:g}; its place on "
                        "the hull is uncertain")
    return out, warn


def _domain_filter(model, entries: list) -> tuple[list, list[dict], list[str]]:
    """Drop hull entries that lie outside the potential's training domain (limace.potentials.domain): their
    energies are extrapolation, never a result. Pure elements stay (they are the references) with a warning. Every
    kept entry gets ``info["domain_score"]``. Without a domain check beside the weights nothing is dropped."""
    dom = getattr(model, "domain", None)
    if dom is None or not entries:
        return entries, [], []
    scores = dom.scores(model, entries)
    kept, rejected, warnings = [], [], []
    for a, sc in zip(entries, scores):
        a.info["domain_score"] = round(float(sc), 2)
        if sc <= dom.threshold:
            kept.append(a)
        elif len(set(a.get_chemical_symbols())) == 1:
            kept.append(a)
            warnings.append(f"{a.info.get('name')}: outside the potential's training domain (descriptor distance "
                            f"{sc:.1f} > {dom.threshold:.1f}); its energy is an extrapolation")
        else:
            rejected.append({"name": a.info.get("name"), "formula": a.get_chemical_formula(),
                             "reason": f"outside the potential's training domain (descriptor distance {sc:.1f} > "
                                       f"{dom.threshold:.1f})"})
    return kept, rejected, warnings


def _set_threads(workers: int) -> None:
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, workers)))


# -- task 1: hull, voltage, search ------------------------------------------------------------------------------------


def hull_task(system: str, potential: str, settings: dict, out: str, device: str, dtype: str, workers: int = 1,
              progress: bool = True) -> dict:
    from ase.io import write

    from limace.analysis.hull import HullAnalysis
    from limace.analysis.search import library_structures, lowest_per_composition, reject_unphysical, relax_all, run_search

    _set_threads(workers)
    s = ScreenSettings(**{**settings, "search": SearchSettings(**settings["search"]),
                          "barriers": BarrierSettings(**settings["barriers"])})
    work = Path(out) / "work" / system
    model, members = _model(potential, device, dtype, s.committee)
    t0 = time.perf_counter()
    library, left_out = [], {}
    for a in library_structures(system):
        n_max = s.search.max_library_atoms
        if n_max is None or len(a) <= n_max:
            library.append(a)
        else:
            left_out[a.info["name"]] = f"left out, {len(a)} atoms > --max-library-atoms {n_max}"
    lib_relaxed = relax_all(library, model, s.search.fmax, s.search.max_steps, progress=progress,
                            optimizer=s.search.optimizer, max_atoms=s.search.relax_atoms)
    t_library = time.perf_counter() - t0
    search = run_search(system, model, s.search, references=lib_relaxed, progress=progress)
    search.report["timings_s"]["library_relax"] = round(t_library, 1)
    relaxed = lib_relaxed + search.structures
    kept, rejected, warnings = reject_unphysical(relaxed, s.search.min_volume_ratio, s.search.min_formation_energy)
    kept_ids = {id(a) for a in kept}
    lib_rel = [a for a in relaxed[:len(library)] if id(a) in kept_ids]
    cand_rel = [a for a in relaxed[len(library):] if id(a) in kept_ids]
    best = lowest_per_composition(cand_rel)
    entries = [a for a in lib_rel if a.info.get("converged", False)] + best
    entries, outside, dwarn = _domain_filter(model, entries)
    rejected += outside
    warnings += dwarn
    spreads = None
    if members:
        spreads, cwarn = _committee_flags(members, entries, s.committee_threshold_meV)
        warnings += cwarn
    hull = HullAnalysis.from_structures(system, entries, sn_reference=s.sn_reference, potential=potential)
    voltage = hull.voltage()
    work.mkdir(parents=True, exist_ok=True)
    structures = work / "structures"
    structures.mkdir(exist_ok=True)
    for a in entries:
        write(structures / f"{a.info['name']}.extxyz", a.copy(), format="extxyz")  # copy: no calculator
    summary = hull.summary()
    near = [{"name": r["name"], "formula": r["formula"], "e_above_hull_eV_per_atom": r["e_above_hull_eV_per_atom"],
             "source": r["source"]}
            for r in summary["hull"] if r["e_above_hull_eV_per_atom"] <= s.near_hull and "-" in system]
    near = [n for n in near if len({c for c in n["formula"] if c.isupper()}) > 1]  # compounds only
    not_converged = [a.info["name"] for a in relaxed if not a.info.get("converged", False)]
    return {"system": system, "hull": summary, "hull_dict": hull.as_dict(), "voltage": voltage.as_dict(),
            "near_hull": near, "n_candidates": search.report["stages"]["single_point"]["candidates"]
            + search.report["prototypes"], "n_library": len(library), "search_report": search.report,
            "not_converged": not_converged, "rejected": rejected, "left_out": left_out, "warnings": warnings,
            "committee_std_meV_per_atom": spreads, "relax_wall_s": round(time.perf_counter() - t0, 1)}


VERIFY_FIRST_EV = 0.001  # eV/atom: --verify-dft checks entries this close to the hull (and known phases) first


def verify_dft(system: str, result: dict, out: Path, workers: int, protocol: str = "pbe-pw400",
               committee_threshold_meV: float | None = None, progress: bool = False,
               limit: int | None = None, reuse: Sequence[str | Path] = (), potential: str | None = None,
               device: str = "cpu", dtype: str = "float64", max_displacement: float = 0.1,
               max_strain: float = 0.01) -> list[dict]:
    """Single points at the reference protocol for the near-hull structures and the hull's elemental references;
    per structure the model's error per atom, its DFT formation energy (against the DFT energies of the same
    references) and its energy above the hull that these DFT energies alone build.

    Order (a stopped run has checked what matters most): the references, then what the hull is made of (the
    model's stable entries, within 1 meV/atom of the hull) and the library's known phases, then the entries whose
    committee spread exceeds ``committee_threshold_meV`` (those most likely to be wrong), then the rest, each group
    cheapest first. ``limit``: label at most this many new structures now (0: none); the rows of those not checked
    yet carry None, and the DFT hull is built once the references are checked.

    ``reuse``: labelled files (extxyz; frames of another ``protocol`` are ignored) searched before a structure is
    labelled: a frame with the same species in the same order, a cell within ``max_strain`` (Green strain) and
    atoms within ``max_displacement`` (A, after removing the mean shift) is the same structure relaxed by another
    potential; its DFT energy stands in for a new single point and the model (``potential``) is evaluated at that
    geometry, so the error compares one structure. The row says which frame (``dft_reused``)."""
    from ase.io import read

    from limace.analysis.hull import HullAnalysis
    from limace.data.hashing import ensure_config_id
    from limace.data.label import label_configurations, read_done_ids
    from limace.keys import ENERGY_KEY

    structures = Path(out) / "work" / system / "structures"
    refs = {el: r["name"] for el, r in result["hull"]["references"].items()}
    todo = []
    for name in [*refs.values(), *(n["name"] for n in result["near_hull"])]:
        a = read(structures / f"{name}.extxyz")
        if "energy" not in a.info:  # ASE's extxyz reader moves energy= into a SinglePointCalculator
            a.info["energy"] = a.get_potential_energy() if a.calc is not None else None
        a.calc = None
        a.info["config_type"] = "screen_verify"
        todo.append((name, a))
    spread = result.get("committee_std_meV_per_atom") or {}
    ref_names = set(refs.values())
    core = {n["name"] for n in result["near_hull"]
            if n["e_above_hull_eV_per_atom"] <= VERIFY_FIRST_EV or n.get("source") == "library"}

    def priority(t):
        name, a = t
        flagged = committee_threshold_meV is not None and (spread.get(name) or 0.0) > committee_threshold_meV
        return (0 if name in ref_names else 1 if name in core else 2 if flagged else 3, len(a))

    todo.sort(key=priority)
    labels = Path(out) / "work" / system / "dft_verify.extxyz"
    reused = {}  # name -> (labelled Atoms, where it came from)
    if reuse:  # only what this run has not labelled itself
        labelled = read_done_ids(labels)
        pool = reusable_labels(reuse, protocol)
        for name, a in todo:
            if ensure_config_id(a) not in labelled:
                hit = find_same_structure(a, pool, max_displacement, max_strain)
                if hit is not None:
                    reused[name] = hit
    label_configurations([a for name, a in todo if name not in reused], labels, protocol=protocol, workers=workers,
                         progress=progress, limit=limit)
    done = {a.info["config_id"]: a for a in read(labels, ":")} if labels.exists() else {}
    dft = {}
    for name, a in todo:
        lab = done.get(a.info.get("config_id"))
        if lab is not None:
            dft[name] = (a, float(lab.info[ENERGY_KEY]))
    if reused:
        # the model's energy at the labelled geometry: both sides of the error at one structure
        from limace.core.model import member_energies

        model, _ = _model(potential, device, dtype)
        names = list(reused)
        e_model = member_energies([model], [reused[n][0] for n in names])[0]
        for n, e in zip(names, e_model):
            lab = reused[n][0]
            b = lab.copy()
            b.calc = None
            b.info = {"energy": float(e), "name": n}
            dft[n] = (b, float(lab.info[ENERGY_KEY]))
    dft_hull = None
    if all(name in dft for name in refs.values()):
        picked = []
        for name, (a, e) in dft.items():
            b = a.copy()
            b.info = {"name": name, "source": a.info.get("source", ""), "energy": e}
            picked.append(b)
        dft_hull = {r["name"]: r for r in HullAnalysis.from_structures(
            system, picked, references=refs, potential=f"DFT {protocol}").summary()["hull"]}
    rows = []
    for n in result["near_hull"]:
        a, e = dft.get(n["name"], (None, None))
        h = (dft_hull or {}).get(n["name"])
        rows.append({**n,
                     "dft_error_meV_per_atom": None if e is None or a.info["energy"] is None
                     else round(1000 * (a.info["energy"] - e) / len(a), 2),
                     "dft_formation_energy_eV_per_atom": None if h is None else h["formation_energy_eV_per_atom"],
                     "dft_e_above_hull_eV_per_atom": None if h is None else h["e_above_hull_eV_per_atom"]})
        if n["name"] in reused:
            rows[-1]["dft_reused"] = reused[n["name"]][1]
    return rows


def reusable_labels(files: Sequence[str | Path], protocol: str) -> dict[tuple, list]:
    """The labelled frames of ``files`` made with ``protocol``, by their species (in order): ``{symbols: [(Atoms,
    {"file", "index"}), ...]}``."""
    from ase.io import read

    from limace.keys import ENERGY_KEY

    pool: dict[tuple, list] = {}
    for f in files:
        for i, a in enumerate(read(f, ":")):
            if ENERGY_KEY in a.info and a.info.get("label_protocol", protocol) == protocol:
                pool.setdefault(tuple(a.get_chemical_symbols()), []).append((a, {"file": str(f), "index": i}))
    return pool


def structure_distance(a, b) -> tuple[float, float]:
    """``(max displacement (A), max |Green strain|)`` between two cells of the same atoms in the same order: the
    strain that takes ``a``'s cell to ``b``'s (rotation-free) and the largest atomic displacement, in ``a``'s cell,
    between their fractional positions (minimum image, mean shift removed)."""
    import numpy as np

    ca, cb = np.asarray(a.cell), np.asarray(b.cell)
    f = np.linalg.solve(ca, cb)  # cb = ca @ f (rows are cell vectors)
    strain = 0.5 * (f @ f.T - np.eye(3))
    d = b.get_scaled_positions(wrap=False) - a.get_scaled_positions(wrap=False)
    d -= np.round(d)
    d -= d.mean(0)
    d -= np.round(d)
    return float(np.linalg.norm(d @ ca, axis=1).max()), float(np.abs(strain).max())


def find_same_structure(atoms, pool: dict, max_displacement: float, max_strain: float):
    """The closest frame of ``pool`` (see :func:`reusable_labels`) that is ``atoms`` within the tolerances, as
    ``(Atoms, {"file", "index", "max_displacement_A", "max_strain"})``; None if there is none."""
    best = None
    for lab, where in pool.get(tuple(atoms.get_chemical_symbols()), ()):
        disp, strain = structure_distance(atoms, lab)
        if disp <= max_displacement and strain <= max_strain and (best is None or disp < best[1]["max_displacement_A"]):
            best = (lab, {**where, "max_displacement_A": round(disp, 3), "max_strain": round(strain, 4)})
    return best


# -- task 2: barriers -------------------------------------------------------------------------------------------------


def barrier_task(system: str, structure_file: str, potential: str, potential_sha256: str, settings: dict, out: str,
                 device: str, dtype: str, workers: int = 1, progress: bool = False) -> dict:
    from limace.analysis.barriers import run_barriers

    _set_threads(workers)
    committee = tuple(settings.pop("committee", ()) or ())
    model, members = _model(potential, device, dtype, committee)
    name = Path(structure_file).stem
    rep = run_barriers([structure_file], model, out=Path(out) / "barriers" / system, potential_name=potential,
                       settings=BarrierSettings(**settings), progress=progress, potential_sha256=potential_sha256,
                       committee=members)
    entry = rep["phases"][0]
    entry["hops"] = [{k: v for k, v in h.items() if k != "profile"} for h in entry["hops"]]
    entry["phase"] = name
    return entry


def _no_hop_reason(structure_file: Path, cutoff: float) -> str | None:
    """Why a phase has no Li vacancy hop to compute (no Li-Li pair within the hop cutoff), else None."""
    from ase.io import read

    from limace.analysis.hops import distinct_hops

    try:
        distinct_hops(read(structure_file), cutoff=cutoff)
    except LimaceInputError as exc:
        return str(exc)
    return None


def _vacancy_cell_atoms(structure_file: Path, min_image_distance: float) -> int:
    import numpy as np
    from ase.io import read

    from limace.analysis.hops import primitive_cell, vacancy_supercell_matrix

    a = primitive_cell(read(structure_file))
    return int(len(a) * round(abs(np.linalg.det(vacancy_supercell_matrix(a, min_image_distance)))))


def _barrier_cost(structure_file: Path, min_image_distance: float, cutoff: float) -> tuple[int, int, int]:
    """(estimated cost, vacancy-cell atoms, distinct hops) of a phase's barriers: NEB work grows with the atoms of
    the vacancy cell times the number of distinct hops (a 2-hop 54-atom B2 cell costs far less than a 40-hop
    36-atom Li7Sn2-type one, though its cell is larger)."""
    from ase.io import read

    from limace.analysis.hops import distinct_hops, primitive_cell

    n_atoms = _vacancy_cell_atoms(structure_file, min_image_distance)
    n_hops = len(distinct_hops(primitive_cell(read(structure_file)), cutoff=cutoff))
    return n_atoms * n_hops, n_atoms, n_hops


# -- orchestration ----------------------------------------------------------------------------------------------------


def run_screen(systems: Sequence[str], potential: str, out: str | Path, settings: ScreenSettings = ScreenSettings(),
               workers: int = 1, scheduler: str | None = None, device: str = "cpu", dtype: str = "float64",
               progress: bool = True) -> dict:
    """Run the whole screen (see the module docstring); returns what ``results.json`` holds."""
    from tqdm.auto import tqdm

    from limace.analysis.hull import SYSTEMS
    from limace.parallel import make_executor

    for system in systems:
        if system not in SYSTEMS:
            raise LimaceInputError(f"unknown system {system!r}; choose from {', '.join(SYSTEMS)}")
    settings.search.check()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sdict = settings.as_dict()
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    resumed: dict[str, list[int]] = {}  # stage -> [tasks taken from work/, tasks]

    def run_tasks(tasks: dict[str, tuple], desc: str) -> dict[str, dict]:
        """tasks: cache path -> (key, fn, args). Cached results are reused, the rest run (in parallel)."""
        results, todo = {}, {}
        for path, (key, fn, args) in tasks.items():
            hit = _cached(Path(path), key)
            if hit is not None:
                results[path] = hit
            else:
                todo[path] = (key, fn, args)
        resumed[desc] = [len(results), len(tasks)]
        n_workers = min(workers, len(todo)) if todo else 1
        ex = make_executor(n_workers, scheduler) if len(todo) > 1 or scheduler else None
        bar = tqdm(total=len(tasks), initial=len(results), desc=desc, disable=not progress, unit="task")
        t0 = time.perf_counter()
        try:
            if ex is None:
                for path, (key, fn, args) in todo.items():
                    results[path] = fn(*args, n_workers, progress)
                    atomic_write_json(Path(path), {"key": key, "result": results[path]})
                    bar.update(1)
            else:
                futures = {ex.submit(fn, *args, n_workers, False): path for path, (key, fn, args) in todo.items()}
                for fut in ex.as_completed(list(futures)):
                    path = futures[fut]
                    results[path] = ex.result(fut)
                    atomic_write_json(Path(path), {"key": todo[path][0], "result": results[path]})
                    bar.update(1)
        finally:
            bar.close()
            if ex is not None:
                ex.close(cancel=True)
        timings[desc] = round(time.perf_counter() - t0, 1)
        return results

    # 1. hulls
    # the model file's checksum: a resumed screen recomputes what an older version of the same potential computed
    from limace.potentials.calculator import potential_sha256

    psha = potential_sha256(potential)
    hull_key = {"potential": potential, "potential_sha256": psha, "search": sdict["search"],
                "sn_reference": settings.sn_reference, "near_hull": settings.near_hull}
    if settings.committee:  # (absent otherwise: screens computed before committees existed stay valid)
        hull_key["committee"] = [list(settings.committee), settings.committee_threshold_meV]
    hull_tasks = {str(out / "work" / f"hull-{s}.json"): (hull_key, hull_task, (s, potential, sdict, str(out), device,
                                                                                   dtype)) for s in systems}
    hulls = {r["system"]: r for r in run_tasks(hull_tasks, "hull + search").values()}
    if settings.verify_dft:
        for s in systems:
            hulls[s]["near_hull"] = verify_dft(s, hulls[s], out, workers,
                                               committee_threshold_meV=settings.committee_threshold_meV,
                                               progress=progress, limit=settings.verify_limit,
                                               reuse=settings.verify_reuse, potential=potential, device=device,
                                               dtype=dtype, max_displacement=settings.reuse_max_displacement,
                                               max_strain=settings.reuse_max_strain)

    # 2. barriers for the chosen phases
    barrier_tasks, skipped = {}, {s: [] for s in systems}
    bdict = {**sdict["barriers"], "committee": list(settings.committee)} if settings.committee else sdict["barriers"]
    bkey = {"potential": potential, "potential_sha256": psha, "barriers": bdict}
    for s in systems:
        names = _barrier_phase_names(hulls[s], settings)
        structures = out / "work" / s / "structures"
        no_hops = {n: _no_hop_reason(structures / f"{n}.extxyz", settings.barriers.cutoff) for n in names}
        skipped[s] += [{"phase": n, "reason": why} for n, why in no_hops.items() if why]
        # cheapest first (vacancy-cell atoms x distinct hops): max_barrier_phases keeps the cheapest ones
        sized = sorted((*_barrier_cost(structures / f"{n}.extxyz", settings.barriers.min_image_distance,
                                       settings.barriers.cutoff), n) for n in names if not no_hops[n])
        if settings.max_barrier_phases is not None:
            for _, n_atoms, n_hops, n in sized[settings.max_barrier_phases:]:
                skipped[s].append({"phase": n, "reason": f"max_barrier_phases={settings.max_barrier_phases} (the "
                                                         f"cheapest run: {n_hops} distinct hops, {n_atoms}-atom cells)"})
            sized = sized[:settings.max_barrier_phases]
        for _, n_atoms, _, n in sized:
            if n_atoms > settings.max_barrier_atoms:
                skipped[s].append({"phase": n, "reason": f"vacancy supercell of {n_atoms} atoms > "
                                                         f"max_barrier_atoms={settings.max_barrier_atoms}"})
                continue
            barrier_tasks[str(out / "work" / f"barriers-{s}-{n}.json")] = (
                bkey, barrier_task, (s, str(structures / f"{n}.extxyz"), potential, psha, dict(bdict), str(out),
                                     device, dtype))
    done = run_tasks(barrier_tasks, "barriers") if barrier_tasks else {}
    barriers = {s: {"phases": [], "skipped": skipped[s]} for s in systems}
    for path, entry in sorted(done.items()):
        barriers[_system_of(Path(path).stem, systems)]["phases"].append(entry)

    results = {"potential": potential, "potential_sha256": psha, "settings": sdict, "systems": {}}
    for s in systems:
        h = hulls[s]
        spread = h.get("committee_std_meV_per_atom") or {}
        results["systems"][s] = {
            "hull": [{**{k: r[k] for k in ("formula", "name", "x_Li", "formation_energy_eV_per_atom",
                                           "e_above_hull_eV_per_atom", "stable", "source")},
                      **({"committee_std_meV_per_atom": spread.get(r["name"])} if spread else {})}
                     for r in h["hull"]["hull"]],
            "stable": h["hull"]["stable"], "references": h["hull"]["references"],
            "sn_reference": h["hull"].get("sn_reference"), "voltage": h["voltage"], "near_hull": h["near_hull"],
            "warnings": h.get("warnings", []),
            "search": {"n_candidates": h["n_candidates"], "n_library": h["n_library"],
                       "not_converged": h["not_converged"], "rejected": h.get("rejected", []),
                       "left_out": h.get("left_out", {}),
                       **({"funnel": h["search_report"]} if "search_report" in h else {})},
            "barriers": barriers[s],
        }
        r = results["systems"][s]
        absent = {**{n: "relaxation not converged" for n in h["not_converged"]},
                  **{x["name"]: f"rejected, {x['reason']}" for x in h.get("rejected", [])}, **h.get("left_out", {})}
        r["known_phases"] = known_phase_check(s, r["hull"], r["voltage"]["plateaus"], r["near_hull"], absent=absent)
    results["timings_s"] = {**timings, "total": round(time.perf_counter() - t_start, 1)}
    results["resumed_tasks"] = resumed
    _write_report(results, hulls, out)
    return results


def _system_of(stem: str, systems: Sequence[str]) -> str:
    for s in systems:
        if stem.startswith(f"barriers-{s}-"):
            return s
    raise KeyError(stem)


def _barrier_phase_names(hull_result: dict, settings: ScreenSettings) -> list[str]:
    rows = hull_result["hull"]["hull"]
    if settings.barrier_phases is not None:
        wanted = set(settings.barrier_phases)
        names = [r["name"] for r in rows if r["name"] in wanted or r["formula"] in wanted]
    else:
        names = [r["name"] for r in rows if r["stable"] and 0 < r["x_Li"] < 1]  # the stable Li-M compounds
    return list(dict.fromkeys(names))


# -- report -----------------------------------------------------------------------------------------------------------


def _reference_lines(r: dict) -> list[str]:
    """The elemental references of a system's hull (E_f = 0), and a word on pure-element entries below them."""
    refs = r.get("references") or {}
    if not refs:
        return [f"Sn reference: {r['sn_reference']}", ""] if r.get("sn_reference") else []
    text = "Elemental references (formation energy 0): " + ", ".join(
        f"{el} {ref['name']}" + (f" ({ref['rule']})" if ref.get("rule") not in (None, "", ref["name"]) else "")
        for el, ref in refs.items()) + "."
    below = [row for row in r.get("hull", []) if row["x_Li"] in (0.0, 1.0) and row["e_above_hull_eV_per_atom"] < -5e-5]
    if below:
        text += (" Pure-element entries below their reference show a negative energy above the hull: "
                 + ", ".join(f"{row['name']} {1000 * row['e_above_hull_eV_per_atom']:.1f} meV/atom" for row in below)
                 + " (the reference phases are fixed by convention, `HullAnalysis(references=...)` to change them).")
    return [text, ""]


def _funnel_lines(funnel: dict | None) -> list[str]:
    """The structure search's funnel in one paragraph: candidates each stage kept, the cluster expansion, timings."""
    if not funnel:
        return []
    st, t = funnel["stages"], funnel.get("timings_s", {})
    enum = ", ".join(f"{n} {p}" for p, n in funnel["enumerated"].items())
    line = (f"Search funnel: {st['single_point']['candidates']} orderings ({enum}) at Vegard's volume → "
            f"{st['single_point']['kept']} short-relaxed ({st['short_relax']['steps']} steps) → "
            f"{st['short_relax']['kept']} fully relaxed, with {funnel['prototypes']} decorated prototypes")
    ce = funnel.get("ce")
    if ce:
        if "skipped" in ce:
            line += f"; cluster expansion skipped ({ce['skipped']})"
        else:
            line += (f"; cluster expansion on {ce['training']} relaxed bcc orderings (CV RMSE "
                     f"{ce['rmse_cv_meV_per_atom']} meV/atom), {ce['anneal_runs']} annealing runs, "
                     f"{ce['relaxed']} proposals relaxed")
    times = ", ".join(f"{k} {v} s" for k, v in t.items())
    return [line + (f" (times: {times})." if times else "."), ""]


def _write_report(results: dict, hulls: dict, out: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    from limace.analysis.barriers import _plot_percolation, markdown_table
    from limace.analysis.hull import HullAnalysis
    from limace.analysis.voltage import VoltageCurve

    systems = list(results["systems"])
    for s in systems:
        HullAnalysis.from_dict(hulls[s]["hull_dict"]).plot(filename=out / f"hull_{s}.png")
    fig = Figure(figsize=(5, 3.5))
    ax = fig.add_subplot()
    for s in systems:
        VoltageCurve.from_dict(results["systems"][s]["voltage"]).plot(ax=ax, label=s)
    fig.tight_layout()
    fig.savefig(out / "voltage.png", dpi=120)
    all_barriers = {"phases": [dict(p, phase=f"{p['phase']}") for s in systems
                               for p in results["systems"][s]["barriers"]["phases"]]}
    if all_barriers["phases"]:
        _plot_percolation(all_barriers, out / "barriers.png")

    fmt = lambda x, n=3: "—" if x is None else f"{x:.{n}f}"  # noqa: E731
    taken = [f"{stage} {n} of {total}" for stage, (n, total) in results["resumed_tasks"].items() if n]
    lines = ["# limace screen report", "", f"Potential: `{results['potential']}`. "
             f"Total time {results['timings_s']['total']} s"
             + (f" (this run; tasks resumed from work/: {', '.join(taken)})." if taken else "."), ""]
    for s in systems:
        r = results["systems"][s]
        lines += [f"## {s}", ""]
        lines += [f"> **Warning:** {w}" for w in r.get("warnings", [])] + ([""] if r.get("warnings") else [])
        lines += [f"![hull](hull_{s}.png)", "", *_reference_lines(r),
                  f"Stable: {', '.join(r['stable'])}. Search: {r['search']['n_candidates']} candidates, "
                  f"{r['search']['n_library']} library phases"
                  + (f"; not converged: {', '.join(r['search']['not_converged'])}" if r['search']['not_converged'] else "")
                  + (f"; rejected as unphysical (a hole of the potential, kept off the hull): "
                     + "; ".join(f"{x['name']} ({x['reason']})" for x in r['search'].get('rejected', []))
                     if r['search'].get('rejected') else "")
                  + ".", "", *_funnel_lines(r["search"].get("funnel")),
                  "| formula | name | x_Li | E_f (meV/atom) | E above hull (meV/atom) | source |",
                  "| --- | --- | --- | --- | --- | --- |"]
        best = {}
        for row in r["hull"]:
            if row["formula"] not in best or row["e_above_hull_eV_per_atom"] < best[row["formula"]]["e_above_hull_eV_per_atom"]:
                best[row["formula"]] = row
        for row in sorted(best.values(), key=lambda x: x["x_Li"]):
            lines.append(f"| {row['formula']} | {row['name']} | {row['x_Li']:.3f} | "
                         f"{1000 * row['formation_energy_eV_per_atom']:.1f} | {1000 * row['e_above_hull_eV_per_atom']:.1f}"
                         f" | {row['source']} |")
        v = r["voltage"]
        lines += ["", f"Voltage vs Li/Li+: average {fmt(v['average_V'])} V ({v.get('average_kind', 'capacity-weighted')}),"
                  f" max Li per host atom {fmt(v['max_li_per_host'], 2)}.", "",
                  "| Li per host from | to | V | phases |", "| --- | --- | --- | --- |"]
        for p in v["plateaus"]:
            lines.append(f"| {p['y_start']:.3f} | {p['y_end']:.3f} | {p['voltage_V']:.3f} | {' → '.join(p['phases'])} |")
        if r.get("known_phases"):
            lines += ["", *known_markdown(r["known_phases"])]
        if r["near_hull"]:
            lines += ["", "Near the hull (for DFT verification; `--verify-dft`: single points at the reference "
                      "protocol, DFT formation energy and energy above the hull built from these DFT energies "
                      "alone):", "",
                      "| name | formula | E above hull (meV/atom) | source | model − DFT (meV/atom) | "
                      "DFT E_f (meV/atom) | DFT E above hull (meV/atom) |", "| --- | --- | --- | --- | --- | --- | --- |"]
            milli = lambda v: None if v is None else 1000 * v  # noqa: E731
            for n in r["near_hull"]:
                reused = n.get("dft_reused")
                lines.append(f"| {n['name']} | {n['formula']} | {1000 * n['e_above_hull_eV_per_atom']:.1f} | "
                             f"{n['source']} | {fmt(n.get('dft_error_meV_per_atom'), 1)}"
                             + ("" if not reused else f" (reused: {Path(reused['file']).name} frame {reused['index']},"
                                f" {reused['max_displacement_A']:.2f} Å)") + " | "
                             f"{fmt(milli(n.get('dft_formation_energy_eV_per_atom')), 1)} | "
                             f"{fmt(milli(n.get('dft_e_above_hull_eV_per_atom')), 1)} |")
            if any(n.get("dft_reused") for n in r["near_hull"]):
                lines += ["", "Reused checks (`--verify-reuse`): a labelled frame that is the same structure (within "
                          f"{results['settings'].get('reuse_max_displacement')} Å and a strain of "
                          f"{results['settings'].get('reuse_max_strain')}) stands in "
                          "for a new single point; the model's error is taken at that frame's geometry."]
        lines += ["", f"### Li migration barriers ({s})", ""]
        if r["barriers"]["phases"]:
            lines.append(markdown_table(r["barriers"]))
            for p in r["barriers"]["phases"]:
                lines.append(f"![NEB {p['phase']}](barriers/{s}/{p['phase']}/neb_profiles.png)")
        for sk in r["barriers"]["skipped"]:
            lines.append(f"- {sk['phase']}: skipped ({sk['reason']})")
        lines.append("")
    lines += ["![voltage](voltage.png)", ""]
    if all_barriers["phases"]:
        lines += ["![barriers](barriers.png)", ""]
    (out / "report.md").write_text("\n".join(lines))
    atomic_write_json(out / "results.json", results)
