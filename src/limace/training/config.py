"""The typed, validated configuration of ``limace train``.

A YAML file maps onto :class:`TrainConfig` (sections ``model``, ``data``, ``loss``, ``optimizer``, ``scheduler``,
``ema``, ``stage_two``, ``trainer``, ``checkpoint``, ``wandb``). Everything is checked before training starts:
an unknown key, a wrong type, a value out of range or a missing data file raises
:class:`limace.core.errors.ValidationError` with one line naming the file and the dotted key.

Relative paths in a config file (data files, ``run_dir``) are relative to the directory of that file, so a config
and its run directory can be moved together. This module imports only the standard library and PyYAML.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

from limace.core.errors import ValidationError
from limace.potentials.registry import looks_like_path

_SYMBOLS = None


def _chemical_symbols() -> list[str]:
    global _SYMBOLS
    if _SYMBOLS is None:
        from ase.data import chemical_symbols

        _SYMBOLS = list(chemical_symbols[1:])
    return _SYMBOLS


_Interaction = Literal["RealAgnosticResidualInteractionBlock", "RealAgnosticAttResidualInteractionBlock",
                       "RealAgnosticInteractionBlock", "RealAgnosticDensityInteractionBlock",
                       "RealAgnosticDensityResidualInteractionBlock",
                       "RealAgnosticResidualNonLinearInteractionBlock"]  # mace.modules.interaction_classes


@dataclass
class ModelConfig:
    """Size and form of the MACE model (names as in mace_run_train; defaults are mace-torch's)."""

    channels: int = 64  # num_channels
    max_L: int = 1  # symmetry of the messages (0: invariant, 1: vectors, ...)
    r_max: float = 5.0  # cutoff, Angstrom
    num_interactions: int = 2
    correlation: int = 3
    max_ell: int = 3
    num_radial_basis: int = 8
    num_cutoff_basis: int = 5
    radial_mlp: list[int] = field(default_factory=lambda: [64, 64, 64])
    mlp_irreps: str = "16x0e"
    gate: Literal["silu", "tanh", "abs", "None"] = "silu"
    interaction: _Interaction = "RealAgnosticResidualInteractionBlock"
    interaction_first: _Interaction = "RealAgnosticInteractionBlock"  # what mace_run_train --model MACE uses
    scaling: Literal["rms_forces_scaling", "std_scaling", "no_scaling"] = "rms_forces_scaling"
    shift: bool = False  # shift interaction energies by their mean (mace's ScaleShiftMACE) or not (mace's MACE)
    pair_repulsion: bool = False  # add the ZBL screened-nuclear repulsion (mace_run_train --pair_repulsion): keeps
    # atoms apart at distances the data never shows, so relaxations and MD cannot collapse pairs
    elements: Optional[list[str]] = None  # None: the elements of the training data
    # fine-tuning: start from the weights of a trained MACE model (a .model file, or a pretrained potential's registry
    # name) instead of random ones. Its elements, E0s, scale and average neighbour count are kept (so training starts
    # from exactly that model); the sizes above must be the ones it was built with. Ignored when a run resumes.
    init_from: Optional[str] = None
    e0s: Union[Literal["average"], dict[str, float]] = "average"  # "average": least squares on the training data


@dataclass
class DataConfig:
    """Labelled extxyz data with REF_energy / REF_forces / REF_stress (see :mod:`limace.keys`)."""

    dataset: Optional[str] = None  # a shipped dataset (limace.data.datasets): its train split, and test split as test
    train_file: Union[str, list[str]] = ""
    valid_file: Union[str, list[str], None] = None  # None: a random valid_fraction of train_file
    valid_fraction: float = 0.1
    test_file: Union[str, list[str], None] = None  # evaluated at the end when given
    split_seed: Optional[int] = None  # None: the top-level seed (committee members share one split)
    # config_types never drawn into the validation split: a phase's single equilibrium cell (the anchor of its
    # formation energy; potential 0.5 lost beta-Sn and Li13Sn5 to validation) and isolated atoms
    valid_exclude: list[str] = field(default_factory=lambda: ["equilibrium", "IsolatedAtom"])
    # remove a Pulay stress from the training/validation stress labels (limace.data.consistency): "none"; "fit"
    # (per element, from the training split's equilibrium + isotropic-strain cells); or {element: GPa}
    stress_offset: Union[Literal["none", "fit"], dict[str, float]] = "none"
    num_workers: int = 0


@dataclass
class LossConfig:
    """Weights of mace-torch's weighted energy (per atom) / forces / stress loss."""

    energy_weight: float = 1.0
    forces_weight: float = 100.0
    stress_weight: float = 1.0
    kind: Literal["mse", "huber"] = "mse"
    huber_delta: float = 0.01


@dataclass
class OptimizerConfig:
    name: Literal["adam", "adamw"] = "adam"
    lr: float = 0.01
    weight_decay: float = 5e-7  # on interaction linear and product weights, as mace_run_train
    amsgrad: bool = True
    beta1: float = 0.9
    max_grad_norm: Optional[float] = 10.0


@dataclass
class SchedulerConfig:
    name: Literal["plateau", "exponential", "none"] = "plateau"
    factor: float = 0.8  # plateau: multiply lr by this
    patience: int = 50  # plateau: epochs without improvement of val/loss
    gamma: float = 0.9993  # exponential: per epoch
    # linear warm-up: optimizer step s (from 0) uses lr x (s + 1) / warmup_steps while s < warmup_steps; a fresh
    # Adam's first steps are large, which costs a fine-tune its starting accuracy (0 = none)
    warmup_steps: int = 0


@dataclass
class EMAConfig:
    enabled: bool = True
    decay: float = 0.99


@dataclass
class StageTwoConfig:
    """mace_run_train's stage two: from ``start_epoch`` on, higher energy weight and a small constant lr."""

    enabled: bool = False
    start_epoch: Optional[int] = None  # None: 3/4 of trainer.max_epochs (as mace_run_train), or the first epoch
    # that starts after 3/4 of trainer.max_time_s when only a time budget is given
    energy_weight: float = 1000.0
    forces_weight: float = 100.0
    stress_weight: float = 10.0
    lr: float = 1e-3


@dataclass
class TrainerConfig:
    """Lightning Trainer settings. DDP: strategy 'ddp', devices per node, num_nodes (SLURM is detected)."""

    max_epochs: Optional[int] = 100
    max_steps: Optional[int] = None
    max_time_s: Optional[float] = None  # wall-clock budget of the training loop (seconds; a lent GPU's minutes)
    batch_size: int = 8
    valid_batch_size: Optional[int] = None  # None: batch_size
    precision: Literal["float32", "float64"] = "float64"
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    devices: Union[int, str, list[int]] = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    val_every_n_epochs: int = 1
    log_every_n_steps: int = 10
    progress_bar: bool = True


@dataclass
class CheckpointConfig:
    every_n_steps: int = 500
    keep: int = 3  # step checkpoints kept besides last.ckpt (-1: all)


@dataclass
class WandbConfig:
    enabled: bool = False
    project: str = "limace"
    entity: Optional[str] = None
    name: Optional[str] = None  # None: the config name
    mode: Literal["offline", "online"] = "offline"  # offline: `wandb sync RUN_DIR/wandb/offline-run-*` later
    tags: list[str] = field(default_factory=list)


@dataclass
class TrainConfig:
    """Everything ``limace train`` needs. ``committee_size`` > 1 trains that many models with seeds seed, seed+1, ..."""

    data: DataConfig = field(default_factory=DataConfig)
    name: str = "limace-model"
    seed: int = 42
    run_dir: Optional[str] = None  # None: runs/<name> next to the config file
    committee_size: int = 1
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    stage_two: StageTwoConfig = field(default_factory=StageTwoConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    # -- derived ------------------------------------------------------------------------------------------------

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config", base_dir: str | Path | None = None,
                  check_files: bool = True) -> "TrainConfig":
        """Build and validate; relative paths are resolved against ``base_dir`` (default: the current directory)."""
        if not isinstance(d, dict):
            raise ValidationError(f"{source}: expected a mapping of sections at the top level, got {type(d).__name__}")
        if "data" not in d:
            raise ValidationError(f"{source}: missing section 'data' (with data.train_file)")
        cfg = _build(cls, d, source, "")
        cfg._resolve_paths(Path(base_dir) if base_dir is not None else Path.cwd())
        cfg._check(source, check_files=check_files)
        return cfg

    def member_seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.committee_size)]

    def stage_two_start(self) -> Optional[int]:
        if not self.stage_two.enabled:
            return None
        if self.stage_two.start_epoch is not None:
            return self.stage_two.start_epoch
        if self.trainer.max_epochs is None:
            return None  # time budget only: decided by the module at 3/4 of trainer.max_time_s
        return max(1, (self.trainer.max_epochs or 0) // 4 * 3)

    def _resolve_paths(self, base: Path) -> None:
        def res(p):
            if p is None or p == "":
                return p
            if isinstance(p, list):
                return [res(x) for x in p]
            return str((base / Path(p).expanduser()).resolve()) if not Path(p).expanduser().is_absolute() else str(Path(p).expanduser())

        self.data.train_file = res(self.data.train_file)
        self.data.valid_file = res(self.data.valid_file)
        self.data.test_file = res(self.data.test_file)
        self.run_dir = res(self.run_dir if self.run_dir is not None else f"runs/{self.name}")
        if self.model.init_from and looks_like_path(self.model.init_from):
            self.model.init_from = res(self.model.init_from)

    def _check(self, source: str, check_files: bool = True) -> None:
        def bad(key: str, msg: str):
            raise ValidationError(f"{source}: key '{key}' {msg}")

        m, t, d = self.model, self.trainer, self.data
        if d.dataset is not None and d.train_file:
            bad("data.dataset", "and data.train_file are both given; use one")
        if d.dataset is None and not d.train_file:
            bad("data.train_file", "is required (a labelled extxyz file or a list of them), or data.dataset")
        if d.dataset is not None and check_files:
            from limace.data.datasets import available

            if d.dataset not in available():
                bad("data.dataset", f"names {d.dataset!r}, not a shipped dataset (shipped: {', '.join(available()) or 'none yet'})")
        for key in ("model.channels", "model.num_interactions", "model.correlation", "model.num_radial_basis",
                    "model.num_cutoff_basis", "trainer.batch_size", "trainer.num_nodes", "committee_size",
                    "checkpoint.every_n_steps", "trainer.val_every_n_epochs", "trainer.log_every_n_steps"):
            if _get(self, key) < 1:
                bad(key, f"must be >= 1 (got {_get(self, key)})")
        if self.checkpoint.keep < -1:
            bad("checkpoint.keep", f"must be >= 0, or -1 for all (got {self.checkpoint.keep})")
        for key in ("model.max_L", "model.max_ell", "data.num_workers", "scheduler.patience", "scheduler.warmup_steps",
                    "seed", "data.split_seed"):  # seeds: numpy's and torch's are unsigned; split_seed None = seed
            value = _get(self, key)
            if value is not None and value < 0:
                bad(key, f"must be >= 0 (got {value})")
        if m.max_L > 3:
            bad("model.max_L", f"must be 0..3 (got {m.max_L})")
        if not m.r_max > 0:
            bad("model.r_max", f"must be > 0 Angstrom (got {m.r_max})")
        if any(w < 1 for w in m.radial_mlp) or not m.radial_mlp:
            bad("model.radial_mlp", f"must be a non-empty list of positive widths (got {m.radial_mlp})")
        for key in ("loss.energy_weight", "loss.forces_weight", "loss.stress_weight", "optimizer.weight_decay",
                    "stage_two.energy_weight", "stage_two.forces_weight", "stage_two.stress_weight"):
            if _get(self, key) < 0:
                bad(key, f"must be >= 0 (got {_get(self, key)})")
        for key in ("optimizer.lr", "stage_two.lr", "loss.huber_delta"):
            if not _get(self, key) > 0:
                bad(key, f"must be > 0 (got {_get(self, key)})")
        for key in ("ema.decay", "scheduler.factor", "optimizer.beta1"):
            if not 0 < _get(self, key) < 1:
                bad(key, f"must be in (0, 1) (got {_get(self, key)})")
        if not 0 < self.scheduler.gamma <= 1:
            bad("scheduler.gamma", f"must be in (0, 1] (got {self.scheduler.gamma})")
        if self.optimizer.max_grad_norm is not None and not self.optimizer.max_grad_norm > 0:
            bad("optimizer.max_grad_norm", f"must be > 0 or null (got {self.optimizer.max_grad_norm})")
        if m.elements is not None:
            for s in m.elements:
                if s not in _chemical_symbols():
                    bad("model.elements", f"has {s!r}, not a chemical symbol")
        if isinstance(m.e0s, dict):
            for s in m.e0s:
                if s not in _chemical_symbols():
                    bad(f"model.e0s.{s}", "is not a chemical symbol")
            if m.elements is not None and set(m.elements) - set(m.e0s):
                bad("model.e0s", f"lacks element(s) {', '.join(sorted(set(m.elements) - set(m.e0s)))}")
        if isinstance(d.stress_offset, dict):
            for s in d.stress_offset:
                if s not in _chemical_symbols():
                    bad(f"data.stress_offset.{s}", "is not a chemical symbol")
        if not 0 < d.valid_fraction < 1:
            bad("data.valid_fraction", f"must be in (0, 1) (got {d.valid_fraction})")
        if t.max_epochs is None and t.max_steps is None and t.max_time_s is None:
            bad("trainer.max_epochs", "trainer.max_steps and trainer.max_time_s are all null; give at least one")
        if t.max_time_s is not None and not (isinstance(t.max_time_s, (int, float)) and math.isfinite(t.max_time_s)
                                             and t.max_time_s > 0):
            bad("trainer.max_time_s", f"must be a positive number of seconds or null (got {t.max_time_s!r})")
        if t.max_epochs is not None and t.max_epochs < 1:
            bad("trainer.max_epochs", f"must be >= 1 or null (got {t.max_epochs})")
        if t.max_steps is not None and t.max_steps < 1:
            bad("trainer.max_steps", f"must be >= 1 or null (got {t.max_steps})")
        if t.valid_batch_size is not None and t.valid_batch_size < 1:
            bad("trainer.valid_batch_size", f"must be >= 1 (got {t.valid_batch_size})")
        if isinstance(t.devices, str) and t.devices != "auto":
            bad("trainer.devices", f"must be 'auto', a number of devices or a list of device ids (got {t.devices!r})")
        if isinstance(t.devices, int) and t.devices < 1 and t.devices != -1:
            bad("trainer.devices", f"must be >= 1 or -1 (all) (got {t.devices})")
        if (self.stage_two.enabled and self.stage_two.start_epoch is None and t.max_epochs is None
                and t.max_time_s is None):
            bad("stage_two.start_epoch", "is required when trainer.max_epochs and trainer.max_time_s are null")
        if self.stage_two.start_epoch is not None and self.stage_two.start_epoch < 0:
            bad("stage_two.start_epoch", f"must be >= 0 (got {self.stage_two.start_epoch})")
        if m.init_from is not None and not m.init_from.strip():
            bad("model.init_from", "is empty; give a .model file or a pretrained potential name, or null")
        if check_files:
            if m.init_from and looks_like_path(m.init_from) and not Path(m.init_from).is_file():
                bad("model.init_from", f"names {m.init_from}: no such file")
            for key in ("data.train_file", "data.valid_file", "data.test_file"):
                paths = _get(self, key)
                for p in ([paths] if isinstance(paths, str) else (paths or [])):
                    if p and not Path(p).is_file():
                        bad(key, f"names {p}: no such file")


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


# -- generic strict builder ----------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        k, v = typing.get_args(tp)
        return f"a mapping {_type_name(k)} -> {_type_name(v)}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(tp, getattr(tp, "__name__", str(tp)))


class _Mismatch(Exception):
    pass


def _convert(value: Any, tp: Any, source: str, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _Mismatch
        return _build(tp, value, source, key + ".")
    if tp is type(None):
        if value is None:
            return None
        raise _Mismatch
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _convert(value, arg, source, key)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in typing.get_args(tp)):
            return value
        raise _Mismatch
    if origin is list:
        if not isinstance(value, list):
            raise _Mismatch
        (arg,) = typing.get_args(tp)
        return [_convert(v, arg, source, key) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise _Mismatch
        kt, vt = typing.get_args(tp)
        return {_convert(k, kt, source, key): _convert(v, vt, source, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                raise _Mismatch from None
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    raise TypeError(f"unsupported config type {tp}")


def _build(cls: type, d: dict, source: str, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for k in d:
        if k not in names:
            close = difflib.get_close_matches(str(k), names, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else f" (known: {', '.join(names)})"
            raise ValidationError(f"{source}: unknown key '{prefix}{k}'{hint}")
    kwargs = {}
    for k, v in d.items():
        tp = hints[k]
        try:
            kwargs[k] = _convert(v, tp, source, prefix + k)
        except _Mismatch:
            if dataclasses.is_dataclass(tp):
                raise ValidationError(f"{source}: key '{prefix}{k}' must be a section (mapping), got {v!r}") from None
            raise ValidationError(f"{source}: key '{prefix}{k}' must be {_type_name(tp)}, got {v!r}") from None
    return cls(**kwargs)


def packaged_configs() -> dict[str, Path]:
    """Configs shipped with limace (``limace train NAME``), e.g. ``small``: the recipe of limace-lisnin-small."""
    from importlib import resources

    root = Path(str(resources.files("limace.training") / "configs"))
    return {p.stem: p for p in sorted(root.glob("*.yaml"))}


def load_config(path: str | Path, check_files: bool = True) -> TrainConfig:
    """Read and validate a YAML training config (one-line :class:`ValidationError` on any problem).

    ``path`` may also name a packaged config (:func:`packaged_configs`); its relative paths are then relative to
    the current directory.
    """
    import yaml

    path = Path(path)
    base = None
    if not path.is_file() and str(path) in packaged_configs():
        path, base = packaged_configs()[str(path)], Path.cwd()
    if not path.is_file():
        known = ", ".join(packaged_configs())
        raise ValidationError(f"{path}: no such file (nor a packaged config: {known})")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ValidationError(f"{path}:{where} not valid YAML ({getattr(exc, 'problem', None) or type(exc).__name__})") from None
    if raw is None:
        raise ValidationError(f"{path}: empty config")
    return TrainConfig.from_dict(raw, source=str(path), base_dir=base or path.resolve().parent,
                                 check_files=check_files)


def dump_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write the resolved config (absolute paths) as YAML, atomically."""
    import yaml

    from limace.core.fileio import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.as_dict(), sort_keys=False))
