"""Structure search for a Li-M binary: thousands of orderings through a funnel, a cluster expansion beyond them, and
the library's phases and prototypes of any size.

Candidates (``info["source"]``: ``"search"`` or ``"ce"``; a unique ``info["name"]``):

- orderings of Li and M on the bcc parent with up to ``max_atoms`` sites (11 by default: 3710 orderings) and on the fcc
  and body-centred-tetragonal parents with up to ``max_atoms_fcc_bct`` (8: 631 and 1300), by icet's Hart-Forcade
  enumeration (:func:`limace.data.generate.enumerate_orderings`, about 5 s), pure cells included. They go through a
  funnel (:func:`run_search`):

  a. one batched single point of every ordering at Vegard's volume (the cell scaled to the composition-weighted
     volumes per atom of the elements' relaxed phases, the densest polymorph of each), in model calls of at most
     ``single_point_atoms`` atoms;
  b. a short batched relaxation (``short_steps`` steps, positions and cell) of the best ``short_fraction`` of each
     composition's orderings by that single point (at least ``short_min``);
  c. a full relaxation (``fmax``, ``max_steps``) of the best ``full_per_composition`` distinct structures of each
     composition after stage b;

- a cluster expansion (:mod:`limace.analysis.ce`) fitted to the relaxed formation energies of the bcc orderings that
  stages b and c relaxed (those that stayed bcc), then simulated annealing at every composition of compact bcc
  supercells of up to ``ce_cell_sizes`` sites; the distinct annealed structures within ``ce_window`` of the CE's own
  hull that the funnel did not already relax fully (at most ``ce_max_proposals``, those with more atoms per primitive
  cell than the enumeration holds first) are relaxed with the potential and enter with source ``"ce"``;
- the structure library's prototypes decorated with the other host (every built Li-Sn phase becomes a Li-In
  candidate and the reverse: ``Li13Sn5`` -> ``Li13In5``), up to ``max_prototype_atoms`` atoms, fully relaxed.

The library phases themselves (any size, :func:`library_structures`) are relaxed by the caller
(:func:`limace.analysis.screen.hull_task`) and enter the hull with source ``library``; their relaxed elements set
Vegard's volumes and the formation energies the cluster expansion learns.

>>> result = run_search("Li-In", model, SearchSettings(), references=relaxed_library)   # doctest: +SKIP
>>> result.report["stages"]                                                              # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from ase import Atoms

from limace.core.errors import LimaceInputError, check_number

# A relaxed bcc ordering whose cell stretched by more than this (shape, volume removed) or whose atoms moved more than
# this fraction of the nearest-neighbour distance has left the bcc lattice: not a cluster-expansion training point.
CE_MAX_STRAIN = 0.08
CE_MAX_DISPLACEMENT = 0.25
# stage-b structures whose largest force row is above this (eV/A) are too far from relaxed to train the CE on
CE_MAX_FMAX = 0.1


@dataclass(frozen=True)
class SearchSettings:
    """Settings of the structure search (defaults: the full screen; :meth:`reduced` is the demo's)."""

    max_atoms: int = 11  # bcc orderings up to this many atoms per cell
    max_atoms_fcc_bct: int = 8  # fcc and bct orderings up to min(this, max_atoms)
    parents: tuple[str, ...] = ("bcc", "fcc", "bct")
    prototypes: bool = True
    max_prototype_atoms: int = 120
    max_library_atoms: int | None = None  # None: every built library phase, whatever its size
    # the funnel
    single_point_atoms: int = 1024  # atoms per batched single-point call (stage a)
    short_fraction: float = 0.03  # stage b: this fraction of each composition's orderings ...
    short_min: int = 2  # ... and at least this many
    short_steps: int = 20
    full_per_composition: int = 2  # stage c
    relax_atoms: int = 1024  # atoms relaxed together (batched relaxations)
    optimizer: str = "lbfgs"
    fmax: float = 0.02
    max_steps: int = 300
    # the cluster expansion (bcc)
    ce: bool = True
    ce_cutoffs: tuple[float, ...] = (1.75, 1.05)  # pairs, triplets; units of the bcc lattice constant
    ce_cell_sizes: tuple[int, ...] = (12, 16, 18, 20, 24, 27, 32)
    ce_sweeps: int = 100  # annealing trial swaps per site
    ce_window: float = 0.005  # eV/atom above the CE's hull
    ce_max_proposals: int = 8
    ce_extra_training: int = 30  # random bcc orderings (not among the best) also short-relaxed, to train the CE
    seed: int = 0
    # sanity bounds on relaxed structures (a potential's holes: a cell that collapses into a region without training
    # data can reach absurd energies and would then be "the" stable phase); see reject_unphysical
    min_volume_ratio: float = 0.7
    min_formation_energy: float = -1.0

    @classmethod
    def reduced(cls, **changes) -> "SearchSettings":
        """A cheaper search for the demo: bcc orderings up to 8 atoms, fcc/bct up to 6, a smaller funnel and CE
        (library phases and decorated prototypes of every size, as in the full search)."""
        base = dict(max_atoms=8, max_atoms_fcc_bct=6, short_fraction=0.03, short_min=2, short_steps=15,
                    full_per_composition=1, ce_cell_sizes=(12, 16), ce_sweeps=50, ce_max_proposals=3,
                    ce_extra_training=30, max_steps=250)
        return cls(**{**base, **changes})

    def check(self) -> "SearchSettings":
        """Raise :class:`LimaceInputError` naming the first setting out of range; returns self."""
        from limace.core.optimize import OPTIMIZERS
        from limace.data.generate import PARENTS

        for name in ("max_atoms", "max_atoms_fcc_bct", "max_prototype_atoms", "single_point_atoms", "short_min",
                     "full_per_composition", "relax_atoms", "max_steps", "ce_sweeps"):
            check_number(name, getattr(self, name), at_least=1)
        check_number("max_library_atoms", self.max_library_atoms, at_least=1)
        check_number("short_steps", self.short_steps, at_least=0)
        check_number("ce_max_proposals", self.ce_max_proposals, at_least=0)
        check_number("ce_extra_training", self.ce_extra_training, at_least=0)
        check_number("short_fraction", self.short_fraction, above=0, at_most=1)
        check_number("fmax", self.fmax, above=0)
        check_number("ce_window", self.ce_window, at_least=0)
        unknown = [p for p in self.parents if p not in PARENTS]
        if unknown or not self.parents:
            raise LimaceInputError(f"parents must be some of {', '.join(PARENTS)}, got {list(self.parents)}")
        if self.optimizer not in OPTIMIZERS:
            raise LimaceInputError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if any(not (isinstance(c, (int, float)) and c > 0) for c in self.ce_cutoffs) or not self.ce_cutoffs:
            raise LimaceInputError(f"ce_cutoffs must be positive numbers, got {list(self.ce_cutoffs)}")
        if any(not (isinstance(n, int) and n >= 2) for n in self.ce_cell_sizes):
            raise LimaceInputError(f"ce_cell_sizes must be integers >= 2, got {list(self.ce_cell_sizes)}")
        if not 0 < self.min_volume_ratio <= 1:
            raise LimaceInputError(f"min_volume_ratio must be in (0, 1], got {self.min_volume_ratio}")
        if self.min_formation_energy >= 0:
            raise LimaceInputError(f"min_formation_energy must be < 0 eV/atom, got {self.min_formation_energy}")
        return self

    def as_dict(self) -> dict:
        return asdict(self)


def _host(system: str) -> str:
    from limace.analysis.hull import SYSTEMS

    if system not in SYSTEMS:
        raise LimaceInputError(f"unknown system {system!r}; choose one of {', '.join(SYSTEMS)}")
    return system.split("-")[1]


def library_structures(system: str) -> list[Atoms]:
    """The built library phases of ``system`` (elements included, all Sn polymorphs), primitive cells of any size
    (the screen leaves out those above ``SearchSettings.max_library_atoms`` and says so)."""
    from limace.data.structures import list_phases

    out = []
    for p in list_phases(system=system, buildable=True):
        a = p.build(primitive=True)
        a.info.update(name=p.id, phase=p.id, source="library")
        out.append(a)
    return out


def enumerated_orderings(system: str, settings: SearchSettings = SearchSettings()) -> list[Atoms]:
    """The orderings of Li and the host on every parent of ``settings`` (ideal lattices at the generator's estimated
    volume), named ``PARENT-K-FORMULA`` (K: icet's enumeration index)."""
    from limace.data.generate import enumerate_orderings

    host = _host(system)
    out: list[Atoms] = []
    for parent in settings.parents:
        n_max = settings.max_atoms if parent == "bcc" else min(settings.max_atoms, settings.max_atoms_fcc_bct)
        for k, a in enumerate(enumerate_orderings(parent, ("Li", host), range(1, n_max + 1))):
            a.info.update(name=f"{parent}-{k}-{a.get_chemical_formula(mode='metal')}", source="search")
            out.append(a)
    return out


def decorated_prototypes(system: str, max_atoms: int = 120) -> list[Atoms]:
    """The other system's built compounds with its host replaced by this one's (``Li13Sn5`` -> ``Li13In5``), scaled
    to the generator's estimated volume, up to ``max_atoms`` atoms; named ``PHASE-type-FORMULA``."""
    from limace.data.generate import estimated_volume_per_atom, scale_to_volume
    from limace.data.structures import list_phases, sort_species

    host = _host(system)
    other = {"In": "Sn", "Sn": "In"}[host]
    out = []
    for p in list_phases(system=f"Li-{other}", buildable=True):
        if p.system == "element":
            continue
        a = p.build(primitive=True)
        if len(a) > max_atoms:
            continue
        a.symbols = [host if s == other else s for s in a.get_chemical_symbols()]
        a = sort_species(scale_to_volume(a, estimated_volume_per_atom(a.get_chemical_symbols())))
        a.info = {"name": f"{p.id}-type-{a.get_chemical_formula(mode='metal')}", "source": "search",
                  "prototype": p.id}
        out.append(a)
    return out


def search_candidates(system: str, settings: SearchSettings = SearchSettings()) -> list[Atoms]:
    """Every enumerated ordering and (with ``settings.prototypes``) every decorated prototype of ``system``."""
    out = enumerated_orderings(system, settings)
    if settings.prototypes:
        out += decorated_prototypes(system, settings.max_prototype_atoms)
    return out


def relax_all(structures: Sequence[Atoms], model, fmax: float, max_steps: int, progress: bool = True, *,
              optimizer: str = "fire", max_atoms: int | None = None) -> list[Atoms]:
    """Relax positions and cell of every structure (batched); keeps ``info`` (name, source, phase, ...)."""
    from limace.analysis.relax import relax_structures

    structures = list(structures)
    if not structures:
        return []
    relaxed = relax_structures(structures, model, fmax=fmax, max_steps=max_steps, relax_cell=True,
                               progress=progress, optimizer=optimizer, max_atoms=max_atoms)
    for src, new in zip(structures, relaxed):
        for key in ("name", "phase", "source", "prototype", "parent", "ce_energy", "stage"):
            if key in src.info:
                new.info[key] = src.info[key]
    return relaxed


# -- the funnel -------------------------------------------------------------------------------------------------------


def element_volumes(references: Sequence[Atoms]) -> dict[str, float]:
    """Volume per atom (A^3) of each element's densest relaxed pure structure among ``references`` (converged
    relaxations only); the generator's experimental volumes for elements without one."""
    from limace.data.generate import ELEMENT_VOLUME

    out = dict(ELEMENT_VOLUME)
    seen: dict[str, float] = {}
    for a in references:
        syms = set(a.get_chemical_symbols())
        if len(syms) == 1 and a.info.get("converged", False):
            (el,) = syms
            v = a.get_volume() / len(a)
            seen[el] = min(seen.get(el, math.inf), v)
    out.update(seen)
    return out


def vegard_cell(atoms: Atoms, volumes: dict[str, float]) -> Atoms:
    """A copy scaled isotropically to Vegard's volume: the sum of the elements' volumes per atom."""
    a = atoms.copy()
    v = sum(volumes[s] for s in a.get_chemical_symbols())
    a.set_cell(a.cell[:] * (v / a.get_volume()) ** (1 / 3), scale_atoms=True)
    return a


def single_point_energies(structures: Sequence[Atoms], model, max_atoms: int = 1024,
                          progress: bool = False) -> np.ndarray:
    """Total energies (eV) of all structures, evaluated in batched model calls of at most ``max_atoms`` atoms
    (a structure larger than that gets a call of its own); NaN where the model returned a non-finite energy."""
    import torch
    from tqdm.auto import tqdm

    from limace.core.state import BatchedState

    import inspect

    device = getattr(model, "device", torch.device("cpu"))
    dtype = getattr(model, "dtype", torch.float64)
    # energies only where the model can skip the forces (BatchedMACE: no backward pass)
    kwargs = {"compute_forces": False} if "compute_forces" in inspect.signature(model.__call__).parameters else {}
    out = np.full(len(structures), np.nan)
    bar = tqdm(total=len(structures), desc="single points", unit="structure", disable=not progress)
    batch: list[int] = []
    n_atoms = 0

    def flush():
        state = BatchedState.from_atoms([structures[i] for i in batch], device=device, dtype=dtype)
        e = model(state, compute_stress=False, **kwargs)["energy"].detach().cpu().double().numpy()
        out[batch] = np.where(np.isfinite(e), e, np.nan)
        bar.update(len(batch))

    for i, a in enumerate(structures):
        if batch and n_atoms + len(a) > max_atoms:
            flush()
            batch, n_atoms = [], 0
        batch.append(i)
        n_atoms += len(a)
    if batch:
        flush()
    bar.close()
    return out


def _composition(atoms: Atoms, host: str) -> tuple[int, int]:
    syms = atoms.get_chemical_symbols()
    n_li, n_h = syms.count("Li"), syms.count(host)
    g = math.gcd(n_li, n_h)
    return n_li // g, n_h // g


def _best_per_composition(structures: Sequence[Atoms], energies: np.ndarray, host: str, n_keep) -> list[int]:
    """Indices of the lowest-energy-per-atom structures of each composition; ``n_keep(n_in_composition)`` of each."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, a in enumerate(structures):
        if np.isfinite(energies[i]):
            groups.setdefault(_composition(a, host), []).append(i)
    keep = []
    for comp in sorted(groups):
        idx = sorted(groups[comp], key=lambda i: energies[i] / len(structures[i]))
        keep += idx[:n_keep(len(idx))]
    return keep


def _distinct(structures: Sequence[Atoms], idx: Sequence[int], e_tol: float = 2e-4, v_tol: float = 0.01) -> list[int]:
    """``idx`` (sorted by energy per atom within a composition) without near-duplicates: a structure within
    ``e_tol`` eV/atom and ``v_tol`` relative volume of one kept before it is taken for the same relaxed structure."""
    kept: list[int] = []
    for i in idx:
        a = structures[i]
        e, v = a.info["energy"] / len(a), a.get_volume() / len(a)
        if not any(abs(e - structures[j].info["energy"] / len(structures[j])) < e_tol
                   and abs(v - structures[j].get_volume() / len(structures[j])) < v_tol * v for j in kept):
            kept.append(i)
    return kept


def _left_bcc(ideal: Atoms, relaxed: Atoms) -> bool:
    """Whether a relaxed ordering left its ideal lattice (see CE_MAX_STRAIN, CE_MAX_DISPLACEMENT)."""
    m = np.linalg.solve(ideal.cell[:], relaxed.cell[:])  # relaxed = ideal @ m (rows are lattice vectors)
    f = m.T
    u2 = f.T @ f
    w = np.sqrt(np.clip(np.linalg.eigvalsh(u2), 1e-12, None))
    w = w / np.prod(w) ** (1 / 3)
    if np.max(np.abs(w - 1)) > CE_MAX_STRAIN:
        return True
    d = relaxed.get_scaled_positions(wrap=False) - ideal.get_scaled_positions(wrap=False)
    d -= np.round(d)
    disp = np.linalg.norm(d @ relaxed.cell[:], axis=1)
    d_nn = (2 * relaxed.get_volume() / len(relaxed)) ** (1 / 3) * math.sqrt(3) / 2
    return bool(disp.max() > CE_MAX_DISPLACEMENT * d_nn)


@dataclass
class SearchResult:
    """The fully relaxed search structures (stage c, decorated prototypes and CE proposals) and the report."""

    structures: list[Atoms]
    report: dict = field(default_factory=dict)


def run_search(system: str, model, settings: SearchSettings = SearchSettings(), references: Sequence[Atoms] = (),
               progress: bool = False) -> SearchResult:
    """The structure search of ``system`` with a batched potential (see the module docstring).

    ``references``: the relaxed library phases (or at least the relaxed elements): their pure structures give
    Vegard's volumes and the chemical potentials of the formation energies the cluster expansion is fitted to.
    Returns every fully relaxed candidate (``info``: name, source, energy, converged, ...) and a JSON-ready report:
    candidates per stage, timings (s) and the cluster expansion's fit and proposals.
    """
    settings.check()
    host = _host(system)
    t_all, c_all = time.perf_counter(), time.process_time()
    volumes = element_volumes(references)
    timings: dict[str, float] = {}
    cpu: dict[str, float] = {}
    c0 = time.process_time()
    report: dict = {"vegard_volumes_A3": {el: round(volumes[el], 3) for el in ("Li", host)}}

    t0 = time.perf_counter()
    orderings = enumerated_orderings(system, settings)
    prototypes = decorated_prototypes(system, settings.max_prototype_atoms) if settings.prototypes else []
    report["enumerated"] = {p: sum(1 for a in orderings if a.info["parent"] == p) for p in settings.parents}
    report["prototypes"] = len(prototypes)
    timings["enumerate"] = time.perf_counter() - t0
    cpu["enumerate"], c0 = time.process_time() - c0, time.process_time()

    # a. single points at Vegard's volume
    t0 = time.perf_counter()
    start = [vegard_cell(a, volumes) for a in orderings]
    e_sp = single_point_energies(start, model, settings.single_point_atoms, progress)
    timings["single_point"] = time.perf_counter() - t0
    cpu["single_point"], c0 = time.process_time() - c0, time.process_time()
    n_short = lambda n: max(settings.short_min, math.ceil(settings.short_fraction * n))  # noqa: E731
    keep_a = _best_per_composition(start, e_sp, host, n_short)
    compositions = {_composition(a, host) for a in start}
    extra = []
    if settings.ce and settings.ce_extra_training and "bcc" in settings.parents:
        chosen = set(keep_a)
        pool = [i for i, a in enumerate(start) if a.info["parent"] == "bcc" and i not in chosen
                and np.isfinite(e_sp[i])]
        rng = np.random.default_rng(settings.seed)
        extra = sorted(rng.choice(pool, size=min(settings.ce_extra_training, len(pool)), replace=False).tolist())

    # b. short relaxation of the best per composition
    t0 = time.perf_counter()
    short_all = relax_all([start[i] for i in keep_a + extra], model, settings.fmax, settings.short_steps, progress,
                          optimizer=settings.optimizer, max_atoms=settings.relax_atoms)
    timings["short_relax"] = time.perf_counter() - t0
    cpu["short_relax"], c0 = time.process_time() - c0, time.process_time()
    short, short_extra = short_all[:len(keep_a)], short_all[len(keep_a):]
    e_short = np.array([a.info.get("energy", np.nan) if "relax_error" not in a.info else np.nan for a in short])
    groups = _best_per_composition(short, e_short, host, lambda n: n)  # all, sorted per composition
    by_comp: dict[tuple[int, int], list[int]] = {}
    for i in groups:
        by_comp.setdefault(_composition(short[i], host), []).append(i)
    keep_b = [i for comp in sorted(by_comp) for i in _distinct(short, by_comp[comp])[:settings.full_per_composition]]

    # c. full relaxation of the best few per composition, and of the decorated prototypes
    t0 = time.perf_counter()
    todo = []
    for i in keep_b:
        a = short[i].copy()
        a.calc = None
        todo.append(a)
    full = relax_all(todo + prototypes, model, settings.fmax, settings.max_steps, progress,
                     optimizer=settings.optimizer, max_atoms=settings.relax_atoms)
    timings["full_relax"] = time.perf_counter() - t0
    cpu["full_relax"], c0 = time.process_time() - c0, time.process_time()
    for a in full:
        a.info["stage"] = "full"
    report["stages"] = {
        "single_point": {"candidates": len(start), "compositions": len(compositions),
                         "evaluated": int(np.isfinite(e_sp).sum()), "kept": len(keep_a)},
        "short_relax": {"candidates": len(keep_a), "steps": settings.short_steps,
                        "kept": len(keep_b), "ce_extra_training": len(extra)},
        "full_relax": {"candidates": len(keep_b), "prototypes": len(prototypes), "relaxed": len(full),
                       "converged": sum(bool(a.info.get("converged")) for a in full)},
    }

    # the cluster expansion on bcc, trained on what stages b and c relaxed
    if settings.ce and "bcc" in settings.parents:
        t0 = time.perf_counter()
        ideal_of = {a.info["name"]: a for a in orderings if a.info["parent"] == "bcc"}
        final = {a.info["name"]: a for a in full[:len(keep_b)] if a.info.get("converged")}
        ce_out = _cluster_expansion(system, model, settings, ideal_of, short_all, final, references, volumes,
                                    progress)
        report["ce"] = ce_out["report"]
        full += ce_out["structures"]
        timings["ce"] = time.perf_counter() - t0
        cpu["ce"], c0 = time.process_time() - c0, time.process_time()
    timings["total"] = time.perf_counter() - t_all
    cpu["total"] = time.process_time() - c_all
    report["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    report["cpu_s"] = {k: round(v, 1) for k, v in cpu.items()}  # CPU time of this process (all its threads)
    return SearchResult(structures=full, report=report)


def _chemical_potentials(references: Sequence[Atoms], elements: Sequence[str]) -> dict[str, float] | None:
    mu: dict[str, float] = {}
    for a in references:
        syms = set(a.get_chemical_symbols())
        if len(syms) == 1 and a.info.get("converged", False) and "energy" in a.info:
            (el,) = syms
            mu[el] = min(mu.get(el, math.inf), a.info["energy"] / len(a))
    return mu if all(el in mu for el in elements) else None


def _cluster_expansion(system, model, settings, ideal_of, short, final, references, volumes, progress) -> dict:
    """Fit, anneal, pick and relax the CE proposals (see the module docstring); ``{"report", "structures"}``."""
    from ase.build import bulk

    from limace.analysis.ce import anneal_ground_states, fit_cluster_expansion, lower_hull_distance, structure_key

    host = _host(system)
    mu = _chemical_potentials(references, ("Li", host))
    if mu is None:
        return {"report": {"skipped": "no relaxed elemental references"}, "structures": []}
    train, energies = [], []
    for a in short:
        name = a.info.get("name")
        if name not in ideal_of:
            continue
        relaxed = final.get(name)
        if relaxed is None:
            if "relax_error" in a.info or a.info.get("relax_fmax", math.inf) > CE_MAX_FMAX:
                continue
            relaxed = a
        ideal = vegard_cell(ideal_of[name], volumes)  # the stage-b start, atom for atom
        if _left_bcc(ideal, relaxed):
            continue
        syms = relaxed.get_chemical_symbols()
        train.append(ideal_of[name])
        energies.append((relaxed.info["energy"] - sum(mu[s] for s in syms)) / len(syms))
    rep: dict = {"training": len(train)}
    t0 = time.perf_counter()
    try:
        fit = fit_cluster_expansion(train, energies, ("Li", host), settings.ce_cutoffs, seed=settings.seed)
    except LimaceInputError as exc:
        rep["skipped"] = str(exc)
        return {"report": rep, "structures": []}
    rep.update(fit.summary())
    t_fit, t0 = time.perf_counter() - t0, time.perf_counter()
    proposals = anneal_ground_states(fit.ce, ("Li", host), settings.ce_cell_sizes, sweeps=settings.ce_sweeps,
                                     seed=settings.seed, progress=progress)
    rep["anneal_runs"] = sum(n - 1 for n in settings.ce_cell_sizes)
    rep["distinct_annealed"] = len(proposals)
    cs = fit.ce.get_cluster_space_copy()
    done_keys = {structure_key(cs, ideal_of[n]) for n in final if n in ideal_of}
    x_train = [a.get_chemical_symbols().count("Li") / len(a) for a in train]
    e_train = list(fit.predict(train))
    x_all = np.array(x_train + [p.x_li for p in proposals] + [0.0, 1.0])
    e_all = np.array(e_train + [p.energy for p in proposals]
                     + list(fit.predict([bulk(host, "bcc", a=1.0), bulk("Li", "bcc", a=1.0)])))
    dist = lower_hull_distance(x_all, e_all)[len(train):len(train) + len(proposals)]
    picked = [(d, p) for d, p in zip(dist, proposals) if d <= settings.ce_window + 1e-9]
    rep["within_window"] = len(picked)
    new = [(d, p) for d, p in picked if p.key not in done_keys]
    rep["already_relaxed"] = len(picked) - len(new)
    # orderings larger than the enumeration's first (what only the CE can reach), then by distance to the CE's hull
    new.sort(key=lambda dp: (dp[1].key[0] <= settings.max_atoms, dp[0], dp[1].x_li))
    new = new[:settings.ce_max_proposals]
    todo = []
    for k, (d, p) in enumerate(new):
        from limace.data.structures import sort_species

        a = sort_species(vegard_cell(p.atoms, volumes))
        a.info = {"name": f"ce-{k}-{a.get_chemical_formula(mode='metal')}", "source": "ce",
                  "ce_energy": round(p.energy, 6), "parent": "bcc"}
        todo.append(a)
    t_anneal, t0 = time.perf_counter() - t0, time.perf_counter()
    relaxed = relax_all(todo, model, settings.fmax, settings.max_steps, progress, optimizer=settings.optimizer,
                        max_atoms=settings.relax_atoms)
    for a in relaxed:
        a.info["stage"] = "ce"
    rep["timings_s"] = {"fit": round(t_fit, 1), "anneal": round(t_anneal, 1),
                        "relax": round(time.perf_counter() - t0, 1)}
    rep["relaxed"] = len(relaxed)
    rep["proposals"] = [{"name": a.info["name"], "atoms": len(a), "ce_formation_energy_eV_per_atom": a.info["ce_energy"],
                         "formation_energy_eV_per_atom": round((a.info["energy"] - sum(
                             mu[s] for s in a.get_chemical_symbols())) / len(a), 6) if "energy" in a.info else None,
                         "converged": bool(a.info.get("converged"))} for a in relaxed]
    return {"report": rep, "structures": relaxed}


def lowest_per_composition(structures: Sequence[Atoms]) -> list[Atoms]:
    """The lowest energy per atom (``info["energy"]``) of each reduced composition among converged structures."""
    from limace.data.io import composition_label

    best: dict[str, Atoms] = {}
    for a in structures:
        if not a.info.get("converged", True) or "relax_error" in a.info:
            continue
        key = composition_label(a)
        if key not in best or a.info["energy"] / len(a) < best[key].info["energy"] / len(best[key]):
            best[key] = a
    return list(best.values())


def experimental_volumes(elements: Sequence[str]) -> dict[str, list[float]]:
    """Volumes per atom (A^3) of each element's phases in the structure library (experimental cells)."""
    from limace.data import get_structure, list_phases

    out: dict[str, list[float]] = {}
    for p in list_phases():
        if not p.buildable:
            continue
        a = get_structure(p.id)
        syms = set(a.get_chemical_symbols())
        if len(syms) == 1 and (el := next(iter(syms))) in elements:
            out.setdefault(el, []).append(a.get_volume() / len(a))
    return out


def reject_unphysical(structures: Sequence[Atoms], min_volume_ratio: float = 0.7,
                      min_formation_energy: float = -1.0, max_element_expansion: float = 1.3,
                      reference_volumes: dict[str, float] | None = None) -> tuple[list[Atoms], list[dict], list[str]]:
    """Split relaxed structures into (kept, rejected, warnings) by physical bounds, so that a hole of the potential
    cannot put a collapsed cell on the hull (for Li-In and Li-Sn, DFT formation energies lie above -0.45 eV/atom and
    alloy volumes within ~20 % of Vegard's law):

    - a compound whose volume per atom is below ``min_volume_ratio`` x Vegard's volume from ``reference_volumes``
      (default: the elements' experimental volumes from the structure library) is rejected;
    - so is one whose formation energy against the lowest pure structure of each element is below
      ``min_formation_energy`` (eV/atom);
    - pure elements are never rejected (they are the hull's references), but one whose relaxed volume exceeds
      ``max_element_expansion`` x the element's largest experimental volume gives a warning: the potential does not bind that
      crystal (its isolated-atom energy lies below the bulk energy), so formation energies against it mean nothing.

    Rejected entries are ``{"name", "formula", "reason"}``. Structures without ``info["energy"]`` (failed
    relaxations) are kept for the caller's own handling.
    """
    from collections import Counter

    elements = sorted({s for a in structures for s in a.get_chemical_symbols()})
    if reference_volumes is not None:
        ref_v = loose_v = dict(reference_volumes)
    else:  # Vegard from each element's densest phase; the expansion warning against its loosest
        volumes = experimental_volumes(elements)
        ref_v = {el: min(v) for el, v in volumes.items()}
        loose_v = {el: max(v) for el, v in volumes.items()}
    pure_e: dict[str, float] = {}
    warnings = []
    for a in structures:
        syms = set(a.get_chemical_symbols())
        if len(syms) == 1 and a.info.get("converged", False) and "energy" in a.info:
            (el,) = syms
            pure_e[el] = min(pure_e.get(el, float("inf")), a.info["energy"] / len(a))
            v = a.get_volume() / len(a)
            if el in loose_v and v > max_element_expansion * loose_v[el]:
                warnings.append(f"{a.info.get('name', el)}: relaxed to {v / loose_v[el]:.1f} x the experimental volume "
                                f"per atom of {el} (the potential does not bind it: its isolated-atom energy is below "
                                "the crystal's); formation energies against it are not meaningful")
    kept, rejected = [], []
    for a in structures:
        counts = Counter(a.get_chemical_symbols())
        if len(counts) == 1 or "energy" not in a.info or not set(counts) <= set(ref_v):
            kept.append(a)
            continue
        n = len(a)
        ratio = a.get_volume() / n / (sum(c * ref_v[el] for el, c in counts.items()) / n)
        reason = None
        if ratio < min_volume_ratio:
            reason = f"volume {ratio:.2f} x Vegard < {min_volume_ratio}"
        elif set(counts) <= set(pure_e):
            e_form = (a.info["energy"] - sum(c * pure_e[el] for el, c in counts.items())) / n
            if e_form < min_formation_energy:
                reason = f"formation energy {e_form:.2f} eV/atom < {min_formation_energy}"
        if reason is None:
            kept.append(a)
        else:
            rejected.append({"name": a.info.get("name", a.get_chemical_formula()), "formula": a.get_chemical_formula(),
                             "reason": reason})
    return kept, rejected, warnings
