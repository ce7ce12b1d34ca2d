"""``limace learn``: the active-learning loop end to end on a tiny Cu-Au system labelled with EMT (explore ->
select -> label -> fine-tune -> evaluate -> register), a stop in the middle and a resume; committee spread."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from ase.build import bulk
from ase.io import write

from limace.data import generate as g
from limace.data.label import label_configurations

TINY_MODEL = {"channels": 8, "max_L": 0, "r_max": 4.0, "num_interactions": 1, "correlation": 2, "max_ell": 2,
              "radial_mlp": [16, 16]}
TRAINER = {"max_epochs": 6, "batch_size": 4, "precision": "float64", "accelerator": "cpu", "devices": 1,
           "progress_bar": False, "log_every_n_steps": 1}


def cuau(a=3.75):
    c = bulk("Cu", "fcc", a=a, cubic=True)
    c.symbols[0] = "Au"
    return c


def emt_labelled(path: Path, configs):
    label_configurations(configs, path, protocol="emt", progress=False)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from limace.training.config import TrainConfig
    from limace.training.run import train

    tmp = tmp_path_factory.mktemp("learn")
    rng = np.random.default_rng(0)
    base = [cuau()] + g.rattled(cuau(), [0.05] * 10, seed=rng) + g.strained(cuau(), [-0.02, -0.01, 0.01, 0.02], "iso")
    base_file = emt_labelled(tmp / "base.extxyz", base)
    held = g.rattled(cuau(), [0.08] * 4, seed=rng) + g.strained(cuau(), [-0.06, 0.06], "iso")
    held_file = emt_labelled(tmp / "held.extxyz", held)
    template = {"name": "t", "seed": 3, "data": {"train_file": str(base_file), "valid_fraction": 0.2},
                "model": TINY_MODEL, "trainer": TRAINER, "checkpoint": {"every_n_steps": 5, "keep": 1}}
    (tmp / "train.yaml").write_text(yaml.safe_dump(template))
    cfg = dict(template, committee_size=2, run_dir=str(tmp / "start"))
    res = train(TrainConfig.from_dict(cfg, source="test"), log=lambda m: None)
    seeds = tmp / "seeds.extxyz"
    write(seeds, [cuau()])
    return {"tmp": tmp, "committee": [str(p) for p in res.model_paths], "base": base_file, "held": held_file,
            "seeds": seeds, "train": tmp / "train.yaml"}


def learn_config(setup, run_dir: Path, **over) -> Path:
    cfg = {"name": "toy-al", "train_config": str(setup["train"]), "committee": setup["committee"],
           "base_data": [str(setup["base"])], "evaluate": [str(setup["held"])], "rounds": 2, "protocol": "emt",
           "run_dir": str(run_dir),
           "explore": {"structures": [str(setup["seeds"])], "md_temperatures_K": [300.0, 1500.0], "md_steps": 30,
                       "md_snapshot_every": 10, "md_timestep_fs": 2.0, "volume_strains": [-0.08, 0.08],
                       "rattle_A": [0.1, 0.2]},
           "select": {"budget": 3, "pool_factor": 2}}
    cfg.update(over)
    p = run_dir.parent / f"{run_dir.name}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def fake_run_outputs(root: Path) -> Path:
    """A directory laid out as `limace screen` writes it: relaxed structures in work/<system>/structures/ (one of
    them too large for the explorer) and NEB bands under barriers/ (two hops sharing their first image)."""
    structures = root / "work" / "Cu-Au" / "structures"
    structures.mkdir(parents=True)
    write(structures / "CuAu.extxyz", [cuau(3.7), cuau(3.76)])  # a relaxation's frames: the last one counts
    write(structures / "big.extxyz", cuau().repeat((3, 3, 3)))  # 108 atoms
    start = cuau().repeat((2, 1, 1))
    for hop in (0, 1):
        d = root / "barriers" / "Cu-Au" / "CuAu" / "hops" / f"hop_{hop}"
        d.mkdir(parents=True)
        band = [start] + g.rattled(start, [0.15, 0.3], seed=hop)
        write(d / "band.extxyz", band)
    return root


def test_two_rounds_with_a_stop_and_resume(setup):
    from limace.learn import learn
    from limace.potentials.registry import list_potentials

    run = setup["tmp"] / "al"
    explore = yaml.safe_load(learn_config(setup, run).read_text())["explore"]
    explore["from_runs"] = [str(fake_run_outputs(setup["tmp"] / "screen_out"))]
    cfg = learn_config(setup, run, control=True, gate={"held.extxyz": {"energy_mae": 1e6, "energy_max": 0.0}},
                       explore=explore)
    said = []
    stopped = learn(cfg, log=said.append, stop_after=(1, "label"))
    assert stopped == {"stopped_after": [1, "label"]}
    # after each finished round the report and its plot hold the rounds so far, with what the labels bought
    report = (run / "report.md").read_text()
    assert "| 0 |" in report and "| 1 |" not in report
    assert "What each round's labels buy" in report and "| 0 | held.extxyz | " in report
    assert (run / "rounds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the long stage says where its progress shows: the label file and the calculator's logs
    assert any(m.startswith("round 1: label: 3 single points (emt)") and str(run / "round_1" / "labels.extxyz") in m
               for m in said), said
    r1 = run / "round_1"
    assert (r1 / "labels.extxyz").exists() and not (r1 / "train.json").exists()
    # explore.from_runs: a screen's relaxed structures (the last frame of each, none above from_runs_max_atoms) and
    # every NEB band image, the shared end point once
    from ase.io import read

    cands = read(r1 / "candidates.extxyz", ":")
    relaxed = [a for a in cands if a.info["config_type"] == "al_screen_relaxed"]
    images = [a for a in cands if a.info["config_type"] == "al_neb_image"]
    assert [a.info["from_run"] for a in relaxed] == ["work/Cu-Au/structures/CuAu.extxyz"]
    assert np.allclose(relaxed[0].cell.lengths(), 3.76)
    assert len(images) == 5 and len({a.info["config_id"] for a in cands}) == len(cands)
    cands_before = (r1 / "candidates.extxyz").read_bytes()
    labels_before = (r1 / "labels.extxyz").read_bytes()
    summary = learn(cfg, log=lambda m: None)
    # the resumed run did not redo what was done
    assert (r1 / "candidates.extxyz").read_bytes() == cands_before
    assert (r1 / "labels.extxyz").read_bytes() == labels_before
    assert [r["labels"] for r in summary["rounds"]] == [3, 3]
    for r in summary["rounds"]:
        ev = r["evaluate"]["held.extxyz"]
        assert ev["n"] == 6 and np.isfinite(ev["energy_mae_mev_per_atom"])
        assert ev["energy_max_mev_per_atom"] >= ev["energy_mae_mev_per_atom"]
        # selected by committee disagreement: the picks are among the most uncertain candidates
        sel = r["select"]
        assert sel["n_pool"] == 6 < sel["n_candidates"]
        assert min(sel["force_spread_picked"]) >= round(sel["force_spread_pool_min"], 4)
        assert sel["force_spread_picked"][0] == round(sel["force_spread_max"], 4)
    # round 1 started from round 0's committee, and new labels never repeat old ones
    ids0 = {l.split("config_id=")[1].split()[0] for l in (run / "round_0/labels.extxyz").read_text().splitlines() if "config_id=" in l}
    ids1 = {l.split("config_id=")[1].split()[0] for l in (r1 / "labels.extxyz").read_text().splitlines() if "config_id=" in l}
    assert len(ids0) == len(ids1) == 3 and not ids0 & ids1
    t1 = json.loads((r1 / "train.json").read_text())
    assert str(run / "round_0/labels.extxyz") in t1["train_files"] and str(r1 / "labels.extxyz") in t1["train_files"]
    # the committee of each round is registered and loadable by name
    import os

    os.environ["LIMACE_REGISTRY"] = str(run / "registry.yaml")
    try:
        names = {p.name for p in list_potentials(offline=True)}
    finally:
        del os.environ["LIMACE_REGISTRY"]
    assert {"toy-al-r0-m0", "toy-al-r0-m1", "toy-al-r1-m0", "toy-al-r1-m1"} <= names
    assert "| 1 |" in (run / "report.md").read_text() and "| 1 | held.extxyz | " in (run / "report.md").read_text()
    # control: true: each round's member 0 fine-tuned again without that round's labels (same start, recipe and
    # seed), evaluated the same way
    c = json.loads((r1 / "control.json").read_text())
    assert str(run / "round_0/labels.extxyz") in c["train_files"] and str(r1 / "labels.extxyz") not in c["train_files"]
    assert c["init_from"] == json.loads((run / "round_0/register.json").read_text())["members"][0]
    ev = json.loads((r1 / "evaluate.json").read_text())["held.extxyz"]
    assert c["sets"]["held.extxyz"]["n"] == ev["n"] and np.isfinite(c["sets"]["held.extxyz"]["energy_mae_mev_per_atom"])
    assert [r["control"]["held.extxyz"] for r in summary["rounds"]] == [
        json.loads((run / f"round_{k}/control.json").read_text())["sets"]["held.extxyz"] for k in (0, 1)]
    c0 = json.loads((run / "round_0/control.json").read_text())
    assert c0["train_files"] == [str(setup["base"])] and c0["init_from"] == setup["committee"][0]
    # the gate fixed in the config: checked on each round's evaluation, said in the summary and the report
    for r in summary["rounds"]:
        ev = r["evaluate"]["held.extxyz"]
        assert r["gate"] == {"passed": False, "checks": [
            {"set": "held.extxyz", "metric": "energy_mae", "bound": 1e6, "value": ev["energy_mae_mev_per_atom"], "ok": True},
            {"set": "held.extxyz", "metric": "energy_max", "bound": 0.0, "value": ev["energy_max_mev_per_atom"], "ok": False}]}
    assert any(m.startswith("round 0: gate: member 0 fails (held.extxyz energy_max ") for m in said), said
    text = (run / "report.md").read_text()
    assert f"- round 1: fails (held.extxyz energy_max {summary['rounds'][1]['evaluate']['held.extxyz']['energy_max_mev_per_atom']:.2f} > 0 meV/atom)" in text
    # scripts/learn_control.py (for runs without control: true) finds round 1's control done and does not redo it
    import importlib.util

    spec = importlib.util.spec_from_file_location("learn_control", Path(__file__).parents[1] / "scripts" / "learn_control.py")
    control = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(control)
    stamp = (r1 / "control.json").stat().st_mtime_ns
    control.main(str(cfg), 1)
    assert (r1 / "control.json").stat().st_mtime_ns == stamp


def test_committee_spread_is_larger_far_from_training(setup):
    from limace.learn import _load_models, committee_predict
    from ase.io import read

    models = _load_models([Path(p) for p in setup["committee"]], "float64")
    near = read(setup["base"], ":")[:4]
    far = [g.strained(cuau(), [-0.15], "iso")[0], g.rattled(cuau(), [0.4], seed=1)[0]]
    frames = near + far
    spread = committee_predict(models, frames).energy_spread_per_atom(np.array([len(a) for a in frames]))
    assert spread[4:].min() > spread[:4].max()


def test_committee_evaluation_predicts_each_member_once(setup, monkeypatch):
    """evaluate_committee reports member 0's errors as evaluate_model does, from one prediction per member."""
    import limace.training.evaluate as ev
    from limace.learn import _load_models, evaluate_committee

    models = _load_models([Path(p) for p in setup["committee"]], "float64")
    alone = ev.evaluate_model(models[0], str(setup["held"])).summary()["all"]
    calls = []
    real = ev.predict_mace
    monkeypatch.setattr(ev, "predict_mace", lambda m, frames, **kw: calls.append(id(m)) or real(m, frames, **kw))
    rep = evaluate_committee(models, [str(setup["held"])])["held.extxyz"]
    assert sorted(calls) == sorted(id(m) for m in models)
    assert rep["metrics"] == pytest.approx(alone)
    assert rep["spearman_force_spread_vs_energy_error"] is not None


