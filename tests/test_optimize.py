"""Batched FIRE (limace.analysis.optimize) against ASE's FIRE, group independence, convergence freezing."""

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.optimize import FIRE

from limace.analysis.optimize import fire_concat, fire_init, fire_select, fire_step
from limace.errors import LimaceInputError


def _rattled(seed, repeat=(2, 2, 2), symbol="Cu", amplitude=0.1):
    atoms = bulk(symbol, "fcc", a=3.6 if symbol == "Cu" else 4.05, cubic=True).repeat(repeat)
    atoms.rattle(amplitude, rng=np.random.default_rng(seed))
    atoms.calc = EMT()
    return atoms


def _emt_forces(atoms_list, x, counts):
    out = []
    for atoms, part in zip(atoms_list, torch.split(x, counts)):
        atoms.positions = part.numpy()
        out.append(torch.from_numpy(atoms.get_forces().copy()))
    return torch.cat(out)


def test_one_group_follows_ase_fire_step_by_step():
    atoms = _rattled(0)
    ref = atoms.copy()
    ref.calc = EMT()
    opt = FIRE(ref, logfile=None, maxstep=10.0)  # the cap never acts: ASE caps the whole step, we cap rows
    x = torch.tensor(atoms.positions)
    state = fire_init(x, torch.zeros(len(atoms), dtype=torch.long), 1, max_step=10.0)
    for _ in range(40):
        opt.run(fmax=1e-9, steps=1)  # one more step
        x, state = fire_step(state, x, _emt_forces([atoms], x, [len(atoms)]))
        np.testing.assert_allclose(x.numpy(), ref.positions, atol=1e-10)
    assert int(state.n_steps[0]) == 40


def test_groups_are_independent_and_converged_groups_stay_put():
    a, b = _rattled(1), _rattled(2, symbol="Al", repeat=(1, 1, 2), amplitude=0.2)
    counts = [len(a), len(b)]
    x0 = torch.tensor(np.concatenate([a.positions, b.positions]))
    group = torch.repeat_interleave(torch.arange(2), torch.tensor(counts))
    # Together
    x, st = x0.clone(), fire_init(x0, group, 2)
    for _ in range(30):
        x, st = fire_step(st, x, _emt_forces([a, b], x, counts), fmax=0.05)
    # Separately
    sep = []
    for atoms, part in zip([a.copy(), b.copy()], torch.split(x0, counts)):
        atoms.calc = EMT()
        xi, si = part.clone(), fire_init(part, torch.zeros(len(part), dtype=torch.long), 1)
        for _ in range(30):
            xi, si = fire_step(si, xi, _emt_forces([atoms], xi, [len(atoms)]), fmax=0.05)
        sep.append((xi, si))
    np.testing.assert_allclose(x.numpy(), torch.cat([s[0] for s in sep]).numpy(), atol=1e-12)
    np.testing.assert_allclose(st.dt.numpy(), [float(s[1].dt[0]) for s in sep])
    # Run on: once a group's largest force is below fmax it no longer moves, the other still does.
    for _ in range(400):
        f = _emt_forces([a, b], x, counts)
        x_new, st = fire_step(st, x, f, fmax=0.05)
        if bool(st.converged.any()) and not bool(st.converged.all()):
            k = int(torch.nonzero(st.converged)[0])
            rows = group == k
            assert torch.equal(x_new[rows], x[rows])
            assert not torch.equal(x_new[~rows], x[~rows])
            assert float(st.max_force[k]) < 0.05
            break
        x = x_new
    else:
        pytest.fail("no group converged before the other")


def test_max_step_caps_each_row():
    x = torch.zeros((3, 3), dtype=torch.float64)
    forces = torch.tensor([[100.0, 0, 0], [0, 0.01, 0], [0, 0, -50.0]], dtype=torch.float64)
    st = fire_init(x, torch.tensor([0, 0, 1]), 2, max_step=0.1, dt_start=0.5)
    x1, st = fire_step(st, x, forces)
    np.testing.assert_allclose(torch.linalg.vector_norm(x1, dim=1).numpy(), [0.1, 0.5 * 0.5 * 0.01, 0.1])
    assert x1[0, 0] > 0 and x1[2, 2] < 0


def test_uphill_resets_only_that_group():
    x = torch.zeros((2, 3), dtype=torch.float64)
    st = fire_init(x, torch.tensor([0, 1]), 2)
    f = torch.tensor([[1.0, 0, 0], [1.0, 0, 0]], dtype=torch.float64)
    x, st = fire_step(st, x, f)
    x, st = fire_step(st, x, torch.tensor([[1.0, 0, 0], [-1.0, 0, 0]], dtype=torch.float64))
    assert float(st.dt[0]) == pytest.approx(0.1) and float(st.dt[1]) == pytest.approx(0.05)
    assert int(st.n_pos[0]) == 1 and int(st.n_pos[1]) == 0


def test_select_and_concat_keep_groups_aligned():
    x = torch.arange(15, dtype=torch.float64).reshape(5, 3)
    g = torch.tensor([0, 0, 1, 2, 2])
    st = fire_init(x, g, 3)
    x, st = fire_step(st, x, torch.ones_like(x))
    keep = torch.tensor([True, False, True])
    sub = fire_select(st, keep)
    assert sub.group_idx.tolist() == [0, 0, 1, 1] and sub.n_groups == 2
    both = fire_concat([sub, fire_init(x[:1], torch.zeros(1, dtype=torch.long), 1)])
    assert both.group_idx.tolist() == [0, 0, 1, 1, 2] and both.velocity.shape == (5, 3)


