"""The bad-input corpus: every case is a user mistake that must end as ONE line ``limace: error: ...`` on stderr,
exit code 2, no traceback, and no file changed (the working directory, the shipped datasets and the shipped model are
hashed before and after).

Each kind of bad input is walked through every command that takes that kind of input: structure files through
barriers, md, data label/validate/info/pack and evaluate; output paths through every command that writes; model files
through every command that loads one. Commands run in-process (``limace.cli.main``) and must refuse before any heavy
work, so the whole file runs in well under a minute on one core.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
GOOD_LABELS = ROOT / "tests" / "data" / "good.extxyz"
BAD_LABELS = sorted((ROOT / "tests" / "data" / "bad").glob("*.extxyz"))
POT = "limace-lisnin-small"


# -- the working directory with every bad file -----------------------------------------------------------------------


def _write_extxyz(path: Path, symbols, positions, cell, pbc="T T T") -> None:
    lattice = " ".join(str(x) for x in np.asarray(cell, dtype=float).ravel())
    lines = [str(len(symbols)), f'Lattice="{lattice}" Properties=species:S:1:pos:R:3 pbc="{pbc}"']
    lines += [f"{s} {x} {y} {z}" for s, (x, y, z) in zip(symbols, positions)]
    path.write_text("\n".join(lines) + "\n")


def _lisn(path: Path, shift=None, cell=None, symbols=("Li", "Sn")) -> None:
    pos = np.array([[0.0, 0.0, 0.0], [1.55, 1.55, 1.55]])
    if shift is not None:
        pos[1] = shift
    _write_extxyz(path, list(symbols), pos, np.eye(3) * 3.1 if cell is None else cell)


def _flip_inside_member(src: Path, dst: Path) -> None:
    """Copy a torch .model (zip) and flip bytes inside its largest stored member (the archive stays a zip)."""
    shutil.copy(src, dst)
    with zipfile.ZipFile(src) as zf:
        info = max(zf.infolist(), key=lambda i: i.file_size)
    data = bytearray(dst.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + info.file_size // 2
    for k in range(start, start + 16):
        data[k] ^= 0xFF
    dst.write_bytes(bytes(data))


def _read_only_dir(tmp: Path) -> Path:
    """A directory no file can be created in: a chmod-555 one for ordinary users; for root (who ignores permission
    bits) a kernel directory."""
    d = tmp / "readonly"
    d.mkdir()
    d.chmod(0o555)
    for cand in (d, Path("/sys/kernel"), Path("/proc/self")):
        try:
            fd, probe = tempfile.mkstemp(dir=cand)
        except OSError:
            return cand
        os.close(fd)
        os.unlink(probe)
    pytest.fail("no read-only directory found to test with")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """The directory every case runs in, with its inputs (the names are used by the cases below)."""
    from limace.potentials.registry import get_potential

    w = tmp_path_factory.mktemp("bad_inputs")
    _lisn(w / "good.extxyz")
    shutil.copy(GOOD_LABELS, w / "labels.extxyz")
    for name in ("nan_positions", "inf_positions"):
        _lisn(w / f"{name}.extxyz", shift=[1.0, float("nan" if name.startswith("nan") else "inf"), 1.0])
    _lisn(w / "overlapping.extxyz", shift=[0.2, 0.0, 0.0])
    _lisn(w / "nan_cell.extxyz", cell=[[3.1, 0, 0], [0, float("nan"), 0], [0, 0, 3.1]])
    _lisn(w / "zero_cell.extxyz", cell=np.zeros((3, 3)))
    _lisn(w / "no_li.extxyz", symbols=("Sn", "Sn"))
    (w / "empty.extxyz").write_bytes(b"")
    (w / "blank.extxyz").write_text("\n\n   \n")
    good = (w / "good.extxyz").read_text().splitlines()
    (w / "truncated.extxyz").write_text("\n".join(good[:3]) + "\n")
    rng = np.random.default_rng(7)
    (w / "binary.extxyz").write_bytes(rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    (w / "binary.traj").write_bytes(rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    (w / "garbage.cif").write_text("this is not a crystal\n")
    (w / "adir.extxyz").mkdir()
    (w / "afile").write_text("a file where a directory is expected\n")
    (w / "run").mkdir()  # an (empty) md output directory for `limace diffusion`
    # model files
    shipped = get_potential(POT, offline=True).weights.file
    _flip_inside_member(shipped, w / "flipped.model")
    data = shipped.read_bytes()
    (w / "truncated.model").write_bytes(data[: len(data) // 2])
    (w / "empty.model").write_bytes(b"")
    with zipfile.ZipFile(w / "notmace.model", "w") as zf:
        zf.writestr("archive/data.pkl", b"not a pickle")
    (w / "adir.model").mkdir()
    # registries
    (w / "registry.bin").write_bytes(rng.integers(0, 256, 500, dtype=np.uint8).tobytes())
    (w / "registry_bad.yaml").write_text("schema: [1\n")
    # a dataset already packed (pack must not overwrite it without --force)
    (w / "ds").mkdir()
    (w / "ds" / "manifest.json").write_text("{}\n")
    return w


@pytest.fixture(scope="module")
def ro(tmp_path_factory):
    return _read_only_dir(tmp_path_factory.mktemp("ro"))


def _md_yaml(w: Path, name: str, **over) -> Path:
    """An md config in ``w`` (good values unless overridden; a value of None drops the key)."""
    cfg = {"structures": f"[{w / 'good.extxyz'}]", "potential": POT, "ensemble": "nvt_langevin", "steps": "5",
           "temperature_K": "300", "output_dir": str(w / "md-out")}
    cfg.update(over)
    path = w / f"{name}.yaml"
    path.write_text("".join(f"{k}: {v}\n" for k, v in cfg.items() if v is not None))
    return path


# -- the corpus ------------------------------------------------------------------------------------------------------
# argv items: "{w}" is the working directory, "{ro}" a read-only directory, "{md:KEY=VALUE,...}" an md config with
# those values (YAML text). Each case: (id, argv, expected fragment of the error line, extra environment).

STRUCTURE_FILES = {  # bad structure file -> fragment of its error
    "nan_positions.extxyz": "'positions' has NaN/inf",
    "inf_positions.extxyz": "'positions' has NaN/inf",
    "overlapping.extxyz": "atoms closer than",
    "nan_cell.extxyz": "'cell' has NaN/inf",
    "zero_cell.extxyz": "zero volume",
    "empty.extxyz": "empty file",
    "blank.extxyz": "blank.extxyz",
    "truncated.extxyz": "cannot be read",
    "binary.extxyz": "cannot be read",
    "binary.traj": "cannot be read",
    "garbage.cif": "garbage.cif",
    "adir.extxyz": "adir.extxyz",
    "missing.extxyz": "missing.extxyz",
}

STRUCTURE_COMMANDS = {  # command taking a structure file -> argv with "{f}" for the file
    "barriers": ["barriers", "{w}/{f}", "-p", POT],
    "md": ["md", "{md:structures=[{w}/{f}]}"],
    "label": ["data", "label", "{w}/{f}", "{w}/new-labels.extxyz"],
    "validate": ["data", "validate", "{w}/{f}"],
    "info": ["data", "info", "{w}/{f}"],
    "pack": ["data", "pack", "{w}/{f}", "--dest", "{w}/new-ds"],
    "evaluate": ["evaluate", "{model}", "{w}/{f}", "--out", "{w}/new-eval"],
}


def _structure_cases():
    cases = []
    for cmd, argv in STRUCTURE_COMMANDS.items():
        for f, frag in STRUCTURE_FILES.items():
            cases.append((f"{cmd}-{f}", [a.replace("{f}", f) for a in argv], frag, {}))
    # labelled files with bad labels: the commands that need labels
    for path in BAD_LABELS:
        for cmd in ("validate", "pack", "evaluate"):
            argv = {"validate": ["data", "validate", str(path)],
                    "pack": ["data", "pack", str(path), "--dest", "{w}/new-ds"],
                    "evaluate": ["evaluate", "{model}", str(path), "--out", "{w}/new-eval"]}[cmd]
            if cmd == "evaluate" and path.name in ("foreign_element.extxyz", "not_periodic.extxyz",
                                                   "missing_stress.extxyz"):
                continue  # evaluate takes any elements, molecules and unlabelled stress (the model decides)
            cases.append((f"{cmd}-labels-{path.stem}", argv, path.name, {}))
    cases.append(("barriers-no-li", ["barriers", "{w}/no_li.extxyz", "-p", POT], "has no Li", {}))
    return cases


USAGE = [  # click usage mistakes of every command: missing arguments, unknown options, values of the wrong type
    ("no-such-command", ["nosuch"], "No such command", {}),
    ("data-no-such-command", ["data", "nosuch"], "No such command", {}),
    ("potentials-no-such-command", ["potentials", "nosuch"], "No such command", {}),
    *[(f"missing-arg-{'-'.join(c)}", list(c), "Missing argument", {}) for c in (
        ("data", "plan"), ("data", "label"), ("data", "label", "{w}/good.extxyz"), ("data", "pack"),
        ("data", "validate"), ("potentials", "info"), ("potentials", "fetch"), ("train",), ("evaluate",),
        ("evaluate", "{model}"), ("md",), ("diffusion",), ("barriers",), ("screen",), ("learn",))],
    ("missing-option-barriers-potential", ["barriers", "LiSn"], "Missing option", {}),
    ("missing-option-screen-potential", ["screen", "Li-Sn"], "Missing option", {}),
    *[(f"unknown-option-{'-'.join(c)}", [*c, "--frobnicate"], "No such option", {}) for c in (
        ("demo",), ("data", "phases"), ("data", "plan", "{w}/x.extxyz"), ("data", "info"),
        ("data", "validate", "{w}/good.extxyz"), ("potentials", "list"), ("potentials", "info", POT),
        ("train", "small"), ("md", "{w}/x.yaml"), ("diffusion", "{w}/run"), ("barriers", "LiSn", "-p", POT),
        ("screen", "Li-Sn", "-p", POT), ("evaluate", "{model}", "{w}/labels.extxyz"), ("learn", "{w}/x.yaml"))],
    ("option-without-value", ["data", "phases", "--system"], "requires an argument", {}),
    ("barriers-n-images-abc", ["barriers", "LiSn", "-p", POT, "--n-images", "abc"], "--n-images", {}),
    ("barriers-fmax-abc", ["barriers", "LiSn", "-p", POT, "--fmax", "abc"], "--fmax", {}),
    ("label-workers-x", ["data", "label", "{w}/good.extxyz", "{w}/o.extxyz", "--workers", "x"], "--workers", {}),
    ("plan-seed-float", ["data", "plan", "{w}/x.extxyz", "--seed", "1.5"], "--seed", {}),
    ("md-steps-abc", ["md", "{md:}", "--steps", "abc"], "--steps", {}),
    ("evaluate-batch-size-x", ["evaluate", "{model}", "{w}/labels.extxyz", "--batch-size", "x"], "--batch-size", {}),
    ("diffusion-window-one-number", ["diffusion", "{w}/run", "--window", "5"], "--window", {}),
    ("screen-max-atoms-x", ["screen", "Li-Sn", "-p", POT, "--max-atoms", "x"], "--max-atoms", {}),
]

VALUES = [  # values of the right type that make no sense: refused before any work
    ("label-limit-negative", ["data", "label", "{w}/good.extxyz", "{w}/o.extxyz", "--limit", "-1"], "--limit", {}),
    ("label-workers-zero", ["data", "label", "{w}/good.extxyz", "{w}/o.extxyz", "--workers", "0"], "--workers", {}),
    ("label-unknown-protocol", ["data", "label", "{w}/good.extxyz", "{w}/o.extxyz", "--protocol", "pbe-pw40"],
     "protocol", {}),
    ("label-out-is-input", ["data", "label", "{w}/good.extxyz", "{w}/good.extxyz"], "input file", {}),
    ("plan-seed-negative", ["data", "plan", "{w}/x.extxyz", "--seed", "-5"], "--seed", {}),
    ("demo-workers-zero", ["demo", "--workers", "0"], "--workers", {}),
    ("screen-workers-zero", ["screen", "Li-Sn", "-p", POT, "--workers", "0"], "--workers", {}),
    ("screen-max-atoms-negative", ["screen", "Li-Sn", "-p", POT, "--max-atoms", "-3"], "--max-atoms", {}),
    ("screen-sn-reference", ["screen", "Li-Sn", "-p", POT, "--sn-reference", "gamma"], "--sn-reference", {}),
    ("screen-system-typo", ["screen", "Li-Sm", "-p", POT], "did you mean 'Li-Sn'", {}),
    # a .model file ships no committee: `--committee shipped` needs a registered potential that lists one
    ("screen-committee-shipped-none", ["screen", "Li-Sn", "-p", "{model}", "--committee", "shipped"],
     "ships no committee", {}),
    ("barriers-committee-shipped-none", ["barriers", "LiSn", "-p", "{model}", "--committee", "shipped", "--out",
                                         "{w}/b"], "ships no committee", {}),
    ("screen-barrier-phase-typo", ["screen", "Li-Sn", "-p", POT, "--barrier-phase", "Li13Sn"], "did you mean", {}),
    ("screen-volume-ratio", ["screen", "Li-Sn", "-p", POT, "--min-volume-ratio", "1.5"], "min_volume_ratio", {}),
    ("screen-volume-ratio-nan", ["screen", "Li-Sn", "-p", POT, "--min-volume-ratio", "nan"], "--min-volume-ratio",
     {}),
    ("screen-formation-energy", ["screen", "Li-Sn", "-p", POT, "--min-formation-energy", "0.1"],
     "min_formation_energy", {}),
    ("screen-formation-energy-nan", ["screen", "Li-Sn", "-p", POT, "--min-formation-energy", "nan"],
     "--min-formation-energy", {}),
    ("screen-n-images-zero", ["screen", "Li-Sn", "-p", POT, "--n-images", "0"], "--n-images", {}),
    ("screen-max-barrier-phases", ["screen", "Li-Sn", "-p", POT, "--max-barrier-phases", "-1"],
     "--max-barrier-phases", {}),
    ("screen-dtype", ["screen", "Li-Sn", "-p", POT, "--dtype", "float16"], "--dtype", {}),
    ("screen-potential-typo", ["screen", "Li-Sn", "-p", "limace-lisnin-smal"], "unknown potential", {}),
    ("barriers-n-images-zero", ["barriers", "LiSn", "-p", POT, "--n-images", "0"], "--n-images", {}),
    ("barriers-fmax-zero", ["barriers", "LiSn", "-p", POT, "--fmax", "0"], "--fmax", {}),
    ("barriers-fmax-nan", ["barriers", "LiSn", "-p", POT, "--fmax", "nan"], "--fmax", {}),
    ("barriers-cutoff-negative", ["barriers", "LiSn", "-p", POT, "--cutoff", "-1"], "--cutoff", {}),
    ("barriers-max-steps-zero", ["barriers", "LiSn", "-p", POT, "--max-steps", "0"], "--max-steps", {}),
    ("barriers-device", ["barriers", "LiSn", "-p", POT, "--device", "gpu"], "--device", {}),
    ("barriers-optimizer-typo", ["barriers", "LiSn", "-p", POT, "--optimizer", "lbgfs"], "did you mean 'lbfgs'", {}),
    ("barriers-phase-typo", ["barriers", "Li13Sn4", "-p", POT], "did you mean", {}),
    ("barriers-phase-no-li", ["barriers", "Sn_beta", "-p", POT], "has no Li", {}),
    ("barriers-potential-typo", ["barriers", "LiSn", "-p", "limace-lisnin-smal"], "unknown potential", {}),
    ("barriers-potential-missing-file", ["barriers", "LiSn", "-p", "{w}/nosuch.model"], "no such model file", {}),
    ("diffusion-window-reversed", ["diffusion", "{w}/run", "--window", "5", "1"], "--window", {}),
    ("diffusion-window-negative", ["diffusion", "{w}/run", "--window", "-1", "5"], "--window", {}),
    ("diffusion-window-nan", ["diffusion", "{w}/run", "--window", "nan", "5"], "--window", {}),
    ("diffusion-run-missing", ["diffusion", "{w}/norun"], "no such run directory", {}),
    ("diffusion-run-is-file", ["diffusion", "{w}/afile"], "is a file", {}),
    ("evaluate-batch-size-zero", ["evaluate", "{model}", "{w}/labels.extxyz", "--batch-size", "0"],
     "--batch-size", {}),
    ("evaluate-dtype", ["evaluate", "{model}", "{w}/labels.extxyz", "--dtype", "float16"], "--dtype", {}),
    ("evaluate-device", ["evaluate", "{model}", "{w}/labels.extxyz", "--device", "gpu"], "--device", {}),
    ("evaluate-unknown-dataset", ["evaluate", "{model}", "li-in-sn-v2:test"], "not a shipped dataset", {}),
    ("train-missing-config", ["train", "{w}/nosuch.yaml"], "no such file", {}),
    ("learn-missing-config", ["learn", "{w}/nosuch.yaml"], "no such file", {}),
    ("learn-config-is-directory", ["learn", "{w}"], "not a regular file", {}),
    ("train-missing-resume", ["train", "small", "--run-dir", "{w}/new-run", "--resume", "{w}/nosuch.ckpt"],
     "--resume", {}),
    ("md-steps-negative", ["md", "{md:}", "--steps", "-1"], "--steps", {}),
    ("md-temperature-nan", ["md", "{md:temperature_K=.nan}"], "temperature_K", {}),
    ("md-temperature-inf", ["md", "{md:temperature_K=.inf}"], "temperature_K", {}),
    ("md-temperature-list-nan", ["md", "{md:temperature_K=[300, .nan]}"], "temperature_K", {}),
    ("md-temperature-negative", ["md", "{md:temperature_K=-5}"], "temperature_K", {}),
    ("md-timestep-nan", ["md", "{md:timestep_fs=.nan}"], "timestep_fs", {}),
    ("md-timestep-zero", ["md", "{md:timestep_fs=0}"], "timestep_fs", {}),
    ("md-steps-yaml-negative", ["md", "{md:steps=-1}"], "steps", {}),
    ("md-seed-negative", ["md", "{md:seed=-5}"], "seed", {}),
    ("md-ensemble-typo", ["md", "{md:ensemble=nvt_langevn}"], "ensemble", {}),
    ("md-unknown-key", ["md", "{md:temprature=300}"], "did you mean 'temperature_K'", {}),
    ("md-no-structures", ["md", "{md:structures=[]}"], "structures", {}),
    ("md-guard-nan", ["md", "{md:guard={max_temperature_K: .nan}}"], "max_temperature_K", {}),
    ("md-potential-typo", ["md", "{md:potential=limace-lisnin-smal}"], "unknown potential", {}),
    ("md-config-missing", ["md", "{w}/nosuch.yaml"], "no such config file", {}),
    ("md-config-not-yaml", ["md", "{w}/binary.extxyz"], "", {}),
    ("pack-without-dest", ["data", "pack", "{w}/labels.extxyz"], "--into-package", {}),
    ("pack-dest-and-package", ["data", "pack", "{w}/labels.extxyz", "--dest", "{w}/new-ds", "--into-package"],
     "not both", {}),
    ("pack-existing-dataset", ["data", "pack", "{w}/labels.extxyz", "--dest", "{w}/ds"], "--force", {}),
    ("pack-existing-shipped", ["data", "pack", "{w}/labels.extxyz", "--into-package"], "--force", {}),
    ("pack-bad-name", ["data", "pack", "{w}/labels.extxyz", "--dest", "{w}/new-ds", "--name", "../x"], "--name", {}),
]

OUTPUTS = []  # an output that is a file, under a file, or in a read-only directory: for every command that writes
for _what, _dest in (("is-file", "{w}/afile"), ("under-file", "{w}/afile/sub"), ("read-only", "{ro}/limace-out")):
    OUTPUTS += [
        (f"plan-out-{_what}", ["data", "plan", _dest.replace("afile", "adir.extxyz") if _what == "is-file" else
                               _dest + "/x.extxyz" if _what == "read-only" else _dest], "OUT", {}),
        (f"label-out-{_what}", ["data", "label", "{w}/good.extxyz", "{w}/adir.extxyz" if _what == "is-file" else
                                _dest], "OUT", {}),
        (f"pack-dest-{_what}", ["data", "pack", "{w}/labels.extxyz", "--dest", _dest], "--dest", {}),
        (f"md-output-dir-{_what}", ["md", "{md:output_dir=" + _dest + "}"], "output_dir", {}),
        (f"barriers-out-{_what}", ["barriers", "LiSn", "-p", POT, "--out", _dest], "--out", {}),
        (f"screen-out-{_what}", ["screen", "Li-Sn", "-p", POT, "--out", _dest], "--out", {}),
        (f"evaluate-out-{_what}", ["evaluate", "{model}", "{w}/labels.extxyz", "--out", _dest], "--out", {}),
        (f"train-run-dir-{_what}", ["train", "small", "--run-dir", _dest], "--run-dir", {}),
        (f"diffusion-out-{_what}", ["diffusion", "{w}/run", "--out", _dest], "--out", {}),
        (f"demo-out-{_what}", ["demo", "--out", _dest], "--out", {}),
    ]

MODELS = []  # damaged or wrong model files, through every command that loads one
for _model, _frag in (("flipped.model", "CRC"), ("truncated.model", "truncated"), ("empty.model", "empty file"),
                      ("adir.model", "not a file"), ("nosuch.model", "no such model file")):
    MODELS += [
        (f"evaluate-{_model}", ["evaluate", "{w}/" + _model, "{w}/labels.extxyz", "--out", "{w}/new-eval"], _frag, {}),
        (f"barriers-{_model}", ["barriers", "LiSn", "-p", "{w}/" + _model], _frag, {}),
        (f"screen-{_model}", ["screen", "Li-Sn", "-p", "{w}/" + _model], _frag, {}),
        (f"md-{_model}", ["md", "{md:potential={w}/" + _model + "}"], _frag, {}),
    ]
MODELS.append(("evaluate-not-mace.model", ["evaluate", "{w}/notmace.model", "{w}/labels.extxyz", "--out",
                                           "{w}/new-eval"], "notmace.model", {}))

REGISTRIES = []  # LIMACE_REGISTRY naming a binary, missing or broken file: every command that reads the registry
for _reg, _frag in (("registry.bin", "not a text file"), ("nosuch.yaml", "does not exist"),
                    ("registry_bad.yaml", "not valid YAML")):
    _env = {"LIMACE_REGISTRY": "{w}/" + _reg}
    REGISTRIES += [
        (f"potentials-list-{_reg}", ["potentials", "list"], _frag, _env),
        (f"potentials-info-{_reg}", ["potentials", "info", POT], _frag, _env),
        (f"barriers-{_reg}", ["barriers", "LiSn", "-p", POT], _frag, _env),
        (f"md-{_reg}", ["md", "{md:}"], _frag, _env),
    ]

CASES = _structure_cases() + USAGE + VALUES + OUTPUTS + MODELS + REGISTRIES


def test_corpus_is_large_and_ids_are_unique():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))
    assert len(CASES) >= 60


# -- running a case --------------------------------------------------------------------------------------------------


def _snapshot(*roots: Path) -> dict[str, str]:
    """Path -> SHA-256 of every file under ``roots`` (and a marker per directory), to see that nothing changed."""
    out = {}
    for root in roots:
        if not root.exists():
            continue
        for p in sorted(root.rglob("*")):
            if p.is_dir():
                out[str(p)] = "dir"
            elif p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _expand(arg: str, w: Path, ro: Path, model: Path) -> str:
    if arg.startswith("{md:"):
        over = {}
        body = arg[4:-1]
        if body:
            key, _, value = body.partition("=")
            over[key] = value.replace("{w}", str(w)).replace("{ro}", str(ro))
        name = "cfg-" + hashlib.sha256(body.encode()).hexdigest()[:10]
        return str(_md_yaml(w, name, **over))
    return arg.replace("{w}", str(w)).replace("{ro}", str(ro)).replace("{model}", str(model))


@pytest.fixture(scope="module")
def shipped_model():
    from limace.potentials.registry import get_potential

    return get_potential(POT, offline=True).weights.file


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_nothing_changed(case, work, ro, shipped_model, capsys, monkeypatch):
    from limace.cli import main
    from limace.data.datasets import datasets_root

    cid, argv, fragment, env = case
    monkeypatch.chdir(work)
    monkeypatch.setenv("LIMACE_OFFLINE", "1")
    monkeypatch.setenv("LIMACE_CACHE_DIR", str(work / "cache"))
    monkeypatch.delenv("LIMACE_REGISTRY", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v.replace("{w}", str(work)))
    args = [_expand(a, work, ro, shipped_model) for a in argv]
    watched = (work, datasets_root(), shipped_model.parent)
    before = _snapshot(*watched)
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(args)
    out, err = capsys.readouterr()
    assert done.value.code == 2, f"exit {done.value.code}; stderr: {err[-1500:]}"
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"stderr has {len(lines)} lines:\n{err[-1500:]}"
    assert lines[0].startswith("limace: error: ")
    assert fragment in lines[0], lines[0]
    after = _snapshot(*watched)
    changed = sorted(set(before.items()) ^ set(after.items()))
    assert not changed, f"files changed: {changed[:5]}"


def test_non_finite_model_output_is_an_error_not_nan_json(work, tmp_path, capsys, monkeypatch):
    """A model whose weights are NaN (a valid archive: the CRCs match) gives NaN; evaluate refuses, writes nothing."""
    import torch

    from conftest import build_tiny_mace
    from limace.cli import main

    model = build_tiny_mace(0)
    with torch.no_grad():
        next(iter(model.parameters())).fill_(float("nan"))
    torch.save(model, tmp_path / "nan.model")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as done:
        main(["evaluate", str(tmp_path / "nan.model"), str(work / "labels.extxyz"), "--out", str(tmp_path / "ev"),
              "--no-plots"])
    err = capsys.readouterr().err
    assert done.value.code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("limace: error: ") and "non-finite" in err
    assert not (tmp_path / "ev").exists()


def test_unreachable_registry_is_one_warning_line(work, capsys, monkeypatch):
    from limace.cli import main

    monkeypatch.setenv("LIMACE_REGISTRY", "http://127.0.0.1:9/registry.yaml")  # port 9: nothing listens
    monkeypatch.setenv("LIMACE_CACHE_DIR", str(work / "cache-unreachable"))
    monkeypatch.delenv("LIMACE_OFFLINE", raising=False)
    try:
        main(["potentials", "list"])
    except SystemExit as exc:
        assert exc.code in (0, None)
    out, err = capsys.readouterr()
    assert POT in out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("limace: warning: registry http://127.0.0.1:9/registry.yaml "
                                                   "unreachable"), err
    assert "UserWarning" not in err and ".py" not in err


@pytest.mark.parametrize("flavour", ["typer._click.exceptions", "click.exceptions"])
def test_usage_errors_of_either_click_are_one_line(flavour, monkeypatch, capsys):
    """typer >= 0.2x raises its bundled click's exceptions (typer._click), older typer the click package's: both are
    one line, exit 2 (and both clicks' Exit codes pass through)."""
    import importlib

    import typer

    import limace.cli

    mod = importlib.import_module(flavour)

    def raises(exc):
        def app(args=None, standalone_mode=False):
            raise exc
        return app

    monkeypatch.setattr(limace.cli, "app", raises(mod.BadParameter("not a number", param_hint="'--n-images'")))
    with pytest.raises(SystemExit) as done:
        limace.cli.main([])
    err = capsys.readouterr().err
    assert done.value.code == 2 and err == "limace: error: Invalid value for '--n-images': not a number\n"
    monkeypatch.setattr(limace.cli, "app", raises(getattr(mod, "Exit", typer.Exit)(3)))
    with pytest.raises(SystemExit) as done:
        limace.cli.main([])
    assert done.value.code == 3 and capsys.readouterr().err == ""
