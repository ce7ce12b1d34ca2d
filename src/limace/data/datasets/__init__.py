"""Datasets shipped inside the package: compressed extxyz per split plus a JSON manifest.

Layout: ``src/limace/data/datasets/<name>/{manifest.json, train.extxyz.xz, test.extxyz.xz}``.

The manifest records the protocol, code/setup versions, counts per config_type / composition / size for each split,
the split itself (the test ``config_id`` list, fixed once written) and a SHA-256 per file.

The held-out test split (>= 10 % of every config_type, never used for training or model selection) is chosen by a
hash of ``config_id`` so it does not depend on the order of the labels; once a configuration is in a manifest's
train or test list it stays there when the dataset grows.

Frozen test splits (issue 23): ``freeze_test(name, "test-v1")`` records the test split's ``config_id`` list under
``manifest["frozen"]["test-v1"]``; later packs carry it forward unchanged, and ``load_dataset(name, "test-v1")``
returns exactly those configurations. A frozen split is for reporting only: data, recipes and models are chosen on
the validation split (a part of train), never on it.

The extrapolation split (``config_type`` ``extrap_*``, :mod:`limace.data.extrapolation`) is written to its own file
and is in neither train nor test nor ``"all"``: it is drawn by fixed rules to measure how a potential does off its
training set, and is never trained on.
"""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import math
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from ase import Atoms

from limace.core.errors import UnknownNameError, ValidationError
from limace.core.fileio import atomic_write_bytes, atomic_write_json
from limace.keys import CONFIG_ID_KEY, CONFIG_TYPE_KEY

SPLITS = ("train", "test")
EXTRAPOLATION = "extrapolation"
EXTRAPOLATION_PREFIX = "extrap_"
TEST_FRACTION = 0.12  # hash rule; every config_type is then topped up to >= 10 %
MIN_TEST_FRACTION = 0.10


def datasets_root() -> Path:
    return Path(str(resources.files("limace.data.datasets")))


def available() -> list[str]:
    return sorted(p.name for p in datasets_root().iterdir() if (p / "manifest.json").exists())


def _dir(name: str) -> Path:
    d = datasets_root() / name
    if not (d / "manifest.json").exists():
        import difflib

        close = difflib.get_close_matches(name, available(), n=3)
        known = ", ".join(available()) or "none shipped yet"
        raise UnknownNameError(f"unknown dataset or missing file {name!r}" + (f"; closest: {', '.join(close)}" if close else f"; shipped: {known}"))
    return d


def manifest(name: str = "li-in-sn-v1") -> dict:
    return json.loads((_dir(name) / "manifest.json").read_text())


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_xz(path: Path) -> list[Atoms]:
    from ase.io import read

    with lzma.open(path, "rt") as fh:
        text = fh.read()
    if not text.strip():
        return []
    return read(io.StringIO(text), index=":", format="extxyz")


def splits(name: str = "li-in-sn-v1") -> list[str]:
    """The splits ``load_dataset`` accepts for this dataset: train, test, all, the frozen test splits and, when
    shipped, extrapolation."""
    man = manifest(name)
    return [*SPLITS, "all", *man.get("frozen", {}), *([EXTRAPOLATION] if EXTRAPOLATION in man["files"] else [])]


def load_dataset(name: str = "li-in-sn-v1", split: str = "all", verify: bool = True) -> list[Atoms]:
    """The configurations of a shipped dataset: ``split`` is ``"train"``, ``"test"``, ``"all"`` (train + test), a
    frozen test split such as ``"test-v1"``, or ``"extrapolation"``.

    With ``verify`` the files' SHA-256 are checked against the manifest first.
    """
    d = _dir(name)
    man = manifest(name)
    known = splits(name)
    if split not in known:
        raise ValidationError(f"unknown split {split!r} of {name}; use {', '.join(known)}")
    frozen = man.get("frozen", {}).get(split)
    if frozen is not None:
        ids = set(frozen["config_ids"])
        out = [a for a in load_dataset(name, "test", verify) if str(a.info[CONFIG_ID_KEY]) in ids]
        if len(out) != len(ids):
            raise ValidationError(f"{name}: frozen split {split} lists {len(ids)} configurations, the test file has {len(out)} of them")
        for a in out:
            a.info["split"] = split
        return out
    out: list[Atoms] = []
    for s in SPLITS if split == "all" else (split,):
        entry = man["files"][s]
        path = d / entry["path"]
        if verify and sha256(path) != entry["sha256"]:
            raise ValidationError(f"{path}: checksum does not match the manifest (file damaged or edited)")
        frames = _read_xz(path)
        for a in frames:
            a.info["split"] = s
        out += frames
    return out


