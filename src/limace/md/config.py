"""The typed configuration of an MD run (``limace md CONFIG.yaml``), validated before anything runs.

Unknown keys are an error naming the key; every value is type-checked. Paths in a YAML file are relative to the
file's directory. Example (``examples/md.yaml``)::

    structures: [cells.extxyz]      # every frame of every file is one system
    potential: my.model             # a MACE .model file, or a registry name (limace potentials list)
    committee: [b.model, c.model]   # optional: more potentials ([shipped]: the committee registered with `potential`);
                                    # thermo.csv logs their spread with `potential`
    ensemble: nvt_langevin          # nve | nvt_langevin | nvt_nhc | nvt_csvr | npt
    steps: 20000
    timestep_fs: 2.0
    temperature_K: [500, 600, 700] # one value, or one per system
    output_dir: md-out
    guard: {max_temperature_K: 3000, min_distance_A: 0.7}
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Union

from limace.core.errors import ValidationError

ENSEMBLES = ("nve", "nvt_langevin", "nvt_nhc", "nvt_csvr", "npt")
Numbers = Union[float, list[float]]


@dataclass(frozen=True)
class GuardConfig:
    """Blow-up guard: a system is stopped (and reported) when a check finds non-finite numbers, a temperature above
    ``max_temperature_K``, two atoms closer than ``min_distance_A`` or (``domain``) a structure outside the
    potential's training domain; the others go on."""

    max_temperature_K: float = 5000.0
    min_distance_A: float = 0.5
    check_every: int = 10
    # stop a system whose structure leaves the potential's training domain (limace.potentials.domain: the model's
    # domain check, when it has one), checked every domain_every steps (one energy-only forward, no backward)
    domain: bool = True
    domain_every: int = 100
    # stop a system whose committee (``committee:``) disagrees on its energy by more than this many meV/atom (standard
    # deviation of the members' energies per atom), checked every domain_every steps; None: the spread is only logged
    committee_max_meV_per_atom: Optional[float] = None


