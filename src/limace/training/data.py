"""Labelled extxyz data as mace-torch graphs, in a LightningDataModule.

Frames are read and validated by :func:`limace.data.io.read_configurations`, converted with mace-torch's
``config_from_atoms`` (keys ``REF_energy`` / ``REF_forces`` / ``REF_stress``) and ``AtomicData.from_config``, and
batched by mace-torch's ``torch_geometric`` DataLoader. The statistics the model is built from (elements, E0s,
average number of neighbours, scale and shift) are computed once from the training split and travel in the
checkpoint, so a resumed job rebuilds the very same model.

The training loader is resumable: its batch order is a pure function of (seed, epoch) and it reports the epoch
and how many of its batches it has handed out, so Lightning stores that in every checkpoint and a job restarted
after a kill continues with the next batch of the same epoch (exact resume). Under DDP each rank takes its own
shard of the same permutation (``use_distributed_sampler=False``; the sampler shards).
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from limace.core.errors import ValidationError
from limace.keys import CONFIG_TYPE_KEY
from limace.training._mace import dtype_of, import_mace
from limace.training.config import TrainConfig
from limace.training.graphs import to_configurations, to_graphs

import_mace()

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from mace import data as mace_data  # noqa: E402
from mace import modules as mace_modules  # noqa: E402
from mace.tools import AtomicNumberTable, torch_geometric  # noqa: E402
from mace.tools.torch_tools import default_dtype  # noqa: E402


@dataclass
class DataStatistics:
    """What the model is built from; computed from the training split (see :func:`compute_statistics`)."""

    atomic_numbers: list[int]
    e0s: dict[int, float]  # eV per isolated/reference atom
    avg_num_neighbors: float
    mean: float  # interaction energy per atom shift (used when model.shift)
    std: float  # scale of interaction energies (rms forces by default)
    n_train: int
    n_valid: int
    fingerprint: str  # of the data files the statistics came from
    # Pulay stress removed from the stress labels, GPa per element (data.stress_offset; empty: none)
    stress_offset_GPa: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["e0s"] = {str(k): float(v) for k, v in self.e0s.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DataStatistics":
        d = dict(d)
        d["e0s"] = {int(k): float(v) for k, v in d["e0s"].items()}
        d["atomic_numbers"] = [int(z) for z in d["atomic_numbers"]]
        return cls(**d)


def _as_list(p) -> list[str]:
    if p is None:
        return []
    return [p] if isinstance(p, str) else list(p)


def read_frames(paths: Sequence[str]) -> list:
    """Labelled frames of any elements (the model's elements come from ``model.elements`` or the data)."""
    from limace.data.io import read_configurations

    frames = []
    for p in paths:
        frames.extend(read_configurations(p, allowed_elements=None))
    return frames


def fingerprint(paths: Sequence[str]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).read_bytes())
    return h.hexdigest()[:16]


def split_indices(n: int, valid_fraction: float, seed: int,
                  eligible: Optional[Sequence[bool]] = None) -> tuple[np.ndarray, np.ndarray]:
    """Random train/valid split with mace_run_train's sizes (int(fraction*n) valid, at least one in each); with
    ``eligible``, validation configurations are drawn only where it is True (the others are always trained on)."""
    if n < 2:
        raise ValidationError(f"need at least 2 configurations to split off a validation set (got {n})")
    if eligible is not None and len(eligible) != n:
        raise ValueError(f"eligible has {len(eligible)} entries for {n} configurations")
    pool = np.arange(n) if eligible is None else np.flatnonzero(np.asarray(eligible, dtype=bool))
    n_valid = min(max(1, int(valid_fraction * n)), n - 1, len(pool))
    if n_valid < 1:
        raise ValidationError("data.valid_exclude leaves no configuration for the validation set")
    valid = np.sort(np.random.default_rng(seed).permutation(pool)[:n_valid])
    return np.setdiff1d(np.arange(n), valid), valid


