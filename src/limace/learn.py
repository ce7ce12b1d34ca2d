"""``limace learn CONFIG.yaml``: the active-learning loop (issue 23).

One round = explore -> select -> label -> fine-tune -> evaluate -> register:

1. **explore**: candidate configurations the current committee has not seen: Langevin MD of the seed structures at
   several temperatures (snapshots along the run, member 0 of the committee drives it), isotropically strained
   copies, rattled copies, one-Li-vacancy cells; and, with ``explore.from_runs``, what screens and barrier runs
   explored (relaxed hull and search structures, every NEB band image);
2. **select**: every committee member predicts every candidate (one batched call per member); the per-structure
   force spread (largest over atoms of the norm of the per-atom force standard deviation) and energy spread rank
   them; the most uncertain ``pool_factor x budget`` go through farthest-point sampling on the mean invariant MACE
   descriptors (starting from the most uncertain one), so the ``budget`` picked are uncertain *and* diverse;
3. **label**: the resumable labelling of :mod:`limace.data.label` (local workers or a Dask scheduler);
4. **fine-tune**: each member continues from its own previous weights (``model.init_from``) on the base data plus
   every label of this run so far, with the member's own seed; the train config is a normal ``limace train`` file
   (its data and init keys are set here);
5. **evaluate**: member 0 on each evaluation file (e.g. the frozen test split and the extrapolation set) and the
   committee's spread against the error (Spearman rank correlation per structure);
6. **register**: the round's committee is written as a registry entry in ``RUN_DIR/registry.yaml`` (use it with
   ``LIMACE_REGISTRY=RUN_DIR/registry.yaml``).

Every stage writes its result atomically into ``RUN_DIR/round_K/`` and is skipped when that result exists; labelling
and training resume inside themselves, so a killed run started again continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from limace.core.errors import ValidationError
from limace.core.fileio import atomic_write_json, atomic_write_text


@dataclass
class ExploreConfig:
    structures: list[str] = field(default_factory=list)  # files of seed structures (any ASE format)
    phases: list[str] = field(default_factory=list)  # library phase ids (conventional cells), also seeds
    repeat_to_atoms: int = 8  # seeds are repeated along their shortest axes to at least this many atoms
    md_temperatures_K: list[float] = field(default_factory=lambda: [600.0, 900.0])
    md_steps: int = 200
    md_snapshot_every: int = 50
    md_timestep_fs: float = 2.0
    volume_strains: list[float] = field(default_factory=lambda: [-0.1, 0.1])  # fractional volume change
    rattle_A: list[float] = field(default_factory=lambda: [0.1, 0.2])
    li_vacancy: bool = True
    # output directories of `limace screen` (its relaxed hull and search structures, work/*/structures/) or
    # `limace barriers` (every NEB band image, */hops/hop_*/band.extxyz; a screen's barriers/ too): candidates as
    # they are, without MD; cells above from_runs_max_atoms are left out (each candidate may become a DFT label)
    from_runs: list[str] = field(default_factory=list)
    from_runs_max_atoms: int = 32


@dataclass
class SelectConfig:
    budget: int = 8  # new labels per round
    pool_factor: int = 3  # farthest-point sampling among the budget x pool_factor most uncertain
    min_force_spread: float = 0.0  # eV/A: candidates below this are never selected


@dataclass
class LearnConfig:
    name: str = "limace-al"
    train_config: str = ""  # a `limace train` YAML file: model, loss, optimizer, trainer sections are used
    # or one such file per committee member, in committee order (members of different architectures, e.g. a
    # 64-channel model driving the exploration with 32-channel members beside it); give one of the two keys
    train_configs: list[str] = field(default_factory=list)
    committee: list[str] = field(default_factory=list)  # the starting committee: >= 2 .model files or registry names
    base_data: list[str] = field(default_factory=list)  # labelled files every fine-tune trains on
    evaluate: list[str] = field(default_factory=list)  # labelled files to evaluate on after each round
    base_dataset: Optional[str] = None  # a shipped dataset (e.g. li-in-sn-v1): its train split is base data too
    # splits to evaluate on: "SPLIT" of base_dataset (test-v1, ...) or "DATASET:SPLIT" of any shipped dataset (without
    # making its train split base data: e.g. fine-tunes on a file that leaves a validation set out)
    evaluate_splits: list[str] = field(default_factory=list)
    rounds: int = 2
    protocol: str = "pbe-pw400"
    workers: int = 1
    scheduler: Optional[str] = None
    seed: int = 0
    run_dir: Optional[str] = None  # default: runs/<name> next to the config file
    dtype: str = "float64"
    # also fine-tune member 0 of each round without that round's labels (same starting weights, recipe and seed) and
    # evaluate it on the same files: what the labels alone buy, apart from the fine-tune (one more fine-tune a round)
    control: bool = False
    # a rule fixed before the run: round K's member 0 is a candidate to ship only if every bound holds on its
    # evaluation file (named as in evaluate.json: the file's name, or DATASET_SPLIT.extxyz for evaluate_splits), e.g.
    # {"valid.extxyz": {"energy_mae": 3.17}}; metrics: GATE_METRICS; a bound holds when value <= bound
    gate: dict[str, dict[str, float]] = field(default_factory=dict)
    explore: ExploreConfig = field(default_factory=ExploreConfig)
    select: SelectConfig = field(default_factory=SelectConfig)


# gate metric -> (where in an evaluate.json entry, unit)
GATE_METRICS = {"energy_mae": (("energy_mae_mev_per_atom",), "meV/atom"),
                "energy_rmse": (("metrics", "energy_rmse"), "meV/atom"),
                "energy_max": (("energy_max_mev_per_atom",), "meV/atom"),
                "forces_mae": (("metrics", "forces_mae"), "meV/A"),
                "forces_rmse": (("metrics", "forces_rmse"), "meV/A")}


def evaluation_names(cfg: LearnConfig) -> list[str]:
    """The names the evaluation files have in evaluate.json (and in ``gate``)."""
    names = [Path(f).name for f in cfg.evaluate]
    for item in cfg.evaluate_splits:
        ds, sp = _split_ref(item, cfg.base_dataset)
        names.append(f"{ds}_{sp}.extxyz")
    return names


def gate_result(gate: dict[str, dict[str, float]], evaluation: dict) -> dict:
    """Check member 0's errors of one round (evaluate.json) against the config's ``gate``: ``{"passed": bool,
    "checks": [{"set", "metric", "bound", "value", "ok"}]}`` (a metric the evaluation lacks fails)."""
    checks = []
    for name, bounds in gate.items():
        for metric, bound in bounds.items():
            value = evaluation.get(name)
            for key in GATE_METRICS[metric][0]:
                value = value.get(key) if isinstance(value, dict) else None
            ok = value is not None and float(value) <= bound
            checks.append({"set": name, "metric": metric, "bound": bound,
                           "value": None if value is None else float(value), "ok": bool(ok)})
    return {"passed": all(c["ok"] for c in checks), "checks": checks}


def gate_text(res: dict) -> str:
    """'passes', or 'fails (SET METRIC VALUE > BOUND; ...)' for a :func:`gate_result`."""
    failed = [c for c in res["checks"] if not c["ok"]]
    if not failed:
        return "passes"
    return "fails (" + "; ".join(f"{c['set']} {c['metric']} "
                                 f"{'missing' if c['value'] is None else format(c['value'], '.2f')} > {c['bound']:g} "
                                 f"{GATE_METRICS[c['metric']][1]}" for c in failed) + ")"


RUN_PATTERNS = (("work/*/structures/*.extxyz", "al_screen_relaxed"), ("**/hops/hop_*/band.extxyz", "al_neb_image"))


def structures_from_runs(directories: list[str], max_atoms: int | None = None) -> list:
    """The structures of `limace screen` and `limace barriers` output directories: each relaxed structure of a screen
    (the last frame of ``work/<system>/structures/*.extxyz``, config_type ``al_screen_relaxed``) and every image of
    every NEB band (``**/hops/hop_*/band.extxyz``, ``al_neb_image``), as new periodic Atoms with ``info["from_run"]``
    (the file, relative to its directory); cells above ``max_atoms`` are left out."""
    from ase import Atoms
    from ase.io import read

    out = []
    for d in map(Path, directories):
        for pattern, kind in RUN_PATTERNS:
            for f in sorted(d.glob(pattern)):
                frames = read(f, ":") if kind == "al_neb_image" else [read(f, -1)]
                rel = str(f.relative_to(d))
                for i, fr in enumerate(frames):
                    if max_atoms is not None and len(fr) > max_atoms:
                        continue
                    a = Atoms(fr.get_chemical_symbols(), positions=fr.positions, cell=fr.cell, pbc=True)
                    a.wrap()
                    a.info = {"config_type": kind, "from_run": rel if kind != "al_neb_image" else f"{rel}@{i}"}
                    out.append(a)
    return out


def load_learn_config(path: str | Path) -> LearnConfig:
    """Read and validate ``limace learn`` YAML; relative paths are relative to the file. One-line errors."""
    import yaml

    from limace.training.config import _build

    path = Path(path)
    if not path.exists():
        raise ValidationError(f"{path}: no such file")
    if not path.is_file():
        raise ValidationError(f"{path}: not a regular file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValidationError(f"{path}: not valid YAML ({getattr(exc, 'problem', None) or type(exc).__name__})") from None
    if not isinstance(raw, dict):
        raise ValidationError(f"{path}: expected a mapping of keys at the top level")
    cfg = _build(LearnConfig, raw, str(path), "")
    base = path.resolve().parent

    def res(p: str) -> str:
        return p if not p or Path(p).expanduser().is_absolute() else str((base / p).resolve())

    from limace.potentials.registry import looks_like_path

    cfg.train_config = res(cfg.train_config)
    cfg.train_configs = [res(p) for p in cfg.train_configs]
    cfg.committee = [res(c) if looks_like_path(c) else c for c in cfg.committee]
    cfg.base_data = [res(p) for p in cfg.base_data]
    cfg.evaluate = [res(p) for p in cfg.evaluate]
    cfg.explore.structures = [res(p) for p in cfg.explore.structures]
    cfg.explore.from_runs = [res(p) for p in cfg.explore.from_runs]
    cfg.run_dir = res(cfg.run_dir or f"runs/{cfg.name}")
    check_learn_config(cfg, str(path))
    return cfg


def check_learn_config(cfg: LearnConfig, source: str = "config") -> None:
    from limace.core.errors import check_number

    def bad(key, msg):
        raise ValidationError(f"{source}: key '{key}' {msg}")

    if len(cfg.committee) < 2:
        bad("committee", f"needs at least 2 models (a committee), got {len(cfg.committee)}")
    if cfg.train_configs:
        if cfg.train_config:
            bad("train_configs", "and 'train_config' are both given: one file for all members, or one per member")
        if len(cfg.train_configs) != len(cfg.committee):
            bad("train_configs", f"needs one file per committee member ({len(cfg.committee)}), "
                                 f"got {len(cfg.train_configs)}")
        for f in cfg.train_configs:
            if not Path(f).is_file():
                bad("train_configs", f"names {f}, which does not exist")
    elif not cfg.train_config or not Path(cfg.train_config).is_file():
        bad("train_config", f"must name a `limace train` YAML file, got {cfg.train_config!r}")
    for key, files in (("base_data", cfg.base_data), ("evaluate", cfg.evaluate), ("explore.structures", cfg.explore.structures)):
        for f in files:
            if not Path(f).is_file():
                bad(key, f"names {f}, which does not exist")
    if cfg.base_dataset is not None or cfg.evaluate_splits:
        from limace.data.datasets import available, splits

        if cfg.base_dataset is not None and cfg.base_dataset not in available():
            bad("base_dataset", f"names {cfg.base_dataset!r}, not a shipped dataset (have: {', '.join(available())})")
        for item in cfg.evaluate_splits:
            ds, sp = _split_ref(item, cfg.base_dataset)
            if ds is None:
                bad("evaluate_splits", f"names {item!r}: give base_dataset or write it DATASET:SPLIT")
            if ds not in available():
                bad("evaluate_splits", f"names {item!r}; {ds!r} is not a shipped dataset (have: {', '.join(available())})")
            if sp not in splits(ds) or sp == "train":
                bad("evaluate_splits", f"names {item!r}; {ds} has {', '.join(x for x in splits(ds) if x != 'train')}")
    if not cfg.base_data and cfg.base_dataset is None:
        bad("base_data", "needs labelled files (or base_dataset) for the fine-tunes")
    names = evaluation_names(cfg)
    for name, bounds in cfg.gate.items():
        if name not in names:
            bad("gate", f"names {name!r}, not an evaluation file of this run (have: {', '.join(names) or 'none'})")
        for metric, bound in bounds.items():
            if metric not in GATE_METRICS:
                bad(f"gate.{name}", f"has unknown metric {metric!r}; known: {', '.join(GATE_METRICS)}")
            if not np.isfinite(bound) or bound < 0:
                bad(f"gate.{name}.{metric}", f"must be a finite bound >= 0, got {bound}")
    if not cfg.explore.structures and not cfg.explore.phases:
        bad("explore", "needs seed structures (explore.structures or explore.phases)")
    for d in cfg.explore.from_runs:
        if not Path(d).is_dir():
            bad("explore.from_runs", f"names {d}, which is not a directory")
        if not any(next(Path(d).glob(pattern), None) for pattern, _ in RUN_PATTERNS):
            bad("explore.from_runs", f"names {d}, which holds no `limace screen` or `limace barriers` output "
                                     f"(work/*/structures/*.extxyz or */hops/hop_*/band.extxyz)")
    for key, val, kw in (("rounds", cfg.rounds, {"at_least": 1}), ("workers", cfg.workers, {"at_least": 1}),
                         ("seed", cfg.seed, {"at_least": 0}),
                         ("select.budget", cfg.select.budget, {"at_least": 1}),
                         ("select.pool_factor", cfg.select.pool_factor, {"at_least": 1}),
                         ("select.min_force_spread", cfg.select.min_force_spread, {"at_least": 0}),
                         ("explore.md_steps", cfg.explore.md_steps, {"at_least": 0}),
                         ("explore.md_snapshot_every", cfg.explore.md_snapshot_every, {"at_least": 1}),
                         ("explore.md_timestep_fs", cfg.explore.md_timestep_fs, {"above": 0}),
                         ("explore.from_runs_max_atoms", cfg.explore.from_runs_max_atoms, {"at_least": 1}),
                         # the explored cells are DFT-labelled: a thousand atoms is far past any plane-wave single point
                         ("explore.repeat_to_atoms", cfg.explore.repeat_to_atoms, {"at_least": 1, "at_most": 1000})):
        try:
            check_number(key, val, **kw)
        except Exception as exc:
            raise ValidationError(f"{source}: key {exc}") from None
    for t in cfg.explore.md_temperatures_K:
        if not np.isfinite(t) or t <= 0:
            bad("explore.md_temperatures_K", f"must be finite temperatures > 0 K, got {t}")
    for e in cfg.explore.volume_strains:
        if not np.isfinite(e) or e <= -0.5:
            bad("explore.volume_strains", f"must be finite fractional volume changes > -0.5, got {e}")
    for r in cfg.explore.rattle_A:
        if not np.isfinite(r) or r <= 0:
            bad("explore.rattle_A", f"must be finite amplitudes > 0 A, got {r}")
    from limace.core.errors import FLOAT_DTYPES

    if cfg.dtype not in FLOAT_DTYPES:
        bad("dtype", f"must be 'float32' or 'float64', got {cfg.dtype!r}")
    from limace.data.label import get_protocol

    get_protocol(cfg.protocol)
    # the members' fine-tune configs must build now, not after the first round's DFT
    for f in dict.fromkeys(cfg.train_configs or [cfg.train_config]):
        member_train_config(f, cfg.base_data or ["base.extxyz"], "committee member", check_files=False)


# -- helpers -------------------------------------------------------------------------------------------------------


def _split_ref(item: str, base_dataset: Optional[str]) -> tuple[Optional[str], str]:
    """(dataset, split) of an ``evaluate_splits`` entry: ``DATASET:SPLIT``, or ``SPLIT`` of ``base_dataset``."""
    if ":" in item:
        ds, sp = item.split(":", 1)
        return ds, sp
    return base_dataset, item


def member_train_config(path: str, train_files: list[str], init_from: str, check_files: bool = True):
    """The ``limace train`` config of one member's fine-tune: the file's sections with its data source replaced by
    ``train_files`` and ``model.init_from`` by ``init_from`` (the file needs neither)."""
    import yaml

    from limace.training.config import TrainConfig

    raw = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(raw, dict):
        raise ValidationError(f"{path}: expected a mapping of sections at the top level")
    data = dict(raw.get("data") or {})
    data.pop("dataset", None)
    data["train_file"] = list(train_files)
    model = dict(raw.get("model") or {})
    model["init_from"] = init_from
    return TrainConfig.from_dict({**raw, "data": data, "model": model}, source=str(path),
                                 base_dir=Path(path).parent, check_files=check_files)


def _read(path: Path) -> list:
    from ase.io import read

    return read(path, ":", format="extxyz") if path.exists() and path.stat().st_size else []


def _write(path: Path, frames) -> None:
    import io

    from ase.io import write

    buf = io.StringIO()
    if frames:
        write(buf, list(frames), format="extxyz")
    atomic_write_text(path, buf.getvalue())


def _model_paths(specs: list[str]) -> list[Path]:
    from limace.potentials.registry import fetch, looks_like_path

    return [Path(s) if looks_like_path(s) else Path(fetch(s)) for s in specs]


def _load_models(paths: list[Path], dtype: str):
    from limace.training.export import load_model

    return [load_model(p, dtype=dtype) for p in paths]


def mean_descriptors(model, frames, batch_size: int = 16) -> np.ndarray:
    """Mean over atoms of the invariant MACE node features of every layer: one vector per structure."""
    from limace.training._mace import import_mace

    import_mace()
    from e3nn import o3
    from mace.tools import AtomicNumberTable, torch_geometric

    from limace.training.graphs import to_graphs

    dtype = next(model.parameters()).dtype
    graphs = to_graphs(frames, AtomicNumberTable([int(z) for z in model.atomic_numbers]), float(model.r_max), dtype)
    irreps = o3.Irreps(str(model.products[0].linear.irreps_out))
    n_inv = irreps.dim // (irreps.lmax + 1) ** 2
    layers = int(model.num_interactions)
    out = []
    for batch in torch_geometric.dataloader.DataLoader(graphs, batch_size=batch_size, shuffle=False):
        res = model(batch.to_dict(), training=False, compute_force=False)
        x = res["node_feats"].detach()
        inv = np.concatenate([x[:, i * irreps.dim: i * irreps.dim + n_inv].cpu().double().numpy() for i in range(layers)], 1)
        idx = batch.batch.cpu().numpy()
        for k in range(int(idx.max()) + 1):
            out.append(inv[idx == k].mean(axis=0))
    return np.asarray(out)


@dataclass
class CommitteePrediction:
    energy: np.ndarray  # [members, structures] eV
    forces: list[np.ndarray]  # per structure [members, atoms, 3]

    def energy_spread_per_atom(self, n_atoms: np.ndarray) -> np.ndarray:
        return self.energy.std(axis=0) / n_atoms

    def force_spread(self) -> np.ndarray:
        """Per structure: the largest over atoms of |std over members of the force vector| (eV/A)."""
        return np.array([np.linalg.norm(f.std(axis=0), axis=1).max() for f in self.forces])


def committee_predict(models, frames) -> CommitteePrediction:
    from limace.training.evaluate import predict_mace

    return _stack_predictions([predict_mace(m, frames) for m in models], frames)


def _stack_predictions(preds, frames) -> CommitteePrediction:
    """Members' predictions (:func:`limace.training.evaluate.predict_mace`) as one committee prediction."""
    counts = np.cumsum([0] + [len(a) for a in frames])
    energy = np.stack([p.energy for p in preds])
    forces = [np.stack([p.forces[counts[i]:counts[i + 1]] for p in preds]) for i in range(len(frames))]
    return CommitteePrediction(energy, forces)


