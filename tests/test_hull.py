"""Hull and voltage curve on synthetic energies whose answers are worked out by hand."""

import json
import math

import pytest

from limace.analysis.hull import HullAnalysis
from limace.analysis.voltage import VoltageCurve
from limace.errors import LimaceInputError

MU_LI = -1.90  # eV/atom, bcc Li
MU_SN_BETA = -3.800
MU_SN_ALPHA = -3.829  # 29 meV/atom below beta, as PBE has it
# Formation energies (eV/atom) against alpha-Sn, chosen so that Li2Sn5, LiSn and Li7Sn2 are on the hull.
EF_ALPHA = {"Li2Sn5": -0.160, "Li3Sn3": -0.250, "Li7Sn2": -0.200, "Li5Sn2": -0.200}


def _entries():
    def total(li, sn, ef):
        return (li + sn) * ef + li * MU_LI + sn * MU_SN_ALPHA

    return [
        ("Li2", 2 * MU_LI, "Li_bcc"),
        ("Li4", 4 * (MU_LI + 0.001), "Li_fcc"),
        ("Sn4", 4 * MU_SN_BETA, "Sn_beta"),
        ("Sn8", 8 * MU_SN_ALPHA, "Sn_alpha"),
        ("Li2Sn5", total(2, 5, EF_ALPHA["Li2Sn5"]), "Li2Sn5", "library"),
        ({"Li": 3, "Sn": 3}, total(3, 3, EF_ALPHA["Li3Sn3"]), "LiSn", "library"),
        ("Li7Sn2", total(7, 2, EF_ALPHA["Li7Sn2"]), "Li7Sn2", "library"),
        ("Li5Sn2", total(5, 2, EF_ALPHA["Li5Sn2"]), "Li5Sn2", "search"),
    ]


@pytest.fixture
def hull():
    return HullAnalysis("Li-Sn", _entries())


def test_formation_energies_hull_and_stable_set(hull):
    assert hull.references["Li"]["name"] == "Li_bcc"
    assert hull.references["Sn"]["name"] == "Sn_alpha" and hull.summary()["sn_reference"] == "alpha"
    for name, ef in EF_ALPHA.items():
        assert hull.entry("LiSn" if name == "Li3Sn3" else name).formation_energy == pytest.approx(ef, abs=1e-12)
    assert hull.stable == ["Sn", "Li2Sn5", "LiSn", "Li7Sn2", "Li"]
    # Li5Sn2 (x = 5/7) against the LiSn (1/2, -0.25) -- Li7Sn2 (7/9, -0.20) tie line
    t = (5 / 7 - 0.5) / (7 / 9 - 0.5)
    assert hull.entry("Li5Sn2").e_above_hull == pytest.approx(-0.200 - (-0.25 + t * 0.05), abs=1e-9)
    assert hull.entry("Li_fcc").e_above_hull == pytest.approx(0.001, abs=1e-9)
    assert hull.entry("Sn_beta").e_above_hull == pytest.approx(0.029, abs=1e-9)
    rows = {r["name"]: r for r in hull.summary()["hull"]}
    assert rows["Li5Sn2"]["source"] == "search" and rows["LiSn"]["formula"] == "LiSn"
    assert set(rows["LiSn"]) >= {"formula", "formation_energy_eV_per_atom", "e_above_hull_eV_per_atom", "source"}


def test_voltage_plateaus_by_hand(hull):
    curve = VoltageCurve.from_hull(hull)
    # science.md: V = -[E(Li_y2 M) - E(Li_y1 M) - (y2 - y1) mu_Li] / (y2 - y1), energies per host atom (total / n_Sn)
    per_host = {"Sn": MU_SN_ALPHA}
    for name, li, sn in (("Li2Sn5", 2, 5), ("LiSn", 3, 3), ("Li7Sn2", 7, 2)):
        per_host[name] = hull.entry(name).energy / sn
    steps = [("Sn", 0.0, "Li2Sn5", 0.4), ("Li2Sn5", 0.4, "LiSn", 1.0), ("LiSn", 1.0, "Li7Sn2", 3.5)]
    assert len(curve.plateaus) == 3
    for p, (a, y1, b, y2) in zip(curve.plateaus, steps):
        v = -(per_host[b] - per_host[a] - (y2 - y1) * MU_LI) / (y2 - y1)
        assert (p.y_start, p.y_end, list(p.phases)) == (pytest.approx(y1), pytest.approx(y2), [a, b])
        assert p.voltage_V == pytest.approx(v, abs=1e-12)
    assert [p.voltage_V for p in curve.plateaus] == pytest.approx([0.56, 0.46, 0.16], abs=1e-12)
    assert curve.max_li_per_host == pytest.approx(3.5)
    # capacity-weighted mean = -(formation energy per host atom of the last phase) / (its Li per host atom)
    last = hull.entry("Li7Sn2")
    per_host_ef = last.formation_energy * last.n_atoms / last.composition["Sn"]
    assert curve.average_voltage == pytest.approx(-per_host_ef / 3.5, abs=1e-12)
    assert curve.average_voltage == pytest.approx(0.9 / 3.5, abs=1e-12)
    d = json.loads(json.dumps(curve.as_dict()))
    assert d["average_V"] == pytest.approx(0.9 / 3.5) and d["average_kind"] == "capacity-weighted"
    assert set(d["plateaus"][0]) == {"y_start", "y_end", "voltage_V", "phases"}
    assert VoltageCurve.from_dict(d).as_dict() == d


