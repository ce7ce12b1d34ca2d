import numpy as np
import pytest

from limace.data import generate as g
from limace.data import get_structure
from limace.data.hashing import structure_hash
from limace.data.structures import min_distance
from limace.errors import LimaceInputError


@pytest.fixture
def lisn():
    return get_structure("LiSn")


def test_iso_strain_scales_volume_and_is_tagged(lisn):
    out = g.strained(lisn, (-0.05, 0.05), "iso")
    assert [a.info["config_type"] for a in out] == ["strain_iso"] * 2
    assert out[0].get_volume() == pytest.approx(lisn.get_volume() * 0.95**3)
    assert out[1].get_volume() == pytest.approx(lisn.get_volume() * 1.05**3)
    # fractional coordinates are kept
    np.testing.assert_allclose(out[0].get_scaled_positions(), lisn.get_scaled_positions(), atol=1e-12)


def test_shear_strain_is_traceless_with_the_asked_norm(lisn):
    out = g.strained(lisn, (0.05,), "shear", seed=3)[0]
    eps = np.linalg.solve(lisn.cell[:], out.cell[:]) - np.eye(3)
    assert np.trace(eps) == pytest.approx(0.0, abs=1e-12)
    assert np.linalg.norm(eps) == pytest.approx(0.05)
    np.testing.assert_allclose(eps, eps.T, atol=1e-12)
    assert out.info["config_type"] == "strain_shear"


def test_generators_are_reproducible_from_the_seed(lisn):
    a = g.rattled(lisn, (0.1,), seed=7)[0]
    b = g.rattled(lisn, (0.1,), seed=7)[0]
    c = g.rattled(lisn, (0.1,), seed=8)[0]
    assert structure_hash(a) == structure_hash(b) != structure_hash(c)
    s1 = g.strained(lisn, (0.05,), "shear", seed=1)[0]
    s2 = g.strained(lisn, (0.05,), "shear", seed=1)[0]
    np.testing.assert_array_equal(s1.cell[:], s2.cell[:])


def test_rattle_amplitude_is_the_standard_deviation():
    big = get_structure("Li_bcc").repeat((6, 6, 6))
    out = g.rattled(big, (0.03, 0.15), seed=0)
    for a, amp in zip(out, (0.03, 0.15)):
        d = a.positions - big.positions
        assert d.std() == pytest.approx(amp, rel=0.05)
        assert a.info["rattle_amplitude"] == amp and a.info["config_type"] == "rattle"
    with pytest.raises(LimaceInputError, match="amplitude"):
        g.rattled(big, (0.0,))


def test_vacancy_removes_one_li_from_the_supercell():
    li = get_structure("Li_bcc")
    v = g.li_vacancy(li, repeat=(2, 2, 2), seed=0)
    assert len(v) == 15 and set(v.get_chemical_symbols()) == {"Li"}
    assert v.info["config_type"] == "vacancy"
    lisn = get_structure("LiSn")
    v2 = g.li_vacancy(lisn, repeat=(1, 2, 1), seed=0)
    assert v2.get_chemical_symbols().count("Li") == 5 and v2.get_chemical_symbols().count("Sn") == 6
    with pytest.raises(LimaceInputError, match="no Li"):
        g.li_vacancy(get_structure("Sn_beta"))


@pytest.mark.parametrize("method", ["linear", "idpp"])
def test_hop_images_join_the_endpoints(method):
    sc = get_structure("Li_bcc").repeat((3, 3, 3))
    i, j, d = g.li_neighbour_pairs(sc, 3.1)[0]
    ini, fin = g.hop_endpoints(sc, vacancy=i, mover=j)
    assert len(ini) == len(fin) == len(sc) - 1
    # only the mover (last atom) differs, by the hop vector
    np.testing.assert_allclose(fin.positions[:-1], ini.positions[:-1])
    assert np.linalg.norm(fin.positions[-1] - ini.positions[-1]) == pytest.approx(np.linalg.norm(d))
    images = g.hop_images(ini, fin, n_images=3, method=method)
    assert [im.info["image"] for im in images] == [1, 2, 3]
    assert all(im.info["config_type"] == f"hop_{method}" for im in images)
    mid = images[1].positions[-1]
    np.testing.assert_allclose(mid, 0.5 * (ini.positions[-1] + fin.positions[-1]), atol=0.05)
    assert min(min_distance(im) for im in images) > 1.5


def test_enumeration_gives_distinct_orderings_at_estimated_volume():
    from pymatgen.io.ase import AseAtomsAdaptor
    from pymatgen.analysis.structure_matcher import StructureMatcher

    structs = list(g.enumerate_orderings("bcc", ("Li", "Sn"), [1, 2, 3, 4]))
    assert len(structs) == 29  # Hart-Forcade: 2 + 2 + 6 + 19 binary bcc derivative structures up to 4 sites
    assert all(a.info["config_type"] == "enum_bcc" for a in structs)
    pm = [AseAtomsAdaptor.get_structure(a) for a in structs]
    groups = StructureMatcher(scale=True, attempt_supercell=True).group_structures(pm)
    assert len(groups) == len(structs)
    for a in structs:
        assert a.get_volume() / len(a) == pytest.approx(g.estimated_volume_per_atom(a.get_chemical_symbols()))
        assert min_distance(a) > 2.3


