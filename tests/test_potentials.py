"""limace.potentials: registry, verified download/cache against a real local HTTP server, loading, CLI, example."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import yaml

import limace.potentials as lp
from limace.errors import (
    ChecksumError,
    DownloadError,
    LimaceInputError,
    ModelFileError,
    UnknownNameError,
    UnsupportedElementError,
    ValidationError,
)

ROOT = Path(__file__).resolve().parents[1]


# -- helpers ---------------------------------------------------------------------------------------------------------


class ModelServer:
    """A real HTTP server on 127.0.0.1 serving bytes from ``files``; ``drop_after`` cuts the connection mid-file."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.drop_after: int | None = None
        self.requests: list[str] = []
        srv = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                srv.requests.append(self.path)
                body = srv.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if srv.drop_after is None:
                    self.wfile.write(body)
                    return
                self.wfile.write(body[: srv.drop_after])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.running = True

    def stop(self):
        if self.running:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join(5)
            self.running = False


@pytest.fixture
def server():
    srv = ModelServer()
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """Each test has its own cache and no extra registry or offline setting from the caller's environment."""
    monkeypatch.setenv("LIMACE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("LIMACE_REGISTRY", raising=False)
    monkeypatch.delenv("LIMACE_OFFLINE", raising=False)
    return tmp_path / "cache"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def entry(name: str, sha: str, url: str | None = None, file: str | None = None, **extra) -> dict:
    weights = {"sha256": sha}
    if url:
        weights["url"] = url
    if file:
        weights["file"] = file
    return {"name": name, "version": "1.0", "description": "tiny random-weight MACE for tests",
            "elements": ["Li", "In", "Sn"], "license": "MIT", "weights": weights, **extra}


def write_registry(path: Path, entries: list[dict]) -> Path:
    path.write_text(yaml.safe_dump({"schema": 1, "potentials": entries}, sort_keys=False))
    return path


@pytest.fixture
def served_model(tiny_mace_model_path, server, tmp_path, monkeypatch):
    """The tiny model served at <server>/models/tiny.model and registered as 'lab-tiny' via LIMACE_REGISTRY."""
    data = Path(tiny_mace_model_path).read_bytes()
    server.files["/models/tiny.model"] = data
    reg = write_registry(tmp_path / "lab.yaml", [entry("lab-tiny", sha256(data), url=f"{server.url}/models/tiny.model")])
    monkeypatch.setenv("LIMACE_REGISTRY", str(reg))
    return data


def cache_files(cache: Path) -> list[Path]:
    return sorted(p for p in cache.rglob("*") if p.is_file()) if cache.exists() else []


def alloy_cell(seed: int = 0):
    """A strained, rattled 6-atom Li-In-Sn cell (LiSn with one Sn replaced by In)."""
    from limace.data import get_structure

    atoms = get_structure("LiSn")
    sn = [i for i, s in enumerate(atoms.get_chemical_symbols()) if s == "Sn"]
    atoms.numbers[sn[0]] = 49
    rng = np.random.default_rng(seed)
    atoms.set_cell(atoms.cell[:] @ (np.eye(3) + 0.02 * rng.standard_normal((3, 3))), scale_atoms=True)
    atoms.positions += 0.08 * rng.standard_normal(atoms.positions.shape)
    return atoms


# -- registry --------------------------------------------------------------------------------------------------------


def test_shipped_registry_parses_with_full_provenance():
    from limace.potentials.registry import _shipped

    for e in _shipped():  # empty until limace-lisnin-small ships; then each entry must be complete
        assert e.dft_protocol and e.dataset and e.metrics and e.license
        assert e.weights.file is not None or e.weights.url is not None
    assert lp.list_potentials() == list(_shipped())


def test_registry_rejects_unknown_keys_and_bad_values(tmp_path, monkeypatch):
    good = entry("lab-a", "0" * 64, url="http://127.0.0.1:1/a.model")
    cases = [
        ({**good, "weigths": {}}, "unknown key 'weigths'"),
        ({**good, "version": 1.0}, "version must be a non-empty string"),
        ({**good, "weights": {"sha256": "abc", "url": "http://x/a.model"}}, "64 hex digits"),
        ({**good, "weights": {"sha256": "0" * 64}}, "need a file (bundled) or a url"),
        ({**good, "elements": ["Li", "Xx"]}, "'Xx' is not a chemical symbol"),
        ({**good, "elements": [["Li"]]}, "['Li'] is not a chemical symbol"),
        ({**good, "name": "../evil"}, "may only use letters"),
        ({**good, "use": 3}, "use must be a non-empty string"),
    ]
    for raw, msg in cases:
        reg = write_registry(tmp_path / "r.yaml", [raw])
        monkeypatch.setenv("LIMACE_REGISTRY", str(reg))
        with pytest.raises(ValidationError, match=re.escape(msg)) as exc:
            lp.list_potentials()
        assert str(reg) in str(exc.value) and "\n" not in str(exc.value)
    reg = write_registry(tmp_path / "r.yaml", [{**good, "use": "what it is for"}])
    assert lp.list_potentials()[-1].use == "what it is for"
    reg = write_registry(tmp_path / "r.yaml", [good, good])
    with pytest.raises(ValidationError, match="listed twice"):
        lp.list_potentials()
    monkeypatch.setenv("LIMACE_REGISTRY", str(tmp_path / "missing.yaml"))
    with pytest.raises(LimaceInputError, match="missing.yaml does not exist"):
        lp.list_potentials()


def test_same_name_in_two_registries_is_an_error(tmp_path, monkeypatch):
    import os

    a = write_registry(tmp_path / "a.yaml", [entry("lab-x", "0" * 64, url="http://h/x.model")])
    b = write_registry(tmp_path / "b.yaml", [entry("lab-x", "1" * 64, url="http://h/y.model")])
    monkeypatch.setenv("LIMACE_REGISTRY", f"{a}{os.pathsep}{b}")
    with pytest.raises(ValidationError, match="defined in both"):
        lp.get_potential("lab-x")


def test_unknown_name_lists_closest(tmp_path, monkeypatch):
    reg = write_registry(tmp_path / "r.yaml", [entry(n, "0" * 64, url="http://h/m.model")
                                               for n in ("lab-lisn-small", "lab-lisn-large", "other")])
    monkeypatch.setenv("LIMACE_REGISTRY", str(reg))
    with pytest.raises(UnknownNameError) as exc:
        lp.get_potential("lab-lisn-smal")
    msg = str(exc.value)
    assert msg.startswith("unknown potential 'lab-lisn-smal'; closest: lab-lisn-small")
    assert "other" not in msg
    with pytest.raises(UnknownNameError, match="closest: lab-lisn-small"):
        lp.load("lab-lisn-smal")


def test_cache_dir_from_env_or_platformdirs(monkeypatch, tmp_path):
    import platformdirs

    assert lp.cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("LIMACE_CACHE_DIR")
    assert lp.cache_dir() == Path(platformdirs.user_cache_dir("limace"))


def test_registry_env_accepts_urls_and_paths(monkeypatch):
    from limace.potentials.registry import registry_sources

    monkeypatch.setenv("LIMACE_REGISTRY", "http://127.0.0.1:8000/lab/reg.yaml:/data/reg.yaml:https://lab.org/r.yaml")
    if __import__("os").pathsep == ":":
        assert registry_sources() == ["http://127.0.0.1:8000/lab/reg.yaml", "/data/reg.yaml", "https://lab.org/r.yaml"]


# -- download and cache ----------------------------------------------------------------------------------------------


def test_first_download_then_cached_reuse_with_server_stopped(served_model, server, isolated_env):
    path = lp.fetch("lab-tiny", progress=False)
    assert path.parent == isolated_env / "potentials" and path.read_bytes() == served_model
    assert cache_files(isolated_env) == [path]  # no temporary file left behind
    assert server.requests == ["/models/tiny.model"]
    server.stop()
    assert lp.fetch("lab-tiny") == path  # online, but the verified cache needs no network
    assert lp.fetch("lab-tiny", offline=True) == path
    calc = lp.load("lab-tiny", offline=True)
    atoms = alloy_cell()
    atoms.calc = calc
    assert np.isfinite(atoms.get_potential_energy())


def test_offline_without_cache_never_touches_network(served_model, server, isolated_env, monkeypatch):
    monkeypatch.setenv("LIMACE_OFFLINE", "1")
    with pytest.raises(DownloadError, match="not in the cache .* offline mode is on") as exc:
        lp.load("lab-tiny")
    assert "\n" not in str(exc.value)
    assert server.requests == [] and cache_files(isolated_env) == []


def test_no_network_and_no_cache(served_model, server, isolated_env):
    server.stop()
    with pytest.raises(DownloadError, match=r"cannot download lab-tiny 1\.0 .*connection failed") as exc:
        lp.fetch("lab-tiny", progress=False)
    assert "\n" not in str(exc.value)
    assert cache_files(isolated_env) == []


def test_corrupted_download_is_deleted_not_loaded(served_model, server, isolated_env):
    bad = bytearray(served_model)
    bad[len(bad) // 2] ^= 0xFF
    server.files["/models/tiny.model"] = bytes(bad)
    with pytest.raises(ChecksumError, match="deleted, not used") as exc:
        lp.load("lab-tiny", progress=False)
    assert sha256(bytes(bad))[:12] in str(exc.value)
    assert cache_files(isolated_env) == []


def test_corrupted_cache_is_quarantined(served_model, server, isolated_env):
    path = lp.fetch("lab-tiny", progress=False)
    data = bytearray(path.read_bytes())
    data[100] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="corrupt .* moved to .*quarantine"):
        lp.load("lab-tiny", offline=True)
    assert not path.exists()
    quarantined = list((path.parent / "quarantine").iterdir())
    assert len(quarantined) == 1 and quarantined[0].read_bytes() == bytes(data)
    # online: quarantined again (silently replaced files would hide a problem) and downloaded anew
    path.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="corrupt"):
        again = lp.fetch("lab-tiny", progress=False)
    assert again == path and path.read_bytes() == served_model
    assert len(list((path.parent / "quarantine").iterdir())) == 2


