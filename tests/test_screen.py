"""`limace screen` end to end on a tiny model: the documented results.json, the report files, and resume."""

import json
import subprocess

import pytest

ARGS = ["--max-atoms", "2", "--no-prototypes", "--max-barrier-phases", "1", "--min-image-distance", "6",
        "--n-images", "3", "--neb-steps", "3"]


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
            assert row["source"] in ("library", "search")
            assert row["e_above_hull_eV_per_atom"] >= -1e-9 or row["formula"] in ("Li", host)
        assert {"library", "search"} == {row["source"] for row in r["hull"]}
        assert r["stable"] and all(isinstance(f, str) for f in r["stable"])
        assert {"average_V", "max_li_per_host", "plateaus"} <= set(r["voltage"])
        assert "phases" in r["barriers"]
        for p in r["barriers"]["phases"]:
            assert set(p["percolation"]) == {"1d", "2d", "3d"}
            for hop in p["hops"]:
                assert {"length_A", "barrier_eV", "converged", "li_coordination"} <= set(hop)
    assert f"report: {(out / 'report.md').resolve()}" in res.stdout
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


def test_a_second_run_reuses_every_finished_task(screened):
    cmd, out, _ = screened
    before = json.loads((out / "results.json").read_text())
    stamps = {p: p.stat().st_mtime_ns for p in (out / "work").glob("*.json")}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    after = json.loads((out / "results.json").read_text())
    assert {p: p.stat().st_mtime_ns for p in (out / "work").glob("*.json")} == stamps
    assert after["systems"] == before["systems"]


def test_unknown_system_is_a_one_line_error(tiny_mace_model_path, limace_exe, tmp_path):
    res = subprocess.run([limace_exe, "screen", "Li-Pb", "-p", str(tiny_mace_model_path), "--out", str(tmp_path)],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "unknown system 'Li-Pb'" in res.stderr and res.stderr.count("\n") == 1


@pytest.mark.parametrize("opt, value, expect", [("--min-volume-ratio", "1.5", "min_volume_ratio must be in (0, 1], got 1.5"),
                                                ("--min-formation-energy", "0.2", "min_formation_energy must be < 0")])
def test_bad_sanity_bound_is_a_one_line_error(tiny_mace_model_path, limace_exe, tmp_path, opt, value, expect):
    res = subprocess.run([limace_exe, "screen", "Li-In", "-p", str(tiny_mace_model_path), "--out", str(tmp_path),
                          opt, value], capture_output=True, text=True)
    assert res.returncode == 2 and expect in res.stderr and res.stderr.count("\n") == 1, res.stderr
    assert not (tmp_path / "results.json").exists()
