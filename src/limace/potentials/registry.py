"""The registry of pretrained potentials, and their download into a verified cache.

The registry is ``registry.yaml`` in this package, plus any registry files named by ``LIMACE_REGISTRY`` (local paths
or http(s) URLs separated by :data:`os.pathsep`), so a lab can serve its own potentials. Weights are either bundled
(``models/`` next to the registry file) or downloaded with pooch into the cache (``LIMACE_CACHE_DIR``, else the
platform's user cache directory): streamed to a temporary file in the cache folder, SHA-256 checked, then renamed
into place, so a half-written or corrupted file is never used. A cached file whose checksum no longer matches is
moved to ``quarantine/`` and never loaded. Offline mode (``LIMACE_OFFLINE=1`` or ``offline=True``) uses the cache
and never touches the network.

>>> from limace.potentials import list_potentials, get_potential, fetch
>>> [p.name for p in list_potentials()]            # doctest: +SKIP
>>> path = fetch("limace-lisnin-small")             # doctest: +SKIP
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import time
import uuid
import warnings
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from urllib.parse import urljoin

import yaml

from limace.core.errors import (
    ChecksumError,
    DownloadError,
    LimaceInputError,
    LimaceWarning,
    ModelFileError,
    UnknownNameError,
    ValidationError,
)
from limace.core.fileio import atomic_write_text

REGISTRY_ENV = "LIMACE_REGISTRY"
CACHE_ENV = "LIMACE_CACHE_DIR"
OFFLINE_ENV = "LIMACE_OFFLINE"
SCHEMA = 1
DOWNLOAD_TIMEOUT_S = 30

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_ENTRY_KEYS = {"name", "version", "description", "elements", "dft_protocol", "dataset", "metrics", "license",
               "weights", "citation", "committee", "use"}
SHIPPED_COMMITTEE = "shipped"  # in --committee / an MD config: the committee registered with the potential
_REQUIRED = ("name", "version", "description", "elements", "license", "weights")
_PROVENANCE = ("dft_protocol", "dataset", "metrics")  # required in the shipped registry
_WEIGHTS_KEYS = {"sha256", "file", "url", "size"}
_DATASET_KEYS = {"name", "sha256", "url"}


@dataclass(frozen=True)
class Weights:
    """Where a potential's ``.model`` file is: a bundled/local ``file`` and/or a ``url``, and its SHA-256."""

    sha256: str
    file: Path | None = None
    url: str | None = None
    size: int | None = None


@dataclass(frozen=True)
class PotentialEntry:
    """One registered potential (one version of it)."""

    name: str
    version: str
    description: str
    elements: tuple[str, ...]
    license: str
    weights: Weights
    dft_protocol: str | None = None
    dataset: dict | None = None
    metrics: dict = field(default_factory=dict)
    citation: str | None = None
    use: str | None = None  # what to use it for, in a few words (the default, accuracy vs speed, committee member)
    source: str = "limace"  # the registry that defines it: "limace" (shipped), a path or a URL
    # registered potentials trained like this one (same data, other seeds) whose spread with it is its uncertainty
    committee: tuple[str, ...] = ()

    @property
    def cache_path(self) -> Path:
        """Where the downloaded weights live in the cache (whether or not they are there yet)."""
        return potentials_cache_dir() / f"{self.name}-{self.version}-{self.weights.sha256[:12]}.model"

    def local_path(self) -> Path | None:
        """The bundled file if present, else the cached file if present (not verified here), else None."""
        if self.weights.file is not None and self.weights.file.is_file():
            return self.weights.file
        if self.cache_path.is_file():
            return self.cache_path
        return None

    def as_dict(self) -> dict:
        w = self.weights
        return {
            "name": self.name, "version": self.version, "description": self.description,
            "elements": list(self.elements), "dft_protocol": self.dft_protocol, "dataset": self.dataset,
            "metrics": dict(self.metrics), "license": self.license, "citation": self.citation, "use": self.use,
            "weights": {"sha256": w.sha256, "file": str(w.file) if w.file else None, "url": w.url, "size": w.size},
            "source": self.source, "committee": list(self.committee),
        }