def test_sn_reference_switch_moves_sn_rich_formation_energies(hull):
    beta = HullAnalysis("Li-Sn", _entries(), sn_reference="beta")
    assert beta.references["Sn"]["name"] == "Sn_beta" and beta.summary()["sn_reference"] == "beta"
    shift = MU_SN_BETA - MU_SN_ALPHA  # 0.029 eV/atom
    for e in hull.entries:
        if len(e.composition) == 2:
            x_li = e.fraction("Li")
            assert beta.entry(e.name).formation_energy - e.formation_energy == pytest.approx(-shift * (1 - x_li),
                                                                                                 abs=1e-12)
    assert beta.entry("Sn_alpha").e_above_hull == pytest.approx(-shift, abs=1e-9)  # below the chosen reference
    assert beta.entry("Sn_beta").e_above_hull == 0.0
    # Per host atom every compound's formation energy moves by -shift and the host's stays 0: only the first plateau
    # (Sn -> Li2Sn5, y1 = 0.4) changes, by +shift / 0.4.
    v_alpha = [p.voltage_V for p in VoltageCurve.from_hull(hull).plateaus]
    v_beta = [p.voltage_V for p in beta.voltage().plateaus]
    assert v_beta[0] - v_alpha[0] == pytest.approx(shift / 0.4, abs=1e-12)
    assert v_beta[1:] == pytest.approx(v_alpha[1:], abs=1e-12)


def test_round_trip_plot_and_structures(tmp_path, hull):
    from ase import Atoms

    d = json.loads(json.dumps(hull.as_dict()))
    again = HullAnalysis.from_dict(d)
    assert again.summary() == hull.summary()
    ax = hull.plot(filename=tmp_path / "hull.png")
    assert ax.get_xlabel().startswith("x in") and (tmp_path / "hull.png").read_bytes()[:4] == b"\x89PNG"
    ax = hull.voltage().plot(filename=tmp_path / "voltage.png")
    assert len(ax.lines) >= 1 and (tmp_path / "voltage.png").stat().st_size > 1000
    # from relaxed structures: energy from info["energy"], name from info["phase"]
    structures = []
    for comp, energy, name, *_ in _entries():
        from pymatgen.core import Composition

        symbols = [el for el, n in Composition(comp).get_el_amt_dict().items() for _ in range(int(n))]
        atoms = Atoms(symbols, cell=[4, 4, 4], pbc=True)
        atoms.info.update(energy=energy, phase=name)
        structures.append(atoms)
    from_atoms = HullAnalysis.from_structures("Li-Sn", structures)
    assert from_atoms.stable == hull.stable
    assert from_atoms.entry("Li5Sn2").e_above_hull == pytest.approx(hull.entry("Li5Sn2").e_above_hull)


def test_li_in_without_compounds_has_no_plateaus():
    hull = HullAnalysis("Li-In", [("Li", -1.9), ("In", -2.6, "In_tI2"), ("LiIn", -4.4)])  # E_f = +0.05 eV/atom
    assert hull.stable == ["In", "Li"]
    curve = hull.voltage()
    assert curve.plateaus == [] and curve.max_li_per_host == 0.0 and math.isnan(curve.average_voltage)
    assert curve.as_dict()["average_V"] is None


@pytest.mark.parametrize("kwargs, entries, message", [
    ({}, [("Li", -1.9), ("Sn", -3.8), ("LiXx", -6.0)], "entry 2: unknown element 'Xx'"),
    ({}, [("Li", -1.9), ("Sn", -3.8), ("LiIn", -6.0)], "entry 2: In is not in the Li-Sn system"),
    ({}, [("Li", -1.9), ("LiSn", -6.0)], "no elemental reference for Sn"),
    ({}, [("Sn", -3.8), ("LiSn", -6.0)], "no elemental reference for Li"),
    ({"sn_reference": "beta"}, [("Li", -1.9), ("Sn", -3.8, "Sn_alpha")], "needs a pure-Sn entry named 'Sn_beta'"),
    ({"sn_reference": "grey"}, [("Li", -1.9), ("Sn", -3.8)], "sn_reference 'grey' is not one of"),
    ({}, [("Li", -1.9), ("Li", -1.8, "Li_fcc"), ("Sn", -3.8)], "name the reference Li_bcc"),
    ({}, [("Li", float("nan")), ("Sn", -3.8)], "entry 0: energy must be a finite number"),
    ({}, [("li2sn", -1.0)], "'li2sn' is not a chemical formula"),
])
def test_bad_input_is_a_one_line_error(kwargs, entries, message):
    with pytest.raises(LimaceInputError, match=message) as exc:
        HullAnalysis("Li-Sn", entries, **kwargs)
    assert "\n" not in str(exc.value)