def test_interrupted_download_leaves_no_file(served_model, server, isolated_env):
    server.drop_after = len(served_model) // 2
    with pytest.raises(DownloadError, match="connection dropped mid-file") as exc:
        lp.fetch("lab-tiny", progress=False)
    assert "nothing was written" in str(exc.value)
    assert server.requests  # the server was reached and cut the transfer
    assert cache_files(isolated_env) == []
    server.drop_after = None
    assert lp.fetch("lab-tiny", progress=False).read_bytes() == served_model


def test_remote_registry_with_relative_url(tiny_mace_model_path, server, isolated_env, monkeypatch):
    data = Path(tiny_mace_model_path).read_bytes()
    server.files["/lab/tiny.model"] = data
    server.files["/lab/registry.yaml"] = yaml.safe_dump(
        {"schema": 1, "potentials": [entry("remote-tiny", sha256(data), url="tiny.model")]}).encode()
    monkeypatch.setenv("LIMACE_REGISTRY", f"{server.url}/lab/registry.yaml")
    e = lp.get_potential("remote-tiny")
    assert e.weights.url == f"{server.url}/lab/tiny.model" and e.source == f"{server.url}/lab/registry.yaml"
    assert lp.fetch(e, progress=False).read_bytes() == data
    server.stop()
    # offline (and with the server gone) the cached copy of the registry and of the weights serve
    assert lp.fetch("remote-tiny", offline=True).read_bytes() == data
    with pytest.warns(UserWarning, match="unreachable"):
        assert lp.get_potential("remote-tiny").name == "remote-tiny"