def test_bct_and_fcc_parents_and_ternaries():
    fcc = list(g.enumerate_orderings("fcc", ("Li", "In"), [2]))
    bct = list(g.enumerate_orderings("bct", ("Li", "In"), [2]))
    assert len(fcc) == 2 and len(bct) == 3  # bct has lower symmetry: one more 2-site ordering
    tern = [a for a in g.enumerate_orderings("bcc", ("Li", "In", "Sn"), [3]) if len(set(a.get_chemical_symbols())) == 3]
    assert tern and all(sorted(set(a.get_chemical_symbols())) == ["In", "Li", "Sn"] for a in tern)
    with pytest.raises(LimaceInputError, match="parent lattice"):
        list(g.enumerate_orderings("hcp", ("Li", "In"), [2]))


def test_random_alloy_has_exact_counts_and_depends_on_seed():
    a = g.random_alloy("bcc", ("Li", "Sn"), (0.75, 0.25), repeat=(2, 2, 2), seed=1)
    b = g.random_alloy("bcc", ("Li", "Sn"), (0.75, 0.25), repeat=(2, 2, 2), seed=2)
    assert a.get_chemical_symbols().count("Li") == 12 and a.get_chemical_symbols().count("Sn") == 4
    assert a.info["config_type"] == "random_bcc"
    assert structure_hash(a) != structure_hash(b)
    with pytest.raises(LimaceInputError, match="sum to 1"):
        g.random_alloy("bcc", ("Li", "Sn"), (0.5, 0.6))


def test_dataset_plan_is_deterministic_and_covers_what_v1_needs():
    from collections import Counter

    from limace.data.plan import plan_v1

    p1 = plan_v1()
    p2 = plan_v1()
    assert [a.info["config_id"] for a in p1] == [a.info["config_id"] for a in p2]
    assert len(p1) >= 600
    assert len({a.info["config_id"] for a in p1}) == len(p1)
    assert sum(len(a) >= 12 for a in p1) >= 80
    x_li = {a.get_chemical_symbols().count("Li") / len(a) for a in p1}
    assert min(x_li) == 0.0 and max(x_li) == 1.0
    types = Counter(a.info["config_type"] for a in p1)
    for t in ("strain_iso", "strain_shear", "rattle", "vacancy", "hop_idpp", "hop_linear", "enum_bcc", "enum_fcc",
              "enum_bct", "random_bcc", "equilibrium"):
        assert types[t] > 0, t
    assert min(min_distance(a) for a in p1) > 1.8


def test_plan_stage_eleven_trains_on_every_phase_built_after_v1(monkeypatch):
    from limace.data import plan
    from limace.data.structures import list_phases

    cells = plan.new_phase_cells()
    new = {p.id for p in list_phases(buildable=True) if p.system != "element" and p.id not in plan.PLAN_V1_LIBRARY
           and len(p.build(primitive=True)) <= 24}
    assert new >= {"Li3In2", "Li2In", "Li13In3"}
    by = {pid: [a for a in cells if a.info["phase"] == pid] for pid in new}
    for pid, cs in by.items():
        types = sorted(a.info["config_type"] for a in cs)
        assert types == ["equilibrium", "rattle", "rattle", "strain_iso", "strain_iso", "strain_shear", "vacancy"], pid
    # a phase's cells do not depend on which other phases exist
    everything = list(list_phases(buildable=True))
    dropped = sorted(new)[0]
    monkeypatch.setattr(plan, "list_phases", lambda buildable=True: [p for p in everything if p.id != dropped])
    fewer = plan.new_phase_cells()
    assert [a.info["config_id"] for a in fewer] == [a.info["config_id"] for a in cells if a.info["phase"] != dropped]


def test_plan_stage_twelve_has_the_large_phases_near_equilibrium_only():
    """Stage 12: Li17Sn4 and Li22Sn5 (105-108 atoms), equilibrium and +-3 % volume: symmetric cells that stay clear
    of the extrapolation set's +-8-15 % volumes of the same phases."""
    from limace.data import plan
    from limace.data.structures import get_structure

    cells = plan.large_phase_cells()
    by = {}
    for a in cells:
        by.setdefault(a.info["phase"], []).append(a)
    assert {"Li17Sn4", "Li22Sn5"} <= set(by)
    for pid, cs in by.items():
        assert sorted(a.info["config_type"] for a in cs) == ["equilibrium", "strain_iso", "strain_iso"], pid
        v0 = get_structure(pid, primitive=True).get_volume()
        ratios = sorted(a.get_volume() / v0 for a in cs)
        assert len(cs[0]) >= 25
        assert ratios[0] == pytest.approx(0.99 ** 3) and ratios[1] == pytest.approx(1.0) and ratios[2] == pytest.approx(1.01 ** 3)
    assert {a.info["config_id"] for a in cells} <= {a.info["config_id"] for a in plan.plan_v1()}
