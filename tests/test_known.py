"""The screen's comparison with the assessed phase diagram (limace.analysis.known)."""

import pytest

from limace.analysis.known import known_compounds, known_phase_check, markdown_lines


def row(name, formula, e_meV, stable=None, source="library"):
    return {"name": name, "formula": formula, "e_above_hull_eV_per_atom": e_meV / 1000,
            "stable": (e_meV == 0) if stable is None else stable, "source": source}


def plateau(a, b, y0, y1):
    return {"phases": [a, b], "y_start": y0, "y_end": y1, "voltage_V": 0.1}


def test_the_known_compounds_are_the_assessed_phases_in_order_of_li_content():
    assert [k.formula for k in known_compounds("Li-In")] == ["LiIn", "Li3In2", "Li2In", "Li13In3"]
    assert [k.formula for k in known_compounds("Li-Sn")] == ["Li2Sn5", "LiSn", "Li7Sn3", "Li5Sn2", "Li13Sn5",
                                                             "Li7Sn2", "Li17Sn4"]
    li13 = next(k for k in known_compounds("Li-In") if k.formula == "Li13In3")
    assert li13.ids == ("Li13In3", "Li13In3_hR16")  # the model alternative counts for the same compound


def test_a_hull_that_misses_known_phases_and_adds_others_is_reported_so():
    hull = [row("In_tI2", "In", 0), row("Li_bcc", "Li", 0), row("LiIn", "LiIn", 12.3), row("Li3In2", "Li3In2", 4.0),
            row("Li2In", "Li2In", 0), row("Li13In3", "Li13In3", 13.6), row("Li13In3_hR16", "Li13In3", 5.2),
            row("bcc-3-InLi", "InLi", 0, source="search"),
            row("Li22Sn5-type-In20Li88", "In20Li88", 0, source="search")]
    plateaus = [plateau("In", "LiIn", 0, 1), plateau("LiIn", "Li2In", 1, 2), plateau("Li2In", "Li22In5", 2, 4.4)]
    near = [{"name": "Li3In2", "dft_e_above_hull_eV_per_atom": 0.0}]
    c = known_phase_check("Li-In", hull, plateaus, near)
    by = {r["formula"]: r for r in c["compounds"]}
    assert by["LiIn"]["e_above_hull_meV_per_atom"] == pytest.approx(12.3) and by["LiIn"]["within_tolerance"] is False
    assert by["Li13In3"]["name"] == "Li13In3_hR16" and by["Li13In3"]["within_tolerance"] is True
    assert by["Li3In2"]["dft_e_above_hull_meV_per_atom"] == 0.0 and by["Li2In"]["stable"] is True
    assert c["all_within_tolerance"] is False
    assert c["li_richest_known"] == "Li13In3" and c["li_richest_reached"] is True
    assert c["expected_plateaus"] == [["In", "LiIn"], ["LiIn", "Li3In2"], ["Li3In2", "Li2In"], ["Li2In", "Li13In3"]]
    assert c["model_plateaus"] == [["In", "LiIn"], ["LiIn", "Li2In"], ["Li2In", "Li22In5"]]
    assert c["plateaus_match"] is False
    # the search's InLi is LiIn (a known formula), the decorated Li22Sn5 type is not an assessed phase
    assert [e["formula"] for e in c["extra_stable"]] == ["Li22In5"]
    text = "\n".join(markdown_lines(c))
    assert "| LiIn | 1 | LiIn | isotypic prototype | 12.3 | **no** | — |" in text and "**different**" in text
    assert "Li22In5 (Li22Sn5-type-In20Li88, search)" in text


def test_the_assessed_hull_passes():
    hull = [row("In_tI2", "In", 0), row("Li_bcc", "Li", 0), row("LiIn", "LiIn", 0), row("Li3In2", "Li3In2", 0),
            row("Li2In", "Li2In", 0), row("Li13In3_hR16", "Li13In3", 0), row("Li13In3", "Li13In3", 9.0)]
    plateaus = [plateau("In", "LiIn", 0, 1), plateau("LiIn", "Li3In2", 1, 1.5), plateau("Li3In2", "Li2In", 1.5, 2),
                plateau("Li2In", "Li13In3", 2, 13 / 3)]
    c = known_phase_check("Li-In", hull, plateaus)
    assert c["all_within_tolerance"] and c["plateaus_match"] and c["li_richest_reached"] and not c["extra_stable"]
    assert all(r["dft_e_above_hull_meV_per_atom"] is None for r in c["compounds"])