def test_remote_registry_may_not_point_at_local_files(server, monkeypatch):
    server.files["/r.yaml"] = yaml.safe_dump(
        {"schema": 1, "potentials": [entry("x", "0" * 64, file="/etc/passwd")]}).encode()
    monkeypatch.setenv("LIMACE_REGISTRY", f"{server.url}/r.yaml")
    with pytest.raises(ValidationError, match="not allowed in a remote registry"):
        lp.list_potentials()


def test_local_registry_file_weights_are_verified(tiny_mace_model_path, tmp_path, monkeypatch):
    data = Path(tiny_mace_model_path).read_bytes()
    (tmp_path / "w.model").write_bytes(data)
    reg = write_registry(tmp_path / "r.yaml", [entry("lab-local", sha256(data), file="w.model"),
                                               entry("lab-wrong", sha256(b"other"), file="w.model")])
    monkeypatch.setenv("LIMACE_REGISTRY", str(reg))
    assert lp.fetch("lab-local") == tmp_path / "w.model"
    with pytest.raises(ChecksumError, match="fix the file or the registry entry"):
        lp.load("lab-wrong")


def test_registry_elements_must_match_the_weights(tiny_mace_model_path, tmp_path, monkeypatch):
    data = Path(tiny_mace_model_path).read_bytes()
    (tmp_path / "w.model").write_bytes(data)
    reg = write_registry(tmp_path / "r.yaml", [{**entry("lab-lisn", sha256(data), file="w.model"),
                                                "elements": ["Li", "Sn"]}])
    monkeypatch.setenv("LIMACE_REGISTRY", str(reg))
    with pytest.raises(ModelFileError, match="know Li, In, Sn but its registry entry"):
        lp.load("lab-lisn")


