"""limace.training: config validation, training, exact resume after kill -9, export to MACECalculator, evaluation.

Tiny MACE models (8 channels) on tests/data/labels_small.extxyz (real DFT labels, copied from the li-in-sn-v1
labelling run), CPU, one thread.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

DATA = Path(__file__).parent / "data" / "labels_small.extxyz"


def n_configs() -> int:
    return sum(1 for line in DATA.read_text().splitlines() if line.startswith("Lattice="))


def n_train(valid_fraction: float = 0.2) -> int:
    return n_configs() - max(1, int(valid_fraction * n_configs()))


def tiny(tmp_path: Path, name: str = "tiny", **sections) -> dict:
    """A tiny, fast config (as a dict); ``sections`` update its sections."""
    cfg = {
        "name": name,
        "seed": 7,
        "run_dir": str(tmp_path / name),
        "data": {"train_file": str(DATA), "valid_fraction": 0.2},
        "model": {"channels": 8, "max_L": 0, "r_max": 4.5, "num_interactions": 2, "correlation": 2, "max_ell": 2,
                  "radial_mlp": [16, 16]},
        "trainer": {"max_epochs": 4, "batch_size": 4, "precision": "float64", "accelerator": "cpu", "devices": 1,
                    "progress_bar": False, "log_every_n_steps": 1},
        "checkpoint": {"every_n_steps": 3, "keep": -1},
    }
    for k, v in sections.items():
        if isinstance(v, dict):
            cfg.setdefault(k, {}).update(v)
        else:
            cfg[k] = v
    return cfg


def write_cfg(tmp_path: Path, cfg: dict, fname: str = "c.yaml") -> Path:
    p = tmp_path / fname
    p.write_text(yaml.safe_dump(cfg))
    return p


def load(cfg: dict):
    from limace.training.config import TrainConfig

    return TrainConfig.from_dict(cfg, source="test")


def ckpt(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)


def assert_same_state(a: dict, b: dict) -> None:
    """Model, EMA, optimizer and scheduler state, bit for bit."""
    import torch

    assert a["global_step"] == b["global_step"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    oa, ob = a["optimizer_states"][0], b["optimizer_states"][0]
    assert [g["lr"] for g in oa["param_groups"]] == [g["lr"] for g in ob["param_groups"]]
    for i in oa["state"]:
        for k in oa["state"][i]:
            assert torch.equal(oa["state"][i][k], ob["state"][i][k]), (i, k)
    assert a["limace"] == b["limace"]  # scheduler state


# -- config: one-line errors ---------------------------------------------------------------------------------------


def run_cli(args, capsys):
    from limace.cli import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err.strip()
    return exc.value.code, err


@pytest.mark.parametrize("mutate, expect", [
    (lambda c: c["model"].update(chanels=8), "unknown key 'model.chanels' (did you mean 'model.channels'?)"),
    (lambda c: c.update(epochs=3), "unknown key 'epochs'"),
    (lambda c: c["model"].update(channels="many"), "key 'model.channels' must be an integer, got 'many'"),
    (lambda c: c["trainer"].update(precision="float16"), "key 'trainer.precision' must be 'float32' or 'float64'"),
    (lambda c: c["model"].update(r_max=-1.0), "key 'model.r_max' must be > 0"),
    (lambda c: c["data"].update(train_file="nowhere.extxyz"), "key 'data.train_file' names"),
    (lambda c: c.update(data={"valid_fraction": 0.1}), "key 'data.train_file' is required"),
    (lambda c: c.update(model=[1, 2]), "key 'model' must be a section"),
    (lambda c: c["data"].update(stress_offset={"Xx": -1.0}), "key 'data.stress_offset.Xx' is not a chemical symbol"),
    (lambda c: c["data"].update(stress_offset="auto"), "key 'data.stress_offset'"),
    (lambda c: c.update(seed=-4), "key 'seed' must be >= 0"),
    (lambda c: c["data"].update(split_seed=-1), "key 'data.split_seed' must be >= 0"),
])
def test_bad_config_is_one_line_error(tmp_path, capsys, mutate, expect):
    cfg = tiny(tmp_path)
    mutate(cfg)
    code, err = run_cli(["train", str(write_cfg(tmp_path, cfg))], capsys)
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("limace: error: ") and str(tmp_path / "c.yaml") in err
    assert expect in err
    if "nowhere" in expect or "names" in expect:
        assert "nowhere.extxyz: no such file" in err


def test_stress_offset_shifts_training_stress_labels_only(tmp_path):
    """data.stress_offset removes a Pulay stress from the training and validation stress labels (diagonal only, by
    atom fraction), keeps the test labels as computed, and travels in the model statistics."""
    from limace.data.io import read_configurations
    from limace.keys import EV_PER_A3_TO_GPA
    from limace.training.config import TrainConfig
    from limace.training.data import LimaceDataModule

    raw = {a.info["config_id"]: a for a in read_configurations(DATA)}
    cfg = TrainConfig.from_dict(tiny(tmp_path, data={"stress_offset": {"Li": -1.0, "Sn": -4.0, "In": -2.0},
                                                     "test_file": str(DATA)}))
    dm = LimaceDataModule(cfg)
    stats = dm.load()
    assert stats.stress_offset_GPa == {"Li": -1.0, "Sn": -4.0, "In": -2.0}
    checked = 0
    for a in dm.train_frames + dm.valid_frames:
        r = raw[a.info["config_id"]]
        syms = r.get_chemical_symbols()
        shift = sum({"Li": -1.0, "Sn": -4.0, "In": -2.0}[x] for x in syms) / len(syms) / EV_PER_A3_TO_GPA
        d = np.asarray(a.info["REF_stress"]) - np.asarray(r.info["REF_stress"])
        np.testing.assert_allclose(d, [shift] * 3 + [0.0] * 3, atol=1e-12)
        checked += 1
    assert checked == n_configs()
    for a in dm.test_frames:
        np.testing.assert_array_equal(a.info["REF_stress"], raw[a.info["config_id"]].info["REF_stress"])


def test_validation_split_keeps_equilibrium_cells_in_training():
    """A phase's single equilibrium cell anchors its formation energy: it is never drawn into validation, and the
    validation set keeps mace_run_train's size."""
    from limace.data.io import read_configurations
    from limace.training.config import DataConfig
    from limace.training.data import split_indices

    frames = read_configurations(DATA)
    types = [a.info.get("config_type") for a in frames]
    n_eq = types.count("equilibrium")
    assert n_eq >= 1
    excluded = DataConfig().valid_exclude
    assert "equilibrium" in excluded
    for seed in range(20):
        tr, va = split_indices(len(frames), 0.2, seed, [t not in excluded for t in types])
        assert len(va) == max(1, int(0.2 * len(frames))) and len(tr) + len(va) == len(frames)
        assert not set(tr) & set(va)
        assert all(types[i] != "equilibrium" for i in va)
    # without the rule the same seeds do draw equilibrium cells into validation (what happened to potential 0.5)
    assert any(types[i] == "equilibrium" for s in range(20) for i in split_indices(len(frames), 0.2, s)[1])


