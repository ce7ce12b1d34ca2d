"""BatchedMACE against mace-torch's own MACECalculator, and the torch neighbour list against matscipy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk

from limace.errors import UnsupportedElementError
from limace.md.state import BatchedState
from limace.potentials.batched import BatchedMACE
from limace.potentials.neighbors import VerletList, neighbor_list


def _cells() -> list[Atoms]:
    """Cells of different sizes: a 2-atom strongly skewed cell (smaller than the cutoff), bcc Li-Sn, diamond Sn-Li,
    a Li-In cell periodic in two directions only."""
    skewed = Atoms("LiSn", positions=[[0, 0, 0], [1.3, 1.2, 1.0]],
                   cell=[[2.6, 0, 0], [1.9, 2.2, 0], [0.7, -1.1, 2.5]], pbc=True)
    lisn = bulk("Li", "bcc", a=3.5, cubic=True).repeat((2, 2, 2))
    lisn.numbers[[1, 5, 9]] = 50
    lisn.rattle(0.1, seed=2)
    snli = bulk("Sn", "diamond", a=6.5).repeat((2, 1, 1))
    snli.numbers[0] = 3
    snli.rattle(0.1, seed=3)
    slab = bulk("Li", "bcc", a=3.5, cubic=True).repeat((2, 1, 1))
    slab.numbers[1] = 49
    slab.rattle(0.1, seed=4)
    slab.center(vacuum=4.0, axis=2)
    slab.pbc = (True, True, False)
    return [skewed, lisn, snli, slab]


@pytest.fixture(scope="module")
def model_path(tiny_mace_model_path):
    return tiny_mace_model_path


@pytest.mark.parametrize("max_atoms_per_call", [None, 12])
def test_matches_mace_calculator(model_path, max_atoms_per_call):
    """Energy, forces and stress of a batch equal MACECalculator on each cell alone (float64, 1e-6)."""
    from mace.calculators import MACECalculator

    cells = _cells()
    model = BatchedMACE.from_file(model_path, dtype=torch.float64, compute_stress=True,
                                  max_atoms_per_call=max_atoms_per_call)
    state = BatchedState.from_atoms(cells, dtype=torch.float64)
    out = model(state)
    assert out["energy"].shape == (4,) and out["forces"].shape == (state.n_atoms, 3)
    assert out["stress"].shape == (4, 3, 3)
    calc = MACECalculator(model_paths=str(model_path), device="cpu", default_dtype="float64")
    for k, (a, b) in enumerate(state.atom_ranges()):
        atoms = cells[k].copy()
        atoms.calc = calc
        assert float(out["energy"][k]) == pytest.approx(atoms.get_potential_energy(), abs=1e-6)
        np.testing.assert_allclose(out["forces"][a:b].numpy(), atoms.get_forces(), atol=1e-6)
        if atoms.pbc.all():
            np.testing.assert_allclose(out["stress"][k].numpy(), atoms.get_stress(voigt=False), atol=1e-6)
    # the cells are not trivial: forces and stress well above the tolerance
    assert float(out["forces"].abs().max()) > 1e-2 and float(out["stress"][:3].abs().max()) > 1e-4


def test_stress_only_when_asked_and_float32(model_path):
    cells = _cells()[:3]
    m64 = BatchedMACE.from_file(model_path, dtype="float64")
    m32 = BatchedMACE.from_file(model_path, dtype="float32")
    s64 = BatchedState.from_atoms(cells, dtype=torch.float64)
    s32 = BatchedState.from_atoms(cells, dtype=torch.float32)
    out64, out32 = m64(s64), m32(s32)
    assert "stress" not in out64 and "stress" in m64(s64, compute_stress=True)
    assert out32["forces"].dtype == torch.float32
    np.testing.assert_allclose(out32["forces"].numpy(), out64["forces"].numpy(), atol=2e-5)


def test_unknown_element_is_refused(model_path):
    model = BatchedMACE.from_file(model_path)
    atoms = bulk("Cu", "fcc", a=3.6)
    with pytest.raises(UnsupportedElementError, match="Cu"):
        model(BatchedState.from_atoms([atoms]))


def test_load_batched_from_registry_loader(model_path):
    import limace.potentials as lp

    model = lp.load(str(model_path), batched=True, dtype="float32")
    assert isinstance(model, BatchedMACE) and model.dtype == torch.float32


def test_neighbor_list_matches_matscipy():
    """Same pairs and shifts as matscipy for skewed, small, unwrapped, partly and non-periodic systems."""
    from matscipy.neighbours import neighbour_list

    rng = np.random.default_rng(0)
    systems = _cells()
    for n in (5, 23):
        c = np.diag(rng.uniform(4, 9, 3)) + rng.uniform(-2, 2, (3, 3))
        a = Atoms(f"Li{n}", cell=c, pbc=True)
        a.set_scaled_positions(rng.uniform(-0.7, 1.7, (n, 3)))  # atoms outside the cell
        systems.append(a)
    systems.append(Atoms("Li5", positions=rng.uniform(0, 4, (5, 3)), pbc=False))
    state = BatchedState.from_atoms(systems)
    cut = 5.0
    edge_index, shifts = neighbor_list(state.positions, state.cell, state.pbc, state.system_idx, cut)
    for k, (a0, b0) in enumerate(state.atom_ranges()):
        at = systems[k]
        cell = at.cell.array if at.pbc.any() else np.eye(3) * 100
        i, j, s = neighbour_list("ijS", positions=at.positions, cell=cell, pbc=at.pbc, cutoff=cut)
        keep = ~((i == j) & (s == 0).all(1))
        ref = set(zip(i[keep].tolist(), j[keep].tolist(), map(tuple, s[keep].tolist())))
        m = (edge_index[0] >= a0) & (edge_index[0] < b0)
        mine = list(zip((edge_index[0][m] - a0).tolist(), (edge_index[1][m] - a0).tolist(),
                        [tuple(int(round(x)) for x in r) for r in shifts[m].tolist()]))
        assert len(mine) == len(set(mine)) == len(ref) and set(mine) == ref, f"system {k}"


def test_verlet_list_skin_reuse_and_rebuild(model_path):
    """Within skin/2 (and small cell strain) the list is reused and results equal a fresh evaluation; beyond, it is
    rebuilt."""
    cells = _cells()[:3]
    state = BatchedState.from_atoms(cells)
    model = BatchedMACE.from_file(model_path, skin=1.0)
    model(state)
    assert model.neighbors.n_builds == 1
    rng = np.random.default_rng(1)
    step = torch.as_tensor(rng.normal(size=(state.n_atoms, 3)))
    small = state.replace(positions=state.positions + 0.45 * step / step.norm(dim=1, keepdim=True))
    out = model(small)
    assert model.neighbors.n_builds == 1
    fresh = BatchedMACE.from_file(model_path, skin=0.0)(small)
    np.testing.assert_allclose(out["forces"].numpy(), fresh["forces"].numpy(), atol=1e-12)
    np.testing.assert_allclose(out["energy"].numpy(), fresh["energy"].numpy(), atol=1e-12)
    big = state.replace(positions=state.positions + 0.55 * step / step.norm(dim=1, keepdim=True))
    model(big)
    assert model.neighbors.n_builds == 2
    strained = big.replace(positions=big.positions * 1.05, cell=big.cell * 1.05)  # 5 % * 5.5 A < skin
    out = model(strained)
    assert model.neighbors.n_builds == 2
    fresh = BatchedMACE.from_file(model_path, skin=0.0)(strained)
    np.testing.assert_allclose(out["forces"].numpy(), fresh["forces"].numpy(), atol=1e-12)
    model(big.replace(positions=big.positions * 1.25, cell=big.cell * 1.25))
    assert model.neighbors.n_builds == 3
    assert VerletList(4.0, 0.5).needs_rebuild(state.positions, state.cell, state.pbc, state.system_idx)


@pytest.mark.slow
def test_compiled_model_matches_eager(model_path):
    """torch.compile (minutes on a CPU): the same energies and forces as the eager model, also after the edge count
    changes (dynamic shapes) and with chunks of different sizes."""
    cells = _cells()[:3]
    state = BatchedState.from_atoms(cells)
    eager = BatchedMACE.from_file(model_path, max_atoms_per_call=20)
    compiled = BatchedMACE.from_file(model_path, max_atoms_per_call=20, compile=True)
    for shift in (0.0, 0.3):
        moved = state.replace(positions=state.positions + shift * torch.sin(state.positions))
        a, b = eager(moved), compiled(moved)
        np.testing.assert_allclose(b["energy"].numpy(), a["energy"].numpy(), atol=1e-8)
        np.testing.assert_allclose(b["forces"].numpy(), a["forces"].numpy(), atol=1e-8)


def test_a_model_built_for_cuda_compares_equal_to_the_states_cuda_device():
    # "cuda" without an index must become the indexed device of the tensors made on it, or a model built with
    # device="cuda" refuses every state (found on the first GPU run: "state on cuda:0, model on cuda")
    import torch

    from limace.md.state import as_device

    assert as_device("cpu") == torch.device("cpu")
    assert as_device("cuda").index is not None
    assert as_device("cuda:1") == torch.device("cuda", 1)


@pytest.mark.parametrize("max_atoms_per_call", [None, 12])
def test_a_subset_of_systems_equals_the_selected_state_and_keeps_the_neighbour_list(model_path, max_atoms_per_call):
    """``model(state, systems=mask)`` gives what ``model(state.select(mask))`` gives (1e-10), and evaluating
    different subsets of one state does not rebuild the neighbour list (what a NEB with frozen images does)."""
    model = BatchedMACE.from_file(model_path, dtype=torch.float64, compute_stress=True,
                                  max_atoms_per_call=max_atoms_per_call)
    state = BatchedState.from_atoms(_cells(), dtype=torch.float64)
    model(state)
    builds = model.neighbors.n_builds
    for mask in ([True, False, True, False], [False, True, True, True], [False, False, False, True]):
        mask = torch.tensor(mask)
        sub = model(state, systems=mask)
        assert model.neighbors.n_builds == builds
        want = BatchedMACE.from_file(model_path, dtype=torch.float64, compute_stress=True)(state.select(mask))
        for k in ("energy", "forces", "stress"):
            np.testing.assert_allclose(sub[k].numpy(), want[k].numpy(), atol=1e-10)