def freeze_test(name: str = "li-in-sn-v1", tag: str = "test-v1", dest: Path | None = None) -> dict:
    """Record the current test split of ``name`` as the frozen split ``tag`` in its manifest (see module docstring);
    refuses to change an existing frozen split."""
    d = Path(dest) if dest else _dir(name)
    path = d / "manifest.json"
    man = json.loads(path.read_text())
    frozen = man.setdefault("frozen", {})
    ids = sorted(man["split"]["test"])
    if tag in frozen:
        if sorted(frozen[tag]["config_ids"]) != ids:
            raise ValidationError(f"{name}: frozen split {tag} exists with other configurations; freeze under a new tag")
        return man
    frozen[tag] = {"frozen": time.strftime("%Y-%m-%d"), "n": len(ids),
                   "rule": "for reporting only: never used to choose data, recipes or models (model selection on the "
                           "validation split); carried forward unchanged by every later pack",
                   "config_ids": ids}
    atomic_write_json(path, man)
    return man


def dataset_info(name: str = "li-in-sn-v1") -> dict:
    man = manifest(name)
    return {k: man[k] for k in ("name", "version", "protocol", "code_versions", "n_configs", "counts") if k in man}


def _composition(a: Atoms) -> str:
    from limace.data.io import composition_label

    return composition_label(a)


def _counts(frames: list[Atoms]) -> dict:
    return {
        "n": len(frames),
        "config_type": dict(sorted(Counter(str(a.info.get(CONFIG_TYPE_KEY)) for a in frames).items())),
        "composition": dict(sorted(Counter(_composition(a) for a in frames).items())),
        "size": {str(k): v for k, v in sorted(Counter(len(a) for a in frames).items())},
    }


def _hash_unit(cid: str) -> float:
    return int(hashlib.sha256(f"split:{cid}".encode()).hexdigest()[:12], 16) / 16**12


def assign_split(frames: list[Atoms], previous: dict | None = None) -> dict[str, str]:
    """config_id -> "train"/"test", stratified by config_type (see module docstring)."""
    previous = previous or {}
    split: dict[str, str] = {}
    by_type: dict[str, list[str]] = defaultdict(list)
    for a in frames:
        cid = str(a.info[CONFIG_ID_KEY])
        by_type[str(a.info.get(CONFIG_TYPE_KEY))].append(cid)
        split[cid] = previous.get(cid) or ("test" if _hash_unit(cid) < TEST_FRACTION else "train")
    for ctype, ids in by_type.items():
        need = math.ceil(MIN_TEST_FRACTION * len(ids)) - sum(split[c] == "test" for c in ids)
        movable = sorted((c for c in ids if split[c] == "train" and c not in previous), key=_hash_unit)
        for c in movable[:max(0, need)]:
            split[c] = "test"
    return split


def _write_xz(path: Path, frames: list[Atoms]) -> None:
    from ase.io import write

    buf = io.StringIO()
    for a in frames:
        a = a.copy()
        a.info.pop("split", None)
        write(buf, a, format="extxyz")
    atomic_write_bytes(path, lzma.compress(buf.getvalue().encode(), preset=9))