def test_bad_learn_configs_are_one_line_errors(setup, tmp_path, capsys):
    from limace.cli import main

    for over, expect in (({"committee": setup["committee"][:1]}, "at least 2"),
                         ({"rounds": 0}, "rounds"),
                         ({"select": {"budget": -1}}, "select.budget"),
                         ({"explore": {"structures": [], "phases": []}}, "seed structures"),
                         ({"bogus": 1}, "unknown key 'bogus'"),
                         ({"protocol": "pbe-pw4000"}, "pbe-pw4000"),
                         ({"evaluate_splits": ["test-v1"]}, "DATASET:SPLIT"),
                         ({"evaluate_splits": ["li-in-sn-v9:test-v1"]}, "not a shipped dataset"),
                         ({"evaluate_splits": ["li-in-sn-v1:train"]}, "evaluate_splits"),
                         ({"base_dataset": "li-in-sn-v9"}, "not a shipped dataset"),
                         ({"base_dataset": "li-in-sn-v1", "evaluate_splits": ["train"]}, "evaluate_splits"),
                         ({"base_data": []}, "base_data"),
                         ({"seed": -3}, "seed"),
                         ({"control": "sometimes"}, "key 'control' must be true/false"),
                         ({"explore": {"structures": [str(setup["seeds"])], "from_runs": [str(tmp_path)]}},
                          "holds no `limace screen` or `limace barriers` output"),
                         ({"explore": {"structures": [str(setup["seeds"])], "from_runs": ["/no/such/dir"]}},
                          "not a directory"),
                         ({"gate": {"valid.extxyz": {"energy_mae": 3.0}}}, "not an evaluation file of this run (have: held.extxyz)"),
                         ({"gate": {"held.extxyz": {"energy_mea": 3.0}}}, "unknown metric 'energy_mea'"),
                         ({"gate": {"held.extxyz": {"energy_mae": -1}}}, "gate.held.extxyz.energy_mae"),
                         ({"explore": {"phases": ["LiSn"], "repeat_to_atoms": 100000}}, "explore.repeat_to_atoms"),
                         ({"train_configs": [str(setup["train"])] * 2}, "both given"),
                         ({"train_config": "", "train_configs": [str(setup["train"])]}, "one file per committee member"),
                         ({"train_config": "", "train_configs": [str(setup["train"]), "nope.yaml"]}, "nope.yaml")):
        p = learn_config(setup, tmp_path / "x", **over)
        with pytest.raises(SystemExit) as exc:
            main(["learn", str(p)])
        err = capsys.readouterr().err.strip().splitlines()
        assert exc.value.code == 2 and len(err) == 1 and err[0].startswith("limace: error:") and expect in err[0], err
        assert not (tmp_path / "x").exists()