def test_config_paths_relative_to_config_file(tmp_path):
    from limace.training.config import load_config

    (tmp_path / "sub").mkdir()
    shutil.copy(DATA, tmp_path / "sub" / "d.extxyz")
    cfg = tiny(tmp_path)
    cfg["data"]["train_file"] = "d.extxyz"
    cfg["run_dir"] = "out"
    c = load_config(write_cfg(tmp_path / "sub", cfg))
    assert c.data.train_file == str(tmp_path / "sub" / "d.extxyz")
    assert c.run_dir == str(tmp_path / "sub" / "out")


def test_example_config_is_the_packaged_recipe():
    from limace.training.config import load_config

    root = Path(__file__).parents[1]
    load_config(root / "examples" / "train_medium.yaml", check_files=False)
    # the fine-tuning example has the shipped potential's sizes (else init_from refuses it)
    ft = load_config(root / "examples" / "finetune_small.yaml", check_files=False).as_dict()["model"]
    small = load_config("small", check_files=False).as_dict()["model"]
    assert ft.pop("init_from") == "limace-lisnin-small"
    assert {k: v for k, v in ft.items() if k != "e0s"} == {k: v for k, v in small.items() if k not in ("e0s", "init_from")}
    # the medium model's fine-tune starts from the 300-epoch medium run: same model sizes
    mft = load_config(root / "examples" / "finetune_medium_cpu.yaml", check_files=False).as_dict()["model"]
    med = load_config(root / "examples" / "train_medium_cpu.yaml", check_files=False).as_dict()["model"]
    assert mft.pop("init_from").endswith("limace-lisnin-medium-cpu/limace-lisnin-medium.model")
    assert mft == {k: v for k, v in med.items() if k != "init_from"}
    # the CPU committee: the small model from independent starts (no init_from), four seeds
    com = load_config(root / "examples" / "committee_scratch_cpu.yaml", check_files=False)
    assert com.model.init_from is None and len(set(com.member_seeds())) == 4
    assert {k: v for k, v in com.as_dict()["model"].items() if k != "e0s"} == \
        {k: v for k, v in small.items() if k != "e0s"}
    ex = load_config(root / "examples" / "train_small.yaml", check_files=False).as_dict()
    pk = load_config("small", check_files=False).as_dict()
    ex.pop("run_dir"), pk.pop("run_dir")
    assert ex == pk
    assert ex["data"]["dataset"] == "li-in-sn-v1" and ex["model"]["elements"] == ["Li", "In", "Sn"]


