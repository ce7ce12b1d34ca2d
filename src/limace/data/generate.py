"""Configuration generators.

Every generator returns ASE Atoms with ``info["config_type"]`` set and is reproducible from ``seed``
(a :class:`numpy.random.Generator` is made from it; global RNG state is never touched).

config_type values: ``strain_iso``, ``strain_shear``, ``rattle``, ``vacancy``, ``hop_linear``, ``hop_idpp``,
``enum_<parent>``, ``random_<parent>``, plus whatever the caller set on an equilibrium cell (``equilibrium``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from ase import Atoms
from ase.build import bulk, make_supercell

from limace.data.structures import sort_species
from limace.core.errors import LimaceInputError

# Atomic volumes (A^3/atom) used to size enumerated/random cells before any relaxation.
# Elements: the library's experimental cells (Li bcc 3.5093 A; In tI2; beta-Sn).
# Li in compounds is much smaller (it donates its electron): 15 A^3 reproduces the library's Li-Sn phases
# (LiSn 20.5 vs 21.0, Li7Sn3 18.4 vs 18.6, Li13Sn5 18.2 vs 18.3, Li2Sn5 23.6 vs 23.6).
ELEMENT_VOLUME = {"Li": 21.61, "In": 26.17, "Sn": 27.06}
LI_VOLUME_IN_COMPOUND = 15.0

PARENTS = ("bcc", "fcc", "bct")


def _rng(seed: int | np.random.Generator) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _tag(atoms: Atoms, config_type: str, **info) -> Atoms:
    atoms.info = {k: v for k, v in atoms.info.items() if k not in ("config_type",)}
    atoms.info["config_type"] = config_type
    atoms.info.update(info)
    return atoms


def estimated_volume_per_atom(symbols: Sequence[str]) -> float:
    """Starting volume per atom for an alloy of these symbols (see module constants)."""
    symbols = list(symbols)
    n = len(symbols)
    x_li = symbols.count("Li") / n
    if x_li in (0.0, 1.0):
        return float(np.mean([ELEMENT_VOLUME[s] for s in symbols]))
    # Li volume grows back towards the metal as the alloy becomes Li-rich (x^6 keeps Li13Sn5..Li17Sn4 compact)
    v_li = LI_VOLUME_IN_COMPOUND + (ELEMENT_VOLUME["Li"] - LI_VOLUME_IN_COMPOUND) * x_li**6
    return float(np.mean([v_li if s == "Li" else ELEMENT_VOLUME[s] for s in symbols]))


def scale_to_volume(atoms: Atoms, volume_per_atom: float) -> Atoms:
    atoms = atoms.copy()
    s = (volume_per_atom * len(atoms) / atoms.get_volume()) ** (1 / 3)
    atoms.set_cell(atoms.cell[:] * s, scale_atoms=True)
    return atoms


# -- distortions ---------------------------------------------------------------------------------------------------


def strained(atoms: Atoms, strains: Sequence[float] = (-0.05, -0.025, 0.025, 0.05), kind: str = "iso",
             seed: int | np.random.Generator = 0) -> list[Atoms]:
    """Strained copies. ``kind="iso"``: volume strain of each linear strain e (cell * (1+e)).
    ``kind="shear"``: a random symmetric traceless strain tensor of Frobenius norm |e| per copy (seeded)."""
    rng = _rng(seed)
    out = []
    for e in strains:
        if abs(e) > 0.2:
            raise LimaceInputError(f"strain {e} is larger than 20 %")
        if kind == "iso":
            eps = np.eye(3) * e
        elif kind == "shear":
            a = rng.normal(size=(3, 3))
            a = 0.5 * (a + a.T)
            a -= np.trace(a) / 3 * np.eye(3)
            eps = a / np.linalg.norm(a) * abs(e)
        else:
            raise LimaceInputError(f"unknown strain kind {kind!r}; use 'iso' or 'shear'")
        new = atoms.copy()
        new.set_cell(atoms.cell[:] @ (np.eye(3) + eps), scale_atoms=True)
        out.append(_tag(new, f"strain_{kind}", strain=float(e)))
    return out


def rattled(atoms: Atoms, amplitudes: Sequence[float] = (0.03, 0.07, 0.11, 0.15), n_per_amplitude: int = 1,
            seed: int | np.random.Generator = 0) -> list[Atoms]:
    """Copies with Gaussian displacements of standard deviation ``amplitude`` (A) on every Cartesian component."""
    rng = _rng(seed)
    out = []
    for amp in amplitudes:
        if not 0 < amp <= 0.5:
            raise LimaceInputError(f"rattle amplitude {amp} A is outside (0, 0.5]")
        for _ in range(n_per_amplitude):
            new = atoms.copy()
            new.positions += rng.normal(scale=amp, size=new.positions.shape)
            out.append(_tag(new, "rattle", rattle_amplitude=float(amp)))
    return out


# -- supercells, vacancies and hops --------------------------------------------------------------------------------


def supercell_matrix(atoms: Atoms, min_length: float) -> np.ndarray:
    """Diagonal repetition so that every perpendicular width of the supercell is >= ``min_length`` (A)."""
    cell = atoms.cell
    vol = abs(np.linalg.det(cell[:]))
    widths = [vol / np.linalg.norm(np.cross(cell[(i + 1) % 3], cell[(i + 2) % 3])) for i in range(3)]
    return np.diag([max(1, int(np.ceil(min_length / w - 1e-9))) for w in widths])


def li_vacancy(atoms: Atoms, site: int | None = None, repeat: Sequence[int] | np.ndarray | None = None,
               seed: int | np.random.Generator = 0) -> Atoms:
    """Supercell (``repeat`` as 3 ints or a 3x3 matrix; default none) with one Li removed.

    ``site`` is the index of the Li in the supercell to remove; default a random Li (seeded).
    ``info['vacancy_site']`` records it, ``info['vacancy_position']`` its Cartesian position.
    """
    sc = _supercell(atoms, repeat)
    li = [i for i, s in enumerate(sc.get_chemical_symbols()) if s == "Li"]
    if not li:
        raise LimaceInputError(f"{sc.get_chemical_formula()} has no Li to remove")
    if site is None:
        site = int(_rng(seed).choice(li))
    elif sc[site].symbol != "Li":
        raise LimaceInputError(f"site {site} is {sc[site].symbol}, not Li")
    pos = sc.positions[site].copy()
    del sc[site]
    return _tag(sc, "vacancy", vacancy_site=int(site), vacancy_position=pos.tolist())


def _supercell(atoms: Atoms, repeat) -> Atoms:
    if repeat is None:
        sc = atoms.copy()
    else:
        m = np.asarray(repeat)
        m = np.diag(m) if m.ndim == 1 else m
        sc = make_supercell(atoms, m)
        sc.info = dict(atoms.info)
    return sort_species(sc)


def li_neighbour_pairs(atoms: Atoms, cutoff: float = 3.6) -> list[tuple[int, int, np.ndarray]]:
    """Li-Li pairs (i < j by index, nearest image) within ``cutoff``: (i, j, vector i->j)."""
    from ase.neighborlist import neighbor_list

    i, j, D = neighbor_list("ijD", atoms, cutoff)
    li = np.array(atoms.get_chemical_symbols()) == "Li"
    keep = li[i] & li[j] & (i < j)
    return [(int(a), int(b), d) for a, b, d in zip(i[keep], j[keep], D[keep])]


def hop_endpoints(supercell: Atoms, vacancy: int, mover: int) -> tuple[Atoms, Atoms]:
    """Initial and final states of the Li at ``mover`` jumping into a vacancy at ``vacancy`` (indices in
    ``supercell``, both Li). Both states have the same atom order; the mover is the last atom."""
    if supercell[vacancy].symbol != "Li" or supercell[mover].symbol != "Li" or vacancy == mover:
        raise LimaceInputError(f"hop {mover}->{vacancy} must join two different Li sites")
    vec = supercell.get_distance(mover, vacancy, mic=True, vector=True)
    keep = [k for k in range(len(supercell)) if k not in (vacancy, mover)] + [mover]
    initial = supercell[keep]
    final = initial.copy()
    final.positions[-1] = initial.positions[-1] + vec
    for a in (initial, final):
        a.info = {k: v for k, v in supercell.info.items() if k != "config_type"}
    return initial, final


def hop_images(initial: Atoms, final: Atoms, n_images: int = 5, method: str = "idpp") -> list[Atoms]:
    """Interior images between two endpoints: ``method="linear"`` or ``"idpp"`` (ASE's IDPP)."""
    from ase.mep import NEB

    if method not in ("linear", "idpp"):
        raise LimaceInputError(f"unknown interpolation {method!r}; use 'linear' or 'idpp'")
    images = [initial.copy()] + [initial.copy() for _ in range(n_images)] + [final.copy()]
    neb = NEB(images, method="improvedtangent")
    if method == "idpp":
        neb.interpolate(method="idpp", mic=True)
    else:
        neb.interpolate(mic=True)
    out = []
    for k, im in enumerate(images[1:-1], start=1):
        im.info = dict(initial.info)
        out.append(_tag(im, f"hop_{method}", image=k, n_images=n_images))
    return out


def vacancy_hops(atoms: Atoms, repeat=None, n_hops: int = 1, n_images: int = 3, method: str = "idpp",
                 cutoff: float = 3.6, seed: int | np.random.Generator = 0) -> list[Atoms]:
    """Images of ``n_hops`` random nearest-neighbour Li vacancy hops in a supercell of ``atoms``."""
    rng = _rng(seed)
    sc = _supercell(atoms, repeat)
    pairs = li_neighbour_pairs(sc, cutoff)
    if not pairs:
        raise LimaceInputError(f"{sc.get_chemical_formula()}: no Li-Li pair within {cutoff} A")
    out = []
    for k in rng.choice(len(pairs), size=min(n_hops, len(pairs)), replace=False):
        i, j, d = pairs[int(k)]
        ini, fin = hop_endpoints(sc, vacancy=i, mover=j)
        for im in hop_images(ini, fin, n_images=n_images, method=method):
            im.info["hop_length"] = float(np.linalg.norm(d))
            out.append(im)
    return out


# -- orderings on parent lattices ----------------------------------------------------------------------------------


def parent_lattice(parent: str, c_over_a: float = 1.2) -> Atoms:
    """One-atom primitive parent lattice (bcc, fcc, or body-centred tetragonal with ``c_over_a``), unit volume scale."""
    if parent == "bcc":
        return bulk("X", "bcc", a=1.0)
    if parent == "fcc":
        return bulk("X", "fcc", a=1.0)
    if parent == "bct":
        return bulk("X", "bct", a=1.0, c=c_over_a)
    raise LimaceInputError(f"unknown parent lattice {parent!r}; choose one of {', '.join(PARENTS)}")


def enumerate_orderings(parent: str, elements: Sequence[str], sizes: Sequence[int],
                        concentration_restrictions: dict | None = None, c_over_a: float = 1.2) -> Iterator[Atoms]:
    """All symmetry-distinct orderings of ``elements`` on ``parent`` with the given cell sizes (icet's
    Hart-Forcade enumeration), each scaled to :func:`estimated_volume_per_atom`. Pure-element cells included."""
    from icet.tools import enumerate_structures

    prim = parent_lattice(parent, c_over_a)
    prim.symbols = [elements[0]]
    for k, s in enumerate(enumerate_structures(prim, list(sizes), list(elements),
                                               concentration_restrictions=concentration_restrictions)):
        s = sort_species(scale_to_volume(s, estimated_volume_per_atom(s.get_chemical_symbols())))
        s.pbc = True
        yield _tag(s, f"enum_{parent}", parent=parent, enum_index=k)


def random_alloy(parent: str, elements: Sequence[str], fractions: Sequence[float], repeat: Sequence[int] = (2, 2, 2),
                 cubic: bool = True, c_over_a: float = 1.2, seed: int | np.random.Generator = 0) -> Atoms:
    """A random substitutional alloy on a ``parent`` supercell: exact counts from ``fractions`` (rounded), sites
    shuffled with ``seed``, scaled to :func:`estimated_volume_per_atom`."""
    if len(elements) != len(fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise LimaceInputError(f"fractions {list(fractions)} must match elements {list(elements)} and sum to 1")
    rng = _rng(seed)
    if cubic and parent in ("bcc", "fcc"):
        base = bulk("X", parent, a=1.0, cubic=True)
    else:
        base = parent_lattice(parent, c_over_a)
    sc = base.repeat(tuple(repeat))
    n = len(sc)
    counts = np.floor(np.asarray(fractions) * n).astype(int)
    counts[np.argmax(fractions)] += n - counts.sum()
    symbols = np.repeat(list(elements), counts)
    rng.shuffle(symbols)
    sc.symbols = list(symbols)
    sc = sort_species(scale_to_volume(sc, estimated_volume_per_atom(list(symbols))))
    return _tag(sc, f"random_{parent}", parent=parent)