_PATH_SUFFIXES = (".model", ".pt", ".pth")


def looks_like_path(spec: str) -> bool:
    """Whether a potential spec names a file rather than a registry entry (a separator or a model-file suffix)."""
    return os.sep in spec or "/" in spec or spec.endswith(_PATH_SUFFIXES)


# -- environment -----------------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """limace's cache directory: ``$LIMACE_CACHE_DIR``, else the platform's user cache dir (platformdirs)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("limace"))


def potentials_cache_dir() -> Path:
    return cache_dir() / "potentials"


def is_offline(offline: bool | None = None) -> bool:
    """``offline`` if given, else ``LIMACE_OFFLINE`` (1/true/yes/on)."""
    if offline is not None:
        return bool(offline)
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def registry_sources() -> list[str]:
    """The extra registries named by ``LIMACE_REGISTRY`` (paths or URLs separated by os.pathsep, in order)."""
    parts = [p.strip() for p in os.environ.get(REGISTRY_ENV, "").split(os.pathsep)]
    if os.pathsep == ":":  # POSIX: put back together the URLs the split cut at "http:" and ":port"
        joined: list[str] = []
        for part in parts:
            if joined and joined[-1] in ("http", "https") and part.startswith("//"):
                joined[-1] += ":" + part
            elif (joined and _is_url(joined[-1]) and "/" not in joined[-1].split("//", 1)[1]
                  and re.match(r"^\d+(/|$)", part)):
                joined[-1] += ":" + part
            else:
                joined.append(part)
        parts = joined
    return [p for p in parts if p]


def _is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


# -- parsing ---------------------------------------------------------------------------------------------------------


def _sha(value, where: str) -> str:
    if not isinstance(value, str):
        raise ValidationError(f"{where}: sha256 must be a string of 64 hex digits, got {value!r}")
    text = value.strip().lower()
    if text.startswith("sha256:"):
        text = text[len("sha256:"):]
    if not _SHA_RE.match(text):
        raise ValidationError(f"{where}: sha256 must be 64 hex digits, got {value!r}")
    return text


def _str(raw: dict, key: str, where: str, required: bool = True) -> str | None:
    val = raw.get(key)
    if val is None:
        if required:
            raise ValidationError(f"{where}: missing key {key!r}")
        return None
    if not isinstance(val, str) or not val.strip():
        hint = " (quote it in YAML)" if isinstance(val, (int, float)) else ""
        raise ValidationError(f"{where}: {key} must be a non-empty string, got {val!r}{hint}")
    return val.strip()