def test_a_train_config_without_data_is_filled_in_by_the_loop(setup, tmp_path):
    """The members' fine-tune file needs no data section (the loop sets the data and init_from); one that cannot
    build fails when the config is read, before any DFT."""
    from limace.core.errors import ValidationError
    from limace.learn import load_learn_config, member_train_config

    raw = yaml.safe_load(setup["train"].read_text())
    raw.pop("data")
    bare = tmp_path / "bare.yaml"
    bare.write_text(yaml.safe_dump(raw))
    cfg = load_learn_config(learn_config(setup, tmp_path / "bare_run", train_config=str(bare)))
    t = member_train_config(cfg.train_config, [str(setup["base"])], setup["committee"][0])
    assert t.data.train_file == [str(setup["base"])] and t.model.init_from == setup["committee"][0]
    raw["trainer"] = {"max_epochs": -3}
    bare.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValidationError, match="max_epochs"):
        load_learn_config(learn_config(setup, tmp_path / "bare_run2", train_config=str(bare)))


def test_members_of_different_architectures_follow_their_own_train_configs(setup, tmp_path):
    """``train_configs``: one fine-tune file per member, so a committee can mix model sizes (a larger model driving
    the exploration beside smaller members); each member comes out of the round with its own architecture."""
    from limace.learn import learn
    from limace.training.config import TrainConfig
    from limace.training.export import load_model
    from limace.training.run import train

    raw = yaml.safe_load(setup["train"].read_text())
    wide = dict(raw, model=dict(raw["model"], channels=12), run_dir=str(tmp_path / "wide"), seed=5)
    wide_file = tmp_path / "wide.yaml"
    wide_file.write_text(yaml.safe_dump(wide))
    wide_model = train(TrainConfig.from_dict(wide, source="test"), log=lambda m: None).model_paths[0]
    committee = [str(wide_model), setup["committee"][0]]
    run = tmp_path / "mixed"
    cfg = learn_config(setup, run, committee=committee, train_config="",
                       train_configs=[str(wide_file), str(setup["train"])], rounds=1)
    assert learn(cfg, log=lambda m: None, stop_after=(0, "train")) == {"stopped_after": [0, "train"]}
    members = json.loads((run / "round_0" / "train.json").read_text())["members"]

    def channels(path):
        return int(load_model(path, dtype="float64").node_embedding.linear.irreps_out.dim)

    assert [channels(m) for m in members] == [12, 8] == [channels(m) for m in committee]