def test_bad_input_is_one_line_error():
    x = torch.zeros((4, 3))
    with pytest.raises(LimaceInputError, match="group_idx has values outside 0..1"):
        fire_init(x, torch.tensor([0, 1, 2, 0]), 2)
    with pytest.raises(LimaceInputError, match="x must be a float"):
        fire_init(torch.zeros((4, 2)), torch.zeros(4, dtype=torch.long), 1)
    with pytest.raises(LimaceInputError, match="dt_max must be a positive number"):
        fire_init(x, torch.zeros(4, dtype=torch.long), 1, dt_max=-1.0)
    st = fire_init(x, torch.zeros(4, dtype=torch.long), 1)
    with pytest.raises(LimaceInputError, match="must both have the shape"):
        fire_step(st, x, torch.zeros((3, 3)))


# -- L-BFGS ------------------------------------------------------------------------------------------------------------


def _lbfgs_relax(atoms_list, steps, fmax=0.01, **kw):
    from limace.analysis.optimize import lbfgs_init, lbfgs_step

    counts = [len(a) for a in atoms_list]
    x = torch.tensor(np.concatenate([a.positions for a in atoms_list]))
    group = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    st = lbfgs_init(x, group, len(counts), **kw)
    for _ in range(steps):
        x, st = lbfgs_step(st, x, _emt_forces(atoms_list, x, counts), fmax=fmax)
        if bool(st.converged.all()):
            break
    return x, st


def test_lbfgs_reaches_the_fire_minimum_in_fewer_steps():
    a = _rattled(4)
    x, st = _lbfgs_relax([a], 300, fmax=0.005)
    assert bool(st.converged[0])
    e_lbfgs = a.get_potential_energy()
    b = _rattled(4)
    opt = FIRE(b, logfile=None)
    opt.run(fmax=0.005, steps=1000)
    assert e_lbfgs == pytest.approx(b.get_potential_energy(), abs=1e-4)
    assert int(st.n_steps[0]) < opt.nsteps / 2


def test_lbfgs_groups_are_independent():
    a, b = _rattled(5), _rattled(6, symbol="Al", repeat=(1, 1, 2), amplitude=0.2)
    x, st = _lbfgs_relax([a, b], 12, fmax=1e-6)
    xa, _ = _lbfgs_relax([_rattled(5)], 12, fmax=1e-6)
    xb, _ = _lbfgs_relax([_rattled(6, symbol="Al", repeat=(1, 1, 2), amplitude=0.2)], 12, fmax=1e-6)
    np.testing.assert_allclose(x.numpy(), torch.cat([xa, xb]).numpy(), atol=1e-10)


def test_lbfgs_caps_rows_and_select_concat_keep_groups_aligned():
    from limace.analysis.optimize import lbfgs_concat, lbfgs_init, lbfgs_select, lbfgs_step

    x = torch.zeros((3, 3), dtype=torch.float64)
    group = torch.tensor([0, 0, 1])
    st = lbfgs_init(x, group, 2, max_step=0.1, h0=1.0)
    f = torch.tensor([[5.0, 0, 0], [1.0, 0, 0], [0, 0.01, 0]], dtype=torch.float64)
    x1, st = lbfgs_step(st, x, f)
    np.testing.assert_allclose(x1[:2, 0].numpy(), [0.1, 0.02])  # the group's step scaled so its longest row is 0.1
    np.testing.assert_allclose(x1[2, 1].item(), 0.01)  # the other group is not scaled
    both = lbfgs_concat([lbfgs_select(st, torch.tensor([False, True])), lbfgs_select(st, torch.tensor([True, False]))])
    assert both.group_idx.tolist() == [0, 1, 1]
    np.testing.assert_allclose(both.prev_x.numpy(), st.prev_x[[2, 0, 1]].numpy())


def test_lbfgs_bad_input_is_one_line_error():
    from limace.analysis.optimize import lbfgs_init

    x = torch.zeros((2, 3))
    with pytest.raises(LimaceInputError, match="L-BFGS memory must be an integer >= 1"):
        lbfgs_init(x, torch.zeros(2, dtype=torch.long), 1, memory=0)
    with pytest.raises(LimaceInputError, match="group_idx has values outside"):
        lbfgs_init(x, torch.tensor([0, 3]), 2)


def test_lbfgs_undoes_a_step_after_which_the_force_grew():
    from limace.analysis.optimize import lbfgs_init, lbfgs_step

    x0 = torch.zeros((2, 3), dtype=torch.float64)
    st = lbfgs_init(x0, torch.zeros(2, dtype=torch.long), 1, max_step=0.2)
    f0 = torch.tensor([[1.0, 0, 0], [0, 0, 0]], dtype=torch.float64)
    x1, st = lbfgs_step(st, x0, f0)
    assert not torch.equal(x1, x0)
    # the forces got 3x larger there (e.g. noise or a non-conservative NEB force): back to x0, smaller radius
    x2, st = lbfgs_step(st, x1, 3 * f0)
    np.testing.assert_array_equal(x2.numpy(), x0.numpy())
    assert int(st.n_rejected[0]) == 1 and float(st.radius[0]) == pytest.approx(0.1)
    assert not bool(st.valid.any())
    # with an objective, the energy decides instead: it fell, so the same forces are accepted
    st = lbfgs_init(x0, torch.zeros(2, dtype=torch.long), 1)
    x1, st = lbfgs_step(st, x0, f0, objective=torch.tensor([0.0], dtype=torch.float64))
    x2, st = lbfgs_step(st, x1, 3 * f0, objective=torch.tensor([-0.1], dtype=torch.float64))
    assert int(st.n_rejected[0]) == 0 and not torch.equal(x2, x1)
