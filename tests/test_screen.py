"""`limace screen` end to end on a tiny model: the documented results.json, the report files, and resume."""

import json
import subprocess

import pytest

# barriers of one named compound per system: the tiny random-weight model's own hull may have no stable compound.
# --max-library-atoms 106 keeps the 105-atom Li17Sn4 (a library phase of any size is relaxed and enters the hull) and
# leaves out the 108-atom Li22Sn5, whose relaxation by the random model runs all its steps (~30 s of the fixture).
ARGS = ["--max-atoms", "2", "--no-prototypes", "--max-barrier-phases", "1", "--min-image-distance", "6",
        "--n-images", "3", "--neb-steps", "3", "--barrier-phase", "LiIn", "--barrier-phase", "LiSn",
        "--max-library-atoms", "106"]


@pytest.fixture(scope="module")
def screened(tiny_mace_model_path, tmp_path_factory):
    import shutil
    import sys
    from pathlib import Path

    exe = Path(sys.executable).with_name("limace")
    out = tmp_path_factory.mktemp("screen") / "report"
    cmd = [str(exe if exe.exists() else shutil.which("limace")), "screen", "Li-In", "Li-Sn", "-p",
           str(tiny_mace_model_path), "--out", str(out), *ARGS]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    return cmd, out, res


def test_results_json_has_the_documented_schema(screened):
    _, out, res = screened
    data = json.loads((out / "results.json").read_text())
    assert set(data["systems"]) == {"Li-In", "Li-Sn"}
    for system, r in data["systems"].items():
        host = system.split("-")[1]
        for row in r["hull"]:
            assert {"formula", "formation_energy_eV_per_atom", "e_above_hull_eV_per_atom", "source"} <= set(row)
            assert row["source"] in ("library", "search", "ce")
            assert row["e_above_hull_eV_per_atom"] >= -1e-9 or row["formula"] in ("Li", host)
        assert {"library", "search"} <= {row["source"] for row in r["hull"]} <= {"library", "search", "ce"}
        # the search's funnel: every enumerated ordering had a single point, each stage kept fewer
        funnel = r["search"]["funnel"]
        st = funnel["stages"]
        assert st["single_point"]["candidates"] == sum(funnel["enumerated"].values()) == st["single_point"]["evaluated"]
        assert st["short_relax"]["candidates"] == st["single_point"]["kept"] <= st["single_point"]["candidates"]
        assert st["full_relax"]["candidates"] == st["short_relax"]["kept"] <= st["short_relax"]["candidates"]
        assert r["search"]["n_candidates"] == st["single_point"]["candidates"] + funnel["prototypes"]
        assert r["stable"] and all(isinstance(f, str) for f in r["stable"])
        assert {"average_V", "max_li_per_host", "plateaus"} <= set(r["voltage"])
        assert "phases" in r["barriers"]
        # the assessed phases against the hull: each known compound's best library structure
        known = r["known_phases"]
        assert [c["formula"] for c in known["compounds"]][:2] == (["LiIn", "Li3In2"] if host == "In"
                                                                  else ["Li2Sn5", "LiSn"])
        for c in known["compounds"]:
            if c["name"] is not None:
                best = min(1000 * x["e_above_hull_eV_per_atom"] for x in r["hull"] if x["name"] == c["name"])
                assert c["e_above_hull_meV_per_atom"] == pytest.approx(best, abs=0.06)
        for p in r["barriers"]["phases"]:
            assert set(p["percolation"]) == {"1d", "2d", "3d"}
            for hop in p["hops"]:
                assert {"length_A", "barrier_eV", "converged", "li_coordination"} <= set(hop)
    # a library phase of any size enters the hull (105-atom Li17Sn4); the one left out by size says so
    sn = data["systems"]["Li-Sn"]
    assert "Li17Sn4" in {row["name"] for row in sn["hull"]}
    assert set(sn["search"]["left_out"]) == {"Li22Sn5"} and not data["systems"]["Li-In"]["search"]["left_out"]
    assert f"report: {(out / 'report.md').resolve()}" in res.stdout
    # `limace learn` (explore.from_runs) reads the screen's relaxed structures, the large ones left out
    from limace.learn import structures_from_runs

    relaxed = [a for a in structures_from_runs([str(out)], max_atoms=32) if a.info["config_type"] == "al_screen_relaxed"]
    files = sorted((out / "work").glob("*/structures/*.extxyz"))
    from ase.io import read as read_frames

    small = [f for f in files if len(read_frames(f, -1)) <= 32]
    assert small and len(small) < len(files) and len(relaxed) == len(small)
    # the model file is identified by its checksum (resume caches are keyed on it, not on the name)
    import hashlib
    from pathlib import Path

    assert data["potential_sha256"] == hashlib.sha256(Path(screened[0][5]).read_bytes()).hexdigest()