@dataclass(frozen=True)
class MDConfig:
    """One MD run over many systems (see the module docstring for the YAML form)."""

    structures: list[str] = field(default_factory=list)
    potential: str = ""
    committee: list[str] = field(default_factory=list)  # more potentials: their spread with `potential` is logged
    ensemble: Literal["nve", "nvt_langevin", "nvt_nhc", "nvt_csvr", "npt"] = "nvt_langevin"
    steps: int = 1000
    timestep_fs: float = 1.0
    temperature_K: Optional[Numbers] = None
    init_temperature_K: Optional[Numbers] = None  # momenta drawn at this T (default temperature_K; NVE: keep file's)
    pressure_GPa: Numbers = 0.0
    friction_per_fs: Numbers = 0.01
    tau_fs: float = 100.0  # NHC / CSVR time constant
    chain_length: int = 3
    tau_p_fs: float = 1000.0
    bulk_modulus_GPa: Numbers = 30.0
    seed: int = 0  # system k draws from its own torch.Generator seeded with seed + k
    device: str = "cpu"
    dtype: Literal["float32", "float64"] = "float64"
    output_dir: str = "md-out"
    log_every: int = 10
    trajectory_every: int = 100  # 0: no trajectory
    checkpoint_every: int = 1000  # 0: no checkpoint
    skin_A: float = 0.5
    max_atoms_per_call: Union[int, Literal["auto"], None] = "auto"  # atoms per forward call (auto: 128 on CPU)
    compile: bool = False  # torch.compile the model (minutes at start, faster steps; see BatchedMACE)
    threads: Optional[int] = None  # torch CPU threads for this run (default: torch's); see bench/RESULTS.md
    guard: GuardConfig = field(default_factory=GuardConfig)
    progress: bool = True

    def __post_init__(self):
        where = "md config"
        _check_finite(self, where)
        if self.ensemble not in ENSEMBLES:
            raise ValidationError(f"{where}: ensemble {self.ensemble!r} is not one of {', '.join(ENSEMBLES)}")
        for name in ("steps",):
            if getattr(self, name) < 0:
                raise ValidationError(f"{where}: {name} must be >= 0, got {getattr(self, name)}")
        for name in ("timestep_fs", "tau_fs", "tau_p_fs"):
            if not getattr(self, name) > 0:
                raise ValidationError(f"{where}: {name} must be > 0, got {getattr(self, name)}")
        for name in ("log_every", "trajectory_every", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ValidationError(f"{where}: {name} must be >= 0 (0 = never), got {getattr(self, name)}")
        if self.log_every == 0:
            raise ValidationError(f"{where}: log_every must be >= 1")
        if self.chain_length < 1:
            raise ValidationError(f"{where}: chain_length must be >= 1, got {self.chain_length}")
        if self.threads is not None and self.threads < 1:
            raise ValidationError(f"{where}: threads must be >= 1, got {self.threads}")
        if self.seed < 0:
            raise ValidationError(f"{where}: seed must be >= 0, got {self.seed}")
        if isinstance(self.max_atoms_per_call, int) and self.max_atoms_per_call < 1:
            raise ValidationError(f"{where}: max_atoms_per_call must be >= 1, 'auto' or null, got "
                                  f"{self.max_atoms_per_call}")
        if self.skin_A < 0:
            raise ValidationError(f"{where}: skin_A must be >= 0, got {self.skin_A}")
        if self.ensemble != "nve" and self.temperature_K is None:
            raise ValidationError(f"{where}: ensemble {self.ensemble} needs temperature_K")
        for name in ("temperature_K", "init_temperature_K", "friction_per_fs", "bulk_modulus_GPa"):
            vals = getattr(self, name)
            for v in (vals if isinstance(vals, list) else [vals]):
                if v is not None and v < 0:
                    raise ValidationError(f"{where}: {name} must be >= 0, got {v}")
        g = self.guard
        _check_finite(g, f"{where}: guard")
        if g.check_every < 1 or not g.max_temperature_K > 0 or g.min_distance_A < 0 or g.domain_every < 1:
            raise ValidationError(f"{where}: guard needs check_every >= 1, max_temperature_K > 0, min_distance_A >= 0, "
                                  "domain_every >= 1")
        if g.committee_max_meV_per_atom is not None:
            if not g.committee_max_meV_per_atom > 0:
                raise ValidationError(f"{where}: guard: committee_max_meV_per_atom must be > 0, got "
                                      f"{g.committee_max_meV_per_atom}")
            if not self.committee:
                raise ValidationError(f"{where}: guard: committee_max_meV_per_atom needs a committee (committee: "
                                      "[shipped] or more potentials)")

    @classmethod
    def from_dict(cls, data: dict, source: str = "md config", base_dir: str | Path | None = None) -> "MDConfig":
        """Build and validate from a dict (e.g. parsed YAML); ``source`` names it in errors; relative paths in
        ``structures``/``output_dir`` (and ``potential`` when such a file exists) are taken from ``base_dir``."""
        values = _typed(cls, data, source, "")
        if base_dir is not None:
            base = Path(base_dir)
            values["structures"] = [str(base / p) for p in values.get("structures", [])]
            if "output_dir" in values:
                values["output_dir"] = str(base / values["output_dir"])
            pot = values.get("potential")
            if pot and (base / pot).exists():
                values["potential"] = str(base / pot)
            values["committee"] = [str(base / c) if (base / c).exists() else c for c in values.get("committee", [])]
        try:
            return cls(**values)
        except ValidationError as exc:
            raise ValidationError(str(exc).replace("md config", source, 1)) from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> "MDConfig":
        import yaml

        path = Path(path)
        if not path.is_file():
            raise ValidationError(f"{path}: no such config file")
        try:
            data = yaml.safe_load(path.read_bytes().decode("utf-8"))
        except UnicodeDecodeError:
            raise ValidationError(f"{path}: not a text file; an md config is YAML") from None
        except yaml.YAMLError as exc:
            raise ValidationError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ValidationError(f"{path}: expected a mapping of keys to values at the top level")
        cfg = cls.from_dict(data, source=str(path), base_dir=path.parent)
        if not cfg.structures:
            raise ValidationError(f"{path}: structures is empty; give the files of the systems to run")
        if not cfg.potential:
            raise ValidationError(f"{path}: potential is missing; give a MACE .model path or a registry name")
        return cfg

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_finite(obj, where: str) -> None:
    """Every number of a config (and every item of a per-system list) is finite: ``.nan``/``.inf`` in YAML are
    errors naming the key, not a run whose systems are all stopped."""
    import math

    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        for v in (value if isinstance(value, list) else [value]):
            if isinstance(v, float) and not math.isfinite(v):
                raise ValidationError(f"{where}: {f.name} must be a finite number, got {v}")


def _typed(cls, data, source: str, prefix: str) -> dict:
    if not isinstance(data, dict):
        raise ValidationError(f"{source}: {prefix.rstrip('.') or 'config'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    out = {}
    for key, value in data.items():
        if key not in names:
            import difflib

            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValidationError(f"{source}: unknown key {prefix + str(key)!r}{hint}; known keys: {', '.join(names)}")
        out[key] = _check(hints[key], value, source, f"{prefix}{key}")
    return out


def _check(tp, value, source: str, key: str):
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return tp(**_typed(tp, value, source, f"{key}."))
    if origin in (Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            try:
                return _check(arg, value, source, key)
            except ValidationError as exc:
                errors.append(exc)
        raise ValidationError(f"{source}: {key} = {value!r} is not {_describe(tp)}")
    if tp is type(None):
        if value is None:
            return None
        raise ValidationError(f"{source}: {key} = {value!r} is not null")
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise ValidationError(f"{source}: {key} = {value!r} is not one of {', '.join(map(str, typing.get_args(tp)))}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, str) and item is str:
            value = [value]
        if not isinstance(value, list):
            raise ValidationError(f"{source}: {key} = {value!r} is not a list")
        return [_check(item, v, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, (str, Path)):
            return str(value)
    raise ValidationError(f"{source}: {key} = {value!r} is not {_describe(tp)}")


def _describe(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    if origin is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    if tp is type(None):
        return "null"
    return {float: "a number", int: "an integer", str: "a string", bool: "true/false"}.get(tp, str(tp))