def pack(labels: str | Path | Sequence[str | Path], name: str = "li-in-sn-v1", version: str = "1",
         dest: Path | None = None) -> dict:
    """Validate ``labels`` (one file or several, e.g. the plan's labels and the DFT checks of screened structures)
    and write the dataset (split files + manifest) into the package (or ``dest``)."""
    from limace.data.io import read_configurations, summarize
    from limace.data.label import get_protocol

    paths = [Path(labels)] if isinstance(labels, (str, Path)) else [Path(p) for p in labels]
    if not paths:
        raise ValidationError("pack: no labels file given")
    frames, seen = [], {}
    for path in paths:
        for a in read_configurations(path):
            cid = str(a.info[CONFIG_ID_KEY])
            if cid in seen:
                raise ValidationError(f"{path}: configuration {cid} is also in {seen[cid]}")
            seen[cid] = path
            frames.append(a)
    where = ", ".join(map(str, paths))
    d = Path(dest) if dest else datasets_root() / name
    d.mkdir(parents=True, exist_ok=True)
    prev_path = d / "manifest.json"
    # the split to keep: the destination's own manifest, or (a first pack into a new --dest) the shipped dataset of
    # the same name, so that a repack elsewhere never re-draws the test split or drops a frozen one
    shipped = datasets_root() / name / "manifest.json"
    source = prev_path if prev_path.exists() else shipped if shipped.exists() else None
    previous, frozen, old_extrap = {}, {}, set()
    if source is not None:
        old = json.loads(source.read_text())
        previous = {c: s for s in SPLITS for c in old["split"][s]}
        old_extrap = set(old["split"].get(EXTRAPOLATION, []))
        frozen = old.get("frozen", {})
    extrap = [a for a in frames if str(a.info.get(CONFIG_TYPE_KEY, "")).startswith(EXTRAPOLATION_PREFIX)]
    frames = [a for a in frames if not str(a.info.get(CONFIG_TYPE_KEY, "")).startswith(EXTRAPOLATION_PREFIX)]
    lost = old_extrap - {str(a.info[CONFIG_ID_KEY]) for a in extrap}
    if lost:
        raise ValidationError(f"{where}: lacks {len(lost)} configuration(s) of the dataset's extrapolation split, e.g. "
                              f"{sorted(lost)[0]}; give its labels file too (dft/<name>/extrapolation.extxyz)")
    for tag, fz in frozen.items():
        missing = set(fz["config_ids"]) - {str(a.info[CONFIG_ID_KEY]) for a in frames}
        if missing:
            raise ValidationError(f"{where}: lacks {len(missing)} configuration(s) of the frozen split {tag}, "
                                  f"e.g. {sorted(missing)[0]}; a frozen split never shrinks")
    protocols = {a.info.get("label_protocol") for a in frames}
    if len(protocols) != 1:
        raise ValidationError(f"{where}: mixes labelling protocols {sorted(map(str, protocols))}; one dataset, one protocol")
    protocol = protocols.pop()
    versions = {k[len("label_version_"):]: v for k, v in frames[0].info.items() if k.startswith("label_version_")}
    split = assign_split(frames, previous)
    parts = {s: [a for a in frames if split[str(a.info[CONFIG_ID_KEY])] == s] for s in SPLITS}
    if extrap:
        parts[EXTRAPOLATION] = extrap
    files = {}
    for s, fr in parts.items():
        path = d / f"{s}.extxyz.xz"
        _write_xz(path, fr)
        files[s] = {"path": path.name, "sha256": sha256(path), "n": len(fr)}
    man = {
        "name": name,
        "version": version,
        "created": time.strftime("%Y-%m-%d"),
        "protocol": {"name": protocol, "description": get_protocol(protocol).description,
                     "reference": "shared/reference/dft-protocol.md"},
        "code_versions": versions,
        "n_configs": len(frames),
        "counts": {"all": _counts(frames), **{s: _counts(fr) for s, fr in parts.items()}},
        "summary": summarize(frames),
        "split_rule": f"stratified by config_type: sha256('split:'+config_id) < {TEST_FRACTION} -> test, then each "
                      f"config_type topped up to >= {MIN_TEST_FRACTION:.0%}; assignments in earlier manifests are kept",
        "split": {s: sorted(str(a.info[CONFIG_ID_KEY]) for a in fr) for s, fr in parts.items()},
        "frozen": frozen,
        "files": files,
        "source": [{"labels": str(p), "sha256": sha256(p)} for p in paths],
    }
    atomic_write_json(prev_path, man)
    return man
