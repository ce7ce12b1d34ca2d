"""The domain check shipped with the potential (limace.potentials.domain): flags what the training data never saw."""
from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk

from limace.core.errors import ModelFileError
from limace.data import load_dataset
from limace.potentials import load_batched
from limace.potentials.domain import DomainCheck, atom_descriptors, domain_path


@pytest.fixture(scope="module")
def model():
    return load_batched("limace-lisnin-small", dtype="float64")


def _li_interstitial():
    a = bulk("Li", "bcc", a=3.44, cubic=True).repeat(3)
    a.append("Li")
    a.positions[-1] = [3.44 * 1.5, 3.44 * 1.5, 3.44 * 1.0]  # an octahedral hole: 1.72 A from two neighbours
    return a


def test_the_shipped_potential_comes_with_its_domain_check(model):
    assert model.domain is not None
    assert np.isfinite(model.domain.threshold) and model.domain.threshold > 0
    # built on 1.14's own training set (scripts/build_domain.py --train): examples/candidate25 (the train split of the
    # pack of 1117 less 1.4's 79 validation configurations, plus the learn and barrier labels then), the 16 learn
    # labels made since, the 27 hull checks of examples/fresh28, the plan's Li17Sn4 and Li22Sn5 at equilibrium and
    # the 50 hull checks of examples/fresh29, then the 35 checks of the 1.8 and 1.9 hulls and the plan's 7 newest cells,
    # then the 16 checks of 1.9's hulls in screen_verify 287-302, then the 10 checks that judged 1.11 and the plan's
    # Li17Sn4 at -1 % and +1 %, then the 12 checks that judged 1.12 and the plan's Li22Sn5 at -1 % and +1 %, then the
    # 11 checks that judged 1.13 and the plan's 7 newest small cells
    n_train_of_1_14 = 1121
    assert model.domain.meta["n_configs"] == n_train_of_1_14


def test_an_interstitial_is_outside_and_held_out_crystals_are_inside(model):
    test = load_dataset("li-in-sn-v1", "test")
    frames = [bulk("Li", "bcc", a=3.44, cubic=True).repeat(2), _li_interstitial(), *test[:20]]
    scores = model.domain.scores(model, frames)
    outside = scores > model.domain.threshold
    assert outside.tolist() == [False, True] + [False] * 20
    assert scores[1] > 3 * model.domain.threshold  # far outside, not a borderline call


def test_build_save_load_gives_the_same_scores(model, tmp_path):
    frames = load_dataset("li-in-sn-v1", "train")[:40]
    check = DomainCheck.build(model, frames, seed=1)
    # ten folds: every training configuration is scored once against the other nine tenths
    assert check.meta["holdout_configs"] == 40 and check.meta["folds"] == 10 and np.isfinite(check.threshold)
    desc = atom_descriptors(model, frames)
    same = DomainCheck.from_descriptors(desc, [a.numbers for a in frames], seed=1)
    assert same.threshold == pytest.approx(check.threshold, rel=1e-9)
    with pytest.raises(ValueError, match="folds"):
        DomainCheck.from_descriptors(desc, [a.numbers for a in frames], folds=41)
    path = check.save(tmp_path / "x.domain.npz")
    again = DomainCheck.load(path)
    probe = [_li_interstitial(), frames[0]]
    np.testing.assert_allclose(again.scores(model, probe), check.scores(model, probe), rtol=1e-5)
    assert again.threshold == check.threshold
    # a training configuration is at distance zero from itself
    assert check.scores(model, [frames[3]])[0] == pytest.approx(0.0, abs=1e-4)


def test_a_damaged_domain_file_is_a_one_line_error(tmp_path):
    bad = tmp_path / "y.domain.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ModelFileError, match="not a readable domain check"):
        DomainCheck.load(bad)
    assert domain_path("a/b/m-1.4.model").name == "m-1.4.domain.npz"