def _parse_entry(raw, where: str, source: str, base_dir: Path | None, base_url: str | None,
                 require_provenance: bool) -> PotentialEntry:
    from ase.data import atomic_numbers

    if not isinstance(raw, dict):
        raise ValidationError(f"{where}: each potential must be a mapping, got {type(raw).__name__}")
    name = raw.get("name")
    if isinstance(name, str):
        where = f"{where} ({name})"
    unknown = sorted(set(raw) - _ENTRY_KEYS)
    if unknown:
        raise ValidationError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(_ENTRY_KEYS))}")
    for key in _REQUIRED + (_PROVENANCE if require_provenance else ()):
        if raw.get(key) is None:
            raise ValidationError(f"{where}: missing key {key!r}")
    name = _str(raw, "name", where)
    if not _NAME_RE.match(name):
        raise ValidationError(f"{where}: name {name!r} may only use letters, digits, '.', '_' and '-'")
    version = _str(raw, "version", where)
    if not _NAME_RE.match(version):
        raise ValidationError(f"{where}: version {version!r} may only use letters, digits, '.', '_' and '-'")
    elements = raw["elements"]
    if not isinstance(elements, list) or not elements:
        raise ValidationError(f"{where}: elements must be a non-empty list of symbols, got {elements!r}")
    for el in elements:
        if not isinstance(el, str) or el not in atomic_numbers:
            raise ValidationError(f"{where}: elements: {el!r} is not a chemical symbol")

    dataset = raw.get("dataset")
    if dataset is not None:
        if not isinstance(dataset, dict):
            raise ValidationError(f"{where}: dataset must be a mapping with name and sha256")
        bad = sorted(set(dataset) - _DATASET_KEYS)
        if bad:
            raise ValidationError(f"{where}: dataset: unknown key {bad[0]!r}; allowed: {', '.join(sorted(_DATASET_KEYS))}")
        dataset = {"name": _str(dataset, "name", f"{where}: dataset"),
                   "sha256": _sha(dataset.get("sha256"), f"{where}: dataset"),
                   **({"url": _str(dataset, "url", f"{where}: dataset")} if dataset.get("url") else {})}
    metrics = raw.get("metrics") or {}
    if not isinstance(metrics, dict) or not all(isinstance(v, (int, float, str)) for v in metrics.values()):
        raise ValidationError(f"{where}: metrics must be a mapping of name to number")

    w = raw["weights"]
    if not isinstance(w, dict):
        raise ValidationError(f"{where}: weights must be a mapping with sha256 and file and/or url")
    bad = sorted(set(w) - _WEIGHTS_KEYS)
    if bad:
        raise ValidationError(f"{where}: weights: unknown key {bad[0]!r}; allowed: {', '.join(sorted(_WEIGHTS_KEYS))}")
    sha = _sha(w.get("sha256"), f"{where}: weights")
    wfile = _str(w, "file", f"{where}: weights", required=False)
    url = _str(w, "url", f"{where}: weights", required=False)
    if wfile is None and url is None:
        raise ValidationError(f"{where}: weights need a file (bundled) or a url")
    file_path = None
    if wfile is not None:
        if base_dir is None:
            raise ValidationError(f"{where}: weights.file is not allowed in a remote registry; give a url")
        file_path = Path(wfile).expanduser()
        if not file_path.is_absolute():
            file_path = base_dir / file_path
    if url is not None:
        if base_url is not None:
            url = urljoin(base_url, url)
        if not _is_url(url):
            raise ValidationError(f"{where}: weights.url {url!r} must be an http(s) URL")
    size = w.get("size")
    if size is not None and (not isinstance(size, int) or size <= 0):
        raise ValidationError(f"{where}: weights.size must be a positive number of bytes, got {size!r}")

    committee = raw.get("committee") or []
    if not isinstance(committee, list) or not all(isinstance(m, str) and _NAME_RE.match(m) for m in committee):
        raise ValidationError(f"{where}: committee must be a list of registered potential names, got {committee!r}")
    if name in committee:
        raise ValidationError(f"{where}: committee lists the potential itself; list only the other members")

    return PotentialEntry(
        committee=tuple(committee),
        name=name, version=version, description=_str(raw, "description", where), elements=tuple(elements),
        license=_str(raw, "license", where), weights=Weights(sha256=sha, file=file_path, url=url, size=size),
        dft_protocol=_str(raw, "dft_protocol", where, required=False), dataset=dataset, metrics=dict(metrics),
        citation=_str(raw, "citation", where, required=False), use=_str(raw, "use", where, required=False),
        source=source,
    )


