"""A thin LightningModule around mace-torch's ScaleShiftMACE.

The model is built exactly as mace-torch's ``tools/model_script_utils`` builds its default ``MACE`` model (a
``ScaleShiftMACE``), from a :class:`~limace.training.config.TrainConfig` and the
:class:`~limace.training.data.DataStatistics` of the training split; both are the module's hyperparameters, so a
checkpoint alone rebuilds the model. Loss (mace-torch's weighted energy/forces/stress loss), optimizer parameter
groups and schedule follow mace_run_train. EMA weights live in a ``torch.optim.swa_utils.AveragedModel`` submodule
(its state is in every checkpoint); validation and export use them.

Logged metrics (stable names; energies in meV/atom, forces in meV/A, stress in GPa):
``train/loss``, ``train/rmse_e``, ``train/rmse_f`` (per step), ``val/loss``, ``val/rmse_e``, ``val/mae_e``,
``val/rmse_f``, ``val/mae_f``, ``val/rmse_s``, ``val/mae_s`` (per validation), ``train/stage``, ``lr``.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Any, Optional

from limace.data.io import VOIGT_COLS, VOIGT_ROWS
from limace.core.errors import ValidationError
from limace.core.units import EV_PER_A3_TO_GPA
from limace.training._mace import dtype_of, import_mace
from limace.training.config import TrainConfig
from limace.training.data import DataStatistics

import_mace()

import lightning.pytorch as pl  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from e3nn import o3  # noqa: E402
from mace import modules  # noqa: E402
from mace.tools.torch_tools import default_dtype  # noqa: E402
from torch.optim.swa_utils import AveragedModel  # noqa: E402


def hidden_irreps(channels: int, max_L: int) -> o3.Irreps:
    """``channels`` x (0e + 1o + ... up to max_L), as mace_run_train's num_channels / max_L."""
    return o3.Irreps((channels * o3.Irreps.spherical_harmonics(max_L)).sort().irreps.simplify())


def build_model(cfg: TrainConfig, stats: DataStatistics) -> torch.nn.Module:
    """A mace-torch ScaleShiftMACE (mace_run_train's default ``--model MACE``), in the config's precision."""
    m = cfg.model
    zs = list(stats.atomic_numbers)
    atomic_energies = np.array([stats.e0s[z] for z in zs])
    with default_dtype(dtype_of(cfg.trainer.precision)), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TorchScript type system.*")
        return modules.ScaleShiftMACE(
            r_max=m.r_max,
            num_bessel=m.num_radial_basis,
            num_polynomial_cutoff=m.num_cutoff_basis,
            max_ell=m.max_ell,
            interaction_cls=modules.interaction_classes[m.interaction],
            interaction_cls_first=modules.interaction_classes[m.interaction_first],
            num_interactions=m.num_interactions,
            num_elements=len(zs),
            hidden_irreps=hidden_irreps(m.channels, m.max_L),
            MLP_irreps=o3.Irreps(m.mlp_irreps),
            atomic_energies=atomic_energies,
            avg_num_neighbors=stats.avg_num_neighbors,
            atomic_numbers=zs,
            correlation=m.correlation,
            gate=modules.gate_dict[m.gate],
            pair_repulsion=m.pair_repulsion,
            distance_transform="None",
            apply_cutoff=True,
            use_reduced_cg=False,
            use_so3=False,
            edge_irreps=None,
            use_edge_irreps_first=False,
            radial_MLP=list(m.radial_mlp),
            radial_type="bessel",
            heads=["Default"],
            atomic_inter_scale=stats.std,
            atomic_inter_shift=stats.mean if m.shift else 0.0,
        )


def statistics_from_model(model: torch.nn.Module, stats: DataStatistics, source: str) -> DataStatistics:
    """``stats`` with what :func:`build_model` takes from them replaced by a trained ``model``'s own values.

    Fine-tuning starts from exactly ``model``: its elements (in its order), E0s, interaction-energy scale and shift
    and average neighbour count. The data-side fields (split sizes, fingerprint, Pulay stress) stay. ``source``
    names the model in the one-line error when its elements differ from the data's.
    """
    from ase.data import chemical_symbols

    zs = [int(z) for z in model.atomic_numbers]
    if sorted(zs) != sorted(stats.atomic_numbers):
        sym = lambda z_list: "/".join(chemical_symbols[z] for z in sorted(z_list))  # noqa: E731
        raise ValidationError(f"model.init_from {source}: the model knows {sym(zs)} but the training data (or "
                              f"model.elements) has {sym(stats.atomic_numbers)}; fine-tuning keeps the elements")
    e0 = model.atomic_energies_fn.atomic_energies.detach().reshape(-1, len(zs))[0]
    ss = getattr(model, "scale_shift", None)
    return replace(stats, atomic_numbers=zs, e0s={z: float(e) for z, e in zip(zs, e0)},
                   avg_num_neighbors=float(model.interactions[0].avg_num_neighbors),
                   std=float(ss.scale.reshape(-1)[0]) if ss is not None else 1.0,
                   mean=float(ss.shift.reshape(-1)[0]) if ss is not None else 0.0)