def compute_statistics(cfg: TrainConfig, train_frames: Sequence, n_valid: int, fp: str) -> DataStatistics:
    """Elements, E0s (least squares, or given), average neighbours and scale, as mace_run_train computes them."""
    from ase.data import atomic_numbers as z_of

    zs = sorted({int(z) for a in train_frames for z in a.numbers})
    if cfg.model.elements is not None:
        missing = sorted(set(zs) - {z_of[s] for s in cfg.model.elements})
        if missing:
            from ase.data import chemical_symbols

            raise ValidationError(f"training data has element(s) {', '.join(chemical_symbols[z] for z in missing)} "
                                  f"not in model.elements {cfg.model.elements}")
        zs = sorted(z_of[s] for s in cfg.model.elements)
    z_table = AtomicNumberTable(zs)
    configs = to_configurations(train_frames)
    if cfg.model.e0s == "average":
        e0s = {int(z): float(v) for z, v in mace_data.compute_average_E0s(configs, z_table).items()}
    else:
        from ase.data import chemical_symbols

        given = {z_of[s]: float(v) for s, v in cfg.model.e0s.items()}
        missing = [chemical_symbols[z] for z in zs if z not in given]
        if missing:
            raise ValidationError(f"model.e0s lacks element(s) {', '.join(missing)} of the training data")
        e0s = {z: given[z] for z in zs}
    dtype = dtype_of(cfg.trainer.precision)
    graphs = to_graphs(train_frames, z_table, cfg.model.r_max, dtype)
    loader = torch_geometric.dataloader.DataLoader(graphs, batch_size=cfg.trainer.batch_size, shuffle=False)
    with default_dtype(dtype):
        avg_nn = float(mace_modules.compute_avg_num_neighbors(loader))
        atomic_energies = np.array([e0s[z] for z in zs])
        if cfg.model.scaling == "no_scaling":
            mean, std = 0.0, 1.0
        else:
            mean, std = mace_modules.scaling_classes[cfg.model.scaling](loader, atomic_energies)
    mean = float(np.asarray(mean).reshape(-1)[0])
    std = float(np.asarray(std).reshape(-1)[0])
    return DataStatistics(atomic_numbers=zs, e0s=e0s, avg_num_neighbors=avg_nn, mean=mean, std=std,
                          n_train=len(train_frames), n_valid=n_valid, fingerprint=fp)


# -- resumable, sharded batches ------------------------------------------------------------------------------------


class ResumableBatchSampler:
    """Batches of a per-epoch permutation (a pure function of seed and epoch), one shard per rank.

    Like DistributedSampler, the permutation is padded by repeating its head to a multiple of ``world_size`` so that
    every rank has the same number of batches.
    """

    def __init__(self, n: int, batch_size: int, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1):
        self.n, self.batch_size, self.seed, self.shuffle = n, batch_size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch = 0  # set by ResumableLoader before each iteration
        self.start = 0

    def batches(self, epoch: int) -> list[list[int]]:
        order = (np.random.default_rng([self.seed, epoch]).permutation(self.n) if self.shuffle
                 else np.arange(self.n))
        total = math.ceil(self.n / self.world_size) * self.world_size
        order = np.concatenate([order, order[: total - self.n]]) if total > self.n else order
        mine = order[self.rank::self.world_size].tolist()
        return [mine[i:i + self.batch_size] for i in range(0, len(mine), self.batch_size)]

    def __len__(self) -> int:
        return math.ceil(math.ceil(self.n / self.world_size) / self.batch_size)

    def __iter__(self):
        return iter(self.batches(self.epoch)[self.start:])


class _CountingIterator:
    def __init__(self, it, loader: "ResumableLoader"):
        self._it, self._loader = it, loader

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self._it)
        self._loader._done += 1
        return batch

    def __len__(self):
        return len(self._it)

    def __getattr__(self, name):  # _shutdown_workers etc. of the wrapped torch iterator
        return getattr(self._it, name)


