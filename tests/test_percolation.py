"""Percolation barrier from site energies and absolute saddle energies (science.md, "Percolation")."""

import numpy as np
import pytest

from limace.analysis.percolation import PercolationResult, certify_percolation, percolation, percolation_bounds


def chain():
    """A 1D chain of three sites per cell along a: A(0) - B(1) - C(2) - A in the next cell.

    Site energies E_A = 0.00, E_B = 0.30, E_C = 0.30 eV; saddles S_AB = 0.35, S_BC = 0.45, S_CA' = 0.35 eV.
    """
    copies = [[(0, 1, (0, 0, 0))], [(1, 2, (0, 0, 0))], [(2, 0, (1, 0, 0))]]
    return copies, [0.0, 0.30, 0.30], [0.35, 0.45, 0.35]


def test_asymmetric_chain_needs_the_highest_saddle_above_the_lowest_site():
    copies, sites, saddles = chain()
    res = percolation(3, copies, saddles, sites)
    # by hand: the chain percolates only with all three hops; the highest saddle crossed is S_BC = 0.45 eV and the
    # lowest site of the component is A at 0.00 eV: E*_1D = 0.45 - 0.00 = 0.45 eV
    assert res.barriers["1d"] == pytest.approx(0.45)
    assert res.saddle["1d"] == pytest.approx(0.45) and res.lowest_site["1d"] == 0
    assert res.site_energy_min["1d"] == pytest.approx(0.0)
    assert res.hops["1d"] == [0, 1, 2]
    assert res.barriers["2d"] is None and res.barriers["3d"] is None
    # the old per-hop weight max(forward, backward) = S_ij - min(E_i, E_j) gives 0.35, 0.15, 0.35: too low (0.35)
    old = [s - min(sites[i], sites[j]) for s, [(i, j, _)] in zip(saddles, copies)]
    assert old == pytest.approx([0.35, 0.15, 0.35])
    assert percolation(3, copies, old).barriers["1d"] == pytest.approx(0.35)
    assert PercolationResult.from_dict(res.as_dict()) == res


def test_a_separate_high_energy_channel_can_percolate_lower():
    """Two disjoint channels along a: the lowest site energy is that of each channel's own component."""
    copies, sites, saddles = chain()
    # channel 2: one site (3) at 0.50 eV, hopping to its own image along a with saddle 0.70 eV: E* = 0.20 eV
    copies = copies + [[(3, 3, (1, 0, 0))]]
    res = percolation(4, copies, saddles + [0.70], sites + [0.50])
    assert res.barriers["1d"] == pytest.approx(0.20) and res.hops["1d"] == [3] and res.lowest_site["1d"] == 3


def test_equal_site_energies_reduce_to_hop_barriers():
    copies = [[(0, 0, (1, 0, 0))], [(0, 0, (0, 1, 0))], [(0, 0, (0, 0, 1))]]
    res = percolation(1, copies, [1.1, 1.3, 1.2], [1.0])
    assert res.barriers == pytest.approx({"1d": 0.1, "2d": 0.2, "3d": 0.3})
    assert res.hops == {"1d": [0], "2d": [0, 2], "3d": [0, 1, 2]}


def test_bounds_certify_only_when_unknown_hops_cannot_lower_the_answer():
    copies, sites, saddles = chain()
    # S_BC unknown with lower bound max(E_B, E_C) = 0.30: without it no percolation, with it at 0.30 -> 0.35
    up, low, cert = percolation_bounds(3, copies, sites, [0.35, None, 0.35], [0.35, 0.30, 0.35])
    assert up.barriers["1d"] is None and low.barriers["1d"] == pytest.approx(0.35) and not cert["1d"]
    assert cert["2d"] and cert["3d"]  # cannot percolate in 2D/3D whatever S_BC is
    # all known: certified
    up, low, cert = percolation_bounds(3, copies, sites, saddles, [0.35, 0.30, 0.35])
    assert all(cert.values()) and up.barriers["1d"] == pytest.approx(0.45)
    # a fourth, unknown hop A->A' whose lower bound (0.50) lies above 0.45: it cannot change E*_1D, certified
    copies4 = copies + [[(0, 0, (1, 0, 0))]]
    up, low, cert = percolation_bounds(3, copies4, sites, saddles + [None], [0.35, 0.30, 0.35, 0.50])
    assert cert["1d"] and up.barriers["1d"] == pytest.approx(0.45)
    # with a lower bound of 0.40 it might: not certified
    up, low, cert = percolation_bounds(3, copies4, sites, saddles + [None], [0.35, 0.30, 0.35, 0.40])
    assert not cert["1d"] and low.barriers["1d"] == pytest.approx(0.40)


def test_sites_of_a_hop_need_energies():
    with pytest.raises(ValueError, match="site energy"):
        percolation(2, [[(0, 1, (1, 0, 0))]], [0.3], [0.0, None])


