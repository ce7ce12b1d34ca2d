"""How the model-built and rescaled entries of ``src/limace/data/phases.yaml`` were made (issue 21).

Run once; the numbers it prints are committed to phases.yaml, not recomputed at run time::

    OMP_NUM_THREADS=1 python scripts/build_library_phases.py candidates    # energies of every candidate ordering
    OMP_NUM_THREADS=1 python scripts/build_library_phases.py relax ID...   # symmetric relaxation -> a phases.yaml entry

Candidates are bcc superstructures with the reported space group (or cell, for Li13In3) of each phase:

- ``[111]`` stacking variants of bcc: an ``N``-layer rhombohedral cell (``N`` not a multiple of 3; hR5 Li3In2,
  hR7 Li5Sn2, hR16 Li13In3) is built from ``N`` layers at ``z = k/N`` of the hexagonal cell (space group R3,
  ``a_hex = sqrt(2) a_bcc``, ``c_hex = N sqrt(3)/2 a_bcc``); every layer sequence symmetric about site 0 with
  the right composition is a candidate (R-3m).
- Li2In (Cmcm, 6 atoms per primitive cell): every 6-atom bcc ordering of Li4In2 (icet enumeration,
  :func:`limace.data.generate.enumerate_orderings`) whose ideal cell has space group 63.
- Li13In3 ("cubic"): every placement of 3 In on the 16 sites of the 2x2x2 conventional bcc cell, and the hR16
  [111] stackings.

Each candidate is relaxed with the shipped potential under its own symmetry (ase ``FixSymmetry`` +
``FrechetCellFilter``, FIRE, ``fmax`` 0.005 eV/A); the lowest-energy one per phase becomes the library entry
(marked ``provenance: model-built``), except where a DFT single point at the reference protocol disagreed
(Li3In2: DFT puts the other stacking 39 meV/atom lower, and that one is the entry) and for Li13In3, reported cubic, whose entry is the one cubic candidate
(the hR16 stackings are printed for comparison; the best is 8 meV/atom lower with the potential 1.4). Isotypic prototypes whose lattice is not known for the compound (Li8Sn3 on
the Li8Pb3 cell, Li22Sn5 on the Li22Si5 cell) are relaxed the same way, starting from the prototype's fractional
coordinates.
"""

from __future__ import annotations

import itertools
import sys
import time

import numpy as np
import spglib
import yaml
from ase import Atoms
from ase.constraints import FixSymmetry
from ase.filters import FrechetCellFilter
from ase.optimize import FIRE
from ase.spacegroup import crystal

from limace.data.structures import get_structure, min_distance, primitive_cell, sort_species

POTENTIAL = "limace-lisnin-small"
A_BCC = 3.45  # starting bcc lattice parameter (A); every candidate is relaxed, so this only sets the first step
_CALC = None


def calc():
    global _CALC
    if _CALC is None:
        import limace.potentials

        _CALC = limace.potentials.load(POTENTIAL, dtype="float64")
    return _CALC


def spg(atoms: Atoms, symprec: float = 1e-3) -> tuple[int, str]:
    ds = spglib.get_symmetry_dataset((atoms.cell[:], atoms.get_scaled_positions(), atoms.numbers), symprec=symprec)
    return ds.number, ds.international


def rhombohedral_stacking(seq: list[str], a_bcc: float = A_BCC) -> Atoms:
    """bcc with the layer sequence ``seq`` along [111] (one atom per layer in the primitive cell)."""
    n = len(seq)
    assert n % 3, "N must not be a multiple of 3 for the rhombohedral cell"
    a_h, c_h = np.sqrt(2) * a_bcc, n * np.sqrt(3) / 2 * a_bcc
    atoms = crystal(seq, [(0, 0, k / n) for k in range(n)], spacegroup=146, cellpar=[a_h, a_h, c_h, 90, 90, 120])
    return sort_species(primitive_cell(atoms))


def symmetric_sequences(n: int, host: str, n_host: int) -> list[list[str]]:
    """Layer sequences of length ``n`` with ``n_host`` host layers, mirror-symmetric about layer 0 (k -> -k)."""
    out, seen = [], set()
    for sites in itertools.combinations(range(n), n_host):
        s = set(sites)
        if {(-k) % n for k in s} != s:
            continue
        seq = ["Li"] * n
        for k in s:
            seq[k] = host
        # the same cyclic sequence read from another mirror point, or backwards, is the same structure
        key = min(min(tuple(seq[(i + j) % n] for j in range(n)), tuple(seq[(i - j) % n] for j in range(n)))
                  for i in range(n))
        if key not in seen:
            seen.add(key)
            out.append(seq)
    return out


def cubic_2x2x2(host_sites: tuple[int, ...], host: str) -> Atoms:
    base = Atoms("Li2", scaled_positions=[(0, 0, 0), (0.5, 0.5, 0.5)], cell=np.eye(3) * A_BCC, pbc=True).repeat(2)
    sym = base.get_chemical_symbols()
    for i in host_sites:
        sym[i] = host
    base.set_chemical_symbols(sym)
    return sort_species(base)


def dedupe(cands: list[Atoms]) -> list[Atoms]:
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.io.ase import AseAtomsAdaptor

    sm = StructureMatcher(primitive_cell=True, scale=True, attempt_supercell=True)
    structs = [AseAtomsAdaptor.get_structure(a) for a in cands]
    groups = sm.group_structures(structs)
    keep = []
    for g in groups:
        idx = structs.index(g[0])
        keep.append(cands[idx])
    return keep