# -- loading ---------------------------------------------------------------------------------------------------------


def test_predictions_equal_mace_calculator(tiny_mace_model_path):
    from mace.calculators import MACECalculator

    atoms = alloy_cell()
    for dtype, tol in (("float64", 1e-12), ("float32", 1e-5)):
        ours, ref = atoms.copy(), atoms.copy()
        ours.calc = lp.load(tiny_mace_model_path, dtype=dtype)
        ref.calc = MACECalculator(model_paths=str(tiny_mace_model_path), device="cpu", default_dtype=dtype)
        e = ours.get_potential_energy()
        assert e == pytest.approx(ref.get_potential_energy(), rel=tol, abs=tol)
        np.testing.assert_allclose(ours.get_forces(), ref.get_forces(), rtol=tol, atol=tol)
        np.testing.assert_allclose(ours.get_stress(), ref.get_stress(), rtol=tol, atol=tol)
    assert np.abs(ours.get_forces()).max() > 1e-2  # the test cell is far from equilibrium: a real comparison


def test_forces_and_stress_are_derivatives_of_energy(tiny_mace_model_path):
    from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress

    atoms = alloy_cell(seed=3)
    atoms.calc = lp.load(str(tiny_mace_model_path), dtype="float64")
    f = atoms.get_forces()
    s = atoms.get_stress(voigt=True)
    assert np.abs(f).max() > 1e-2 and np.abs(s).max() > 1e-4
    np.testing.assert_allclose(f, calculate_numerical_forces(atoms, eps=1e-4), atol=1e-7)
    np.testing.assert_allclose(s, calculate_numerical_stress(atoms, eps=1e-5, voigt=True), atol=1e-8)


def test_committee_reports_mean_and_spread(tiny_mace_model_factory):
    paths = [tiny_mace_model_factory(0), tiny_mace_model_factory(1)]
    atoms = alloy_cell()
    singles = []
    for p in paths:
        a = atoms.copy()
        a.calc = lp.load(p)
        singles.append((a.get_potential_energy(), a.get_forces(), a.get_stress()))
    calc = lp.load(paths)
    atoms.calc = calc
    e = atoms.get_potential_energy()
    (e0, f0, s0), (e1, f1, s1) = singles
    assert e0 != pytest.approx(e1)
    assert e == pytest.approx((e0 + e1) / 2, abs=1e-10)
    np.testing.assert_allclose(atoms.get_forces(), (f0 + f1) / 2, atol=1e-10)
    assert calc.results["energy_std"] == pytest.approx(abs(e0 - e1) / 2, abs=1e-10)
    np.testing.assert_allclose(calc.results["forces_std"], np.abs(f0 - f1) / 2, atol=1e-10)
    np.testing.assert_allclose(calc.results["stress_std"], np.abs(s0 - s1) / 2, atol=1e-12)
    assert calc.get_property("energy_std", atoms) == pytest.approx(abs(e0 - e1) / 2, abs=1e-10)


def test_committee_members_must_agree(tiny_mace_model_path, tmp_path):
    import torch
    from conftest import build_tiny_mace

    model = build_tiny_mace(2)
    model.r_max.fill_(4.0)
    other = tmp_path / "r4.model"
    torch.save(model, other)
    with pytest.raises(LimaceInputError, match="differ in cutoff"):
        lp.load([tiny_mace_model_path, other])


def test_unknown_elements_refused_before_computing(tiny_mace_model_path):
    atoms = alloy_cell()
    atoms.numbers[0] = 29  # Cu
    calc = lp.load(tiny_mace_model_path)
    atoms.calc = calc
    with pytest.raises(UnsupportedElementError) as exc:
        atoms.get_potential_energy()
    assert str(exc.value) == (f"the structure contains Cu (Z=29), which {tiny_mace_model_path} was not trained on "
                              "(it knows Li, In, Sn)")
    assert calc.results == {}