def _random_network(seed):
    """Four sites per cell, random site energies, 14 hops (some to neighbouring cells) with random saddles."""
    rng = np.random.default_rng(seed)
    sites = list(rng.uniform(0.0, 0.5, 4))
    offsets = [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1)]
    copies, saddles = [], []
    for _ in range(14):
        i, j = (int(x) for x in rng.integers(0, 4, 2))
        off = offsets[int(rng.integers(0, 4))] if i != j else offsets[1 + int(rng.integers(0, 3))]
        copies.append([(i, j, off)])
        saddles.append(max(sites[i], sites[j]) + float(rng.uniform(0.02, 0.6)))
    return copies, sites, saddles


@pytest.mark.parametrize("seed", range(12))
def test_lazy_certification_gives_the_full_answer_with_fewer_saddles(seed):
    copies, sites, saddles = _random_network(seed)
    full = percolation(4, copies, saddles, sites)
    asked = []

    def compute(hops):
        asked.extend(hops)
        return {h: saddles[h] for h in hops}

    lower = [max(sites[i], sites[j]) for [(i, j, _)] in copies]
    res = certify_percolation(4, copies, sites, lower, compute,
                              refine=lambda hops: {h: saddles[h] - 0.01 for h in hops})
    assert all(res.certified.values())
    for d in ("1d", "2d", "3d"):
        assert res.result.barriers[d] == pytest.approx(full.barriers[d]) if full.barriers[d] is not None \
            else res.result.barriers[d] is None
    assert len(asked) == len(set(asked)) == len(res.computed) < len(copies)  # no saddle twice, not all needed


def test_lazy_certification_skips_hops_that_cannot_matter():
    """The chain (E*_1D = 0.45) with a fourth hop A -> A' whose refined bound (0.60) lies above it: never computed;
    without the refinement its trivial bound (0.00) could make a cheaper channel, so it would be."""
    copies, sites, saddles = chain()
    copies, saddles = copies + [[(0, 0, (1, 0, 0))]], saddles + [0.62]
    asked = []

    def compute(hops):
        asked.extend(hops)
        return {h: saddles[h] for h in hops}

    lower = [max(sites[i], sites[j]) for [(i, j, _)] in copies]
    res = certify_percolation(3, copies, sites, lower, compute,
                              refine=lambda hops: {h: saddles[h] - 0.02 for h in hops})
    assert res.result.barriers["1d"] == pytest.approx(0.45) and all(res.certified.values())
    assert sorted(asked) == [0, 1, 2] and 3 in res.refined
    asked.clear()
    res = certify_percolation(3, copies, sites, lower, compute)
    assert 3 in asked and res.result.barriers["1d"] == pytest.approx(0.45)


def test_lazy_certification_reports_a_needed_hop_that_did_not_converge():
    copies, sites, saddles = chain()
    res = certify_percolation(3, copies, sites, [0.30, 0.30, 0.30],
                              lambda hops: {h: (None if h == 1 else saddles[h]) for h in hops})
    assert not res.certified["1d"] and res.result.barriers["1d"] is None
    assert res.certified["2d"] and res.certified["3d"]


def test_lazy_certification_computes_one_of_two_parallel_links():
    """A 1D chain A -> B -> A' where A -> B has two parallel hops (0: saddle 0.30, 2: 0.35) and B -> A' one (1: 0.40):
    E*_1D = 0.40 whatever hop 2's saddle is above 0.30, so hop 2 is never computed."""
    copies = [[(0, 1, (0, 0, 0))], [(1, 0, (1, 0, 0))], [(0, 1, (0, 0, 0))]]
    saddles = [0.30, 0.40, 0.35]
    asked = []

    def compute(hops):
        asked.append(sorted(hops))
        return {h: saddles[h] for h in hops}

    res = certify_percolation(2, copies, [0.0, 0.0], [0.0, 0.0, 0.0], compute,
                              refine=lambda hops: {h: saddles[h] - 0.01 for h in hops})
    assert res.result.barriers["1d"] == pytest.approx(0.40) and all(res.certified.values())
    assert asked == [[1], [0]]  # first the hop the chain cannot do without, then the lower of the parallel pair


def test_recheck_of_the_hops_that_set_the_value_follows_the_bottleneck():
    """The chain, where a second NEB finds hop 1 (B -> C) lower (0.45 -> 0.33): the value drops to the next highest
    saddle on the path (0.35, hops 0 and 2), which are rechecked in turn (no lower saddle there). Each hop is
    rechecked once; without recheck the first answer stands."""
    copies, sites, saddles = chain()
    second = {0: 0.36, 1: 0.33, 2: None}  # None: the second NEB did not converge, keep the first saddle
    asked = []

    def recheck(hops):
        asked.append(sorted(hops))
        return {h: second[h] for h in hops}

    lower = [max(sites[i], sites[j]) for [(i, j, _)] in copies]
    compute = lambda hops: {h: saddles[h] for h in hops}  # noqa: E731
    res = certify_percolation(3, copies, sites, lower, compute, recheck=recheck)
    assert asked == [[1], [0, 2]] and res.rechecked == [1, 0, 2]
    assert res.result.barriers["1d"] == pytest.approx(0.35) and res.certified["1d"]
    assert certify_percolation(3, copies, sites, lower, compute).result.barriers["1d"] == pytest.approx(0.45)
