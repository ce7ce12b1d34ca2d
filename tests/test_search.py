"""The structure search's funnel and cluster expansion on toy lattice energies whose ground states are known.

Both toy models follow the batched-potential contract (``model(state, compute_stress) -> energy [S], forces [N, 3],
stress [S, 3, 3]``) with an energy that depends only on which species sit on which sites of an ideal bcc lattice
(neighbour shells found from the distances, so any isotropic scale works) and zero forces and stress: every ideal
ordering is already "relaxed", and the tests check the search's bookkeeping and its reach, not a potential.
"""

from itertools import product

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.neighborlist import neighbor_list

from limace.analysis.search import SearchSettings, run_search

# bcc neighbour shells relative to the nearest-neighbour distance: 1st (8), 2nd (6), 3rd (12)
SHELL_RATIOS = (1.0, 2 / np.sqrt(3), np.sqrt(8 / 3))
SHELL_SIZES = (8, 6, 12)


def _shell_pairs(atoms: Atoms):
    """(i, j) pairs of each bcc shell (periodic images included), found by distance relative to the shortest one."""
    d_nn = (2 * atoms.get_volume() / len(atoms)) ** (1 / 3) * np.sqrt(3) / 2  # bcc nn distance at this volume
    i, j, d = neighbor_list("ijd", atoms, 1.05 * SHELL_RATIOS[-1] * d_nn)
    return [(i[m], j[m]) for m in (np.abs(d / d_nn - r) < 0.02 for r in SHELL_RATIOS)]


class LatticeModel:
    """A batched 'potential' whose energy is ``site_energy(atoms)`` of each system; forces and stress zero."""

    def __init__(self):
        self.device, self.dtype = torch.device("cpu"), torch.float64
        self.calls = 0

    def energy(self, atoms: Atoms) -> float:
        raise NotImplementedError

    def __call__(self, state, compute_stress=None):
        self.calls += 1
        pos = state.positions.detach().double().numpy()
        cell = state.cell.detach().double().numpy()
        num = state.numbers.numpy()
        e = [self.energy(Atoms(numbers=num[a:b], positions=pos[a:b], cell=cell[k], pbc=True))
             for k, (a, b) in enumerate(state.atom_ranges())]
        out = {"energy": torch.tensor(e, dtype=state.dtype), "forces": torch.zeros_like(state.positions)}
        if compute_stress:
            out["stress"] = torch.zeros((state.n_systems, 3, 3), dtype=state.dtype)
        return out


class EnvironmentModel(LatticeModel):
    """0 eV for a site whose (species, Li neighbours in shells 1-3) occurs in the target structure, else the L1
    distance to the closest target signature of that species (10 when the species is absent from the target):
    the target, and only a structure of the same local environments, has the lowest energy (0)."""

    def __init__(self, target: Atoms):
        super().__init__()
        self.targets = set(self.signatures(target))

    @staticmethod
    def signatures(atoms: Atoms) -> list[tuple]:
        li = np.array(atoms.get_chemical_symbols()) == "Li"
        counts = [np.bincount(i[li[j]], minlength=len(atoms)) for i, j in _shell_pairs(atoms)]
        totals = [np.bincount(i, minlength=len(atoms)) for i, _ in _shell_pairs(atoms)]
        return [(atoms[k].symbol, *(int(c[k]) for c in counts), *(int(t[k]) for t in totals))
                for k in range(len(atoms))]

    def energy(self, atoms: Atoms) -> float:
        e = 0.0
        for sig in self.signatures(atoms):
            same = [t for t in self.targets if t[0] == sig[0]]
            e += min((sum(abs(a - b) for a, b in zip(sig[1:], t[1:])) for t in same), default=10)
        return 0.01 * e


class IsingModel(LatticeModel):
    """A bcc Ising model: ``E = sum over pairs of shell k of J_k s_i s_j`` (s = +1 Li, -1 host), eV."""

    def __init__(self, couplings):
        super().__init__()
        self.j = tuple(couplings)

    def energy(self, atoms: Atoms, spins=None) -> float:
        s = np.where(np.array(atoms.get_chemical_symbols()) == "Li", 1.0, -1.0) if spins is None else spins
        return sum(0.5 * jk * (s[..., i] * s[..., j]).sum(-1) for jk, (i, j) in zip(self.j, _shell_pairs(atoms)))

    def formation_energy(self, atoms: Atoms, spins=None):
        """Per atom, against the pure bcc cells (whose energy per atom is sum_k J_k z_k / 2)."""
        pure = 0.5 * sum(jk * z for jk, z in zip(self.j, SHELL_SIZES))
        return self.energy(atoms, spins) / len(atoms) - pure