def test_a_known_phase_missing_from_the_hull_says_why():
    """A known compound whose structures are not on the hull (rejected as unphysical, relaxation not converged,
    left out by size) carries the reason, in the JSON and the table; the Li-richest known compound is the
    assessment's even when it is missing, and then it is not reached."""
    hull = [row("In_tI2", "In", 0), row("Li_bcc", "Li", 0), row("LiIn", "LiIn", 0), row("Li3In2", "Li3In2", 0),
            row("Li2In", "Li2In", 0)]
    plateaus = [plateau("In", "LiIn", 0, 1), plateau("LiIn", "Li3In2", 1, 1.5), plateau("Li3In2", "Li2In", 1.5, 2)]
    absent = {"Li13In3": "rejected, volume 0.58 x Vegard < 0.7", "Li13In3_hR16": "relaxation not converged"}
    c = known_phase_check("Li-In", hull, plateaus, absent=absent)
    by = {r["formula"]: r for r in c["compounds"]}
    assert by["Li13In3"]["absent"] == "Li13In3: rejected, volume 0.58 x Vegard < 0.7"
    assert by["Li2In"]["absent"] is None and by["Li13In3"]["within_tolerance"] is None
    assert c["li_richest_known"] == "Li13In3" and c["li_richest_reached"] is False and not c["all_within_tolerance"]
    assert c["expected_plateaus"][-1] == ["Li2In", "Li13In3"] and not c["plateaus_match"]
    text = "\n".join(markdown_lines(c))
    assert "| **Li13In3: rejected, volume 0.58 x Vegard < 0.7** |" in text
    assert "Li-richest known compound: Li13In3 (**not reached**" in text
    # without a reason it was never built
    c = known_phase_check("Li-In", hull, plateaus)
    assert "| Li13In3 | 4.33 | — | model-built | — | not built | — |" in "\n".join(markdown_lines(c))


def test_the_dft_checks_are_compared_with_the_models_hull_by_stable_composition():
    """--verify-dft rows: the errors against the ±5 meV/atom bound, and the stable compounds of the model's hull
    against those of the DFT hull of the checked set (what the model gets wrong, what DFT adds, what is unchecked)."""
    from limace.analysis.known import dft_comparison

    def near(name, formula, e_model, err=None, e_dft=None):
        return {"name": name, "formula": formula, "e_above_hull_eV_per_atom": e_model / 1000, "source": "search",
                "dft_error_meV_per_atom": err,
                "dft_e_above_hull_eV_per_atom": None if e_dft is None else e_dft / 1000}

    rows = [near("Li_bcc", "Li", 0, 0.2, 0), near("In_tI2", "In", 0, 0.5, 0),
            near("bcc-3-InLi", "LiIn", 0, -2.2, 0), near("LiIn", "LiIn", 8.8, -4.2, 11.0),
            near("Li3In2", "Li3In2", 0.0, 4.3, 0.0), near("fcc-51-In3Li2", "Li2In3", 16.0, -6.5, 0.0),
            near("Li7Sn2-type", "In4Li14", 0.0, 1.0, 3.0), near("Li22Sn5-type", "In20Li88", 0.0)]
    d = dft_comparison("In", rows)
    assert d["n_checked"] == 7 and d["n_near_hull"] == 8 and d["n_within"] == 6
    assert d["worst"] == {"name": "fcc-51-In3Li2", "error_meV_per_atom": -6.5}
    assert d["outside"] == [{"name": "fcc-51-In3Li2", "error_meV_per_atom": -6.5}]
    assert d["stable_both"] == ["LiIn", "Li3In2"]  # LiIn through its B2 ordering
    assert d["model_only"] == ["Li7In2"] and d["dft_only"] == ["Li2In3"]
    assert d["model_stable_unchecked"] == ["Li22In5"] and d["same_stable"] is False
    assert dft_comparison("In", [near("Li3In2", "Li3In2", 0.0)]) is None  # nothing checked yet
    same = dft_comparison("In", rows[:5])
    assert same["same_stable"] is True and same["n_within"] == 5
    c = known_phase_check("Li-In", [row("Li3In2", "Li3In2", 0)], [], rows)
    text = "\n".join(markdown_lines(c))
    assert "DFT checks: 7 of 8 near-hull entries; model − DFT within ±5 meV/atom for 6 (worst fcc-51-In3Li2, -6.5)" in text
    assert "model only Li7In2; DFT only Li2In3; stable in the model, not yet checked: Li22In5" in text