# -- training ------------------------------------------------------------------------------------------------------


def _weighted_loss(model, frames, w=(1.0, 100.0, 1.0)) -> float:
    """mace's weighted loss (energy per atom, forces, stress), over all frames."""
    from limace.training.evaluate import evaluate_predictions, predict_mace

    r = evaluate_predictions(frames, predict_mace(model, frames))
    de = (r.energy_pred - r.energy_ref) / r.n_atoms
    return float(w[0] * np.mean(de ** 2) + w[1] * np.mean((r.forces_pred - r.forces_ref) ** 2)
                 + w[2] * np.mean((r.stress_pred - r.stress_ref) ** 2))


def test_loss_falls(tmp_path):
    import lightning.pytorch as pl

    from limace.training.data import LimaceDataModule
    from limace.training.export import load_model
    from limace.training.module import MaceModule
    from limace.training.run import train

    cfg = load(tiny(tmp_path, trainer={"max_epochs": 16}, ema={"enabled": False}))
    dm = LimaceDataModule(cfg)
    stats = dm.load()
    pl.seed_everything(cfg.seed, verbose=False)  # as train() does before building the model
    before = _weighted_loss(MaceModule(cfg.as_dict(), stats.as_dict()).model, dm.train_frames)
    res = train(cfg, log=lambda m: None)
    after = _weighted_loss(load_model(res.members[0].model_path), dm.train_frames)
    assert after < 0.5 * before, (before, after)


def test_training_without_stress_labels_in_the_loss(tmp_path):
    """stress_weight 0 (e.g. labels with a Pulay stress) trains on energies and forces only, in both stages, and the
    loss still falls (it crashed in mace's stress loss before)."""
    import lightning.pytorch as pl

    from limace.training.data import LimaceDataModule
    from limace.training.export import load_model
    from limace.training.module import MaceModule
    from limace.training.run import train

    cfg = load(tiny(tmp_path, trainer={"max_epochs": 16}, ema={"enabled": False}, loss={"stress_weight": 0.0},
                    stage_two={"enabled": True, "start_epoch": 14, "lr": 0.002, "stress_weight": 0.0}))
    dm = LimaceDataModule(cfg)
    stats = dm.load()
    pl.seed_everything(cfg.seed, verbose=False)
    before = _weighted_loss(MaceModule(cfg.as_dict(), stats.as_dict()).model, dm.train_frames, w=(1.0, 100.0, 0.0))
    res = train(cfg, log=lambda m: None)
    after = _weighted_loss(load_model(res.members[0].model_path), dm.train_frames, w=(1.0, 100.0, 0.0))
    assert after < 0.6 * before, (before, after)


def test_stage_two_and_validation_metrics_equal_evaluation_of_exported_model(tmp_path):
    """Stage two switches loss and lr at its epoch; the logged val/* of the last epoch (EMA weights) are the
    `limace evaluate` numbers of the exported model."""
    from limace.training.run import train

    res = train(load(tiny(tmp_path, stage_two={"enabled": True, "start_epoch": 2, "lr": 0.002})),
                log=lambda m: None)
    (m,) = res.members
    rows = list(csv.DictReader(open(m.run_dir / "logs" / "version_0" / "metrics.csv")))
    steps = [r for r in rows if r.get("train/stage")]
    assert [float(r["train/stage"]) for r in steps] == [1.0 if int(r["epoch"]) < 2 else 2.0 for r in steps]
    assert all(float(r["lr"]) == pytest.approx(0.002) for r in steps if int(r["epoch"]) >= 2)
    assert all(float(r["lr"]) == pytest.approx(0.01) for r in steps if int(r["epoch"]) < 2)
    # the CSV log has the live metrics the progress bar shows, and validation metrics every epoch
    assert {"train/rmse_e", "train/rmse_f", "val/rmse_e", "val/rmse_f", "val/mae_s"} <= set(rows[0])
    vals = [r for r in rows if r.get("val/loss")]
    assert [int(r["epoch"]) for r in vals] == [0, 1, 2, 3]
    summ = json.loads((m.run_dir / "valid" / "summary.json").read_text())["summary"]["all"]
    for key, logged in (("energy_mae", "val/mae_e"), ("forces_rmse", "val/rmse_f"), ("stress_mae", "val/mae_s")):
        assert summ[key] == pytest.approx(float(vals[-1][logged]), rel=1e-5), key
    for png in ("parity_energy.png", "parity_forces.png", "parity_stress.png"):
        assert (m.run_dir / "valid" / png).stat().st_size > 1000