def hr5_li3in2(a: float = 3.4) -> Atoms:
    """The hR5 stacking of bcc: five sites along the nearest-neighbour [111] direction, Li Li In Li In, in the
    rhombohedral supercell b_i = -a_i + 2 (a_1 + a_2 + a_3) of the primitive bcc vectors a_i (determinant 5)."""
    prim = bulk("Li", "bcc", a=a)
    m = -np.eye(3) + 2 * np.ones((3, 3))
    cell = m @ prim.cell[:]
    t = prim.cell[:].sum(0)  # (a/2)(1, 1, 1), a lattice vector of length a*sqrt(3)/2
    return Atoms("Li2InLiIn", positions=[k * t for k in range(5)], cell=cell, pbc=True)


def _references(model: LatticeModel, host: str = "In") -> list[Atoms]:
    """'Relaxed' elemental references (for Vegard's volumes and the CE's chemical potentials): bcc cells."""
    out = []
    for el, a in (("Li", 3.44), (host, 3.8)):
        atoms = bulk(el, "bcc", a=a)
        atoms.info.update(converged=True, energy=model.energy(atoms), name=f"{el}_ref")
        out.append(atoms)
    return out


def _spacegroup(atoms: Atoms) -> int:
    import spglib

    return spglib.get_symmetry_dataset((atoms.cell[:], atoms.get_scaled_positions(), atoms.numbers),
                                       symprec=1e-3).number


def test_hr5_target_is_a_unique_five_atom_bcc_ordering():
    target = hr5_li3in2()
    assert target.get_chemical_formula(mode="metal") == "In2Li3" and _spacegroup(target) == 166  # R-3m
    d = target.get_all_distances(mic=True)
    assert np.allclose(d[d > 0].min(), 3.4 * np.sqrt(3) / 2)  # a bcc lattice: nearest neighbours at a*sqrt(3)/2


def test_funnel_finds_the_hr5_bcc_superstructure_from_enumeration():
    """A 5-atom bcc superstructure (hR5, Li3In2) is the ground state of the toy model by construction; among the
    enumerated Li3In2 orderings (six 5-atom bcc ones, more on fcc/bct) the funnel must carry it, and only it, from
    the single points through the short and full relaxations when each stage keeps one per composition."""
    from limace.analysis.search import enumerated_orderings, vegard_cell

    target = hr5_li3in2()
    model = EnvironmentModel(target)
    settings = SearchSettings(max_atoms=6, max_atoms_fcc_bct=5, parents=("bcc", "fcc", "bct"), prototypes=False,
                              short_fraction=0.01, short_min=1, short_steps=5, full_per_composition=1, ce=False)
    # the toy model's answer: the hR5 target is the only Li3In2 ordering at 0 eV
    cands = [a for a in enumerated_orderings("Li-In", settings) if a.get_chemical_formula(mode="metal") == "In2Li3"]
    energies = [model.energy(a) for a in cands]
    assert len(cands) >= 10 and sum(e < 1e-12 for e in energies) == 1

    result = run_search("Li-In", model, settings, references=_references(model))
    st = result.report["stages"]
    assert result.report["enumerated"] == {"bcc": 137, "fcc": 57, "bct": 100}
    assert st["single_point"]["candidates"] == 294 and st["single_point"]["evaluated"] == 294
    # one per composition through each stage
    assert st["single_point"]["kept"] == st["single_point"]["compositions"] == st["short_relax"]["kept"]
    li3in2 = [a for a in result.structures if a.get_chemical_formula(mode="metal") == "In2Li3"]
    assert len(li3in2) == 1
    found = li3in2[0]
    assert found.info["energy"] == pytest.approx(0.0, abs=1e-12) and found.info["parent"] == "bcc"
    assert _spacegroup(found) == 166 and sorted(EnvironmentModel.signatures(found)) == sorted(
        EnvironmentModel.signatures(vegard_cell(target, {"Li": 1.0, "In": 1.0})))

    # and without the 5-atom cells the search cannot reach Li3In2 at all
    small = run_search("Li-In", model, SearchSettings(**{**settings.as_dict(), "max_atoms": 4}),
                       references=_references(model))
    assert not [a for a in small.structures if a.get_chemical_formula(mode="metal") == "In2Li3"]


# couplings (eV) for which an ordering with 8 atoms per primitive cell at x_Li = 3/8 lies below the hull of every
# ordering of up to 6 atoms (checked below by brute force over all 2^16 configurations of the 16-site cell)
ISING_J = (0.0485, 0.0135, 0.0025)


