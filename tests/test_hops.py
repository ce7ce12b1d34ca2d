"""Symmetry-distinct hops, vacancy supercells and percolation of the hop network."""

import numpy as np
import pytest
from ase import Atoms

from limace.analysis.hops import (distinct_hops, hop_endpoints_for, li_coordination, shortest_lattice_vector,
                                  vacancy_sites, vacancy_supercell_matrix)
from limace.analysis.percolation import PercolationResult, percolation
from limace.data import get_structure
from limace.errors import LimaceInputError


def tetragonal(a=3.0, c=3.4):
    return Atoms("Li", cell=[a, a, c], pbc=True)


def test_bcc_li_has_two_distinct_hops_with_their_multiplicities():
    hops = distinct_hops(get_structure("Li_bcc", primitive=True), cutoff=3.6)
    assert [round(h.length, 3) for h in hops] == [3.039, 3.509]
    # unordered copies per site: 8 first neighbours -> 4 bonds, 6 second -> 3
    assert [h.multiplicity for h in hops] == [4, 3]
    assert all(h.symmetric_endpoints for h in hops)


def test_conventional_and_primitive_cells_agree_per_site():
    conv = distinct_hops(get_structure("Li_bcc"), cutoff=3.6)
    assert [h.multiplicity for h in conv] == [8, 6]  # two sites per conventional cell


def test_lower_symmetry_splits_hops():
    hops = distinct_hops(tetragonal(), cutoff=3.5)
    assert [round(h.length, 2) for h in hops] == [3.0, 3.4]
    assert [h.multiplicity for h in hops] == [2, 1]


def test_lisn_hops_and_coordination():
    lisn = get_structure("LiSn")
    hops = distinct_hops(lisn, cutoff=3.6)
    assert hops and all(h.length <= 3.6 for h in hops)
    lengths = [h.length for h in hops]
    assert lengths == sorted(lengths)
    # all copies of a hop have its length
    frac = lisn.get_scaled_positions(wrap=False)
    for h in hops:
        for i, j, off in h.copies:
            d = np.linalg.norm((frac[j] + np.asarray(off) - frac[i]) @ lisn.cell[:])
            assert d == pytest.approx(h.length, abs=1e-6)
    coord = li_coordination(lisn, hops[0].i, cutoff=3.5)
    assert coord["n"] == sum(v for k, v in coord.items() if k != "n") and coord.get("Sn", 0) > 0


def test_vacancy_endpoints_are_far_from_their_images():
    lisn = get_structure("LiSn")
    hop = distinct_hops(lisn, cutoff=3.6)[0]
    ep = hop_endpoints_for(lisn, hop, min_image_distance=9.0)
    widths = ep.initial.cell.volume / np.linalg.norm(np.cross(ep.initial.cell[[1, 2, 0]], ep.initial.cell[[2, 0, 1]]), axis=1)
    assert widths.min() >= 7.2 and shortest_lattice_vector(ep.initial.cell[:]) >= 9.0
    assert len(ep.initial) == len(lisn) * np.prod(ep.supercell_repeat) - 1
    jump = np.linalg.norm(ep.final.positions[-1] - ep.initial.positions[-1])
    assert jump == pytest.approx(hop.length, abs=1e-6)
    np.testing.assert_allclose(ep.initial.positions[:-1], ep.final.positions[:-1])


def test_no_li_is_an_input_error():
    with pytest.raises(LimaceInputError, match="no Li sites"):
        distinct_hops(get_structure("Sn_beta"))


def test_percolation_dimensions_follow_the_barriers():
    hops = distinct_hops(tetragonal(), cutoff=3.5)  # in-plane (a) and out-of-plane (c)
    res = percolation(1, [h.copies for h in hops], [0.1, 0.5])
    assert res.barriers == {"1d": 0.1, "2d": 0.1, "3d": 0.5}
    assert res.hops["2d"] == [0] and res.hops["3d"] == [0, 1]
    # only the c-axis hop known: 1D channels
    res = percolation(1, [h.copies for h in hops], [None, 0.3])
    assert res.barriers == {"1d": 0.3, "2d": None, "3d": None}
    assert PercolationResult.from_dict(res.as_dict()) == res