def test_report_files_exist(screened):
    _, out, _ = screened
    for name in ("report.md", "hull_Li-In.png", "hull_Li-Sn.png", "voltage.png"):
        assert (out / name).stat().st_size > 500, name
    text = (out / "report.md").read_text()
    assert "## Li-In" in text and "## Li-Sn" in text and "![hull](hull_Li-Sn.png)" in text
    assert text.count("Known phases (experimental entries of the structure library)") == 2
    # each hull says which elemental entries define formation energy 0
    results = json.loads((out / "results.json").read_text())
    assert text.count("Elemental references (formation energy 0): ") == 2
    for r in results["systems"].values():
        assert all(f"{el} {ref['name']}" in text for el, ref in r["references"].items())


def test_report_says_when_a_pure_element_entry_lies_below_its_reference():
    from limace.analysis.screen import _reference_lines

    refs = {"Li": {"name": "Li_bcc", "rule": "Li_bcc"}, "In": {"name": "In_tI2", "rule": "In_tI2"}}
    row = lambda name, x, e: {"name": name, "x_Li": x, "e_above_hull_eV_per_atom": e}  # noqa: E731
    hull = [row("In_tI2", 0.0, 0.0), row("LiIn", 0.5, 0.0), row("Li_bcc", 1.0, 0.0)]
    plain = _reference_lines({"references": refs, "hull": hull})[0]
    assert plain == "Elemental references (formation energy 0): Li Li_bcc, In In_tI2."
    below = _reference_lines({"references": refs, "hull": hull + [row("fcc-0-Li", 1.0, -0.0033)]})[0]
    assert below.startswith(plain) and "fcc-0-Li -3.3 meV/atom" in below and "negative" in below


def test_a_second_run_reuses_every_finished_task(screened):
    cmd, out, _ = screened
    before = json.loads((out / "results.json").read_text())
    stamps = {p: p.stat().st_mtime_ns for p in (out / "work").glob("*.json")}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    after = json.loads((out / "results.json").read_text())
    assert {p: p.stat().st_mtime_ns for p in (out / "work").glob("*.json")} == stamps
    assert after["systems"] == before["systems"]
    # and says so: every task of both stages came from work/ (the first run computed them all)
    n_barrier_tasks = before["resumed_tasks"]["barriers"][1]
    assert before["resumed_tasks"] == {"hull + search": [0, 2], "barriers": [0, n_barrier_tasks]}
    assert after["resumed_tasks"] == {"hull + search": [2, 2], "barriers": [n_barrier_tasks, n_barrier_tasks]}
    assert (f"tasks resumed from work/: hull + search 2 of 2, barriers {n_barrier_tasks} of {n_barrier_tasks}"
            in (out / "report.md").read_text())