def farthest_point_sampling(x: np.ndarray, k: int, start: int = 0) -> list[int]:
    """Indices of ``k`` rows of ``x`` picked greedily, each the farthest (Euclidean) from those already picked."""
    k = min(k, len(x))
    if k == 0:
        return []
    picked = [start]
    d = np.linalg.norm(x - x[start], axis=1)
    while len(picked) < k:
        nxt = int(np.argmax(d))
        picked.append(nxt)
        d = np.minimum(d, np.linalg.norm(x - x[nxt], axis=1))
    return picked


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rank correlation; None where it is not defined (fewer than 3 points, or a constant input such as
    the spread of a committee of one)."""
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    from scipy.stats import spearmanr

    r = spearmanr(a, b).statistic
    return None if not np.isfinite(r) else float(r)


def evaluate_committee(models, files: list[str]) -> dict:
    """Per labelled file: member 0's errors (all and per config_type, mean and largest energy error per atom) and the
    committee's spread against them (Spearman per structure; None for a committee of one)."""
    from limace.data.io import read_configurations
    from limace.training.evaluate import evaluate_predictions, predict_mace

    rep = {}
    for f in files:
        frames = read_configurations(f, allowed_elements=None, require_periodic=False)
        preds = [predict_mace(m, frames) for m in models]  # each member once; member 0's errors from its prediction
        summ = evaluate_predictions(frames, preds[0], name=Path(f).name).summary()
        pred = _stack_predictions(preds, frames)
        n = np.array([len(a) for a in frames])
        err = np.abs(pred.energy[0] - np.array([a.info["REF_energy"] for a in frames])) / n
        rep[Path(f).name] = {"n": len(frames), "metrics": summ["all"], "by_config_type": summ["by_config_type"],
                             "energy_mae_mev_per_atom": float(err.mean() * 1000),
                             "energy_max_mev_per_atom": float(err.max() * 1000),
                             "spearman_energy_spread_vs_error": _spearman(pred.energy_spread_per_atom(n), err),
                             "spearman_force_spread_vs_energy_error": _spearman(pred.force_spread(), err)}
    return rep