def parse_registry(text: str, source: str, base_dir: Path | None = None, base_url: str | None = None,
                   require_provenance: bool = False) -> list[PotentialEntry]:
    """Entries of one registry file's text. ``source`` names it in errors; ``file`` is relative to ``base_dir``,
    a relative ``url`` to ``base_url``."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        at = f" (line {line + 1})" if line is not None else ""
        raise ValidationError(f"{source}: not valid YAML{at}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise ValidationError(f"{source}: a registry is a mapping with keys 'schema' and 'potentials'")
    unknown = sorted(set(raw) - {"schema", "potentials"})
    if unknown:
        raise ValidationError(f"{source}: unknown key {unknown[0]!r}; allowed: potentials, schema")
    if raw.get("schema") != SCHEMA:
        raise ValidationError(f"{source}: schema must be {SCHEMA}, got {raw.get('schema')!r}")
    items = raw.get("potentials") or []
    if not isinstance(items, list):
        raise ValidationError(f"{source}: 'potentials' must be a list")
    entries = [_parse_entry(item, f"{source}: potentials[{i}]", source, base_dir, base_url, require_provenance)
               for i, item in enumerate(items)]
    seen: set[str] = set()
    for e in entries:
        if e.name in seen:
            raise ValidationError(f"{source}: potential {e.name!r} is listed twice; keep one entry per name")
        seen.add(e.name)
    return entries


@cache
def _shipped() -> tuple[PotentialEntry, ...]:
    pkg = resources.files("limace.potentials")
    text = pkg.joinpath("registry.yaml").read_text()
    base = Path(str(pkg.joinpath("models")))
    return tuple(parse_registry(text, "limace", base_dir=base, require_provenance=True))


def _read_remote_registry(url: str, offline: bool) -> str | None:
    """Text of a registry served over http(s): fresh when online (a copy is kept in the cache), else the cached
    copy. Returns None (with a warning) when it cannot be had, so one unreachable lab server does not stop work."""
    import requests

    copy = cache_dir() / "registries" / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}.yaml"
    if not offline:
        try:
            resp = requests.get(url, timeout=DOWNLOAD_TIMEOUT_S)
            resp.raise_for_status()
            text = resp.text
        except requests.RequestException as exc:
            reason = _short_reason(exc)
            if copy.is_file():
                warnings.warn(f"registry {url} unreachable ({reason}); using the copy from "
                              f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(copy.stat().st_mtime))}",
                              LimaceWarning, stacklevel=3)
                return copy.read_text()
            warnings.warn(f"registry {url} unreachable ({reason}) and not cached; its potentials are skipped",
                          LimaceWarning, stacklevel=3)
            return None
        atomic_write_text(copy, text)
        return text
    if copy.is_file():
        return copy.read_text()
    warnings.warn(f"registry {url} is not cached and offline mode is on; its potentials are skipped", LimaceWarning,
                  stacklevel=3)
    return None


def list_potentials(offline: bool | None = None) -> list[PotentialEntry]:
    """Every registered potential: the shipped ones, then those of ``LIMACE_REGISTRY``'s registries.

    A name defined by two registries is an error (it would be ambiguous which weights ``load`` uses).
    """
    entries = list(_shipped())
    off = is_offline(offline)
    for src in registry_sources():
        if _is_url(src):
            text = _read_remote_registry(src, off)
            if text is None:
                continue
            entries += parse_registry(text, src, base_url=src)
        else:
            path = Path(src).expanduser()
            if not path.is_file():
                raise LimaceInputError(f"{REGISTRY_ENV}: registry file {src} does not exist; fix or unset it")
            try:
                text = path.read_bytes().decode("utf-8")
            except UnicodeDecodeError:
                raise ValidationError(f"{REGISTRY_ENV}: {src} is not a text file (a registry is YAML with keys "
                                      "'schema' and 'potentials')") from None
            except OSError as exc:
                raise LimaceInputError(f"{REGISTRY_ENV}: cannot read {src} ({exc.strerror or exc})") from None
            entries += parse_registry(text, str(path), base_dir=path.resolve().parent)
    by_name: dict[str, PotentialEntry] = {}
    for e in entries:
        if e.name in by_name:
            raise ValidationError(f"potential {e.name!r} is defined in both {by_name[e.name].source} and {e.source}; "
                                  "rename it in one registry")
        by_name[e.name] = e
    for e in entries:
        for m in e.committee:
            if m not in by_name:
                raise ValidationError(f"{e.source}: potential {e.name!r}: committee member {m!r} is not registered")
    return entries


def expand_committee(members, potential: str, offline: bool | None = None) -> list[str]:
    """``members`` (names or paths) with ``"shipped"`` replaced by the committee registered with ``potential``
    (its other members; the potential itself is always the committee's first member). A potential that ships none
    is a one-line :class:`LimaceInputError`."""
    out: list[str] = []
    for m in members:
        if m != SHIPPED_COMMITTEE:
            out.append(m)
            continue
        entry = None if looks_like_path(potential) else get_potential(potential, offline)
        if entry is None or not entry.committee:
            raise LimaceInputError(f"--committee {SHIPPED_COMMITTEE}: potential {potential!r} ships no committee; "
                                   "give the members as names or .model files")
        out.extend(entry.committee)
    return out


def registered_committee(potential: str, offline: bool | None = None) -> tuple[str, ...]:
    """The committee registered with ``potential`` (its other members), or ``()`` for a file or a potential that
    ships none."""
    if looks_like_path(potential):
        return ()
    return tuple(get_potential(potential, offline).committee)


def get_potential(name: str, offline: bool | None = None) -> PotentialEntry:
    """The registry entry of ``name``; an unknown name raises UnknownNameError listing the closest names."""
    entries = {e.name: e for e in list_potentials(offline)}
    if name in entries:
        return entries[name]
    close = difflib.get_close_matches(name, list(entries), n=3, cutoff=0.5)
    if close:
        hint = f"; closest: {', '.join(close)}"
    elif entries:
        hint = f"; known: {', '.join(sorted(entries)[:8])}"
    else:
        hint = "; no potentials are registered yet (set LIMACE_REGISTRY to a lab registry, or load a .model path)"
    raise UnknownNameError(f"unknown potential {name!r}{hint}")


def check_model_archive(path: str | Path) -> None:
    """Raise :class:`ModelFileError` (one line) unless ``path`` is a readable file whose zip members (torch.save's
    format) all match their CRC-32: bytes flipped inside a ``.model`` otherwise load silently and give NaN.
    Files in torch's legacy (non-zip) format are left to ``torch.load``."""
    import zipfile

    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such model file")
    if not path.is_file():
        raise ModelFileError(f"{path}: is not a file; give the path of a MACE .model file")
    if path.stat().st_size == 0:
        raise ModelFileError(f"{path}: empty file, not a MACE model")
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
        if not zipfile.is_zipfile(path):
            if magic == b"PK\x03\x04":  # starts as a zip archive but its directory is gone: cut short
                raise ModelFileError(f"{path}: damaged model file (truncated: the zip directory at its end is "
                                     "missing); download or copy it again")
            return
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except PermissionError:
        raise ModelFileError(f"{path}: cannot be read (permission denied)") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise ModelFileError(f"{path}: damaged model file ({type(exc).__name__}: {str(exc)[:120]}); download or "
                             "copy it again") from None
    if bad is not None:
        raise ModelFileError(f"{path}: damaged model file (member {bad} fails its CRC check); download or copy it "
                             "again")


def check_potential_spec(spec: str, offline: bool | None = None) -> None:
    """Check a potential given on the command line (a registry name or a model path) without loading torch: an
    unknown name (with the closest ones) or a missing/damaged file is a one-line :class:`LimaceInputError` here,
    before any work starts."""
    if looks_like_path(spec) or Path(spec).is_file():
        check_model_archive(Path(spec).expanduser())
        return
    get_potential(spec, offline)


# -- download and cache ----------------------------------------------------------------------------------------------


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _quarantine(path: Path) -> Path:
    qdir = path.parent / "quarantine"
    qdir.mkdir(parents=True, exist_ok=True)
    dest = qdir / f"{path.name}.{time.strftime('%Y%m%dT%H%M%S')}.{uuid.uuid4().hex[:8]}"
    os.replace(path, dest)
    return dest


def _short_reason(exc: BaseException) -> str:
    import requests

    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return f"HTTP {exc.response.status_code}"
    if isinstance(exc, requests.ConnectionError) and not isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "connection failed"
    if isinstance(exc, (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError)):
        return "connection dropped mid-file"
    if isinstance(exc, requests.Timeout):
        return "timed out"
    return type(exc).__name__


def fetch(name: str | PotentialEntry, offline: bool | None = None, progress: bool = True) -> Path:
    """Path of a verified copy of the potential's weights, downloading them into the cache if needed.

    A bundled file is used in place. A cached file is used when its SHA-256 matches; otherwise it is quarantined
    and (online) downloaded again. Downloads are checked before they are placed in the cache.
    """
    entry = name if isinstance(name, PotentialEntry) else get_potential(name, offline)
    off = is_offline(offline)
    w = entry.weights
    label = f"{entry.name} {entry.version}"

    if w.file is not None and w.file.is_file():
        got = sha256_file(w.file)
        if got == w.sha256:
            return w.file
        if entry.source == "limace":
            raise ChecksumError(f"bundled weights {w.file} of {label} have SHA-256 {got[:12]}..., the registry "
                                f"says {w.sha256[:12]}...; reinstall limace")
        raise ChecksumError(f"weights {w.file} of {label} have SHA-256 {got[:12]}..., registry {entry.source} "
                            f"says {w.sha256[:12]}...; fix the file or the registry entry")
    if w.url is None:
        raise ModelFileError(f"weights of {label} not found at {w.file} and the registry gives no url"
                             + ("; reinstall limace" if entry.source == "limace" else f"; fix {entry.source}"))

    target = entry.cache_path
    if target.is_file():
        got = sha256_file(target)
        if got == w.sha256:
            return target
        moved = _quarantine(target)
        msg = (f"cached weights of {label} were corrupt (SHA-256 {got[:12]}..., expected {w.sha256[:12]}...); "
               f"moved to {moved}")
        if off:
            raise ChecksumError(f"{msg}; go online (unset {OFFLINE_ENV}) or run `limace potentials fetch "
                                f"{entry.name}` to download them again")
        warnings.warn(f"{msg}; downloading again", LimaceWarning, stacklevel=2)

    if off:
        raise DownloadError(f"{label} is not in the cache ({target}) and offline mode is on; run `limace potentials "
                            f"fetch {entry.name}` where there is network (same {CACHE_ENV}), or copy the file there")
    return _download(w.url, w.sha256, target, label, progress)


def _download(url: str, sha: str, target: Path, label: str, progress: bool) -> Path:
    import pooch
    import requests

    target.parent.mkdir(parents=True, exist_ok=True)
    downloader = pooch.HTTPDownloader(progressbar=bool(progress), timeout=DOWNLOAD_TIMEOUT_S)
    try:
        # pooch streams into a temporary file in target's folder, checks the hash, then renames (atomic).
        path = pooch.retrieve(url, known_hash=f"sha256:{sha}", fname=target.name, path=target.parent,
                              downloader=downloader)
    except requests.RequestException as exc:
        raise DownloadError(f"cannot download {label} from {url} ({_short_reason(exc)}); check the network, or put "
                            f"a copy in {target}; nothing was written to the cache") from None
    except ValueError as exc:  # pooch: hash mismatch of the downloaded file (already deleted)
        m = re.search(r"but got ([0-9a-fA-F]+)", str(exc))
        got = f" {m.group(1)[:12]}..." if m else ""
        raise ChecksumError(f"download of {label} from {url} has SHA-256{got}, registry expects {sha[:12]}...; "
                            "it was deleted, not used; the server copy or the registry entry is wrong") from None
    return Path(path)
