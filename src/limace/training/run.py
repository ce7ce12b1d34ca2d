"""``limace train``: one or more (committee) MACE models trained with Lightning from a :class:`TrainConfig`.

Run directory layout (one member; a committee has ``member_<i>/`` each)::

    RUN_DIR/config.yaml                resolved config (absolute paths)
    RUN_DIR/checkpoints/last.ckpt      latest state (every checkpoint.every_n_steps and at the end)
    RUN_DIR/checkpoints/step=N.ckpt    the last checkpoint.keep step checkpoints
    RUN_DIR/logs/version_K/metrics.csv Lightning CSV log (a new version per (re)start); RUN_DIR/wandb/ if enabled
    RUN_DIR/<name>.model               exported mace-torch model (EMA weights)
    RUN_DIR/valid/ (and test/)         evaluation of the exported model: summary.json and parity plots

A restarted job resumes from ``checkpoints/last.ckpt`` when it exists (or from ``resume=PATH``) with the
model, EMA, optimizer, scheduler, epoch/step counters and the position in the epoch's batch order, so a kill -9
loses only the steps since the last checkpoint and the resumed run follows the uninterrupted one.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Optional, Union

from limace.core.errors import ValidationError
from limace.core.fileio import atomic_write, atomic_write_json
from limace.training._mace import import_mace
from limace.training.config import TrainConfig, dump_config

import_mace()

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO  # noqa: E402
from lightning.pytorch.callbacks import Checkpoint  # noqa: E402

from limace.training.data import DataStatistics, LimaceDataModule  # noqa: E402
from limace.training.module import MaceModule, statistics_from_model  # noqa: E402


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file in the same directory, fsynced, then renamed into place."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        atomic_write(Path(path), lambda tmp: torch.save(checkpoint, tmp))

    def load_checkpoint(self, path, map_location: Optional[Any] = None, weights_only: Optional[bool] = None):
        return super().load_checkpoint(path, map_location=map_location, weights_only=False)


class StepCheckpoint(Checkpoint):
    """Save ``step=N.ckpt`` and ``last.ckpt`` every ``every_n_steps`` optimizer steps; keep the newest ``keep``.

    A step that ends an epoch is saved at the end of that epoch instead (after its validation and scheduler step),
    so that every checkpoint is either mid-epoch or at a completed epoch: both resume exactly. Being a
    :class:`Checkpoint`, its epoch-end hook runs after the LightningModule's.
    """

    def __init__(self, dirpath: Path, every_n_steps: int, keep: int = 3):
        self.dirpath, self.every, self.keep = Path(dirpath), every_n_steps, keep
        self._pending = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == 0 or step % self.every:
            return
        if batch_idx + 1 >= trainer.num_training_batches:
            self._pending = True
        else:
            self.save(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._pending:
            self._pending = False
            self.save(trainer)

    def save(self, trainer, name: Optional[str] = None) -> Path:
        path = self.dirpath / (name or f"step={trainer.global_step}.ckpt")
        trainer.save_checkpoint(str(path), weights_only=False)  # all ranks call; rank 0 writes (AtomicCheckpointIO)
        if trainer.is_global_zero and path.name != "last.ckpt":
            last, tmp = self.dirpath / "last.ckpt", self.dirpath / f".last.ckpt.tmp{os.getpid()}"
            try:
                os.link(path, tmp)
            except OSError:
                import shutil

                shutil.copyfile(path, tmp)
            os.replace(tmp, last)
            if self.keep >= 0:
                steps = sorted(self.dirpath.glob("step=*.ckpt"), key=lambda p: int(p.stem.split("=", 1)[1]))
                for old in steps[: max(0, len(steps) - self.keep)]:
                    old.unlink(missing_ok=True)
        return path


@dataclass
class MemberResult:
    seed: int
    run_dir: Path
    model_path: Optional[Path]
    checkpoint: Path
    global_step: int
    resumed_from: Optional[Path]
    valid: Optional[dict] = None
    test: Optional[dict] = None
    train_seconds: float = 0.0


@dataclass
class TrainResult:
    config: TrainConfig
    members: list[MemberResult] = field(default_factory=list)

    @property
    def model_paths(self) -> list[Path]:
        return [m.model_path for m in self.members if m.model_path is not None]


def _statistics_from_checkpoint(ckpt: Path, cfg: TrainConfig) -> DataStatistics:
    """The checkpoint's model statistics; its model section must be the config's (one-line error otherwise)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*weights_only.*")
        try:
            state = torch.load(ckpt, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise ValidationError(f"{ckpt}: cannot be read as a checkpoint ({type(exc).__name__})") from None
    try:
        hp = state["hyper_parameters"]
        stats = DataStatistics.from_dict(hp["statistics"])
        old_model = hp["config"]["model"]
    except (KeyError, TypeError):
        raise ValidationError(f"{ckpt}: not a limace training checkpoint (no model statistics)") from None
    for key, new in cfg.as_dict()["model"].items():
        if old_model.get(key) != new:
            raise ValidationError(f"{ckpt}: was trained with model.{key}={old_model.get(key)!r} but the config has "
                                  f"{new!r}; resume with the same model section or use another run_dir")
    return stats


def _init_source(spec: str) -> torch.nn.Module:
    """The trained MACE model ``model.init_from`` names: a .model file or a pretrained potential's registry name."""
    from limace.core.errors import LimaceInputError
    from limace.potentials.calculator import read_model, resolve

    try:
        path, _ = resolve(spec)
        return read_model(path)
    except LimaceInputError as exc:
        raise ValidationError(f"model.init_from: {exc}") from None


def latest_checkpoint(ckpt_dir: Path) -> Optional[Path]:
    """The newest complete checkpoint in ``ckpt_dir`` (last.ckpt, or a step=N.ckpt written after it), if any.

    Checkpoints are only ever renamed into place complete, so a kill while writing leaves the previous ones intact
    (and a stale temporary file, removed here).
    """
    if not ckpt_dir.is_dir():
        return None
    for tmp in ckpt_dir.glob(".*.tmp*"):
        tmp.unlink(missing_ok=True)
    found = [p for p in ckpt_dir.glob("*.ckpt") if p.name == "last.ckpt" or p.name.startswith("step=")]
    return max(found, key=lambda p: (p.stat().st_mtime_ns, p.name == "last.ckpt")) if found else None


def _strategy(cfg: TrainConfig):
    s = cfg.trainer.strategy
    if s in ("ddp", "ddp_find_unused_parameters_true"):
        from lightning.pytorch.strategies import DDPStrategy

        # MACE buffers are constants: no need to sync them every forward (and validation shards may differ in length)
        return DDPStrategy(forward_sync_buffers=False, find_unused_parameters=s.endswith("_true"))
    return s


class _DropTips(logging.Filter):
    """Drops Lightning's advertisement line (it is not about the run)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def _quiet_lightning_tips() -> None:
    lg = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropTips) for f in lg.filters):
        lg.addFilter(_DropTips())


def _is_rank_zero() -> bool:
    from lightning.pytorch.utilities import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def train_member(cfg: TrainConfig, seed: int, run_dir: Path, resume: Optional[Path] = None,
                 log=print, callbacks: Sequence = ()) -> MemberResult:
    """Train (or continue training) one model in ``run_dir``; ``callbacks`` are extra Lightning callbacks."""
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    ckpt_path = Path(resume) if resume is not None else latest_checkpoint(ckpt_dir)
    if ckpt_path is not None and not ckpt_path.is_file():
        raise ValidationError(f"{ckpt_path}: no such checkpoint to resume from")
    stats = _statistics_from_checkpoint(ckpt_path, cfg) if ckpt_path is not None else None

    _quiet_lightning_tips()
    pl.seed_everything(seed, workers=True, verbose=False)
    dm = LimaceDataModule(cfg, seed=seed, statistics=stats)
    stats = dm.load()
    source = None
    if ckpt_path is None and cfg.model.init_from:  # a resumed run has the fine-tuned weights in its checkpoint
        source = _init_source(cfg.model.init_from)
        stats = dm.statistics = statistics_from_model(source, stats, cfg.model.init_from)
    if stats.stress_offset_GPa and _is_rank_zero():
        print("limace: Pulay stress removed from the training stress labels (GPa per element): "
              + ", ".join(f"{k} {v:+.2f}" for k, v in sorted(stats.stress_offset_GPa.items())), file=sys.stderr)
    module = MaceModule(cfg.as_dict(), stats.as_dict())
    if source is not None:
        module.init_weights_from(source, cfg.model.init_from)
        if _is_rank_zero():
            log(f"limace: fine-tuning from {cfg.model.init_from}")

    from lightning.pytorch.callbacks import TQDMProgressBar
    from lightning.pytorch.loggers import CSVLogger

    loggers = [CSVLogger(save_dir=str(run_dir), name="logs")]
    if cfg.wandb.enabled:
        from lightning.pytorch.loggers import WandbLogger

        os.environ.setdefault("WANDB_MODE", cfg.wandb.mode)
        id_file = run_dir / "wandb_id.txt"  # a restarted job continues the same W&B run
        if id_file.is_file():
            wandb_id = id_file.read_text().strip()
        else:
            import uuid

            wandb_id = uuid.uuid4().hex[:12]
            if _is_rank_zero():
                run_dir.mkdir(parents=True, exist_ok=True)
                id_file.write_text(wandb_id + "\n")
        loggers.append(WandbLogger(project=cfg.wandb.project, entity=cfg.wandb.entity,
                                   name=cfg.wandb.name or f"{cfg.name}-{seed}", save_dir=str(run_dir),
                                   offline=cfg.wandb.mode == "offline", tags=cfg.wandb.tags or None,
                                   config=cfg.as_dict(), id=wandb_id, resume="allow"))
    ckpt_cb = StepCheckpoint(ckpt_dir, cfg.checkpoint.every_n_steps, cfg.checkpoint.keep)
    callbacks = [ckpt_cb, *callbacks]
    if cfg.trainer.progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=1))
    t = cfg.trainer
    trainer = pl.Trainer(
        accelerator={"cuda": "gpu"}.get(t.accelerator, t.accelerator), devices=t.devices, num_nodes=t.num_nodes,
        strategy=_strategy(cfg), precision="64-true" if t.precision == "float64" else "32-true",
        max_epochs=t.max_epochs if t.max_epochs is not None else -1, max_steps=t.max_steps or -1,
        max_time=None if t.max_time_s is None else timedelta(seconds=float(t.max_time_s)),
        check_val_every_n_epoch=t.val_every_n_epochs, log_every_n_steps=t.log_every_n_steps,
        gradient_clip_val=cfg.optimizer.max_grad_norm, gradient_clip_algorithm="norm",
        logger=loggers, callbacks=callbacks, enable_progress_bar=t.progress_bar, enable_model_summary=False,
        num_sanity_val_steps=0, inference_mode=False, use_distributed_sampler=False,
        plugins=[AtomicCheckpointIO()], default_root_dir=str(run_dir),
    )
    if trainer.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        if ckpt_path is not None:
            log(f"limace: resuming {run_dir} from {ckpt_path}")
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
        trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt_path) if ckpt_path is not None else None)
    seconds = time.perf_counter() - t0
    ckpt_cb.save(trainer, "last.ckpt")  # the final state, so that a rerun finds the job finished

    result = MemberResult(seed=seed, run_dir=run_dir, model_path=None, checkpoint=last,
                          global_step=int(trainer.global_step), resumed_from=ckpt_path, train_seconds=seconds)
    if trainer.is_global_zero:
        from limace.training.evaluate import evaluate_model
        from limace.training.export import export_model

        result.model_path = export_model(module, run_dir / f"{cfg.name}.model", ema=cfg.ema.enabled)
        model = module.eval_model()
        for split, frames in (("valid", dm.valid_frames), ("test", dm.test_frames)):
            if frames:
                res = evaluate_model(model, frames, name=cfg.name, batch_size=cfg.trainer.valid_batch_size
                                     or cfg.trainer.batch_size, device=str(module.device))
                res.save(run_dir / split)
                setattr(result, split, res.summary()["all"])
        atomic_write_json(run_dir / "result.json", {
            "seed": seed, "global_step": result.global_step, "model": str(result.model_path),
            "train_seconds_this_start": seconds, "valid": result.valid, "test": result.test})
    return result


def train(cfg: TrainConfig, resume: Optional[Union[str, Path]] = None, log=print,
          callbacks: Sequence = (), members: Optional[Sequence[int]] = None) -> TrainResult:
    """Train every committee member of ``cfg`` (resuming those with a last checkpoint), or only ``members``
    (indices: members of one committee can train in separate processes, one per core or GPU, since each has its
    own directory, seed and checkpoints)."""
    seeds = cfg.member_seeds()
    if members is not None:
        if len(seeds) == 1:
            raise ValidationError("--member: this config trains one model (committee_size 1)")
        bad = [i for i in members if not 0 <= i < len(seeds)]
        if bad:
            raise ValidationError(f"--member {bad[0]}: the committee has {len(seeds)} members (0-{len(seeds) - 1})")
    if resume is not None and len(seeds) > 1:
        raise ValidationError("--resume PATH names one checkpoint; a committee resumes automatically from each "
                              "member's last.ckpt")
    run_dir = Path(cfg.run_dir)
    if _is_rank_zero():
        dump_config(cfg, run_dir / "config.yaml")
    out = TrainResult(config=cfg)
    for i, seed in enumerate(seeds):
        if members is not None and i not in members:
            continue
        member_dir = run_dir if len(seeds) == 1 else run_dir / f"member_{i}"
        out.members.append(train_member(cfg, seed, member_dir, resume=Path(resume) if resume else None, log=log,
                                        callbacks=callbacks))
    return out