def test_the_screen_keeps_outside_compounds_off_the_hull(model):
    from limace.analysis.screen import _domain_filter

    li = bulk("Li", "bcc", a=3.44, cubic=True).repeat(2)
    li.info["name"] = "Li_bcc"
    inter = _li_interstitial()
    inter.info["name"] = "Li_interstitial"
    lisn = bulk("LiSn", "cesiumchloride", a=3.3)  # an in-domain compound
    lisn.info["name"] = "B2-LiSn"
    squashed = lisn.copy()
    squashed.set_cell(squashed.cell * 0.72, scale_atoms=True)  # 63 % of the volume: nothing like it in training
    squashed.info["name"] = "B2-LiSn-squashed"
    scores = model.domain.scores(model, [li, inter, lisn, squashed])
    kept, rejected, warnings = _domain_filter(model, [li, inter, lisn, squashed])
    names = [a.info["name"] for a in kept]
    assert "Li_bcc" in names and "B2-LiSn" in names
    assert "Li_interstitial" in names and any("Li_interstitial" in w for w in warnings)  # an element: warned, kept
    assert scores[3] > model.domain.threshold, f"a 28 % compressed B2 LiSn scores {scores[3]:.1f}"
    assert [r["name"] for r in rejected] == ["B2-LiSn-squashed"]
    assert "training domain" in rejected[0]["reason"]


def test_md_stops_a_system_that_leaves_the_training_domain_and_runs_the_others(model, tmp_path):
    import dataclasses

    from limace.md.config import GuardConfig, MDConfig
    from limace.md.runner import run_md

    li = bulk("Li", "bcc", a=3.44, cubic=True).repeat(2)
    cfg = MDConfig(ensemble="nvt_langevin", temperature_K=300.0, steps=4, timestep_fs=1.0, log_every=2,
                   guard=GuardConfig(domain_every=2))
    res = run_md([li, _li_interstitial()], model, cfg, output_dir=tmp_path / "on")
    stopped = {s.system: s.reason for s in res.stopped}
    assert list(stopped) == [1] and "training domain" in stopped[1]
    assert (tmp_path / "on" / "stopped_0001.extxyz").is_file()
    # the domain guard alone is switched off (the interstitial, 1.72 A from two neighbours, heats up fast: the
    # temperature guard is widened so that it is not what this compares)
    off = run_md([li, _li_interstitial()], model,
                 dataclasses.replace(cfg, guard=GuardConfig(domain=False, max_temperature_K=1e6)),
                 output_dir=tmp_path / "off")
    assert off.stopped == []


def test_barriers_score_every_saddle_against_the_domain(model, tmp_path):
    from limace.analysis.barriers import BarrierSettings, run_barriers

    li = bulk("Li", "bcc", a=3.44)
    li.write(tmp_path / "Li.extxyz")
    rep = run_barriers([str(tmp_path / "Li.extxyz")], model, out=tmp_path / "b",
                       settings=BarrierSettings(min_image_distance=7.0, n_images=3, max_steps=60))
    p = rep["phases"][0]
    scored = [h for h in p["hops"] if "domain_score" in h]
    assert scored and p["domain_threshold"] == pytest.approx(model.domain.threshold, abs=0.01)
    assert all(h["outside_domain"] == (h["domain_score"] > model.domain.threshold) for h in scored)
    assert p["outside_domain_hops"] == [h["hop"] for h in scored if h["outside_domain"]]


def test_the_ase_calculator_reports_the_same_domain_score(model):
    from limace.potentials import load

    calc = load("limace-lisnin-small")
    for atoms in (bulk("Li", "bcc", a=3.44, cubic=True).repeat(2), _li_interstitial()):
        atoms.calc = calc
        atoms.get_potential_energy()
        want = model.domain.scores(model, [atoms])[0]
        assert calc.results["domain_score"] == pytest.approx(want, rel=1e-4, abs=1e-4)
        assert calc.results["outside_domain"] == bool(want > model.domain.threshold)


def test_the_ase_calculator_without_the_domain_check_gives_the_same_energy_and_forces():
    """``load(..., domain=False)``: no domain results (and no second forward pass), the same energy and forces."""
    from limace.potentials import load

    atoms = _li_interstitial()
    with_check, without = load("limace-lisnin-small"), load("limace-lisnin-small", domain=False)
    atoms.calc = with_check
    e, f = atoms.get_potential_energy(), atoms.get_forces()
    atoms.calc = without
    assert atoms.get_potential_energy() == pytest.approx(e, abs=1e-9)
    assert np.allclose(atoms.get_forces(), f, atol=1e-9)
    assert "domain_score" not in without.results and without.domain is None
    assert "domain_score" in with_check.results