# -- the stages ----------------------------------------------------------------------------------------------------


class ActiveLearning:
    """The loop of one :class:`LearnConfig` in its run directory (see module docstring)."""

    STAGES = ("explore", "select", "label", "train", "evaluate", "control", "register")

    def __init__(self, cfg: LearnConfig, log=print, progress: bool = False):
        self.cfg = cfg
        self.run_dir = Path(cfg.run_dir)
        self.log = log
        self.progress = progress  # the labelling's progress bar (the CLI asks for it on a terminal only)
        self.base_files = list(cfg.base_data)
        self.eval_files = list(cfg.evaluate)

    def materialize_dataset(self) -> None:
        """Write the base dataset's train split and the evaluation splits once into ``RUN_DIR/data`` (extxyz, as the
        trainer and the evaluation read them) and add them to the base and evaluation files."""
        from limace.data.datasets import load_dataset

        todo = [] if self.cfg.base_dataset is None else [(self.cfg.base_dataset, "train", self.base_files)]
        todo += [(*_split_ref(item, self.cfg.base_dataset), self.eval_files) for item in self.cfg.evaluate_splits]
        if not todo:
            return
        d = self.run_dir / "data"
        d.mkdir(parents=True, exist_ok=True)
        for ds, split, into in todo:
            path = d / f"{ds}_{split}.extxyz"
            if not path.exists():
                _write(path, load_dataset(ds, split))
            if str(path) not in into:
                into.insert(0 if into is self.base_files else len(into), str(path))

    def round_dir(self, k: int) -> Path:
        return self.run_dir / f"round_{k}"

    def training_files(self, k: int, with_round_k: bool = True) -> list[str]:
        """What round ``k``'s fine-tunes train on: the base data and the labels of rounds up to ``k`` (or before it)."""
        last = k + 1 if with_round_k else k
        return list(self.base_files) + [str(self.round_dir(j) / "labels.extxyz") for j in range(last)
                                        if _read(self.round_dir(j) / "labels.extxyz")]

    def fine_tune(self, k: int, i: int, init: Path, data: list[str], name: str, run_dir: Path) -> Path:
        """Fine-tune committee member ``i`` of round ``k`` from ``init`` on ``data`` (its seed depends on k and i)."""
        from limace.training.run import train

        cfg = member_train_config(self.member_config(i), data, str(init))
        cfg = dataclasses.replace(cfg, name=name, seed=self.cfg.seed + 101 * i + k, committee_size=1,
                                  run_dir=str(run_dir))
        return Path(train(cfg, log=lambda m: None).members[0].model_path)

    def member_config(self, i: int) -> str:
        """The ``limace train`` file member ``i``'s fine-tunes follow."""
        return self.cfg.train_configs[i] if self.cfg.train_configs else self.cfg.train_config

    def committee_of(self, k: int) -> list[Path]:
        """The committee going into round ``k`` (0: the configured one)."""
        if k == 0:
            return _model_paths(self.cfg.committee)
        reg = json.loads((self.round_dir(k - 1) / "register.json").read_text())
        return [Path(p) for p in reg["members"]]

    def seeds(self) -> list:
        from ase.io import read

        from limace.data.structures import get_structure
        from limace.md.explore import _repeat_to

        seeds = [get_structure(p) for p in self.cfg.explore.phases]
        for f in self.cfg.explore.structures:
            seeds += read(f, ":")
        return [_repeat_to(a, self.cfg.explore.repeat_to_atoms) for a in seeds]

    # 1
    def explore(self, k: int, models) -> Path:
        out = self.round_dir(k) / "candidates.extxyz"
        if out.exists():
            return out
        from ase import Atoms

        from limace.data import generate as g
        from limace.data.hashing import ensure_config_id
        from limace.md.runner import run_md
        from limace.potentials.calculator import load as load_potential

        e = self.cfg.explore
        rng = np.random.default_rng([self.cfg.seed, k])
        seeds = self.seeds()
        cands = []
        if e.md_steps and e.md_temperatures_K:
            runs = [(i, float(t)) for i in range(len(seeds)) for t in e.md_temperatures_K]
            model = load_potential(str(self.committee_of(k)[0]), dtype=self.cfg.dtype, batched=True, progress=False)
            md_dir = self.round_dir(k) / "md"
            run_md([seeds[i] for i, _ in runs], model, output_dir=md_dir, ensemble="nvt_langevin", steps=e.md_steps,
                   timestep_fs=e.md_timestep_fs, temperature_K=[t for _, t in runs], seed=self.cfg.seed + 1000 * k,
                   trajectory_every=e.md_snapshot_every, log_every=e.md_snapshot_every,
                   checkpoint_every=e.md_snapshot_every, progress=sys.stderr.isatty())  # bar only on a terminal
            from ase.io import read

            for s, (i, t) in enumerate(runs):
                traj = md_dir / f"traj_{s:04d}.extxyz"
                for fr in read(traj, ":")[1:] if traj.exists() else []:
                    a = Atoms(fr.get_chemical_symbols(), positions=fr.positions, cell=fr.cell, pbc=True)
                    a.wrap()
                    a.info = {"config_type": "al_md", "md_temperature_K": t, "al_round": k}
                    cands.append(a)
        for a in seeds:
            for dv in e.volume_strains:
                b = a.copy()
                b.set_cell(a.cell[:] * (1 + dv) ** (1 / 3), scale_atoms=True)
                b.info = {"config_type": "al_strain", "volume_strain": dv, "al_round": k}
                cands.append(b)
            for amp in e.rattle_A:
                (b,) = g.rattled(a, (amp,), seed=rng)
                b.info.update(al_round=k)
                b.info["config_type"] = "al_rattle"
                cands.append(b)
            if e.li_vacancy and "Li" in a.get_chemical_symbols() and len(a) > 2:
                b = g.li_vacancy(a, seed=rng)
                b.info = {"config_type": "al_vacancy", "al_round": k}
                cands.append(b)
        for a in structures_from_runs(e.from_runs, e.from_runs_max_atoms):  # screens' minima, NEB bands
            a.info["al_round"] = k
            cands.append(a)
        unique = {}
        for a in cands:
            a.calc = None
            unique.setdefault(ensure_config_id(a), a)  # once each: e.g. the shared end point of two hops' bands
        cands = list(unique.values())
        _write(out, cands)
        self.log(f"round {k}: explore: {len(cands)} candidates")
        return out

    # 2
    def select(self, k: int, models) -> Path:
        out = self.round_dir(k) / "selected.extxyz"
        if out.exists():
            return out
        cands = _read(self.round_dir(k) / "candidates.extxyz")
        labelled = set()
        for f in self.base_files + [str(self.round_dir(j) / "labels.extxyz") for j in range(k)]:
            labelled |= {a.info.get("config_id") for a in _read(Path(f))}
        cands = [a for a in cands if a.info["config_id"] not in labelled]
        s = self.cfg.select
        info = {"n_candidates": len(cands)}
        picked: list[int] = []
        if cands:
            pred = committee_predict(models, cands)
            fs = pred.force_spread()
            es = pred.energy_spread_per_atom(np.array([len(a) for a in cands]))
            order = [int(i) for i in np.argsort(-fs) if fs[i] >= s.min_force_spread]
            pool = order[: s.budget * s.pool_factor]
            if pool:
                desc = mean_descriptors(models[0], [cands[i] for i in pool])
                scale = desc.std(axis=0)
                desc = desc / np.where(scale > 0, scale, 1.0)
                picked = [pool[j] for j in farthest_point_sampling(desc, s.budget, start=0)]
            for i in picked:
                cands[i].info["al_force_spread"] = float(fs[i])
                cands[i].info["al_energy_spread_per_atom"] = float(es[i])
            info.update(n_pool=len(pool), force_spread_picked=[round(float(fs[i]), 4) for i in picked],
                        force_spread_max=float(fs.max()),
                        force_spread_pool_min=float(fs[pool].min()) if pool else None,
                        force_spread_all_median=float(np.median(fs)), energy_spread_per_atom_median=float(np.median(es)))
        atomic_write_json(self.round_dir(k) / "select.json", info)
        _write(out, [cands[i] for i in picked])
        self.log(f"round {k}: select: {len(picked)} of {len(cands)} candidates")
        return out

    # 3
    def label(self, k: int) -> Path:
        out = self.round_dir(k) / "labels.extxyz"
        done = self.round_dir(k) / "label.json"
        if done.exists():
            return out
        from limace.data.label import label_configurations

        sel = _read(self.round_dir(k) / "selected.extxyz")
        logs = self.round_dir(k) / "dft_logs"
        # DFT is the long stage (hours for a round of asymmetric cells): say where its progress shows
        self.log(f"round {k}: label: {len(sel)} single points ({self.cfg.protocol}); each is appended to {out} "
                 f"when done, the calculator's log of each is in {logs}/")
        rep = label_configurations(sel, out, protocol=self.cfg.protocol, workers=self.cfg.workers,
                                   scheduler=self.cfg.scheduler, progress=self.progress, log_dir=logs)
        if not out.exists():
            _write(out, [])
        atomic_write_json(done, rep.as_dict())
        self.log(f"round {k}: label: {rep.as_dict()}")
        return out

    # 4
    def train(self, k: int) -> list[Path]:
        done = self.round_dir(k) / "train.json"
        if done.exists():
            return [Path(p) for p in json.loads(done.read_text())["members"]]
        data = self.training_files(k)
        members = [str(self.fine_tune(k, i, init, data, name=f"{self.cfg.name}-r{k}-m{i}",
                                      run_dir=self.round_dir(k) / "train" / f"member_{i}"))
                   for i, init in enumerate(self.committee_of(k))]
        atomic_write_json(done, {"members": members, "train_files": data})
        self.log(f"round {k}: train: {len(members)} members fine-tuned on {len(data)} file(s)")
        return [Path(p) for p in members]

    # 5
    def evaluate(self, k: int, members: list[Path]) -> dict:
        out = self.round_dir(k) / "evaluate.json"
        if out.exists():
            return json.loads(out.read_text())
        rep = evaluate_committee(_load_models(members, self.cfg.dtype), self.eval_files)
        atomic_write_json(out, rep)
        self.log(f"round {k}: evaluate: " + ", ".join(f"{n} E MAE {r['energy_mae_mev_per_atom']:.2f} meV/atom"
                                                     for n, r in rep.items()))
        return rep

    # 6 (with ``control: true``, or on demand: scripts/learn_control.py)
    def control(self, k: int) -> dict:
        """Member 0 of round ``k`` fine-tuned without round ``k``'s labels (same starting weights, recipe, seed),
        evaluated on the evaluation files: ``round_K/control.json``. Against ``evaluate.json`` it is what the
        round's labels alone buy."""
        out = self.round_dir(k) / "control.json"
        if out.exists():
            return json.loads(out.read_text())
        data = self.training_files(k, with_round_k=False)
        init = self.committee_of(k)[0]
        rep = {"round": k, "without_labels_of_round": k, "train_files": data, "init_from": str(init)}
        if data == self.training_files(k):  # no labels this round: the control would repeat member 0's fine-tune
            rep.update(model=json.loads((self.round_dir(k) / "train.json").read_text())["members"][0],
                       note=f"round {k} has no labels: member 0's own fine-tune is its control",
                       sets=json.loads((self.round_dir(k) / "evaluate.json").read_text()))
            said = f"control: {rep['note']}"
        else:
            model = self.fine_tune(k, 0, init, data, name=f"{self.cfg.name}-r{k}-control",
                                   run_dir=self.round_dir(k) / "control")
            rep.update(model=str(model), sets=evaluate_committee(_load_models([model], self.cfg.dtype), self.eval_files))
            said = (f"control (member 0 without round {k}'s labels): "
                    + ", ".join(f"{n} E MAE {r['energy_mae_mev_per_atom']:.2f} meV/atom" for n, r in rep["sets"].items()))
        atomic_write_json(out, rep)
        self.log(f"round {k}: {said}")
        return rep

    # 7
    def register(self, k: int, members: list[Path]) -> None:
        out = self.round_dir(k) / "register.json"
        if out.exists():
            return
        from limace.potentials.registry import sha256_file

        reg_path = self.run_dir / "registry.yaml"
        entries = []
        for j in range(k + 1):
            ms = members if j == k else [Path(p) for p in json.loads((self.round_dir(j) / "register.json").read_text())["members"]]
            for i, m in enumerate(ms):
                entries.append({"name": f"{self.cfg.name}-r{j}-m{i}", "version": f"{j}.{i}",
                                "description": f"limace learn round {j}, committee member {i}",
                                "elements": _elements(m), "dft_protocol": self.cfg.protocol,
                                "license": "local run, not published",
                                "weights": {"file": str(Path(m).resolve()), "sha256": sha256_file(m)}})
        import yaml

        atomic_write_text(reg_path, "# written by limace learn; use with LIMACE_REGISTRY\n"
                          + yaml.safe_dump({"schema": 1, "potentials": entries}, sort_keys=False))
        atomic_write_json(out, {"members": [str(m) for m in members], "registry": str(reg_path),
                                "names": [f"{self.cfg.name}-r{k}-m{i}" for i in range(len(members))]})
        self.log(f"round {k}: registered {len(members)} members in {reg_path}")

    def run(self, stop_after: tuple[int, str] | None = None) -> dict:
        """All rounds; ``stop_after=(k, stage)`` returns right after that stage (tests use it as a kill)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.materialize_dataset()
        t0 = time.perf_counter()
        for k in range(self.cfg.rounds):
            self.round_dir(k).mkdir(parents=True, exist_ok=True)
            models = None
            for stage in self.STAGES:
                if stage in ("explore", "select"):
                    if models is None and not (self.round_dir(k) / "selected.extxyz").exists():
                        models = _load_models(self.committee_of(k), self.cfg.dtype)
                    getattr(self, stage)(k, models)
                elif stage == "label":
                    self.label(k)
                elif stage == "train":
                    members = self.train(k)
                elif stage == "evaluate":
                    evaluation = self.evaluate(k, members)
                    if self.cfg.gate:
                        self.log(f"round {k}: gate: member 0 {gate_text(gate_result(self.cfg.gate, evaluation))}")
                elif stage == "control":
                    if self.cfg.control:
                        self.control(k)
                else:
                    self.register(k, members)
                    self.write_report(self.summary())  # the report grows round by round
                if stop_after == (k, stage):
                    return {"stopped_after": [k, stage]}
        summary = self.summary()
        summary["wall_s"] = round(time.perf_counter() - t0, 1)
        atomic_write_json(self.run_dir / "summary.json", summary)  # report.md: written after the last round's register
        return summary

    def summary(self) -> dict:
        """The finished rounds (all of them at the end of a run)."""
        rounds = []
        for k in range(self.cfg.rounds):
            d = self.round_dir(k)
            if not (d / "register.json").exists():
                break
            rounds.append({"round": k, "select": json.loads((d / "select.json").read_text()),
                           "labels": len(_read(d / "labels.extxyz")),
                           "evaluate": json.loads((d / "evaluate.json").read_text()),
                           "members": json.loads((d / "register.json").read_text())["names"]})
            if (d / "control.json").exists():  # written by the loop (control: true) or scripts/learn_control.py
                rounds[-1]["control"] = json.loads((d / "control.json").read_text())["sets"]
            if self.cfg.gate:
                rounds[-1]["gate"] = gate_result(self.cfg.gate, rounds[-1]["evaluate"])
        return {"name": self.cfg.name, "rounds": rounds}

    def write_report(self, summary: dict) -> None:
        lines = [f"# limace learn: {self.cfg.name}", "",
                 "| round | candidates | labelled | evaluation set | E MAE (meV/atom) | E max | F MAE (meV/A) "
                 "| Spearman(spread, error) |",
                 "|---|---|---|---|---|---|---|---|"]
        for r in summary["rounds"]:
            for name, ev in r["evaluate"].items():
                sp = ev["spearman_energy_spread_vs_error"]
                emax = ev.get("energy_max_mev_per_atom")
                fmae = ev["metrics"].get("forces_mae")
                lines.append(f"| {r['round']} | {r['select']['n_candidates']} | {r['labels']} | {name} | "
                             f"{ev['energy_mae_mev_per_atom']:.2f} | {'-' if emax is None else f'{emax:.1f}'} | "
                             f"{'-' if fmae is None else f'{fmae:.1f}'} | {'-' if sp is None else f'{sp:.2f}'} |")
        gated = [r for r in summary["rounds"] if "gate" in r]
        if gated:
            lines += ["", "Gate (the config's `gate`, to be fixed before the run: member 0 is a candidate to ship only if it passes):", ""]
            lines += [f"- round {r['round']}: " + ("**passes**" if r["gate"]["passed"] else gate_text(r["gate"]))
                      for r in gated]
        with_control = [r for r in summary["rounds"] if r.get("control")]
        if with_control:
            lines += ["", "What each round's labels buy: member 0 against the same fine-tune without them (same starting "
                      "weights, recipe and seed), without -> with:", "",
                      "| round | evaluation set | E MAE (meV/atom) | E RMSE | E max | F MAE (meV/A) |", "|---|---|---|---|---|---|"]

            def pair(a, b, digits):
                return "-" if a is None or b is None else f"{a:.{digits}f} -> {b:.{digits}f}"

            for r in with_control:
                for name, ev in r["evaluate"].items():
                    c = r["control"].get(name)
                    if c is None:
                        continue
                    lines.append(f"| {r['round']} | {name} | "
                                 f"{pair(c['energy_mae_mev_per_atom'], ev['energy_mae_mev_per_atom'], 3)} | "
                                 f"{pair(c['metrics'].get('energy_rmse'), ev['metrics'].get('energy_rmse'), 2)} | "
                                 f"{pair(c.get('energy_max_mev_per_atom'), ev.get('energy_max_mev_per_atom'), 1)} | "
                                 f"{pair(c['metrics'].get('forces_mae'), ev['metrics'].get('forces_mae'), 1)} |")
        lines += ["", "![errors per round](rounds.png)"]
        atomic_write_text(self.run_dir / "report.md", "\n".join(lines) + "\n")
        self.plot_rounds(summary, self.run_dir / "rounds.png")

    @staticmethod
    def plot_rounds(summary: dict, path: Path) -> None:
        """Member 0's energy and force MAE on each evaluation set after each round (PNG, written atomically)."""
        from matplotlib.figure import Figure  # no pyplot: no global backend state

        from limace.core.fileio import atomic_write

        fig = Figure(figsize=(9, 3.6))
        ax_e, ax_f = fig.subplots(1, 2)
        rounds = [r["round"] for r in summary["rounds"]]
        names = list(dict.fromkeys(n for r in summary["rounds"] for n in r["evaluate"]))
        for name in names:
            e = [r["evaluate"].get(name, {}).get("energy_mae_mev_per_atom", np.nan) for r in summary["rounds"]]
            f = [r["evaluate"].get(name, {}).get("metrics", {}).get("forces_mae", np.nan) for r in summary["rounds"]]
            (line,) = ax_e.plot(rounds, e, "o-", label=Path(name).stem)
            ax_f.plot(rounds, f, "o-", label=Path(name).stem, color=line.get_color())
            ce = [(r.get("control") or {}).get(name, {}).get("energy_mae_mev_per_atom", np.nan) for r in summary["rounds"]]
            if np.isfinite(ce).any():  # the same fine-tunes without each round's labels: hollow markers, dashed
                cf = [(r.get("control") or {}).get(name, {}).get("metrics", {}).get("forces_mae", np.nan)
                      for r in summary["rounds"]]
                style = dict(ls="--", marker="o", mfc="none", color=line.get_color())
                ax_e.plot(rounds, ce, label=f"{Path(name).stem}, without the round's labels", **style)
                ax_f.plot(rounds, cf, **style)
        for ax, what in ((ax_e, "energy MAE (meV/atom)"), (ax_f, "force MAE (meV/Å)")):
            ax.set_xlabel("round")
            ax.set_ylabel(what)
            ax.set_xticks(rounds)
        ax_e.legend(fontsize=7)
        fig.suptitle(f"{summary['name']}: member 0 after each round", fontsize=10)
        fig.tight_layout()
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))


def _elements(model_path: Path) -> list[str]:
    from ase.data import chemical_symbols

    from limace.training.export import load_model

    return [chemical_symbols[int(z)] for z in load_model(model_path).atomic_numbers]


def learn(config: str | Path | LearnConfig, log=print, stop_after=None, progress: bool = False) -> dict:
    cfg = config if isinstance(config, LearnConfig) else load_learn_config(config)
    return ActiveLearning(cfg, log=log, progress=progress).run(stop_after=stop_after)