def test_a_wall_clock_budget_ends_training_and_starts_stage_two_at_three_quarters(tmp_path):
    """trainer.max_time_s (a lent GPU's minutes): training stops at the budget, stage two begins with the first
    epoch that starts after 3/4 of it, and a resumed run keeps that epoch (it is in the checkpoint)."""
    import torch

    from limace.training.run import train

    cfg = tiny(tmp_path, trainer={"max_epochs": None, "max_time_s": 6}, stage_two={"enabled": True, "lr": 0.002})
    t0 = time.perf_counter()
    (m,) = train(load(cfg), log=lambda msg: None).members
    assert time.perf_counter() - t0 < 60 and m.model_path.is_file()
    rows = list(csv.DictReader(open(m.run_dir / "logs" / "version_0" / "metrics.csv")))
    stages = [(int(r["epoch"]), float(r["train/stage"])) for r in rows if r.get("train/stage")]
    epochs = {e for e, _ in stages}
    assert len(epochs) >= 4, "tiny epochs take well under a second: several fit in 6 s"
    assert stages[0][1] == 1.0 and stages[-1][1] == 2.0
    first = min(e for e, st in stages if st == 2.0)  # from there on stage two, never back
    assert all(st == (2.0 if e >= first else 1.0) for e, st in stages) and first >= 1
    ckpt = torch.load(m.run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["limace"]["stage_two_start"] == first
    from limace.core.errors import ValidationError

    with pytest.raises(ValidationError, match="max_time_s"):
        load(tiny(tmp_path, trainer={"max_epochs": None, "max_time_s": -1}))


def test_resume_from_mid_epoch_and_epoch_end_checkpoints_is_exact(tmp_path):
    """Restarting from a step checkpoint (inside an epoch or at its end) ends in the uninterrupted run's state."""
    from limace.training.run import train

    cfg = tiny(tmp_path, name="full", trainer={"max_epochs": 5}, scheduler={"name": "plateau", "patience": 0},
               checkpoint={"every_n_steps": 2, "keep": -1}, model={"num_interactions": 1})
    train(load(cfg), log=lambda m: None)
    full = tmp_path / "full" / "checkpoints"
    n_batches = -(-n_train() // 4)
    ends = [s for s in range(2, 5 * n_batches, 2) if s % n_batches == 0]
    mids = [s for s in range(2, 5 * n_batches, 2) if s % n_batches and s > n_batches]
    chosen = {"mid-epoch": mids[0], "epoch end": ends[0]}
    final = ckpt(full / "last.ckpt")
    assert final["global_step"] == 5 * n_batches
    for label, step in chosen.items():
        run = tmp_path / f"from{step}"
        (run / "checkpoints").mkdir(parents=True)
        shutil.copy(full / f"step={step}.ckpt", run / "checkpoints" / "last.ckpt")
        c = dict(cfg, run_dir=str(run), name="full")
        r = train(load(c), log=lambda m: None)
        assert r.members[0].resumed_from == run / "checkpoints" / "last.ckpt"
        assert_same_state(final, ckpt(run / "checkpoints" / "last.ckpt"))


def test_warmup_scales_the_first_steps_and_leaves_the_schedule_alone(tmp_path):
    """A fresh Adam's first step moves every weight by lr x (a sign), so with the same data and seed the first step
    of a run with warm-up W moves the weights by 1/W of the run without: (A - B4) = 1.5 (A - B2) for the weights
    after one step. After the warm-up, the optimizer's lr is the scheduled one again."""
    import torch

    from limace.training.run import train

    after = {}
    for w in (0, 2, 4):
        cfg = tiny(tmp_path, name=f"w{w}", trainer={"max_epochs": 2}, scheduler={"name": "none", "warmup_steps": w},
                   checkpoint={"every_n_steps": 1, "keep": -1}, ema={"enabled": False},
                   model={"num_interactions": 1})
        train(load(cfg), log=lambda m: None)
        run = tmp_path / f"w{w}" / "checkpoints"
        c1 = ckpt(run / "step=1.ckpt")
        after[w] = torch.cat([v.flatten() for k, v in sorted(c1["state_dict"].items()) if k.startswith("model.")
                              and v.dtype.is_floating_point])
        last = ckpt(run / "last.ckpt")
        assert last["global_step"] > 4
        assert all(g["lr"] == pytest.approx(0.01) for g in last["optimizer_states"][0]["param_groups"])
    d4, d2 = after[0] - after[4], after[0] - after[2]
    moved = d2.abs() > 1e-9
    assert int(moved.sum()) > 100
    assert torch.allclose(d4[moved], 1.5 * d2[moved], rtol=1e-5, atol=1e-12)


def test_kill9_then_restart_continues_with_same_state(tmp_path, limace_exe):
    """SIGKILL a training job after its first checkpoint; rerunning the same command finishes it in the state of
    an uninterrupted run (model, EMA, optimizer, scheduler, step counter)."""
    from limace.training.run import latest_checkpoint, train

    base = tiny(tmp_path, trainer={"max_epochs": 6}, checkpoint={"every_n_steps": 3, "keep": 2},
                model={"num_interactions": 1})
    ref = dict(base, run_dir=str(tmp_path / "ref"))
    train(load(ref), log=lambda m: None)
    final = ckpt(tmp_path / "ref" / "checkpoints" / "last.ckpt")

    job = dict(base, run_dir=str(tmp_path / "job"))
    cfg_path = write_cfg(tmp_path, job)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    ckdir = tmp_path / "job" / "checkpoints"
    p = subprocess.Popen([limace_exe, "train", str(cfg_path)], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    t0 = time.time()
    while p.poll() is None and time.time() - t0 < 120:
        if ckdir.is_dir() and any(ckdir.glob("*.ckpt")):
            p.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    p.communicate()
    assert p.returncode == -signal.SIGKILL, "the job ended before it could be killed"
    killed_at = latest_checkpoint(ckdir)
    step_at_kill = ckpt(killed_at)["global_step"]
    assert 0 < step_at_kill < final["global_step"]

    r = subprocess.run([limace_exe, "train", str(cfg_path)], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"resuming {tmp_path / 'job'} from" in r.stderr
    logs = sorted((tmp_path / "job" / "logs").glob("version_*/metrics.csv"))
    resumed_steps = [int(row["step"]) for row in csv.DictReader(open(logs[-1])) if row.get("train/loss")]
    assert min(resumed_steps) >= step_at_kill  # the step counter continues, it does not restart at 0
    assert_same_state(final, ckpt(ckdir / "last.ckpt"))
    assert (tmp_path / "job" / "tiny.model").is_file()


def test_resume_with_other_model_size_is_one_line_error(tmp_path, capsys):
    from limace.training.run import train

    cfg = tiny(tmp_path, trainer={"max_epochs": 1}, model={"num_interactions": 1})
    train(load(cfg), log=lambda m: None)
    cfg["model"]["channels"] = 16
    capsys.readouterr()
    code, err = run_cli(["train", str(write_cfg(tmp_path, cfg))], capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert "was trained with model.channels=8 but the config has 16" in err


def test_committee_members_differ(tmp_path):
    from limace.training.export import load_model
    from limace.training.run import train

    res = train(load(tiny(tmp_path, committee_size=2, trainer={"max_epochs": 1}, model={"num_interactions": 1})),
                log=lambda m: None)
    assert [m.seed for m in res.members] == [7, 8]
    a, b = (load_model(p) for p in res.model_paths)
    assert [p.parent.name for p in res.model_paths] == ["member_0", "member_1"]
    assert any(not np.allclose(x.detach(), y.detach()) for x, y in zip(a.parameters(), b.parameters()))


def test_one_committee_member_per_process(tmp_path, capsys):
    """--member I trains member I alone, with the seed and directory it has in the whole committee (so members can
    train side by side, one process per core or GPU); a bad index is a one-line error that trains nothing."""
    from limace.training.export import load_model
    from limace.training.run import train

    cfg = tiny(tmp_path, committee_size=3, trainer={"max_epochs": 1}, model={"num_interactions": 1})
    res = train(load(cfg), log=lambda m: None, members=[1])
    assert [m.seed for m in res.members] == [8]  # seed + 1, as in the full committee
    assert [p.parent.name for p in res.model_paths] == ["member_1"]
    run_dir = Path(cfg["run_dir"])
    assert not (run_dir / "member_0").exists() and not (run_dir / "member_2").exists()
    whole = train(load(dict(cfg, run_dir=str(tmp_path / "whole"))), log=lambda m: None, members=[0, 1])
    a, b = load_model(res.model_paths[0]), load_model(whole.model_paths[1])
    assert all(np.allclose(x.detach(), y.detach()) for x, y in zip(a.parameters(), b.parameters()))
    for args, expect in ((["--member", "3"], "--member 3: the committee has 3 members (0-2)"),
                         (["--member", "-1"], "--member -1: the committee has 3 members")):
        capsys.readouterr()
        code, err = run_cli(["train", str(write_cfg(tmp_path, cfg)), *args], capsys)
        assert code == 2 and len(err.splitlines()) == 1 and expect in err, err
    single = tiny(tmp_path, trainer={"max_epochs": 1})
    code, err = run_cli(["train", str(write_cfg(tmp_path, single)), "--member", "0"], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "committee_size 1" in err, err


# -- export / evaluate ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny float64 model trained for a few steps (in process), with its module and data."""
    from limace.training.run import train

    tmp = tmp_path_factory.mktemp("trained")
    cfg = tiny(tmp, trainer={"max_epochs": 2}, model={"max_L": 1, "pair_repulsion": True})  # ZBL, as shipped
    res = train(load(cfg), log=lambda m: None)
    return res.members[0]


def test_export_roundtrips_through_mace_calculator(trained, tmp_path):
    from ase.io import read
    from mace.calculators import MACECalculator

    from limace.training.evaluate import predict_mace
    from limace.training.export import export_model, load_model, module_from_checkpoint

    module = module_from_checkpoint(trained.checkpoint)
    path = export_model(module, tmp_path / "m.model")
    frames = read(DATA, ":")
    ours = predict_mace(module.eval_model(), frames)  # batched, from the in-memory training module
    calc = MACECalculator(model_paths=str(path), device="cpu", default_dtype="float64")
    off = 0
    for k, a in enumerate(frames):
        b = a.copy()
        b.calc = calc
        assert abs(b.get_potential_energy() - ours.energy[k]) < 1e-6
        n = len(a)
        np.testing.assert_allclose(b.get_forces(), ours.forces[off:off + n], atol=1e-6, rtol=0)
        np.testing.assert_allclose(b.get_stress(), ours.stress[k], atol=1e-8, rtol=0)
        off += n
    # the export of the run (EMA weights) is the same model, and our own loader reads it
    m2 = load_model(trained.model_path)
    assert all(np.array_equal(x.detach(), y.detach())
               for x, y in zip(m2.parameters(), module.eval_model().parameters()))
    assert np.ptp(ours.energy / np.array([len(a) for a in frames])) > 0.01  # not a constant model


def test_evaluate_cli_reports_per_config_type(trained, tmp_path, capsys):
    from ase.io import read
    from mace.calculators import MACECalculator

    from limace.cli import main

    out = tmp_path / "ev"
    main(["evaluate", str(trained.model_path), str(DATA), "--out", str(out)])
    text = capsys.readouterr().out
    frames = read(DATA, ":")
    for ct in {a.info["config_type"] for a in frames}:
        assert any(line.startswith(ct) for line in text.splitlines()), ct
    summ = json.loads((out / "summary.json").read_text())["summary"]
    assert set(summ["by_config_type"]) == {a.info["config_type"] for a in frames}
    assert summ["all"]["n_configs"] == len(frames)
    # the numbers are those of an independent path: mace's ASE calculator, one configuration at a time
    calc = MACECalculator(model_paths=str(trained.model_path), device="cpu", default_dtype="float64")
    de, df, ds = [], [], []
    for a in frames:
        b = a.copy()
        b.calc = calc
        de.append((b.get_potential_energy() - a.info["REF_energy"]) / len(a))
        df.append((b.get_forces() - a.arrays["REF_forces"]).ravel())
        ds.append(b.get_stress() - a.info["REF_stress"])
    assert summ["all"]["energy_mae"] == pytest.approx(1000 * np.mean(np.abs(de)), rel=1e-9)
    assert summ["all"]["forces_rmse"] == pytest.approx(1000 * np.sqrt(np.mean(np.concatenate(df) ** 2)), rel=1e-9)
    assert summ["all"]["stress_mae"] == pytest.approx(160.21766208 * np.mean(np.abs(ds)), rel=1e-9)
    for png in ("parity_energy.png", "parity_forces.png", "parity_stress.png"):
        assert (out / png).stat().st_size > 1000


def test_evaluation_result_roundtrip_and_offsets(trained):
    from ase.io import read

    from limace.training.evaluate import EvaluationResult, evaluate_model

    frames = read(DATA, ":")
    res = evaluate_model(trained.model_path, frames)
    again = EvaluationResult.from_dict(json.loads(json.dumps(res.as_dict())))
    assert again.summary() == res.summary()
    # a constant energy shift per atom (another code's energy zero) disappears with fitted offsets
    for a in frames:
        a.info["REF_energy"] += 0.25 * a.get_chemical_symbols().count("Li") - 0.5 * a.get_chemical_symbols().count("In")
    shifted = evaluate_model(trained.model_path, frames)
    fitted = evaluate_model(trained.model_path, frames, fit_energy_offsets=True)
    assert shifted.summary()["all"]["energy_mae"] > 100
    assert fitted.summary()["all"]["energy_mae"] <= res.summary()["all"]["energy_mae"] + 1e-6
    assert fitted.summary()["all"]["forces_mae"] == res.summary()["all"]["forces_mae"]
    ax = res.plot_parity("forces")
    assert ax.get_xlabel().startswith("reference")


def test_evaluate_bad_inputs_are_one_line(tmp_path, capsys):
    bad = tmp_path / "x.model"
    bad.write_text("not a model")
    code, err = run_cli(["evaluate", str(bad), str(DATA)], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "not a MACE .model file" in err
    code, err = run_cli(["evaluate", str(tmp_path / "missing.model"), str(DATA)], capsys)
    assert code == 2 and "no such model file" in err
    code, err = run_cli(["evaluate", str(bad), "li-in-sn-v9:test"], capsys)
    assert code == 2 and "'li-in-sn-v9' is not a shipped dataset" in err and len(err.splitlines()) == 1


def test_evaluate_a_shipped_dataset_split(trained, tmp_path, capsys):
    from limace.cli import main
    from limace.data.datasets import load_dataset

    out = tmp_path / "ev"
    main(["evaluate", str(trained.model_path), "li-in-sn-v1:test", "--out", str(out), "--no-plots"])
    summ = json.loads((out / "summary.json").read_text())["summary"]
    assert summ["all"]["n_configs"] == len(load_dataset("li-in-sn-v1", "test"))


def test_evaluate_a_registered_potential_on_the_extrapolation_split(tmp_path, capsys, monkeypatch):
    """`limace evaluate limace-lisnin-small li-in-sn-v1:extrapolation`: errors per class of the extrapolation set
    for the shipped potential, written in the working directory, never into the installed package."""
    from limace.cli import main
    from limace.data.datasets import load_dataset
    from limace.potentials.calculator import resolve

    monkeypatch.chdir(tmp_path)
    models_dir = resolve("limace-lisnin-small")[0].parent
    before = sorted(p.name for p in models_dir.iterdir())
    main(["evaluate", "limace-lisnin-small", "li-in-sn-v1:extrapolation", "--no-plots"])
    text = capsys.readouterr().out
    summ = json.loads((tmp_path / "limace-lisnin-small_eval" / "summary.json").read_text())["summary"]
    frames = load_dataset("li-in-sn-v1", "extrapolation")
    assert summ["all"]["n_configs"] == len(frames)
    classes = {a.info["config_type"] for a in frames}
    assert {"extrap_volume", "extrap_vacancy", "extrap_interstitial"} <= classes
    assert set(summ["by_config_type"]) == classes
    assert all(any(line.startswith(c) for line in text.splitlines()) for c in classes)
    assert sorted(p.name for p in models_dir.iterdir()) == before
    code, err = run_cli(["evaluate", "no-such-potential", "li-in-sn-v1:test"], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "no-such-potential" in err


# -- DDP -------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path, limace_exe):
    """Lightning DDP (gloo) with 2 CPU processes: each rank trains on half the data, so an epoch has half the steps
    of a single-process run, and the result is a working model."""
    from limace.training.export import load_model

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cfg = tiny(tmp_path, name="ddp", trainer={"max_epochs": 3, "devices": 2, "strategy": "ddp"})
    r = subprocess.run([limace_exe, "train", str(write_cfg(tmp_path, cfg))], env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Starting with 2 processes" in r.stdout + r.stderr
    final = ckpt(tmp_path / "ddp" / "checkpoints" / "last.ckpt")
    assert final["global_step"] == 3 * int(np.ceil(np.ceil(n_train() / 2) / 4))  # each rank: half the batches
    model = load_model(tmp_path / "ddp" / "ddp.model")
    assert sum(p.numel() for p in model.parameters()) > 0
    # validation metrics are reduced over both ranks' shards: they equal rank 0's evaluation of the whole set
    valid = json.loads((tmp_path / "ddp" / "result.json").read_text())["valid"]
    assert valid["n_configs"] == n_configs() - n_train() >= 2
    rows = [r for r in csv.DictReader(open(tmp_path / "ddp" / "logs" / "version_0" / "metrics.csv")) if r.get("val/loss")]
    assert valid["energy_mae"] == pytest.approx(float(rows[-1]["val/mae_e"]), rel=1e-5)
    assert valid["forces_rmse"] == pytest.approx(float(rows[-1]["val/rmse_f"]), rel=1e-5)


def test_wandb_offline_run_is_written(tmp_path, monkeypatch):
    from limace.training.run import train

    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline must come from the config default
    cfg = tiny(tmp_path, trainer={"max_epochs": 1}, model={"num_interactions": 1},
               wandb={"enabled": True, "project": "limace-test"})
    train(load(cfg), log=lambda m: None)
    runs = list((tmp_path / "tiny" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    assert (tmp_path / "tiny" / "wandb_id.txt").read_text().strip() in runs[0].name


def test_shipped_dataset_train_and_test_splits(tmp_path, monkeypatch):
    """data.dataset trains on a packed dataset's train split and evaluates its test split."""
    import limace.data.datasets as ds
    from limace.training.run import train

    monkeypatch.setattr(ds, "datasets_root", lambda: tmp_path / "ds")
    man = ds.pack(DATA, name="toy", dest=tmp_path / "ds" / "toy")
    cfg = tiny(tmp_path, trainer={"max_epochs": 1}, model={"num_interactions": 1})
    cfg["data"] = {"dataset": "toy", "valid_fraction": 0.2}
    (m,) = train(load(cfg), log=lambda m: None).members
    assert m.test["n_configs"] == man["files"]["test"]["n"] > 0
    stats = ckpt(m.checkpoint)["hyper_parameters"]["statistics"]
    assert stats["n_train"] + stats["n_valid"] == man["files"]["train"]["n"]
    assert (m.run_dir / "test" / "summary.json").is_file()
    cfg["data"]["train_file"] = str(DATA)
    with pytest.raises(Exception, match="data.dataset' and data.train_file are both given"):
        load(cfg)


# -- fine-tuning ---------------------------------------------------------------------------------------------------


def test_fine_tuning_starts_from_the_given_model(trained, tmp_path, capsys):
    """model.init_from: training starts from exactly the trained model (its weights, E0s, scale), whatever the new
    data's statistics, and a model of another size is a one-line error naming the key."""
    import torch

    from limace.training.evaluate import predict_mace
    from limace.training.export import load_model
    from limace.training.run import train

    from ase.io import read

    frames = read(DATA, ":")
    before = predict_mace(load_model(trained.model_path), frames)
    # other E0s in the config and a different validation split: both must be overridden by the model's own
    cfg = tiny(tmp_path, name="ft", seed=11, trainer={"max_steps": 1, "max_epochs": None},
               model={"max_L": 1, "pair_repulsion": True, "init_from": str(trained.model_path),
                      "e0s": {"Li": 0.0, "In": 0.0, "Sn": 0.0}},
               optimizer={"lr": 1e-12}, ema={"enabled": False})
    res = train(load(cfg), log=lambda m: None)
    after = predict_mace(load_model(res.model_paths[0]), frames)
    np.testing.assert_allclose(after.energy, before.energy, atol=1e-7, rtol=0)
    np.testing.assert_allclose(after.forces, before.forces, atol=1e-7, rtol=0)
    # ... whereas from scratch with the same settings the model is a different one
    scratch = train(load(tiny(tmp_path, name="scratch", seed=11, trainer={"max_steps": 1, "max_epochs": None},
                              model={"max_L": 1, "pair_repulsion": True}, optimizer={"lr": 1e-12},
                              ema={"enabled": False})), log=lambda m: None)
    far = predict_mace(load_model(scratch.model_paths[0]), frames)
    assert np.abs(far.energy - before.energy).max() > 1e-3

    bad = tiny(tmp_path, name="ft_bad", model={"max_L": 1, "pair_repulsion": True, "channels": 16,
                                               "init_from": str(trained.model_path)})
    capsys.readouterr()
    code, err = run_cli(["train", str(write_cfg(tmp_path, bad, "bad.yaml"))], capsys)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"model.init_from {trained.model_path}" in err and "architecture differs" in err
    for init, expect in ((str(tmp_path / "none.model"), "none.model: no such file"),
                         ("no-such-potential", "no-such-potential")):
        bad["model"]["init_from"] = init
        code, err = run_cli(["train", str(write_cfg(tmp_path, bad, "bad.yaml"))], capsys)
        assert code == 2 and len(err.splitlines()) == 1 and "model.init_from" in err and expect in err, err
    assert torch.get_default_dtype() == torch.float32  # nothing leaked