def test_base_dataset_splits_become_the_base_and_evaluation_files(setup, tmp_path):
    """``base_dataset``: its train split is what every fine-tune starts from; the frozen test split is evaluated
    (reporting only) and never trained on."""
    from ase.io import read

    from limace.data.datasets import manifest
    from limace.learn import ActiveLearning, load_learn_config

    cfg = load_learn_config(learn_config(setup, tmp_path / "ds", base_dataset="li-in-sn-v1",
                                         evaluate_splits=["test-v1"]))
    al = ActiveLearning(cfg, log=lambda m: None)
    al.materialize_dataset()
    man = manifest("li-in-sn-v1")
    train_file, = [f for f in al.base_files if f.endswith("li-in-sn-v1_train.extxyz")]
    test_file, = [f for f in al.eval_files if f.endswith("li-in-sn-v1_test-v1.extxyz")]
    train_ids = {a.info["config_id"] for a in read(train_file, ":")}
    test_ids = {a.info["config_id"] for a in read(test_file, ":")}
    assert len(train_ids) == man["files"]["train"]["n"]
    assert test_ids == set(man["frozen"]["test-v1"]["config_ids"]) and not train_ids & test_ids
    assert str(setup["base"]) in al.base_files and str(setup["held"]) in al.eval_files


def test_dataset_splits_can_be_evaluated_without_training_on_the_dataset(setup, tmp_path):
    """``evaluate_splits: [DATASET:SPLIT]`` without ``base_dataset``: the frozen and extrapolation splits are
    evaluated while the fine-tunes train on the base files alone (e.g. a training file that leaves a validation set
    out, so that the round's members can be compared like for like with the shipped potential)."""
    from ase.io import read

    from limace.data.datasets import manifest
    from limace.learn import ActiveLearning, load_learn_config

    cfg = load_learn_config(learn_config(setup, tmp_path / "ds",
                                         evaluate_splits=["li-in-sn-v1:test-v1", "li-in-sn-v1:extrapolation"]))
    al = ActiveLearning(cfg, log=lambda m: None)
    al.materialize_dataset()
    assert al.base_files == [str(setup["base"])]  # no train split of the dataset
    man = manifest("li-in-sn-v1")
    test_file, ext_file = al.eval_files[-2:]
    assert test_file.endswith("li-in-sn-v1_test-v1.extxyz") and ext_file.endswith("li-in-sn-v1_extrapolation.extxyz")
    assert {a.info["config_id"] for a in read(test_file, ":")} == set(man["frozen"]["test-v1"]["config_ids"])
    assert len(read(ext_file, ":")) == man["files"]["extrapolation"]["n"]
    assert str(setup["held"]) in al.eval_files