def test_cluster_expansion_proposes_the_ground_state_beyond_the_enumeration():
    """The CE, fitted to the toy Ising energies of the <= 6-atom bcc orderings, anneals in the compact 16-site bcc
    cell and proposes the Li3In5 (x = 3/8) ground state that exhaustive enumeration of that cell gives, an ordering of
    8 atoms per primitive cell that the enumeration (<= 6) cannot hold; the 'potential' confirms its energy."""
    from limace.analysis.ce import compact_supercell, lower_hull_distance, primitive_in_frame
    from limace.analysis.search import enumerated_orderings

    model = IsingModel(ISING_J)
    # the known answer: every configuration of the 16-site cell, and every ordering of <= 6 atoms
    cell = compact_supercell(16)
    spins = np.array(list(product([1.0, -1.0], repeat=16)))
    e16 = model.formation_energy(cell, spins)
    x16 = (spins > 0).sum(1) / 16
    at_3_8 = np.flatnonzero(np.isclose(x16, 3 / 8))
    best = at_3_8[np.argmin(e16[at_3_8])]
    ground = cell.copy()
    ground.symbols = ["Li" if s > 0 else "In" for s in spins[best]]
    assert len(primitive_in_frame(ground)) == 8
    small = enumerated_orderings("Li-In", SearchSettings(max_atoms=6, parents=("bcc",)))
    xs = np.array([a.get_chemical_symbols().count("Li") / len(a) for a in small] + [3 / 8])
    es = np.array([model.formation_energy(a) for a in small] + [e16[best]])
    assert lower_hull_distance(xs, es)[-1] == 0.0
    es_without = np.append(es[:-1], 1e3)
    small_hull_at = 1e3 - lower_hull_distance(xs, es_without)[-1]
    assert e16[best] < small_hull_at - 0.003  # 3.7 meV/atom below what <= 6-atom cells give

    settings = SearchSettings(max_atoms=6, parents=("bcc",), prototypes=False, short_fraction=1.0, short_steps=2,
                              full_per_composition=1, ce_extra_training=0, ce_cutoffs=(1.5,),
                              ce_cell_sizes=(16,), ce_sweeps=300, ce_window=0.0005, ce_max_proposals=10, seed=1)
    result = run_search("Li-In", model, settings, references=_references(model))
    ce = result.report["ce"]
    assert ce["training"] == 137 and ce["rmse_cv_meV_per_atom"] < 1e-3  # the Ising model lies in the cluster space
    proposals = [a for a in result.structures if a.info.get("source") == "ce"]
    hits = [a for a in proposals if np.isclose(a.get_chemical_symbols().count("Li") / len(a), 3 / 8)]
    assert hits, [a.info["name"] for a in proposals]
    a = hits[0]
    assert len(a) == 8 and a.info["converged"]
    # the 'potential' confirms: its energy is the CE's prediction and the exhaustive answer
    e_model = model.formation_energy(a)
    assert e_model == pytest.approx(a.info["ce_energy"], abs=2e-6)
    assert e_model == pytest.approx(e16[best], abs=1e-9)


def test_single_points_come_in_atom_budget_batches_and_equal_full_calls(tiny_mace_model_path):
    """Stage a: energies only (no forces), in model calls of at most the atom budget, equal to the energies of one
    call with forces."""
    from limace.analysis.search import enumerated_orderings, single_point_energies, vegard_cell
    from limace.md.state import BatchedState
    from limace.potentials.batched import BatchedMACE

    model = BatchedMACE.from_file(tiny_mace_model_path)
    cells = [vegard_cell(a, {"Li": 20.0, "Sn": 27.0})
             for a in enumerated_orderings("Li-Sn", SearchSettings(max_atoms=4, parents=("bcc",)))]
    sizes = []

    class Counting:
        device, dtype = model.device, model.dtype

        def __call__(self, state, compute_stress=None, compute_forces=True):
            sizes.append((state.n_atoms, compute_forces))
            return model(state, compute_stress=compute_stress, compute_forces=compute_forces)

    energies = single_point_energies(cells, Counting(), max_atoms=9)
    full = model(BatchedState.from_atoms(cells, dtype=model.dtype))
    assert np.allclose(energies, full["energy"].numpy(), atol=1e-9, rtol=0) and "forces" in full
    assert sum(n for n, _ in sizes) == sum(len(a) for a in cells) == 100
    assert all(n <= 9 and not forces for n, forces in sizes) and len(sizes) >= 100 // 9
