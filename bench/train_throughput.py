"""Training throughput: configurations per second of `limace train` vs mace-torch's `mace_run_train`.

Both train the same MACE model (ScaleShiftMACE, same channels / max_L / r_max / interactions / correlation), on the
same labelled data and train/valid split sizes, with the same batch size, precision, loss (energy/forces/stress
weights 1/100/1), EMA, optimizer (Adam, amsgrad, lr 0.01), scheduler, device and number of threads. Two numbers:

- per epoch, end to end: the median time between the ends of consecutive epochs (training steps, data loading,
  validation, logging, checkpoints) from mace's timestamped "Epoch N" log lines and from a Lightning callback at
  the end of each of our epochs. configurations/s = configurations trained on per epoch / that time (mace drops
  the last incomplete batch of an epoch, limace does not).
- per optimizer step: the median time of one step (forward, backward, optimizer, EMA): mace's own per-step "time"
  from its results log, and the same span measured by a Lightning callback for limace.

Runs alternate (limace, mace, limace, mace, ...) so a shared machine's load hits both alike; the ratios
limace/mace are printed (target >= 0.9).

    python bench/train_throughput.py                                   # tests/data, 32 channels L=1, float32
    python bench/train_throughput.py --data dft/li-in-sn-v1/labels.extxyz --channels 64 --epochs 5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def parse():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT / "tests" / "data" / "labels_small.extxyz"))
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--max-L", type=int, default=1)
    ap.add_argument("--r-max", type=float, default=5.0)
    ap.add_argument("--interactions", type=int, default=2)
    ap.add_argument("--correlation", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--precision", choices=("float32", "float64"), default="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=6, help="epochs per run (the first is not timed)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds; medians over all of them")
    ap.add_argument("--valid-fraction", type=float, default=0.1)
    ap.add_argument("--repeat", type=int, default=1,
                    help="train on NxNxN supercells of the data (labels stay exact: energy x N^3, forces tiled)")
    ap.add_argument("--keep", help="keep run directories here")
    return ap.parse_args()


ARGS = parse()
os.environ["OMP_NUM_THREADS"] = str(ARGS.threads)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("WANDB_MODE", "offline")


def mace_cmd(a, work: Path, epochs: int) -> list[str]:
    exe = Path(sys.executable).with_name("mace_run_train")
    return [str(exe), "--name", "bench", "--work_dir", str(work), "--train_file", a.data,
            "--valid_fraction", str(a.valid_fraction), "--E0s", "average", "--model", "MACE",
            "--num_channels", str(a.channels), "--max_L", str(a.max_L), "--r_max", str(a.r_max),
            "--num_interactions", str(a.interactions), "--correlation", str(a.correlation),
            "--batch_size", str(a.batch), "--valid_batch_size", str(a.batch), "--max_num_epochs", str(epochs),
            "--default_dtype", a.precision, "--device", a.device, "--seed", "1",
            "--energy_key", "REF_energy", "--forces_key", "REF_forces", "--stress_key", "REF_stress",
            "--loss", "stress", "--energy_weight", "1", "--forces_weight", "100", "--stress_weight", "1",
            "--ema", "--ema_decay", "0.99", "--lr", "0.01", "--scheduler", "ReduceLROnPlateau",
            "--eval_interval", "1", "--pin_memory", "False", "--save_cpu"]


def run_mace(a, work: Path, epochs: int) -> tuple[list[float], list[float]]:
    """(epoch durations, step durations) of one mace_run_train run."""
    from datetime import datetime

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    r = subprocess.run(mace_cmd(a, work, epochs), capture_output=True, text=True, env=os.environ.copy())
    if r.returncode != 0:
        sys.exit(f"mace_run_train failed:\n{r.stderr[-3000:]}")
    ends = []
    for line in next((work / "logs").glob("*_run-*.log")).read_text().splitlines():
        if " INFO: Epoch " in line:  # "2026-11-28 09:55:59.150 INFO: Epoch 0: ..." after each epoch's validation
            ends.append(datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f").timestamp())
    steps = []
    for f in (work / "results").glob("*_train.txt"):
        for line in f.read_text().splitlines():
            d = json.loads(line)
            if d.get("mode") == "opt" and "time" in d:
                steps.append(float(d["time"]))
    return list(np.diff(ends)), steps


def our_config(a, run_dir: Path, epochs: int):
    from limace.training.config import TrainConfig

    return TrainConfig.from_dict({
        "name": "bench", "seed": 1, "run_dir": str(run_dir),
        "data": {"train_file": a.data, "valid_fraction": a.valid_fraction},
        "model": {"channels": a.channels, "max_L": a.max_L, "r_max": a.r_max, "num_interactions": a.interactions,
                  "correlation": a.correlation},
        "loss": {"energy_weight": 1.0, "forces_weight": 100.0, "stress_weight": 1.0},
        "ema": {"enabled": True, "decay": 0.99},
        "trainer": {"max_epochs": epochs, "batch_size": a.batch, "precision": a.precision,
                    "accelerator": "gpu" if a.device.startswith("cuda") else "cpu", "devices": 1,
                    "progress_bar": False, "log_every_n_steps": 1},
        "checkpoint": {"every_n_steps": 10 ** 9},
    }, source="bench")


def run_ours(a, run_dir: Path, epochs: int) -> tuple[list[float], list[float]]:
    """(epoch durations, step durations) of one limace training run (in this process)."""
    import lightning.pytorch as pl

    from limace.training.run import train

    def sync():
        if a.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()

    class Timer(pl.Callback):
        def __init__(self):
            self.steps, self.ends, self._t = [], [], None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            sync()
            self._t = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            sync()
            self.steps.append(time.perf_counter() - self._t)

        def on_train_epoch_end(self, trainer, pl_module):  # after this epoch's validation
            sync()
            self.ends.append(time.perf_counter())

    shutil.rmtree(run_dir, ignore_errors=True)
    timer = Timer()
    train(our_config(a, run_dir, epochs), log=lambda m: None, callbacks=[timer])
    return list(np.diff(timer.ends)), timer.steps


def main():
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    import torch

    from limace.data.io import read_configurations
    from limace.training.data import split_indices

    torch.set_num_threads(ARGS.threads)
    a = ARGS
    base = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="limace-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    frames = read_configurations(a.data)
    if a.repeat > 1:
        from ase.io import write

        big = []
        for f in frames:
            b = f.repeat((a.repeat,) * 3)  # tiles positions and arrays (REF_forces); info is copied
            b.info["REF_energy"] = f.info["REF_energy"] * a.repeat ** 3
            big.append(b)
        frames = big
        a.data = str(base / f"data_x{a.repeat}.extxyz")
        write(a.data, frames, format="extxyz")
    n_train = len(split_indices(len(frames), a.valid_fraction, 1)[0])  # mace_run_train's split sizes too
    ours_epochs, mace_epochs, ours_steps, mace_steps = [], [], [], []
    for rnd in range(a.rounds):
        ep, st = run_ours(a, base / f"ours_{rnd}", a.epochs)
        ours_epochs += ep
        ours_steps += st[len(st) // a.epochs:]  # not the first epoch (one-off work)
        print(f"  round {rnd}: limace epoch {1000 * np.median(ep):.0f} ms", flush=True)
        ep, st = run_mace(a, base / f"mace_{rnd}", a.epochs)
        mace_epochs += ep
        mace_steps += st[len(st) // a.epochs:]
        print(f"  round {rnd}: mace_run_train epoch {1000 * np.median(ep):.0f} ms", flush=True)
    oe, me = float(np.median(ours_epochs)), float(np.median(mace_epochs))
    os_, ms = float(np.median(ours_steps)), float(np.median(mace_steps))
    ours_n = n_train  # every training configuration, every epoch
    mace_n = n_train // a.batch * a.batch  # mace_run_train drops the last, incomplete batch (drop_last=True)
    print(f"data {a.data}: {len(frames)} configurations ({n_train} train, {sum(len(f) for f in frames)} atoms), "
          f"batch {a.batch}, {a.precision}, {a.device}, {a.threads} thread(s); model {a.channels} channels, "
          f"max_L {a.max_L}, r_max {a.r_max}, {a.interactions} interactions, correlation {a.correlation}")
    print(f"per epoch (median of {len(ours_epochs)} / {len(mace_epochs)}): limace {oe:.3f} s for {ours_n} = "
          f"{ours_n / oe:.1f} configs/s; mace_run_train {me:.3f} s for {mace_n} = {mace_n / me:.1f} configs/s; "
          f"ratio limace/mace = {(ours_n / oe) / (mace_n / me):.2f}")
    print(f"per step (median of {len(ours_steps)} / {len(mace_steps)}): limace {os_ * 1000:.1f} ms = "
          f"{a.batch / os_:.1f} configs/s; mace_run_train {ms * 1000:.1f} ms = {a.batch / ms:.1f} configs/s; "
          f"ratio limace/mace = {ms / os_:.2f}")
    if not a.keep:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