def test_gate_passes_only_when_every_bound_holds():
    from limace.learn import gate_result

    ev = {"valid.extxyz": {"energy_mae_mev_per_atom": 3.0, "energy_max_mev_per_atom": 12.0,
                           "metrics": {"energy_rmse": 4.0, "forces_mae": 20.0, "forces_rmse": 30.0}}}
    assert gate_result({"valid.extxyz": {"energy_mae": 3.0, "forces_mae": 25.0}}, ev)["passed"] is True
    res = gate_result({"valid.extxyz": {"energy_mae": 3.0, "forces_rmse": 29.9}}, ev)
    assert res["passed"] is False and [c["ok"] for c in res["checks"]] == [True, False]
    # a set the evaluation lacks fails instead of passing unseen
    miss = gate_result({"other.extxyz": {"energy_mae": 100.0}}, ev)
    assert miss == {"passed": False, "checks": [{"set": "other.extxyz", "metric": "energy_mae", "bound": 100.0,
                                                  "value": None, "ok": False}]}


def test_a_round_without_labels_is_its_own_control(setup):
    """Nothing above select.min_force_spread: the round labels nothing, its members are fine-tuned on the same data,
    and the control is member 0's fine-tune itself (no second, identical fine-tune)."""
    from limace.learn import learn

    run = setup["tmp"] / "al_none"
    cfg = learn_config(setup, run, rounds=1, control=True,
                       select={"budget": 3, "pool_factor": 2, "min_force_spread": 1e9})
    said = []
    summary = learn(cfg, log=said.append)
    [r] = summary["rounds"]
    assert r["labels"] == 0 and r["select"]["n_candidates"] > 0
    c = json.loads((run / "round_0/control.json").read_text())
    assert c["sets"] == r["evaluate"] and r["control"] == r["evaluate"] and "no labels" in c["note"]
    assert not (run / "round_0" / "control").exists()
    assert any(m.startswith("round 0: control: round 0 has no labels") for m in said), said