def test_unknown_system_and_non_convex_phases():
    with pytest.raises(LimaceInputError, match="unknown system 'Li-Ge'"):
        HullAnalysis("Li-Ge", [("Li", -1.9)])
    with pytest.raises(LimaceInputError, match="not on a convex hull"):
        VoltageCurve.from_phases("Sn", [("LiSn", 1.0, -0.1), ("Li7Sn2", 3.5, -0.3)])


def test_collapsed_cells_are_kept_off_the_hull():
    """A cell the potential collapsed (volume far below Vegard's, or an absurd formation energy) is rejected with
    its reason; physical alloys and the elements are kept."""
    from ase.build import bulk

    from limace.analysis.search import reject_unphysical

    def relaxed(atoms, e_per_atom, name):
        atoms.info.update(energy=e_per_atom * len(atoms), converged=True, name=name)
        return atoms

    li = relaxed(bulk("Li", "bcc", a=3.44), -1.90, "Li")            # 20.4 A^3/atom
    sn = relaxed(bulk("Sn", "diamond", a=6.65), -3.92, "Sn")        # 36.8 A^3/atom
    ok = relaxed(bulk("LiSn", "rocksalt", a=6.0) * (1, 1, 1), -3.2, "LiSn-ok")             # 27 A^3/atom, E_f -0.29
    squashed = relaxed(bulk("LiSn", "rocksalt", a=4.6), -3.0, "LiSn-squashed")             # 12 A^3/atom
    deep = relaxed(bulk("LiSn", "rocksalt", a=6.0), -65.0, "LiSn-hole")                    # E_f -62 eV/atom
    kept, rejected, warnings = reject_unphysical([li, sn, ok, squashed, deep])
    assert [a.info["name"] for a in kept] == ["Li", "Sn", "LiSn-ok"] and warnings == []
    reasons = {r["name"]: r["reason"] for r in rejected}
    assert set(reasons) == {"LiSn-squashed", "LiSn-hole"}
    assert "Vegard" in reasons["LiSn-squashed"] and "formation energy" in reasons["LiSn-hole"]


def test_an_unbound_element_is_flagged():
    """A potential whose isolated-atom energy lies below the crystal's expands the element on relaxation: the screen
    says so instead of printing formation energies against it."""
    from ase.build import bulk

    from limace.analysis.search import reject_unphysical

    sn = bulk("Sn", "diamond", a=6.65 * 1.6)        # 4x the experimental volume
    sn.info.update(energy=-4.3 * len(sn), converged=True, name="Sn_alpha")
    _, _, warnings = reject_unphysical([sn])
    assert len(warnings) == 1 and warnings[0].startswith("Sn_alpha: relaxed to 4.") and "does not bind" in warnings[0]


def test_plot_labels_do_not_overlap_and_voltage_axis_is_per_host_atom():
    """Li7Sn3 (x = 0.700) and Li13Sn5 (x = 0.722) both on the hull: their labels are drawn apart; the voltage axis of
    a plot with Li-In and Li-Sn curves is "Li per host atom", not per Sn."""
    def total(li, sn, ef):
        return (li + sn) * ef + li * MU_LI + sn * MU_SN_ALPHA

    entries = [("Li2", 2 * MU_LI, "Li_bcc"), ("Sn8", 8 * MU_SN_ALPHA, "Sn_alpha")]
    entries += [(f, total(li, sn, ef), f, "library") for f, li, sn, ef in (
        ("LiSn", 1, 1, -0.25), ("Li7Sn3", 7, 3, -0.33), ("Li13Sn5", 13, 5, -0.335), ("Li7Sn2", 7, 2, -0.30))]
    hull = HullAnalysis("Li-Sn", entries)
    assert {"Li7Sn3", "Li13Sn5"} <= set(hull.stable)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    ax = hull.plot()
    renderer = FigureCanvasAgg(ax.figure).get_renderer()
    from matplotlib.text import Text

    for t in ax.texts:
        t.update_positions(renderer)
    boxes = {t.get_text(): Text.get_window_extent(t, renderer) for t in ax.texts}  # the text, not its leader line
    assert {"LiSn", "Li7Sn3", "Li13Sn5", "Li7Sn2"} <= set(boxes)
    names = sorted(boxes)
    overlaps = [(a, b) for i, a in enumerate(names) for b in names[i + 1:] if boxes[a].overlaps(boxes[b])]
    assert not overlaps, overlaps
    ax = hull.voltage().plot(label="Li-Sn")
    li_in = HullAnalysis("Li-In", [("Li", -1.9), ("In", -2.6, "In_tI2"), ("LiIn", -4.6)])
    li_in.voltage().plot(ax=ax, label="Li-In")
    assert ax.get_xlabel() == "Li per host atom"
