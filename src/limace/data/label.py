"""DFT (or any ASE calculator) labelling as a resumable job.

Results go to an extxyz file with mace-torch's keys (``REF_energy``, ``REF_forces``, ``REF_stress``) and
provenance in ``info`` (``label_protocol``, ``label_code``, ``label_wall_s``, ...). The job

- skips configurations whose ``config_id`` (stable structure hash) is already in OUT (or in the failure file,
  unless ``retry_failed``),
- has only the parent process write OUT, each time as a complete new file moved into place with ``os.replace``,
  so a kill at any moment loses at most the configurations in flight and never leaves a corrupt OUT,
- records failures (SCF not converged, calculator crash, non-finite results) as JSON lines in ``OUT.failed.jsonl``,
- runs workers in local processes (one per core by default) or on a Dask cluster given its scheduler address.

The reference protocol (``shared/reference/dft-protocol.md``) is the named protocol ``"pbe-pw400"``.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from ase import Atoms

from limace.data.hashing import ensure_config_id
from limace.parallel import make_executor
from limace.core.errors import LimaceInputError, UnknownNameError
from limace.core.fileio import atomic_append
from limace.keys import CONFIG_ID_KEY, ENERGY_KEY, FORCES_KEY, STRESS_KEY


@dataclass(frozen=True)
class Protocol:
    """A named way to label a configuration: a calculator factory plus what to record about it."""

    name: str
    description: str
    make_calculator: Callable[..., object]  # keyword arguments override the protocol's calculator parameters
    code_versions: Callable[[], dict] = field(default=lambda: {})
    # GPAW protocols: when GPAW's own symmetry analysis fails on a cell (SymmetryAnalysisBug, seen on a relaxed
    # alpha-Sn cell), the same calculation is run without point-group symmetry (k-points reduced by time reversal)
    retry_without_point_group: bool = False
    # GPAW protocols: run each cell with point-group symmetry or with time reversal only, whichever GPAW's own setup
    # says is cheaper (:func:`gpaw_symmetry_by_cost`); the physics is the same either way
    symmetry_by_cost: bool = False
    # the calculator keyword that sends its own text log to a file (GPAW: ``txt``), for ``log_dir``
    log_keyword: str | None = None


# -- the reference protocol ------------------------------------------------------------------------------------------

GPAW_REFERENCE = {
    "mode": {"name": "pw", "ecut": 400.0},
    "xc": "PBE",
    "kpts": {"density": 6.0, "gamma": True},
    "occupations": {"name": "methfessel-paxton", "width": 0.2, "order": 1},
}
"""GPAW keyword arguments of the reference protocol (shared/reference/dft-protocol.md); SCF convergence = defaults."""


def _gpaw_calculator(**overrides):
    from gpaw import GPAW, PW, MethfesselPaxton

    params = {**GPAW_REFERENCE, **overrides}
    mode = params.pop("mode")
    occ = params.pop("occupations")
    return GPAW(
        mode=PW(mode["ecut"]),
        occupations=MethfesselPaxton(occ["width"], order=occ["order"]),
        txt=params.pop("txt", None),
        **params,
    )


TIME_REVERSAL_ONLY = {"symmetry": {"point_group": False}}


def _is_symmetry_bug(exc: BaseException) -> bool:
    """GPAW's SymmetryAnalysisBug (matched by name: GPAW is imported only where it runs)."""
    return type(exc).__name__ == "SymmetryAnalysisBug"