class ResumableLoader(torch_geometric.dataloader.DataLoader):
    """mace-torch's graph DataLoader that knows where it is: (epoch, batches handed out in that epoch).

    It counts epochs itself (a new one starts when an iterator is made after a complete pass), independent of
    Lightning's epoch bookkeeping, and exposes ``state_dict``/``load_state_dict``, which Lightning stores in
    every checkpoint. A resumed loader continues with the next batch of the same permutation.
    """

    def __init__(self, dataset, batch_sampler: ResumableBatchSampler, **kwargs):
        super().__init__(dataset, batch_sampler=batch_sampler, **kwargs)
        self._epoch = 0
        self._done = 0

    def __iter__(self):
        bs = self.batch_sampler
        if self._done >= len(bs):
            self._epoch, self._done = self._epoch + 1, 0
        bs.epoch, bs.start = self._epoch, self._done
        return _CountingIterator(super().__iter__(), self)

    def state_dict(self) -> dict[str, Any]:
        bs = self.batch_sampler
        return {"epoch": int(self._epoch), "batches_done": int(self._done), "n": bs.n, "batch_size": bs.batch_size,
                "world_size": bs.world_size, "seed": bs.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        bs = self.batch_sampler
        self._epoch, self._done = int(state["epoch"]), int(state["batches_done"])
        if not all(state.get(k) == getattr(bs, k) for k in ("n", "batch_size", "world_size", "seed")):
            warnings.warn("limace: the training data or batch layout changed since the checkpoint; the resumed epoch "
                          "restarts from its first batch", stacklevel=2)
            self._done = 0


# -- the DataModule ------------------------------------------------------------------------------------------------


class LimaceDataModule(pl.LightningDataModule):
    """Train/valid(/test) graphs from the config's files; ``statistics`` given (from a checkpoint) or computed."""

    def __init__(self, cfg: TrainConfig, seed: Optional[int] = None, statistics: Optional[DataStatistics] = None):
        super().__init__()
        self.cfg = cfg
        self.seed = cfg.seed if seed is None else seed
        self.statistics = statistics
        self.train_frames: list = []
        self.valid_frames: list = []
        self.test_frames: list = []
        self._train = self._valid = self._test = None
        self._train_loader: Optional[ResumableLoader] = None
        self._loader_state: Optional[dict] = None

    def load(self) -> DataStatistics:
        """Read, split and convert the data; compute the statistics unless given. Idempotent."""
        if self._train is not None:
            return self.statistics
        d = self.cfg.data
        train_paths, valid_paths = _as_list(d.train_file), _as_list(d.valid_file)
        if d.dataset is not None:
            from limace.data.datasets import _dir, load_dataset, manifest

            frames = load_dataset(d.dataset, "train")
            man = manifest(d.dataset)
            train_paths = [str(_dir(d.dataset) / man["files"]["train"]["path"])]
        else:
            frames = read_frames(train_paths)
        if valid_paths:
            self.train_frames, self.valid_frames = frames, read_frames(valid_paths)
        else:
            split_seed = self.cfg.seed if d.split_seed is None else d.split_seed
            eligible = [str(a.info.get(CONFIG_TYPE_KEY, "")) not in d.valid_exclude for a in frames]
            tr, va = split_indices(len(frames), d.valid_fraction, split_seed, eligible)
            self.train_frames, self.valid_frames = [frames[i] for i in tr], [frames[i] for i in va]
        if d.test_file:
            self.test_frames = read_frames(_as_list(d.test_file))
        elif d.dataset is not None:
            from limace.data.datasets import load_dataset

            self.test_frames = load_dataset(d.dataset, "test")
        else:
            self.test_frames = []
        fp = fingerprint(train_paths + valid_paths)
        if self.statistics is None:
            self.statistics = compute_statistics(self.cfg, self.train_frames, len(self.valid_frames), fp)
            if d.stress_offset == "fit":
                from limace.data.consistency import fit_pulay_stress

                self.statistics.stress_offset_GPa = fit_pulay_stress(self.train_frames + self.valid_frames)
                if not self.statistics.stress_offset_GPa:
                    warnings.warn("limace: data.stress_offset is 'fit' but no phase has equilibrium + "
                                  "isotropic-strain cells at 3 or more volumes with energies and stresses; stress "
                                  "labels left as they are", stacklevel=2)
            elif isinstance(d.stress_offset, dict):
                self.statistics.stress_offset_GPa = {k: float(v) for k, v in d.stress_offset.items()}
        elif self.statistics.fingerprint != fp:
            warnings.warn(f"limace: the data files changed since the checkpoint was written (fingerprint "
                          f"{self.statistics.fingerprint} -> {fp}); keeping the checkpoint's model statistics",
                          stacklevel=2)
        known = set(self.statistics.atomic_numbers)
        for name, fr in (("train", self.train_frames), ("valid", self.valid_frames), ("test", self.test_frames)):
            extra = sorted({int(z) for a in fr for z in a.numbers} - known)
            if extra:
                from ase.data import chemical_symbols

                raise ValidationError(f"{name} data has element(s) {', '.join(chemical_symbols[z] for z in extra)} "
                                      f"the model does not know ({', '.join(chemical_symbols[z] for z in sorted(known))})")
        if self.statistics.stress_offset_GPa:  # the test split keeps its labels as computed
            from limace.data.consistency import remove_pulay_stress

            self.train_frames = remove_pulay_stress(self.train_frames, self.statistics.stress_offset_GPa)
            self.valid_frames = remove_pulay_stress(self.valid_frames, self.statistics.stress_offset_GPa)
        z_table = AtomicNumberTable(self.statistics.atomic_numbers)
        dtype = dtype_of(self.cfg.trainer.precision)
        self._train = to_graphs(self.train_frames, z_table, self.cfg.model.r_max, dtype)
        self._valid = to_graphs(self.valid_frames, z_table, self.cfg.model.r_max, dtype)
        self._test = to_graphs(self.test_frames, z_table, self.cfg.model.r_max, dtype) if self.test_frames else []
        return self.statistics

    def setup(self, stage: str) -> None:
        self.load()

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch.to(device)  # a mace-torch Batch moves itself (Lightning's generic walk is slow)

    def _rank_world(self) -> tuple[int, int]:
        t = self.trainer
        return (t.global_rank, t.world_size) if t is not None else (0, 1)

    def train_dataloader(self):
        rank, world = self._rank_world()
        bs = ResumableBatchSampler(len(self._train), self.cfg.trainer.batch_size, seed=self.seed, shuffle=True,
                                   rank=rank, world_size=world)
        self._train_loader = ResumableLoader(self._train, batch_sampler=bs, num_workers=self.cfg.data.num_workers)
        if self._loader_state is not None:
            self._train_loader.load_state_dict(self._loader_state)
            self._loader_state = None
        return self._train_loader

    # Lightning restores a loader's own state only when resuming mid-epoch; the DataModule's state is restored
    # from every checkpoint (before the loaders are made), so the batch order also continues after an epoch end.
    def state_dict(self) -> dict[str, Any]:
        return {"train_loader": self._train_loader.state_dict()} if self._train_loader is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loader_state = state_dict.get("train_loader")

    def val_dataloader(self):
        rank, world = self._rank_world()
        shard = self._valid[rank::world]  # no padding: validation sums are reduced over ranks, each config once
        return torch_geometric.dataloader.DataLoader(shard, batch_size=self.cfg.trainer.valid_batch_size
                                                     or self.cfg.trainer.batch_size, shuffle=False,
                                                     num_workers=self.cfg.data.num_workers)