def test_unreadable_model_files(tmp_path, tiny_mace_model_path):
    import torch

    garbage = tmp_path / "garbage.model"
    garbage.write_bytes(b"not a model at all\n" * 10)
    truncated = tmp_path / "truncated.model"
    truncated.write_bytes(Path(tiny_mace_model_path).read_bytes()[:5000])
    state = tmp_path / "state.model"
    torch.save({"weights": torch.zeros(3)}, state)
    flipped = tmp_path / "flipped.model"  # bytes flipped inside a member: still a zip, but its CRC-32 fails
    data = bytearray(Path(tiny_mace_model_path).read_bytes())
    with zipfile.ZipFile(tiny_mace_model_path) as zf:
        big = max(zf.infolist(), key=lambda i: i.file_size)
    at = big.header_offset + 30 + len(big.filename.encode()) + len(big.extra) + big.file_size // 2
    data[at:at + 8] = bytes(b ^ 0xFF for b in data[at:at + 8])
    flipped.write_bytes(bytes(data))
    for path, msg in ((garbage, "not a readable MACE model"), (truncated, "damaged model file (truncated"),
                      (flipped, "fails its CRC check"), (state, "holds a dict, not a MACE model"),
                      (tmp_path / "none.model", "no such model file"), (tmp_path, "is not a file")):
        with pytest.raises(ModelFileError, match=re.escape(msg)) as exc:
            lp.load(path)
        assert str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_bad_dtype_device_and_batched_committee(tiny_mace_model_path):
    with pytest.raises(LimaceInputError, match="dtype 'float16' is not supported"):
        lp.load(tiny_mace_model_path, dtype="float16")
    with pytest.raises(LimaceInputError, match="not a torch device"):
        lp.load(tiny_mace_model_path, device="gpu0")
    with pytest.raises(LimaceInputError, match="empty list"):
        lp.load_batched([])


def test_batched_committee_mean_and_spread(tiny_mace_model_factory):
    """load_batched([a, b]) is a committee: the members' mean as the result, their spread beside it (energy std per
    system, per-atom norm of the force std), the same numbers as the members called one by one."""
    import torch

    from limace.core.model import BatchedModel
    from limace.core.state import BatchedState
    from limace.data import get_structure
    from limace.potentials.committee import BatchedCommittee, spread_summary

    paths = [tiny_mace_model_factory(0), tiny_mace_model_factory(1)]
    com = lp.load([str(p) for p in paths], batched=True)
    assert isinstance(com, BatchedCommittee) and isinstance(com, BatchedModel) and len(com) == 2
    cells = [get_structure("LiSn"), get_structure("Li")]
    cells[0].rattle(0.05, seed=2)
    state = BatchedState.from_atoms(cells)
    out = com(state)
    a, b = (lp.load_batched(str(p))(state) for p in paths)
    assert torch.allclose(out["energy"], (a["energy"] + b["energy"]) / 2)
    assert torch.allclose(out["forces"], (a["forces"] + b["forces"]) / 2)
    assert torch.allclose(out["energy_std"], (a["energy"] - b["energy"]).abs() / 2)
    assert torch.allclose(out["forces_std"], torch.linalg.vector_norm(a["forces"] - b["forces"], dim=1) / 2)
    assert float(out["energy_std"].min()) > 0
    summ = spread_summary(out, state)
    assert len(summ["energy_std_meV_per_atom"]) == 2 and len(summ["forces_std_max_eV_A"]) == 2
    assert spread_summary(a, state) is None
    assert "forces_std" not in com(state, compute_forces=False)


def test_batched_model_gives_the_calculator_numbers(tiny_mace_model_path):
    import torch

    from limace.potentials import batched

    from limace.data import get_structure
    from limace.md.state import BatchedState

    structures = [alloy_cell(0), alloy_cell(1), get_structure("Li13Sn5")]
    for dtype, tol in (("float64", 1e-9), ("float32", 2e-4)):
        model = lp.load(tiny_mace_model_path, dtype=dtype, batched=True)
        assert isinstance(model, batched.BatchedMACE)
        out = model(BatchedState.from_atoms(structures, dtype=torch.float64), compute_stress=True)
        calc = lp.load(tiny_mace_model_path, dtype=dtype)
        for k, atoms in enumerate(structures):
            atoms.calc = calc
            assert float(out["energy"][k]) == pytest.approx(atoms.get_potential_energy(), rel=tol, abs=tol)
            stress = atoms.get_stress(voigt=False)
            np.testing.assert_allclose(out["stress"][k].numpy(), stress, rtol=tol, atol=tol)
        forces = np.concatenate([a.get_forces() for a in structures])
        np.testing.assert_allclose(out["forces"].numpy(), forces, rtol=tol, atol=tol)