def gpaw_setup_cost(atoms: Atoms, calculator) -> tuple[int, tuple[int, int, int]]:
    """(irreducible k-points, plane-wave grid) that ``calculator`` (a GPAW calculator, not yet used) would use for
    ``atoms``: GPAW's own setup without any SCF (about 0.1 s). GPAW's grid warnings are silenced here."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        builder = calculator.params.dft_component_builder(atoms)
    return len(builder.ibz), tuple(int(n) for n in builder.grid.size_c)


def gpaw_symmetry_by_cost(atoms: Atoms, make_calculator) -> tuple[dict, str | None]:
    """Calculator overrides for the cheaper of point-group symmetry and time reversal only, and a note for the label.

    Point-group symmetry cuts the k-points, but GPAW then needs a plane-wave grid the operations map onto itself: when
    an operation relates a short cell axis to a long one (orderings in long cells), GPAW raises every axis to the
    longest one's point count (a 4-atom ordering in a 3 x 3 x 10 A cell: 48^3 points instead of 14 x 14 x 48, 783 s
    against 130 s on one core). The cost per k-point is modelled as the FFTs on the grid plus work that scales with
    the plane-wave basis (the cell's own grid): ``nk * (N log N + 1.6 N0 log N0)``, the 1.6 fitted to such pairs of
    runs; time reversal only is used when it is modelled at least 20 % cheaper. The energy, forces and stress are
    those of the same calculation either way (symmetry only reduces the work; measured differences 0.02-0.2
    meV/atom and up to 5 meV/A, the SCF tolerance). Where GPAW's own analysis fails, spglib's symmorphic operations
    are given to it (:func:`spglib_point_group`). Returns ``({}, None)``, or the overrides and a note for the label.
    """
    pg, pg_note = {}, "point-group symmetry"
    try:
        nk_pg, g_pg = gpaw_setup_cost(atoms, make_calculator())
    except Exception as exc:  # GPAW's own analysis can fail (SymmetryAnalysisBug) on a cell spglib reads fine
        if not _is_symmetry_bug(exc):
            raise
        pg, pg_note = spglib_point_group(atoms), "spglib's point group (GPAW's own analysis failed)"
        try:
            nk_pg, g_pg = gpaw_setup_cost(atoms, make_calculator(**pg))
        except Exception as exc2:
            if not _is_symmetry_bug(exc2):
                raise
            return dict(TIME_REVERSAL_ONLY), "time reversal only (point-group analysis failed)"
    nk_tr, g_tr = gpaw_setup_cost(atoms, make_calculator(**TIME_REVERSAL_ONLY))

    def nlogn(grid):
        n = float(np.prod(grid))
        return n * np.log(n)

    base = 1.6 * nlogn(g_tr)
    cost_pg, cost_tr = nk_pg * (nlogn(g_pg) + base), nk_tr * (nlogn(g_tr) + base)
    if cost_tr < 0.8 * cost_pg:
        return dict(TIME_REVERSAL_ONLY), (f"time reversal only (modelled {cost_pg / cost_tr:.1f}x cheaper: {nk_tr} "
                                          f"k-points x {g_tr} grid against {nk_pg} x {g_pg} with {pg_note})")
    return pg, (None if not pg else f"{pg_note}: {nk_pg} k-points against {nk_tr} with time reversal only")


def spglib_point_group(atoms: Atoms, tolerance: float = 1e-5) -> dict:
    """GPAW calculator overrides that give it spglib's symmorphic operations of ``atoms`` (``tolerance`` in A) instead
    of its own analysis, which fails on some cells (a model-relaxed 105-atom Li17Sn4, symmetric to 1e-8 A: GPAW's
    SymmetryAnalysisBug, so time reversal only and 36 k-points instead of 8)."""
    from gpaw.new.symmetry import Symmetries

    sym = Symmetries.from_cell_and_atoms_spglib(atoms.cell[:], relative_positions=atoms.get_scaled_positions(),
                                                ids=atoms.numbers, tolerance=tolerance)
    rot = np.asarray(sym.rotation_scc, dtype=int)
    return {"symmetry": {"rotations": rot.tolist(), "translations": np.zeros((len(rot), 3)).tolist()}}


def _gpaw_versions() -> dict:
    import gpaw

    out = {"gpaw": gpaw.__version__}
    try:
        from importlib.metadata import version

        out["gpaw-data"] = version("gpaw-data")
    except Exception:  # pragma: no cover - gpaw-data absent means setups from GPAW_SETUP_PATH
        out["gpaw-data"] = "unknown"
    return out


def _emt_calculator():
    from ase.calculators.emt import EMT

    return EMT()


def _ase_versions() -> dict:
    import ase

    return {"ase": ase.__version__}


PROTOCOLS: dict[str, Protocol] = {
    "pbe-pw400": Protocol(
        name="pbe-pw400",
        description="Reference: GPAW PW(400 eV), PBE spin-paired, k-density 6/A Gamma-centred, Methfessel-Paxton "
        "0.2 eV order 1, default SCF convergence, free (force-consistent) energy",
        make_calculator=_gpaw_calculator,
        code_versions=_gpaw_versions,
        retry_without_point_group=True,
        symmetry_by_cost=True,
        log_keyword="txt",
    ),
    "gpaw-test": Protocol(
        name="gpaw-test",
        description="Cheap GPAW settings for tests only (PW 200 eV, 1 k-point): never mix into datasets",
        make_calculator=partial(_gpaw_calculator, mode={"name": "pw", "ecut": 200.0}, kpts={"size": (1, 1, 1)}),
        code_versions=_gpaw_versions,
        retry_without_point_group=True,
        symmetry_by_cost=True,
        log_keyword="txt",
    ),
    # diagnostics of the reference labels' own k-point error (scripts/kpoint_floor.py): the reference protocol with
    # a denser mesh; never mixed into a dataset (a pack refuses labels of more than one protocol)
    **{
        f"pbe-pw400-k{d}": Protocol(
            name=f"pbe-pw400-k{d}",
            description=f"Diagnostic only: the reference protocol with k-density {d}/A instead of 6 (the labels' "
            "k-point error); never mix into datasets",
            make_calculator=partial(_gpaw_calculator, kpts={"density": float(d), "gamma": True}),
            code_versions=_gpaw_versions,
            retry_without_point_group=True,
            symmetry_by_cost=True,
            log_keyword="txt",
        )
        for d in (9, 12, 16)
    },
    "emt": Protocol(
        name="emt",
        description="ASE's EMT (Al, Cu, Ag, Au, Ni, Pd, Pt): a cheap real calculator for tests of the job machinery",
        make_calculator=_emt_calculator,
        code_versions=_ase_versions,
    ),
}


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise UnknownNameError(f"unknown labelling protocol {name!r}; known: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


# -- one configuration -----------------------------------------------------------------------------------------------


def reduced_cell_copy(atoms: Atoms) -> Atoms | None:
    """A copy of periodic ``atoms`` in its Minkowski-reduced cell (the same lattice and Cartesian frame, atoms
    wrapped into the new cell, same order), or None when the cell is already reduced or not periodic in 3D.

    Energy, forces and stress of the copy are those of ``atoms`` (same crystal, same frame). The primitive cells
    of rhombohedral phases (Li13In3 hR16: 17.6 degree angles; Li8Sn3: 25 degrees) need ~3x more k-points at a fixed
    k-point density and a larger plane-wave grid than their reduced cells; labelling them there is what makes
    them cheap.
    """
    from ase.geometry import minkowski_reduce

    if not atoms.pbc.all():
        return None
    cell = np.asarray(atoms.cell[:], dtype=float)
    rcell, op = minkowski_reduce(cell)
    if np.all(op == np.eye(3, dtype=op.dtype)):
        return None
    work = atoms.copy()
    work.set_cell(rcell, scale_atoms=False)
    work.wrap()
    return work


def label_atoms(atoms: Atoms, calculator, protocol_name: str = "custom", versions: dict | None = None,
                reduce_cell: bool = True) -> Atoms:
    """Run ``calculator`` on a copy of ``atoms`` and return it with REF_* labels and provenance, no calculator.

    ``reduce_cell``: compute in the Minkowski-reduced cell (:func:`reduced_cell_copy`; recorded as
    ``label_cell="minkowski"``) and return the labels on the configuration as given (same atoms, cell and
    positions). Raises :class:`limace.core.errors.CalculationError` for non-finite results; the calculator's own
    exceptions (e.g. GPAW's ``KohnShamConvergenceError``) propagate.
    """
    from limace.core.errors import CalculationError

    reduced = reduced_cell_copy(atoms) if reduce_cell else None
    work = atoms.copy() if reduced is None else reduced
    work.info = dict(atoms.info)
    cid = ensure_config_id(atoms.copy())
    work.calc = calculator
    t0 = time.perf_counter()
    try:
        energy = work.get_potential_energy(force_consistent=True)
    except Exception as exc:  # some calculators (EMT) only provide the plain energy
        if "force_consistent" not in str(exc) and "free_energy" not in str(exc):
            raise
        energy = work.get_potential_energy()
    forces = work.get_forces()
    stress = work.get_stress(voigt=True) if work.pbc.all() else None
    wall = time.perf_counter() - t0
    if not np.isfinite(energy) or not np.all(np.isfinite(forces)) or (stress is not None and not np.all(np.isfinite(stress))):
        raise CalculationError(f"config {cid}: non-finite energy/forces/stress")
    out = Atoms(atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    out.info = dict(atoms.info)
    out.info[CONFIG_ID_KEY] = cid
    if reduced is not None:
        out.info["label_cell"] = "minkowski"
    out.info[ENERGY_KEY] = float(energy)
    out.arrays[FORCES_KEY] = np.asarray(forces, dtype=float)
    if stress is not None:
        out.info[STRESS_KEY] = np.asarray(stress, dtype=float)
    out.info["label_protocol"] = protocol_name
    for k, v in (versions or {}).items():
        out.info[f"label_version_{k.replace('-', '_')}"] = v
    out.info["label_wall_s"] = round(wall, 3)
    return out


def _label_worker(atoms: Atoms, protocol_name: str, log_dir: str | None = None) -> tuple[str, Atoms | None, str | None]:
    """Runs in a worker: returns (config_id, labelled atoms or None, error text or None). Never raises."""
    cid = ensure_config_id(atoms)
    try:
        proto = get_protocol(protocol_name)
        overrides, note = {}, None
        if proto.symmetry_by_cost and atoms.pbc.all():
            overrides, note = gpaw_symmetry_by_cost(reduced_cell_copy(atoms) or atoms, proto.make_calculator)
        if log_dir is not None and proto.log_keyword is not None:
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            overrides[proto.log_keyword] = str(Path(log_dir) / f"{cid}.txt")
        try:
            labelled = label_atoms(atoms, proto.make_calculator(**overrides), proto.name, proto.code_versions())
            if note is not None:
                labelled.info["label_symmetry"] = note
        except Exception as exc:
            if not proto.retry_without_point_group or not _is_symmetry_bug(exc):
                raise
            calc = proto.make_calculator(**{**overrides, **TIME_REVERSAL_ONLY})
            labelled = label_atoms(atoms, calc, proto.name, proto.code_versions())
            labelled.info["label_symmetry"] = "time reversal only (point-group analysis failed)"
        return cid, labelled, None
    except Exception as exc:  # recorded in the failure file, the job goes on
        tb = traceback.format_exc(limit=3).strip().splitlines()
        return cid, None, f"{type(exc).__name__}: {exc} | {tb[-1] if tb else ''}"


# -- atomic files ----------------------------------------------------------------------------------------------------


def _frame_text(atoms: Atoms) -> str:
    import io

    from ase.io import write

    buf = io.StringIO()
    write(buf, atoms, format="extxyz")
    return buf.getvalue()


def failure_path(out: Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".failed.jsonl")


def read_done_ids(out: Path) -> set[str]:
    from ase.io import iread

    out = Path(out)
    if not out.exists() or out.stat().st_size == 0:
        return set()
    return {str(a.info.get(CONFIG_ID_KEY)) for a in iread(out, index=":", format="extxyz")}


def read_failed(out: Path) -> dict[str, str]:
    p = failure_path(out)
    if not p.exists():
        return {}
    failed = {}
    for line in p.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            failed[rec["config_id"]] = rec["error"]
    return failed


@dataclass
class LabelReport:
    total: int
    skipped_done: int
    skipped_failed: int
    labelled: int
    failed: int
    wall_s: float

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def label_configurations(configs: Sequence[Atoms], out: str | Path, protocol: str = "pbe-pw400", workers: int = 1,
                         scheduler: str | None = None, retry_failed: bool = False, progress: bool = True,
                         limit: int | None = None, log_dir: str | Path | None = None,
                         smallest_first: bool = False) -> LabelReport:
    """Label ``configs`` into ``out`` (extxyz) with a named protocol; resumable (see module docstring).

    ``workers``: local processes (ignored with ``scheduler``, a Dask scheduler address such as
    ``"tcp://host:8786"`` or a :class:`distributed.LocalCluster`'s address). ``limit``: label at most this many
    now (for chunked runs). ``log_dir``: the calculator's own log of each configuration goes to
    ``log_dir/CONFIG_ID.txt`` (GPAW's SCF iterations: how far a long single point has got). ``smallest_first``:
    label the configurations in order of atom count (the file's order among equal sizes), so that a job killed
    at any time has labelled as many as it could; the cost of a plane-wave single point grows with the cube of it.
    """
    get_protocol(protocol)  # fail early on a bad name
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    done = read_done_ids(out)
    failed = {} if retry_failed else read_failed(out)
    todo, seen = [], set()
    n_done = n_failed = 0
    for atoms in configs:
        cid = ensure_config_id(atoms)
        if cid in done:
            n_done += 1
            continue
        if cid in failed:
            n_failed += 1
            continue
        if cid in seen:
            continue
        seen.add(cid)
        todo.append(atoms)
    if smallest_first:
        todo.sort(key=len)  # stable: the file's order among equal sizes
    if limit is not None:
        todo = todo[:limit]
    report = LabelReport(total=len(configs), skipped_done=n_done, skipped_failed=n_failed, labelled=0, failed=0,
                         wall_s=0.0)
    if not todo:
        return report
    log = None if log_dir is None else str(Path(log_dir).resolve())
    ex = make_executor(workers, scheduler)
    bar = _progress(len(todo), f"label {out.name} [{protocol}]", progress)
    try:
        results: Iterable
        if ex is None:
            results = (_label_worker(a, protocol, log) for a in todo)
        else:
            futures = [ex.submit(_label_worker, a, protocol, log) for a in todo]
            results = (ex.result(f) for f in ex.as_completed(futures))
        for cid, labelled, err in results:
            if labelled is not None:
                atomic_append(out, _frame_text(labelled))
                report.labelled += 1
            else:
                rec = {"config_id": cid, "protocol": protocol, "error": err, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
                atomic_append(failure_path(out), json.dumps(rec) + "\n")
                report.failed += 1
            bar.update(1)
            bar.set_postfix(ok=report.labelled, failed=report.failed)
    finally:
        bar.close()
        if ex is not None:
            ex.close(cancel=True)
    report.wall_s = round(time.perf_counter() - t0, 2)
    return report


def label_file(inp: str | Path, out: str | Path, **kwargs) -> LabelReport:
    """:func:`label_configurations` on every frame of an extxyz (or any ASE-readable) file."""
    from limace.data.io import read_configurations

    configs = read_configurations(inp, labelled=False, allowed_elements=None)
    if not configs:
        raise LimaceInputError(f"{inp}: no configurations")
    return label_configurations(configs, out, **kwargs)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, unit="cfg", dynamic_ncols=True)