def test_isolated_pairs_do_not_percolate():
    # two sites in a big cell joined to each other only (no path to an image)
    atoms = Atoms("Li2", positions=[[0, 0, 0], [2.8, 0, 0]], cell=[9, 9, 9], pbc=True)
    res = percolation(2, [[(0, 1, (0, 0, 0))]], [0.05])
    assert res.barriers == {"1d": None, "2d": None, "3d": None}
    res = percolation(2, [[(0, 1, (0, 0, 0)), (1, 0, (1, 0, 0))]], [0.05])
    assert res.barriers["1d"] == 0.05 and res.barriers["2d"] is None
    del atoms


def test_bcc_li_percolates_in_3d_through_the_first_shell():
    hops = distinct_hops(get_structure("Li_bcc", primitive=True), cutoff=3.6)
    res = percolation(1, [h.copies for h in hops], [0.05, 0.4])
    assert res.barriers == {"1d": 0.05, "2d": 0.05, "3d": 0.05}


def test_supercell_keeps_vacancy_images_apart_with_the_fewest_atoms():
    bcc = get_structure("Li_bcc", primitive=True)
    m = vacancy_supercell_matrix(bcc, 13.0)
    assert shortest_lattice_vector(m @ bcc.cell[:]) >= 13.0
    # the primitive bcc 4x4x4 cell has its images at 4 x 3.04 A = 12.2 A: too close; 5x5x5 is the smallest diagonal
    assert np.diag(m).tolist() == [5, 5, 5]
    assert shortest_lattice_vector(bcc.cell[:]) == pytest.approx(min(bcc.cell.lengths()), abs=1e-6)


def test_one_relaxation_per_site_class_mapped_by_symmetry():
    """Li7Sn2 (several Li classes): each needed site uses its class's relaxation, rotated and permuted; the mapped
    structures are relaxed too (a Morse solid: forces below the relaxation's fmax, energy equal)."""
    import torch

    from limace.analysis.relax import relax_structures
    from limace.md.state import BatchedState
    from limace.potentials.pair import BatchedMorse

    atoms = get_structure("Li7Sn2", primitive=True)
    hops = distinct_hops(atoms, cutoff=3.2)
    reps = (2, 2, 2)
    sites = vacancy_sites(atoms, hops, reps)
    needed = sorted({h.i for h in hops} | {h.j for h in hops})
    assert set(sites.representative) == set(needed)
    assert len(sites.representatives) < len(needed)  # shared relaxations
    model = BatchedMorse(epsilon=0.1, rho0=4.0, r0=3.0, rcut1=4.0, rcut2=5.0)
    relaxed = relax_structures([sites.vacancy_structure(r) for r in sites.representatives], model, fmax=0.005,
                               relax_cell=False, optimizer="lbfgs", max_steps=2000, progress=False)
    for r, a in zip(sites.representatives, relaxed):
        sites.set_relaxed(r, a)
    for h in hops:
        ini, fin = sites.hop_endpoints(h)
        st = BatchedState.from_atoms([ini, fin], dtype=torch.float64)
        out = model(st)
        f = out["forces"].numpy()
        assert np.linalg.norm(f, axis=1).max() < 0.006
        np.testing.assert_allclose(out["energy"].numpy(), [sites.energy(h.i), sites.energy(h.j)], atol=1e-8)
        # one continuous band: no atom but the mover jumps (no periodic wrapping between the endpoints)
        assert np.linalg.norm(fin.positions[:-1] - ini.positions[:-1], axis=1).max() < 1.0
        assert np.linalg.norm(fin.positions[-1] - ini.positions[-1]) < h.length + 1.0


def test_site_energies_cover_every_copy_of_a_hop():
    """The copies of a hop join sites equivalent to the relaxed ones: each has its class's energy (Li17Sn4 failed
    with 'hop 0 joins site 0 and 22; both need a site energy' before)."""
    atoms = get_structure("Li7Sn2", primitive=True)
    hops = distinct_hops(atoms, cutoff=3.2)
    sites = vacancy_sites(atoms, hops, (1, 1, 1))
    for r in sites.representatives:
        sites.energies[r] = float(r)
    touched = {s for h in hops for i, j, _ in h.copies for s in (i, j)}
    assert touched - set(sites.representative)  # copies reach sites that were not relaxed themselves
    for s in touched:
        assert sites.has_energy(s)
        rep = next(r for t, r in sites.representative.items() if sites.site_class[t] == sites.site_class[s])
        assert sites.energy(s) == sites.energies[rep]