def candidates(phase: str) -> list[Atoms]:
    if phase == "Li3In2":
        return [rhombohedral_stacking(s) for s in symmetric_sequences(5, "In", 2)]
    if phase == "Li5Sn2":
        return [rhombohedral_stacking(s) for s in symmetric_sequences(7, "Sn", 2)]
    if phase == "Li2In":
        from limace.data.generate import enumerate_orderings

        out = []
        for a in enumerate_orderings("bcc", ("Li", "In"), [6]):
            if a.get_chemical_symbols().count("In") == 2 and spg(a)[0] == 63:
                out.append(a)
        return out
    if phase == "Li13In3":
        cubic = [cubic_2x2x2(s, "In") for s in itertools.combinations(range(16), 3)]
        cubic = [a for a in cubic if spg(a)[0] >= 195]  # the cubic ones
        return dedupe(cubic) + [rhombohedral_stacking(s) for s in symmetric_sequences(16, "In", 3)]
    raise SystemExit(f"no candidates for {phase}")


def relax(atoms: Atoms, fmax: float = 0.005, steps: int = 600) -> Atoms:
    a = atoms.copy()
    a.calc = calc()
    a.set_constraint(FixSymmetry(a, symprec=1e-3))
    opt = FIRE(FrechetCellFilter(a), logfile=None)
    opt.run(fmax=fmax, steps=steps)
    a.info["converged"] = bool(opt.converged()) if hasattr(opt, "converged") else None
    a.info["steps"] = opt.get_number_of_steps()
    a.set_constraint()
    return a


_REFS: dict[str, float] = {}


def reference(el: str) -> float:
    if el not in _REFS:
        pid = {"Li": "Li_bcc", "In": "In_tI2", "Sn": "Sn_alpha"}[el]
        r = relax(get_structure(pid, primitive=True))
        _REFS[el] = r.get_potential_energy() / len(r)
    return _REFS[el]


def formation_energy(a: Atoms) -> float:
    """meV/atom against relaxed bcc Li, tI2 In and alpha-Sn (the hull's defaults) with the same potential."""
    e = a.get_potential_energy()
    syms = a.get_chemical_symbols()
    return 1000 * (e - sum(reference(s) for s in syms)) / len(a)


def _snap(x: float) -> float:
    """A fractional coordinate rounded to 5 decimals, or the exact k/12 it lies within 1e-4 of (1/3, 1/4, ...)."""
    k = round(x * 12)
    if abs(x - k / 12) < 1e-4:
        return (k % 12) / 12
    return round(x, 5)


def entry(a: Atoms, pid: str) -> dict:
    """A phases.yaml ``spacegroup``/``cellpar``/``sites`` block from the standardised cell (spglib)."""
    ds = spglib.get_symmetry_dataset((a.cell[:], a.get_scaled_positions(), a.numbers), symprec=1e-3)
    std = Atoms(numbers=ds.std_types, cell=ds.std_lattice, scaled_positions=ds.std_positions, pbc=True)
    dstd = spglib.get_symmetry_dataset((std.cell[:], std.get_scaled_positions(), std.numbers), symprec=1e-3)
    sites, seen = [], set()
    for i, eq in enumerate(dstd.equivalent_atoms):
        if eq in seen:
            continue
        seen.add(eq)
        mult = int(np.sum(dstd.equivalent_atoms == eq))
        xyz = [_snap(float(x) % 1.0) for x in std.get_scaled_positions()[i]]
        sites.append({"element": std[i].symbol, "wyckoff": f"{mult}{dstd.wyckoffs[i]}", "xyz": xyz})
    cp = [round(float(x), 4) for x in std.cell.cellpar()]
    return {"id": pid, "spacegroup": {"number": int(ds.number), "symbol": ds.international, "ase_setting": 1},
            "cellpar": cp, "sites": sites}


def main(argv: list[str]) -> None:
    cmd, *ids = argv
    if cmd == "candidates":
        for pid in ids:
            t = time.time()
            cands = candidates(pid)
            print(f"# {pid}: {len(cands)} candidates")
            rows = []
            for k, c in enumerate(cands):
                r = relax(c)
                rows.append((formation_energy(r), k, r))
                seq = "".join("L" if s == "Li" else "H" for s in c.get_chemical_symbols())
                print(f"{pid} cand {k:3d} n={len(c):3d} {spg(c)[1]:>10s} -> {spg(r)[1]:>10s} "
                      f"Ef={rows[-1][0]:8.2f} meV/atom dmin={min_distance(r):.3f} V/at={r.get_volume() / len(r):.2f} "
                      f"steps={r.info['steps']} {seq}", flush=True)
            rows.sort(key=lambda x: x[0])
            best = rows[0][2]
            print(f"# {pid} best cand {rows[0][1]} Ef={rows[0][0]:.2f}; next {[round(x[0], 2) for x in rows[1:4]]}"
                  f" ({time.time() - t:.0f} s)")
            print(yaml.safe_dump(entry(best, pid), sort_keys=False, default_flow_style=None, width=120))
    elif cmd == "relax":
        for pid in ids:
            a = get_structure(pid, primitive=True)
            r = relax(a)
            print(f"{pid} Ef={formation_energy(r):.2f} meV/atom {spg(a)[1]} -> {spg(r)[1]} dmin={min_distance(r):.3f} "
                  f"V/at={r.get_volume() / len(r):.2f} steps={r.info['steps']}")
            print(yaml.safe_dump(entry(r, pid), sort_keys=False, default_flow_style=None, width=120))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