# -- command line and example ----------------------------------------------------------------------------------------


def run_cli(argv, capsys):
    from limace.cli import main

    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_list_info_fetch(served_model, server, isolated_env, capsys):
    code, out, _ = run_cli(["potentials", "list"], capsys)
    assert code == 0 and "lab-tiny" in out and "download" in out
    code, out, _ = run_cli(["potentials", "fetch", "lab-tiny"], capsys)
    assert code == 0 and str(isolated_env / "potentials") in out
    code, out, _ = run_cli(["potentials", "info", "lab-tiny"], capsys)
    assert code == 0 and f"sha256: {sha256(served_model)}" in out and "weights_at: cached" in out
    code, out, err = run_cli(["potentials", "info", "lab-tiyn"], capsys)
    assert code == 2 and err.strip() == "limace: error: unknown potential 'lab-tiyn'; closest: lab-tiny"


def test_cli_list_through_a_pipe_is_plain_rows(limace_exe):
    """`limace potentials list | grep limace-lisnin-small` finds it: one plain row per potential, nothing wrapped."""
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "LIMACE_REGISTRY"}
    res = subprocess.run([limace_exe, "potentials", "list"], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0 and res.stderr == ""
    rows = [line for line in res.stdout.splitlines() if line.split()[0] == "limace-lisnin-small"]
    assert len(rows) == 1
    assert re.search(r"E [\d.]+ meV/atom, F [\d.]+ meV/A", rows[0]) and "\u2502" not in res.stdout  # no table rules
    assert "4 members" in rows[0]  # its committee (`--committee shipped`), one row each with whose member it is
    members = [line for line in res.stdout.splitlines() if line.split()[0].startswith("limace-lisnin-small-member-")]
    assert len(members) == 4 and all("member of limace-lisnin-small, limace-lisnin-medium" in line for line in members)


def test_registry_file_that_is_binary_is_one_line(tmp_path, monkeypatch, capsys):
    from limace.cli import main

    reg = tmp_path / "registry.yaml"
    reg.write_bytes(bytes(range(256)) * 4)
    monkeypatch.setenv("LIMACE_REGISTRY", str(reg))
    with pytest.raises(ValidationError, match="is not a text file"):
        lp.list_potentials()
    with pytest.raises(SystemExit) as done:
        main(["potentials", "list"])
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.count("\n") == 1 and err.startswith("limace: error: LIMACE_REGISTRY")


def test_cli_lists_the_shipped_potential(limace_exe):
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "LIMACE_REGISTRY"}
    res = subprocess.run([limace_exe, "potentials", "list", "--json"], capture_output=True, text=True, env=env,
                         timeout=60)
    assert res.returncode == 0
    names = [p["name"] for p in json.loads(res.stdout)]
    assert "limace-lisnin-small" in names


def _run_example_ase_md(potential: str | None = None):
    """examples/ase_md.py for 3 steps, with the shipped potential or ``potential`` in its place."""
    src = (ROOT / "examples" / "ase_md.py").read_text()
    assert '"limace-lisnin-small"' in src
    if potential is not None:
        src = src.replace('"limace-lisnin-small"', repr(potential))
    src, n = re.subn(r"\.run\(\d+\)", ".run(3)", src)
    assert n == 1
    scope: dict = {}
    exec(compile(src, "ase_md.py", "exec"), scope)
    atoms = scope["atoms"]
    assert atoms.get_chemical_formula() == "Li52Sn20" and np.isfinite(atoms.get_potential_energy())


def test_example_ase_md_runs_with_the_shipped_potential():
    _run_example_ase_md()


def test_example_ase_md_runs_with_a_model_path(tiny_mace_model_path):
    _run_example_ase_md(str(tiny_mace_model_path))