def test_unknown_system_is_a_one_line_error(tiny_mace_model_path, limace_exe, tmp_path):
    res = subprocess.run([limace_exe, "screen", "Li-Pb", "-p", str(tiny_mace_model_path), "--out", str(tmp_path)],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "unknown system 'Li-Pb'" in res.stderr and res.stderr.count("\n") == 1


@pytest.mark.parametrize("opt, value, expect", [("--min-volume-ratio", "1.5", "min_volume_ratio must be in (0, 1], got 1.5"),
                                                ("--min-formation-energy", "0.2", "min_formation_energy must be < 0"),
                                                ("--max-library-atoms", "0", "--max-library-atoms must be >= 1, got 0"),
                                                ("--verify-limit", "3", "--verify-limit works with --verify-dft"),
                                                ("--verify-limit", "-1", "--verify-limit must be >= 0, got -1"),
                                                ("--verify-reuse", "x.extxyz", "--verify-reuse works with --verify-dft")])
def test_bad_sanity_bound_is_a_one_line_error(tiny_mace_model_path, limace_exe, tmp_path, opt, value, expect):
    res = subprocess.run([limace_exe, "screen", "Li-In", "-p", str(tiny_mace_model_path), "--out", str(tmp_path),
                          opt, value], capture_output=True, text=True)
    assert res.returncode == 2 and expect in res.stderr and res.stderr.count("\n") == 1, res.stderr
    assert not (tmp_path / "results.json").exists()


def test_verify_dft_builds_the_hull_of_the_dft_energies(tmp_path, capsys):
    """--verify-dft labels the near-hull structures and the hull's references, and reports for each the model's
    error, the DFT formation energy against the DFT references and the energy above the DFT-only hull (GPAW at
    cheap test settings here; the screen uses the reference protocol). No progress bar unless asked (the CLI asks
    only on a terminal)."""
    from ase.build import bulk
    from ase.io import read, write

    from limace.analysis.screen import verify_dft
    from limace.data import get_structure

    structures = tmp_path / "work" / "Li-In" / "structures"
    structures.mkdir(parents=True)
    cells = {"Li_bcc": get_structure("Li_bcc", primitive=True), "In_tI2": get_structure("In_tI2", primitive=True),
             "bcc-LiIn": bulk("LiIn", "cesiumchloride", a=3.4), "bcc-Li3In": bulk("Li", "bcc", a=3.45, cubic=True)}
    cells["bcc-Li3In"].symbols[0] = "In"  # Li3In ordering on the cubic bcc cell (B2 with Li on half the corners)
    cells["bcc-Li3In"] = cells["bcc-Li3In"].repeat((2, 1, 1))
    cells["bcc-Li3In"].symbols[2] = "Li"
    for k, (name, a) in enumerate(cells.items()):
        a.info.update({"name": name, "energy": -1.0 * len(a) - 0.01 * k * len(a)})  # the "model" energies
        write(structures / f"{name}.extxyz", a)
    result = {"hull": {"references": {"Li": {"name": "Li_bcc"}, "In": {"name": "In_tI2"}}},
              "near_hull": [{"name": n, "formula": cells[n].get_chemical_formula(), "e_above_hull_eV_per_atom": e,
                             "source": "search"} for n, e in (("bcc-LiIn", 0.004), ("bcc-Li3In", 0.0))],
              "committee_std_meV_per_atom": {"bcc-Li3In": 3.0, "bcc-LiIn": 12.0}}
    kw = dict(workers=1, protocol="gpaw-test", committee_threshold_meV=10.0)
    # a run limited to what is checked already (none yet): rows without DFT numbers, nothing labelled
    rows = verify_dft("Li-In", result, tmp_path, limit=0, **kw)
    assert [r["dft_error_meV_per_atom"] for r in rows] == [None, None]
    assert not (tmp_path / "work" / "Li-In" / "dft_verify.extxyz").exists()
    # three new labels: the references and the stable 4-atom cell; the DFT hull is built for what is checked
    rows = {r["name"]: r for r in verify_dft("Li-In", result, tmp_path, limit=3, **kw)}
    assert len(read(tmp_path / "work" / "Li-In" / "dft_verify.extxyz", ":")) == 3
    assert rows["bcc-LiIn"]["dft_error_meV_per_atom"] is None and rows["bcc-LiIn"]["dft_e_above_hull_eV_per_atom"] is None
    assert rows["bcc-Li3In"]["dft_error_meV_per_atom"] is not None
    assert rows["bcc-Li3In"]["dft_e_above_hull_eV_per_atom"] is not None
    # a report-only run shows the checks made so far
    again = {r["name"]: r for r in verify_dft("Li-In", result, tmp_path, limit=0, **kw)}
    assert again == rows
    rows = verify_dft("Li-In", result, tmp_path, **kw)  # the rest: a later run goes on
    assert "dft_verify.extxyz" not in capsys.readouterr().err  # the labelling bar's title
    frames = read(tmp_path / "work" / "Li-In" / "dft_verify.extxyz", ":")
    # the references, then what the hull is made of (the stable 4-atom cell), then what the committee doubts (the
    # 2-atom cell 4 meV/atom above the hull), each group cheapest first
    assert [a.info["name"] for a in frames][2:] == ["bcc-Li3In", "bcc-LiIn"]
    assert {a.info["name"] for a in frames[:2]} == {"Li_bcc", "In_tI2"}
    labels = {a.info["name"]: a for a in frames}
    assert set(labels) == set(cells)  # the references are labelled too
    mu = {el: labels[n].info["REF_energy"] / len(cells[n]) for el, n in (("Li", "Li_bcc"), ("In", "In_tI2"))}
    ef = {}
    for r in rows:
        a, lab = cells[r["name"]], labels[r["name"]]
        assert r["dft_error_meV_per_atom"] == pytest.approx(1000 * (a.info["energy"] - lab.info["REF_energy"]) / len(a),
                                                            abs=0.01)
        ef[r["name"]] = (lab.info["REF_energy"] - sum(mu[s] for s in a.get_chemical_symbols())) / len(a)
        assert r["dft_formation_energy_eV_per_atom"] == pytest.approx(ef[r["name"]], abs=1e-6)
    # the DFT-only hull by hand: points (x_Li, E_f) with the references at 0; a compound's energy above the hull is
    # its distance to the lowest chord (or point) spanning its x
    pts = {"Li_bcc": (1.0, 0.0), "In_tI2": (0.0, 0.0)}
    pts.update({n: (cells[n].get_chemical_symbols().count("Li") / len(cells[n]), e) for n, e in ef.items()})
    for r in rows:
        x0, e0 = pts[r["name"]]
        lowest = e0
        for xa, ea in pts.values():
            for xb, eb in pts.values():
                if xa < x0 < xb:
                    lowest = min(lowest, ea + (eb - ea) * (x0 - xa) / (xb - xa))
        assert r["dft_e_above_hull_eV_per_atom"] == pytest.approx(e0 - lowest, abs=1e-6)


def test_committee_spread_in_the_screen(tiny_mace_model_factory, tmp_path, limace_exe):
    """--committee: every hull entry carries the committee's energy spread (entries above the threshold are warned
    about in results.json and the report), and every computed barrier its spread. --max-library-atoms leaves the
    large library phases out (a quick look), and the known-phase table says so instead of "not built"."""
    a, b = (str(tiny_mace_model_factory(s)) for s in (0, 1))
    out = tmp_path / "report"
    args = ARGS[:ARGS.index("--barrier-phase")] + ["--barrier-phase", "LiSn", "--max-library-atoms", "24"]
    res = subprocess.run([limace_exe, "screen", "Li-Sn", "-p", a, "--committee", b, "--out", str(out), *args],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    r = json.loads((out / "results.json").read_text())["systems"]["Li-Sn"]
    assert all(row["committee_std_meV_per_atom"] >= 0 for row in r["hull"])
    flagged = [row["name"] for row in r["hull"] if row["committee_std_meV_per_atom"] > 10.0]
    assert all(any(w.startswith(f"{n}: committee spread") for w in r["warnings"]) for n in flagged)
    [phase] = r["barriers"]["phases"]
    assert phase["committee_size"] == 2
    # Li17Sn4 and Li22Sn5 (105-108 atoms) left out: the Li-richest known compound is the assessment's, not reached
    assert set(r["search"]["left_out"]) == {"Li17Sn4", "Li22Sn5"}
    known = {c["formula"]: c for c in r["known_phases"]["compounds"]}
    assert known["Li17Sn4"]["name"] is None and known["Li17Sn4"]["absent"].startswith("Li17Sn4: left out, 105 atoms")
    assert r["known_phases"]["li_richest_known"] == "Li17Sn4" and r["known_phases"]["li_richest_reached"] is False
    assert "**Li17Sn4: left out, 105 atoms > --max-library-atoms 24**" in (out / "report.md").read_text()
    assert all(h["barrier_std_eV"] >= 0 for h in phase["hops"] if (h.get("files") or {}).get("climbing_image"))


def test_verify_reuse_takes_a_check_of_the_same_structure_from_another_screen(tmp_path, tiny_mace_model_path):
    """--verify-reuse: a labelled frame that is the same structure relaxed by another potential (atoms moved by less
    than 0.1 A, the cell strained by less than 1 %, shifted as a whole) stands in for a new single point, and the
    model's error is taken at that frame's geometry; a frame moved further, or made with another protocol, does not.
    Nothing is labelled for a reused check."""
    import numpy as np
    from ase.build import bulk
    from ase.io import write

    from limace.analysis.screen import verify_dft
    from limace.data import get_structure
    from limace.potentials import load

    structures = tmp_path / "work" / "Li-In" / "structures"
    structures.mkdir(parents=True)
    cells = {"Li_bcc": get_structure("Li_bcc", primitive=True), "In_tI2": get_structure("In_tI2", primitive=True),
             "bcc-LiIn": bulk("LiIn", "cesiumchloride", a=3.4).repeat((2, 1, 1)),
             "bcc-Li3In": bulk("Li", "bcc", a=3.45, cubic=True).repeat((2, 2, 1))}
    cells["bcc-Li3In"].symbols[[0, 5]] = "In"
    for name, a in cells.items():
        a.info.update({"name": name, "energy": -1.5 * len(a)})
        write(structures / f"{name}.extxyz", a)
    result = {"hull": {"references": {"Li": {"name": "Li_bcc"}, "In": {"name": "In_tI2"}}},
              "near_hull": [{"name": n, "formula": cells[n].get_chemical_formula(), "e_above_hull_eV_per_atom": 0.0,
                             "source": "search"} for n in ("bcc-LiIn", "bcc-Li3In")]}
    # the "other screen's" checks: the same cells strained 0.5 %, shifted as a whole and with one atom moved
    rng = np.random.default_rng(0)
    labelled = []
    for k, (name, move) in enumerate((("Li_bcc", 0.0), ("In_tI2", 0.0), ("bcc-LiIn", 0.05), ("bcc-Li3In", 0.3))):
        b = cells[name].copy()
        b.set_cell(b.cell * 1.005, scale_atoms=True)
        b.positions += [0.7, -0.4, 1.1]
        if move:
            b.positions[1] += move * np.array([0.6, 0.8, 0.0])
        b.calc = None
        b.info = {"REF_energy": -2.0 * len(b) - 0.01 * k * len(b), "label_protocol": "gpaw-test"}
        b.arrays["REF_forces"] = rng.normal(0, 0.01, (len(b), 3))
        labelled.append(b)
    other = labelled[2].copy()  # Li-In's cell once more, labelled with another protocol: never reused
    other.info = {**labelled[2].info, "label_protocol": "pbe-pw400", "REF_energy": 99.0}
    other.arrays["REF_forces"] = labelled[2].arrays["REF_forces"]
    write(tmp_path / "checks.extxyz", [other, *labelled])
    rows = verify_dft("Li-In", result, tmp_path, workers=1, protocol="gpaw-test", limit=0,
                      reuse=[tmp_path / "checks.extxyz"], potential=str(tiny_mace_model_path))
    assert not (tmp_path / "work" / "Li-In" / "dft_verify.extxyz").exists()
    rows = {r["name"]: r for r in rows}
    # bcc-Li3In's moved atom is 0.3 A away: not the same structure, so it waits for its own single point
    assert rows["bcc-Li3In"]["dft_error_meV_per_atom"] is None and "dft_reused" not in rows["bcc-Li3In"]
    r = rows["bcc-LiIn"]
    assert r["dft_reused"]["file"] == str(tmp_path / "checks.extxyz") and r["dft_reused"]["index"] == 3
    assert r["dft_reused"]["max_displacement_A"] == pytest.approx(0.05 / 1.005 * 3 / 4, abs=0.002)  # less the mean
    assert r["dft_reused"]["max_strain"] == pytest.approx(0.005, abs=0.0002)
    at_label = labelled[2].copy()
    at_label.calc = load(tiny_mace_model_path)
    expect = 1000 * (at_label.get_potential_energy() - labelled[2].info["REF_energy"]) / len(at_label)
    assert r["dft_error_meV_per_atom"] == pytest.approx(expect, abs=0.01)
    # the references were reused too, so the DFT hull of the checked set is built: Li-In's DFT formation energy
    assert r["dft_formation_energy_eV_per_atom"] == pytest.approx(-2.02 - (-2.0 - 2.01) / 2, abs=1e-6)


def test_verify_reuse_file_must_be_labelled(tiny_mace_model_path, limace_exe, tmp_path):
    from ase.build import bulk
    from ase.io import write

    write(tmp_path / "plain.extxyz", bulk("Li", "bcc", a=3.44))
    for path, expect in ((tmp_path / "missing.extxyz", "missing.extxyz: no such file"),
                         (tmp_path / "plain.extxyz", "--verify-reuse: ")):
        res = subprocess.run([limace_exe, "screen", "Li-In", "-p", str(tiny_mace_model_path), "--out",
                              str(tmp_path / "out"), "--verify-dft", "--verify-reuse", str(path)],
                             capture_output=True, text=True)
        assert res.returncode == 2 and expect in res.stderr and res.stderr.count("\n") == 1, res.stderr
    assert not (tmp_path / "out").exists()


def test_structure_distance_ignores_rotation_shift_and_periodic_images():
    import numpy as np
    from ase.build import bulk

    from limace.analysis.screen import structure_distance

    a = bulk("LiIn", "cesiumchloride", a=3.4).repeat((2, 2, 1))
    b = a.copy()
    b.positions += [5.0, -3.0, 0.2]  # a whole shift, across the cell
    b.wrap()
    b.positions[2] += [0.0, 0.0, 0.04]
    c = b.copy()
    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    c.set_cell(b.cell @ rot.T, scale_atoms=True)  # the same crystal turned by 90 degrees
    for other in (b, c):
        disp, strain = structure_distance(a, other)
        assert disp == pytest.approx(0.04 * (1 - 1 / len(a)), abs=1e-3) and strain == pytest.approx(0.0, abs=1e-9)
    d = a.copy()
    d.set_cell(a.cell * [1.02, 1.0, 1.0], scale_atoms=True)
    assert structure_distance(a, d)[1] == pytest.approx(0.5 * (1.02 ** 2 - 1), abs=1e-9)