def make_loss(kind: str, energy: float, forces: float, stress: float, huber_delta: float) -> torch.nn.Module:
    if kind == "huber":
        return modules.WeightedHuberEnergyForcesStressLoss(energy_weight=energy, forces_weight=forces,
                                                           stress_weight=stress, huber_delta=huber_delta)
    if stress == 0:  # stress is then not computed at all (_compute_stress), so the loss must not read it
        return modules.WeightedEnergyForcesLoss(energy_weight=energy, forces_weight=forces)
    return modules.WeightedEnergyForcesStressLoss(energy_weight=energy, forces_weight=forces, stress_weight=stress)


def _ema_avg(decay: float):
    """torch_ema's update (mace_run_train's EMA): decay min(d, (1+k)/(10+k)) at optimizer step k, as one foreach op.

    The average starts from the initial weights (one update at construction), so at step k AveragedModel passes
    ``num_averaged`` = k.
    """

    def multi_avg(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = float(num_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n))
        torch._foreach_lerp_(averaged, current, 1.0 - d)

    return multi_avg


class MaceModule(pl.LightningModule):
    """Training of one MACE model. ``config``/``statistics`` are plain dicts (they are the saved hyperparameters)."""

    def __init__(self, config: dict, statistics: dict):
        super().__init__()
        self.save_hyperparameters()
        self.cfg = TrainConfig.from_dict(config, source="checkpoint config", check_files=False)
        self.stats = DataStatistics.from_dict(statistics)
        self.model = build_model(self.cfg, self.stats)
        self.ema_model: Optional[AveragedModel] = None
        if self.cfg.ema.enabled:
            self.ema_model = AveragedModel(self.model, multi_avg_fn=_ema_avg(self.cfg.ema.decay), use_buffers=False)
            for p in self.ema_model.parameters():
                p.requires_grad_(False)
            self.ema_model.update_parameters(self.model)  # n=1: the initial weights count, as in torch_ema
        L, S = self.cfg.loss, self.cfg.stage_two
        with default_dtype(dtype_of(self.cfg.trainer.precision)):
            self.loss_fn = make_loss(L.kind, L.energy_weight, L.forces_weight, L.stress_weight, L.huber_delta)
            self.loss_fn_two = make_loss(L.kind, S.energy_weight, S.forces_weight, S.stress_weight, L.huber_delta)
        self._stage_two_start = self.cfg.stage_two_start()
        self._val: Optional[torch.Tensor] = None
        self._val_ran = False
        self._sched_epoch = -1  # last epoch whose end stepped the scheduler
        self._scheduler = None
        self._pending_state: Optional[dict] = None

    # -- helpers --------------------------------------------------------------------------------------------------

    @property
    def stage(self) -> int:
        s = self._stage_two_start
        return 2 if s is not None and self.current_epoch >= s else 1

    def _loss(self) -> torch.nn.Module:
        return self.loss_fn_two if self.stage == 2 else self.loss_fn

    def _compute_stress(self) -> bool:
        w = self.cfg.stage_two.stress_weight if self.stage == 2 else self.cfg.loss.stress_weight
        return w > 0 or self.cfg.loss.kind == "huber"  # mace's Huber loss always has a stress term

    def init_weights_from(self, model: torch.nn.Module, source: str) -> None:
        """Start from ``model``'s weights (fine-tuning); it must have this module's architecture (one-line error).

        Build this module with :func:`statistics_from_model` of the same model so that the buffers agree too.
        """
        m = self.cfg.model
        theirs = {"r_max": float(model.r_max), "num_interactions": int(model.num_interactions),
                  "pair_repulsion": bool(getattr(model, "pair_repulsion", False))}
        for key, val in theirs.items():
            if val != getattr(m, key):
                raise ValidationError(f"model.init_from {source}: was built with model.{key}={val!r} but the config "
                                      f"has {getattr(m, key)!r}; use the model's sizes to fine-tune it")
        mine, state = self.model.state_dict(), model.state_dict()
        for k in sorted(mine.keys() | state.keys()):
            if k not in mine or k not in state or mine[k].shape != state[k].shape:
                what = ("has no" if k not in state else "has an extra" if k not in mine
                        else f"has shape {tuple(state[k].shape)} (config: {tuple(mine[k].shape)}) for")
                raise ValidationError(f"model.init_from {source}: {what} parameter '{k}'; its architecture differs "
                                      "from the config's model section (channels, max_L, max_ell, correlation, "
                                      "radial_mlp, ...)")
        self.model.load_state_dict(state)  # copied into this module's precision
        if self.ema_model is not None:
            self.ema_model.module.load_state_dict(self.model.state_dict())

    def eval_model(self) -> torch.nn.Module:
        """The weights to evaluate and export: the EMA average when EMA is on."""
        return self.ema_model.module if self.ema_model is not None else self.model

    def forward(self, batch, training: bool = False, compute_stress: bool = True) -> dict[str, Any]:
        return self.model(batch.to_dict(), training=training, compute_force=True, compute_stress=compute_stress)

    # -- training -------------------------------------------------------------------------------------------------

    def training_step(self, batch, batch_idx):
        out = self.model(batch.to_dict(), training=True, compute_force=True, compute_stress=self._compute_stress())
        loss = self._loss()(pred=out, ref=batch)
        n = batch.num_graphs
        with torch.no_grad():
            natoms = (batch.ptr[1:] - batch.ptr[:-1]).to(out["energy"].dtype)
            rmse_e = torch.sqrt(torch.mean(((out["energy"] - batch.energy) / natoms) ** 2)) * 1000.0
            rmse_f = torch.sqrt(torch.mean((out["forces"] - batch.forces) ** 2)) * 1000.0
        self.log("train/loss", loss, batch_size=n, on_step=True, on_epoch=False)
        self.log("train/rmse_e", rmse_e, batch_size=n, on_step=True, on_epoch=False, prog_bar=True)
        self.log("train/rmse_f", rmse_f, batch_size=n, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def on_train_batch_start(self, batch, batch_idx):
        if self.stage == 2:  # constant small lr in stage two (as mace_run_train's SWA lr)
            for opt in self.trainer.optimizers:
                for g in opt.param_groups:
                    g["lr"] = self.cfg.stage_two.lr

    def _warmup_factor(self) -> float:
        w, s = self.cfg.scheduler.warmup_steps, int(self.trainer.global_step)  # steps completed before this one
        return (s + 1) / w if w > 0 and s < w and self.stage == 1 else 1.0

    def optimizer_step(self, *args, **kwargs):
        f = self._warmup_factor()
        groups = [g for opt in self.trainer.optimizers for g in opt.param_groups] if f != 1.0 else []
        scheduled = [g["lr"] for g in groups]
        for g in groups:  # only for this step: the epoch scheduler and checkpoints see the scheduled lr
            g["lr"] *= f
        try:
            super().optimizer_step(*args, **kwargs)
        finally:
            for g, lr in zip(groups, scheduled):
                g["lr"] = lr
        # here, not in on_train_batch_end: step checkpoints are saved by a callback before that hook runs
        if self.ema_model is not None:
            self.ema_model.update_parameters(self.model)

    def on_train_epoch_end(self):
        # The module steps its epoch scheduler itself, here: after this epoch's validation and before checkpoint
        # callbacks save (Lightning steps its schedulers after on_train_epoch_end and skips that step in a resumed
        # epoch, so a resumed job would drift from the uninterrupted one).
        sched = self._scheduler
        if sched is None or self.current_epoch <= self._sched_epoch:  # Lightning may replay this hook on resume
            return
        self._sched_epoch = self.current_epoch
        if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            if self._val_ran:
                sched.step(float(self.trainer.callback_metrics["val/loss"]))
        else:
            sched.step()
        self._val_ran = False

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["limace"] = {"scheduler": self._scheduler.state_dict() if self._scheduler is not None else None,
                                "val_ran": self._val_ran, "sched_epoch": self._sched_epoch,
                                "stage_two_start": self._stage_two_start}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._pending_state = checkpoint.get("limace")
        if self._scheduler is not None:
            self._apply_pending_state()

    def _apply_pending_state(self) -> None:
        st, self._pending_state = self._pending_state, None
        if st is not None:
            if st.get("scheduler") is not None and self._scheduler is not None:
                self._scheduler.load_state_dict(st["scheduler"])
            self._val_ran = bool(st.get("val_ran", False))
            self._sched_epoch = int(st.get("sched_epoch", -1))
            if st.get("stage_two_start") is not None:
                self._stage_two_start = int(st["stage_two_start"])

    def on_train_epoch_start(self):
        # a time budget without epochs: stage two begins with the first epoch that starts after 3/4 of the budget
        # (the epoch is stored in checkpoints, so a resumed run keeps it)
        t = self.cfg.trainer
        if self.cfg.stage_two.enabled and self._stage_two_start is None and t.max_time_s is not None:
            from lightning.pytorch.callbacks import Timer

            timer = next((c for c in self.trainer.callbacks if isinstance(c, Timer)), None)
            if timer is not None and (timer.time_elapsed("train") or 0.0) >= 0.75 * t.max_time_s:
                self._stage_two_start = int(self.current_epoch)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if batch_idx == 0:  # lr and stage change at epoch boundaries only
            opt = self.trainer.optimizers[0]
            self.log("lr", opt.param_groups[0]["lr"], on_step=True, on_epoch=False, batch_size=batch.num_graphs)
            self.log("train/stage", float(self.stage), on_step=True, on_epoch=False, batch_size=batch.num_graphs)

    # -- validation: sums over all configurations of all ranks -----------------------------------------------------

    def on_validation_epoch_start(self):
        # loss*n, n_cfg, se_e, ae_e, n_f, se_f, ae_f, n_s, se_s, ae_s
        self._val = torch.zeros(10, dtype=torch.float64, device=self.device)

    def validation_step(self, batch, batch_idx):
        model = self.eval_model()
        with torch.enable_grad():
            out = model(batch.to_dict(), training=False, compute_force=True, compute_stress=True)
        loss = self._loss()(pred={k: (v.detach() if torch.is_tensor(v) else v) for k, v in out.items()}, ref=batch)
        natoms = (batch.ptr[1:] - batch.ptr[:-1]).double()
        de = (out["energy"].detach().double() - batch.energy.double()) / natoms
        df = (out["forces"].detach().double() - batch.forces.double()).reshape(-1)
        has_s = batch.stress_weight > 0
        ds = (out["stress"].detach().double() - batch.stress.double())[has_s][:, VOIGT_ROWS, VOIGT_COLS]
        ds = ds.reshape(-1) * EV_PER_A3_TO_GPA
        n = batch.num_graphs
        self._val += torch.stack([
            loss.detach().double() * n, torch.tensor(float(n), dtype=torch.float64, device=self.device),
            (de ** 2).sum(), de.abs().sum(),
            torch.tensor(float(df.numel()), dtype=torch.float64, device=self.device), (df ** 2).sum(), df.abs().sum(),
            torch.tensor(float(ds.numel()), dtype=torch.float64, device=self.device), (ds ** 2).sum(), ds.abs().sum(),
        ])

    def on_validation_epoch_end(self):
        if self._val is None:
            return
        s = self.trainer.strategy.reduce(self._val, reduce_op="sum")
        n, nf, ns = s[1].clamp(min=1), s[4].clamp(min=1), s[7].clamp(min=1)
        metrics = {
            "val/loss": s[0] / n,
            "val/rmse_e": torch.sqrt(s[2] / n) * 1000.0, "val/mae_e": s[3] / n * 1000.0,
            "val/rmse_f": torch.sqrt(s[5] / nf) * 1000.0, "val/mae_f": s[6] / nf * 1000.0,
        }
        if s[7] > 0:
            metrics.update({"val/rmse_s": torch.sqrt(s[8] / ns), "val/mae_s": s[9] / ns})
        for k, v in metrics.items():
            self.log(k, v.float(), prog_bar=k in ("val/rmse_e", "val/rmse_f"), sync_dist=False)
        self._val = None
        self._val_ran = not self.trainer.sanity_checking

    # -- optimizer -----------------------------------------------------------------------------------------------

    def configure_optimizers(self):
        o, m = self.cfg.optimizer, self.model
        decay, no_decay = [], []
        for name, p in m.interactions.named_parameters():
            (decay if ("linear.weight" in name or "skip_tp_full.weight" in name) else no_decay).append(p)
        groups = [  # mace-torch's tools/scripts_utils.get_params_options
            {"name": "embedding", "params": list(m.node_embedding.parameters()), "weight_decay": 0.0},
            {"name": "interactions_decay", "params": decay, "weight_decay": o.weight_decay},
            {"name": "interactions_no_decay", "params": no_decay, "weight_decay": 0.0},
            {"name": "products", "params": list(m.products.parameters()), "weight_decay": o.weight_decay},
            {"name": "readouts", "params": list(m.readouts.parameters()), "weight_decay": 0.0},
        ]
        opt_cls = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
        opt = opt_cls(groups, lr=o.lr, amsgrad=o.amsgrad, betas=(o.beta1, 0.999))
        sc = self.cfg.scheduler
        if sc.name == "exponential":
            self._scheduler = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=sc.gamma)
        elif sc.name == "plateau":
            self._scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=sc.factor, patience=sc.patience)
        else:
            self._scheduler = None
        self._apply_pending_state()  # a checkpoint's scheduler state (on_load_checkpoint runs before this)
        return opt  # the scheduler is stepped in on_train_epoch_end and saved in on_save_checkpoint