def test_a_committee_registered_with_a_potential_is_loaded_by_shipped(tiny_mace_model_factory, tmp_path, monkeypatch):
    """A registry entry lists its committee (other registered potentials, same data, other seeds); `shipped` in a
    committee list stands for them: one BatchedCommittee of the potential and its members, named as registered."""
    from limace.errors import LimaceInputError
    from limace.potentials.committee import BatchedCommittee
    from limace.potentials.registry import expand_committee

    paths = [Path(tiny_mace_model_factory(s)) for s in (0, 1, 2)]
    items = [entry(f"lab-c{i}", sha256(p.read_bytes()), file=str(p)) for i, p in enumerate(paths)]
    items[0]["committee"] = ["lab-c1", "lab-c2"]
    monkeypatch.setenv("LIMACE_REGISTRY", str(write_registry(tmp_path / "lab.yaml", items)))
    assert lp.get_potential("lab-c0").committee == ("lab-c1", "lab-c2")
    assert lp.get_potential("lab-c0").as_dict()["committee"] == ["lab-c1", "lab-c2"]
    assert expand_committee(["shipped"], "lab-c0") == ["lab-c1", "lab-c2"]
    model = lp.load_batched(["lab-c0", "shipped"])
    assert isinstance(model, BatchedCommittee) and model.names == ("lab-c0", "lab-c1", "lab-c2")
    calc = lp.load(["lab-c0", "shipped"], domain=False)
    from ase.build import bulk

    atoms = bulk("Li", "bcc", a=3.44, cubic=True)
    atoms.rattle(0.05, seed=1)
    atoms.calc = calc
    e = atoms.get_potential_energy()
    assert calc.results["energy_std"] > 0  # three different random models disagree
    # the registered members estimate lab-c0's uncertainty; its predictions stay its own ("first"), unless asked
    alone = atoms.copy()
    alone.calc = lp.load("lab-c0", domain=False)
    assert e == pytest.approx(alone.get_potential_energy(), abs=1e-9)
    assert np.allclose(atoms.get_forces(), alone.get_forces(), atol=1e-9)
    assert np.allclose(atoms.get_stress(), alone.get_stress(), atol=1e-9)
    mean = atoms.copy()
    mean.calc = lp.load(["lab-c0", "shipped"], domain=False, prediction="mean")
    assert mean.get_potential_energy() == pytest.approx(np.mean(mean.calc.results["energy_comm"]), abs=1e-9)
    assert abs(mean.get_potential_energy() - e) > 1e-6
    from limace.core.state import BatchedState

    state = BatchedState.from_atoms([atoms])
    first, mean_b = lp.load_batched(["lab-c0", "shipped"]), lp.load_batched(["lab-c0", "shipped"], prediction="mean")
    single = lp.load_batched("lab-c0")
    assert first.prediction == "first" and mean_b.prediction == "mean"
    assert float(first(state)["energy"][0]) == pytest.approx(float(single(state)["energy"][0]), abs=1e-9)
    assert float(mean_b(state)["energy"][0]) == pytest.approx(np.mean(mean.calc.results["energy_comm"]), abs=1e-6)
    assert float(first(state)["energy_std"][0]) == pytest.approx(float(mean_b(state)["energy_std"][0]))
    with pytest.raises(LimaceInputError, match="prediction must be 'mean' or 'first'"):
        lp.load(["lab-c0", "shipped"], prediction="median")
    with pytest.raises(LimaceInputError, match="'lab-c1' ships no committee"):
        expand_committee(["shipped"], "lab-c1")
    with pytest.raises(LimaceInputError, match="ships no committee"):
        expand_committee(["shipped"], str(paths[0]))


def test_a_committee_member_that_is_not_registered_is_an_error(tiny_mace_model_path, tmp_path, monkeypatch):
    data = Path(tiny_mace_model_path).read_bytes()
    bad = entry("lab-a", sha256(data), file=str(tiny_mace_model_path), committee=["lab-missing"])
    monkeypatch.setenv("LIMACE_REGISTRY", str(write_registry(tmp_path / "r.yaml", [bad])))
    with pytest.raises(ValidationError, match="committee member 'lab-missing' is not registered"):
        lp.list_potentials()
    itself = entry("lab-a", sha256(data), file=str(tiny_mace_model_path), committee=["lab-a"])
    monkeypatch.setenv("LIMACE_REGISTRY", str(write_registry(tmp_path / "r.yaml", [itself])))
    with pytest.raises(ValidationError, match="lists the potential itself"):
        lp.list_potentials()
