"""Batched climbing-image NEB: many bands (hops) at once, every image of every band in one model call per step.

One :class:`BatchedNEB` holds all bands; each step it evaluates the interior images of all bands together
(:class:`limace.potentials.batched.BatchedMACE`, no stress), projects forces with the improved tangent
(Henkelman & Jonsson, J. Chem. Phys. 113, 9978 (2000)), applies the climbing image (highest interior image,
Henkelman, Uberuaga & Jonsson, J. Chem. Phys. 113, 9901 (2000)) and moves all images with batched L-BFGS or FIRE in which
each band is its own optimizer group and stops when converged. Convergence: max over atoms of the NEB force
(perpendicular force + spring, and the inverted parallel force on the climbing image) below ``fmax``,
as ASE measures it. Each image is evaluated at most once per step.

Position differences along the band (tangents, springs, path length) follow the minimum-image convention of the
cell, so a band whose atoms were wrapped into the cell (as read from files) gives the forces of the unwrapped band.
Bands whose barrier (the smaller of forward and backward) is below ``tight_below`` must also reach ``tight_fmax``:
a soft, low barrier converged at a loose fmax can be far from its saddle. With ``freeze=True`` an image whose NEB
force is below the band's fmax (and that is not the climbing image) stays where it is and is not evaluated again
until a neighbour's move lifts its NEB force above it again (its energy and true forces do not change while it
stays; DyNEB, Lindgren et al., J. Chem. Phys. 150, 044107 (2019)).

>>> result = run_neb([[initial, *images, final]], model, fmax=0.03)[0]      # doctest: +SKIP
>>> result.barrier_forward, result.converged                                 # doctest: +SKIP
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from ase import Atoms

from limace.core.optimize import OPTIMIZERS
from limace.core.errors import LimaceInputError


@dataclass
class NEBResult:
    """Energies along the path (eV, endpoints included), barriers, saddle, convergence."""

    energies: np.ndarray
    positions: list[np.ndarray]
    converged: bool
    steps: int
    fmax: float
    max_force: float
    climbing_image: int
    images: list[Atoms] = field(repr=False, default_factory=list)
    info: dict = field(default_factory=dict)
    cell: np.ndarray | None = field(repr=False, default=None)
    pbc: np.ndarray | None = field(repr=False, default=None)
    # the saddle's energy where it is not the band's highest (a saddle found otherwise, e.g. at a hop's dividing-plane
    # minimum, with a band that is a path through it rather than a converged band); None: the band's highest energy
    saddle_energy: float | None = None

    @property
    def top(self) -> float:
        """The saddle's energy (eV, absolute)."""
        return float(self.energies.max() if self.saddle_energy is None else self.saddle_energy)

    @property
    def barrier_forward(self) -> float:
        return float(self.top - self.energies[0])

    @property
    def barrier_backward(self) -> float:
        return float(self.top - self.energies[-1])

    @property
    def saddle(self) -> Atoms:
        if self.saddle_energy is not None:
            return self.images[self.climbing_image]
        return self.images[int(np.argmax(self.energies))]

    @property
    def path_length(self) -> np.ndarray:
        """Cumulative distance along the path (A), for plots."""
        d = [0.0]
        for a, b in zip(self.positions[:-1], self.positions[1:]):
            diff = b - a
            if self.cell is not None:
                from ase.geometry import find_mic

                diff, _ = find_mic(diff, self.cell, True if self.pbc is None else self.pbc)
            d.append(d[-1] + float(np.linalg.norm(diff)))
        return np.asarray(d)

    def as_dict(self) -> dict:
        return {
            "energies_eV": [float(e) for e in self.energies],
            "relative_energies_eV": [float(e - self.energies[0]) for e in self.energies],
            "path_A": [float(x) for x in self.path_length],
            "barrier_forward_eV": self.barrier_forward if self.converged else None,
            "barrier_backward_eV": self.barrier_backward if self.converged else None,
            "unconverged_estimate_eV": None if self.converged else self.barrier_forward,
            "converged": self.converged,
            "steps": self.steps,
            "fmax": self.fmax,
            "max_force": self.max_force,
            "climbing_image": self.climbing_image,
            **({"info": self.info} if self.info else {}),
        }

    def plot(self, ax=None, label: str | None = None):
        """Energy profile relative to the initial state; returns the matplotlib Axes."""
        if ax is None:  # a Figure of its own: no pyplot, no backend switch (fig = ax.figure; fig.savefig(...))
            from matplotlib.figure import Figure

            ax = Figure(figsize=(4.5, 3.2)).add_subplot()
        x = self.path_length
        y = self.energies - self.energies[0]
        style = "o-" if self.converged else "o--"
        ax.plot(x, y, style, label=label if self.converged else f"{label or ''} (not converged)".strip())
        ax.set_xlabel("path length (Å)")
        ax.set_ylabel("E − E(initial) (eV)")
        if label:
            ax.legend(fontsize=8)
        return ax


def check_band(band: Sequence[Atoms], where: str = "band") -> None:
    """One-line errors for endpoints/images that cannot form a band."""
    if len(band) < 3:
        raise LimaceInputError(f"{where}: needs the two endpoints and at least one image, got {len(band)} structures")
    ref = band[0]
    for k, im in enumerate(band[1:], start=1):
        if len(im) != len(ref):
            raise LimaceInputError(f"{where}: image {k} has {len(im)} atoms, image 0 has {len(ref)}")
        if not np.array_equal(im.numbers, ref.numbers):
            raise LimaceInputError(f"{where}: image {k} has a different species order than image 0")
        if not np.allclose(im.cell[:], ref.cell[:], atol=1e-6):
            raise LimaceInputError(f"{where}: image {k} has a different cell (NEB runs at fixed cell)")
    from ase.neighborlist import neighbor_list

    for k, im in enumerate(band):
        d = neighbor_list("d", im, 0.6)
        if len(d):
            raise LimaceInputError(f"{where}: image {k} has atoms closer than 0.6 A ({d.min():.2f} A); "
                                   "check the endpoints' atom order")


def mic(d: torch.Tensor, cell: torch.Tensor | None, pbc: torch.Tensor | None = None) -> torch.Tensor:
    """Displacements ``d [..., 3]`` to their minimum image in ``cell [3, 3]`` (rows = lattice vectors) along its
    periodic directions (``pbc [3]`` bool, default all). Exact for the short displacements between NEB images (shorter
    than half the smallest perpendicular width); ``cell=None`` leaves ``d`` as it is."""
    if cell is None:
        return d
    frac = d @ torch.linalg.inv(cell)
    shift = torch.round(frac)
    if pbc is not None:
        shift = shift * pbc.to(shift.dtype)
    return d - shift @ cell


def improved_tangent(pos: torch.Tensor, energies: torch.Tensor, cell: torch.Tensor | None = None,
                     pbc: torch.Tensor | None = None) -> torch.Tensor:
    """Unit tangents [n, m, 3] at the n interior images of a band with positions [n+2, m, 3] and energies [n+2]
    (differences between images in the minimum-image convention of ``cell`` when given)."""
    tp = mic(pos[2:] - pos[1:-1], cell, pbc)
    tm = mic(pos[1:-1] - pos[:-2], cell, pbc)
    e_prev, e, e_next = energies[:-2], energies[1:-1], energies[2:]
    up = (e_next > e) & (e > e_prev)
    down = (e_next < e) & (e < e_prev)
    dmax = torch.maximum((e_next - e).abs(), (e_prev - e).abs())
    dmin = torch.minimum((e_next - e).abs(), (e_prev - e).abs())
    w_plus = torch.where(e_next > e_prev, dmax, dmin)
    w_minus = torch.where(e_next > e_prev, dmin, dmax)
    w_plus = torch.where(up, torch.ones_like(w_plus), torch.where(down, torch.zeros_like(w_plus), w_plus))
    w_minus = torch.where(up, torch.zeros_like(w_minus), torch.where(down, torch.ones_like(w_minus), w_minus))
    tau = w_plus[:, None, None] * tp + w_minus[:, None, None] * tm
    norm = tau.flatten(1).norm(dim=1).clamp_min(1e-12)
    return tau / norm[:, None, None]


def neb_forces(pos: torch.Tensor, energies: torch.Tensor, forces: torch.Tensor, k: float, climb: bool,
               cell: torch.Tensor | None = None, pbc: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """NEB forces [n, m, 3] on the interior images and the index (0-based among interior images) of the climber.
    With ``cell`` every difference between images is taken in the minimum-image convention."""
    tau = improved_tangent(pos, energies, cell, pbc)
    f_par = (forces * tau).flatten(1).sum(dim=1)
    f_perp = forces - f_par[:, None, None] * tau
    lp = mic(pos[2:] - pos[1:-1], cell, pbc).flatten(1).norm(dim=1)
    lm = mic(pos[1:-1] - pos[:-2], cell, pbc).flatten(1).norm(dim=1)
    spring = k * (lp - lm)
    out = f_perp + spring[:, None, None] * tau
    ci = int(torch.argmax(energies[1:-1]))
    if climb:
        out[ci] = forces[ci] - 2.0 * f_par[ci] * tau[ci]
    return out, ci


class BatchedNEB:
    """All bands of a set of NEB calculations, evaluated together. See the module docstring.

    :meth:`forces` evaluates only the images whose positions changed since their last evaluation (all of them,
    unless the caller holds some still, as ``run_neb(freeze=True)`` does)."""

    def __init__(self, bands: Sequence[Sequence[Atoms]], model, k: float = 0.1, climb: bool = True,
                 endpoint_energies: Sequence[tuple[float, float]] | None = None):
        from limace.core.state import BatchedState

        self.bands = [list(b) for b in bands]
        for n, b in enumerate(self.bands):
            check_band(b, where=f"band {n}")
        self.model = model
        self.k = float(k)
        self.climb = bool(climb)
        interior = [im for b in self.bands for im in b[1:-1]]
        # the band and the optimizer live in float64 whatever the model's precision (it casts in and out): float32
        # positions and differences of them are too coarse for the curvature pairs of L-BFGS near a tight fmax
        self.state = BatchedState.from_atoms(interior, device=model.device, dtype=torch.float64)
        self.n_images = [len(b) - 2 for b in self.bands]
        self.n_atoms = [len(b[0]) for b in self.bands]
        # row ranges of each band's interior images in the flat position tensor
        starts = np.cumsum([0] + [n * m for n, m in zip(self.n_images, self.n_atoms)])
        self.rows = [(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:])]
        self.group_idx = torch.repeat_interleave(
            torch.arange(len(self.bands), device=model.device),
            torch.as_tensor([n * m for n, m in zip(self.n_images, self.n_atoms)], device=model.device))
        dt = torch.float64
        dev = model.device
        self.end_pos = [(torch.as_tensor(b[0].positions, dtype=dt, device=dev),
                         torch.as_tensor(b[-1].positions, dtype=dt, device=dev)) for b in self.bands]
        self.cells = [torch.as_tensor(b[0].cell[:], dtype=dt, device=dev) if b[0].pbc.any() else None
                      for b in self.bands]
        self.pbcs = [torch.as_tensor(b[0].pbc, device=dev) for b in self.bands]
        if endpoint_energies is None:
            ends = BatchedState.from_atoms([a for b in self.bands for a in (b[0], b[-1])], device=dev, dtype=dt)
            e = model(ends)["energy"].detach().reshape(-1, 2)
            endpoint_energies = [(float(x), float(y)) for x, y in e]
        self.end_e = [torch.as_tensor(pair, dtype=dt, device=dev) for pair in endpoint_energies]
        self.evaluations = 0  # image evaluations
        self.calls = 0  # model calls
        # a model that evaluates a subset of a state with the whole state's neighbour list (BatchedMACE's systems=)
        self._subsets = "systems" in inspect.signature(model.__call__).parameters
        self._last_x: torch.Tensor | None = None  # positions of the last evaluation of each image, energies, forces
        self._e = torch.zeros(self.state.n_systems, dtype=dt, device=dev)
        self._f = torch.zeros_like(self.state.positions)

    def _evaluate(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Energies [images] and forces [N, 3], evaluating only images that moved since their last evaluation."""
        st = self.state.replace(positions=positions)
        if self._last_x is None:
            todo = torch.ones(st.n_systems, dtype=torch.bool, device=positions.device)
        else:
            moved = (positions != self._last_x).any(dim=1).to(positions.dtype)
            todo = st.sum_per_system(moved) > 0
        if bool(todo.any()):
            if bool(todo.all()):
                out = self.model(st)
            elif self._subsets:  # the band's neighbour list is kept while frozen images change from step to step
                out = self.model(st, systems=todo)
            else:
                out = self.model(st.select(todo))
            self.calls += 1
            self.evaluations += int(todo.sum())
            rows = todo[st.system_idx]
            self._e = self._e.clone()
            self._f = self._f.clone()
            self._e[todo] = out["energy"].detach().to(self._e.dtype)
            self._f[rows] = out["forces"].detach().to(self._f.dtype)
        self._last_x = positions.detach().clone()
        self.state = st
        return self._e, self._f

    def forces(self, positions: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], list[int]]:
        """NEB forces [N, 3] for all interior images, the band energies (endpoints included) and climbers."""
        e_all, f_all = self._evaluate(positions)
        neb_f = torch.empty_like(f_all)
        energies, climbers = [], []
        e0 = 0
        for b, (r0, r1) in enumerate(self.rows):
            n, m = self.n_images[b], self.n_atoms[b]
            pos = torch.cat([self.end_pos[b][0][None], positions[r0:r1].reshape(n, m, 3), self.end_pos[b][1][None]])
            en = torch.cat([self.end_e[b][:1], e_all[e0:e0 + n], self.end_e[b][1:]])
            fb, ci = neb_forces(pos, en, f_all[r0:r1].reshape(n, m, 3), self.k, self.climb, self.cells[b],
                                self.pbcs[b])
            neb_f[r0:r1] = fb.reshape(-1, 3)
            energies.append(en)
            climbers.append(ci)
            e0 += n
        return neb_f, energies, climbers


def _band_fmax(energies: list[torch.Tensor], fmax: float, tight_fmax: float | None, tight_below: float,
               device) -> torch.Tensor:
    """Convergence threshold per band: ``tight_fmax`` where the smaller of forward and backward barrier is below
    ``tight_below`` (eV), else ``fmax``."""
    return torch.as_tensor([converged_fmax(float(en.max() - torch.maximum(en[0], en[-1])), fmax, tight_fmax,
                                           tight_below) for en in energies], dtype=torch.float64, device=device)


def converged_fmax(smaller_barrier: float, fmax: float, tight_fmax: float | None, tight_below: float) -> float:
    """The fmax a band converges to: ``tight_fmax`` where its smaller barrier (forward or backward, eV) is below
    ``tight_below``, else ``fmax``."""
    if tight_fmax is not None and smaller_barrier < tight_below:
        return min(float(fmax), float(tight_fmax))
    return float(fmax)


def run_neb(bands: Sequence[Sequence[Atoms]], model, fmax: float = 0.03, max_steps: int = 500, k: float = 0.1,
            climb: bool = True, optimizer: str = "lbfgs", dt: float = 0.1, max_dt: float = 1.0,
            max_step: float = 0.2, memory: int = 20, endpoint_energies=None,
            tight_fmax: float | None = None, tight_below: float = 0.15, freeze: bool = False,
            progress: bool = False) -> list[NEBResult]:
    """Run CI-NEB on all ``bands`` (each ``[initial, *images, final]``) at once; one :class:`NEBResult` per band.

    ``optimizer="lbfgs"`` (default, as :class:`limace.analysis.barriers.BarrierSettings`): batched L-BFGS
    (:func:`limace.core.optimize.lbfgs_step`: one history of ``memory`` pairs per band, dropped when the band's
    climbing image changes; no atom moves more than ``max_step``), usually several times fewer steps than
    ``"fire"``: batched FIRE with ASE's defaults (dt 0.1, dtmax 1.0, maxstep 0.2 A).
    ``tight_fmax``: bands whose smaller barrier (forward or backward) is below ``tight_below`` eV converge only at
    this fmax. ``freeze``: images below their band's fmax (not the climber) are held still and not re-evaluated.
    Converged bands leave the batch (they are not evaluated again). A band that does not reach its fmax within
    ``max_steps`` is returned with ``converged=False`` (its barrier fields are None in ``as_dict``).
    ``info`` of each result: ``model_calls`` and ``image_evaluations`` of the whole run, ``band_evaluations`` of the
    band, ``fmax_used``.
    """
    from limace.core.optimize import group_max_force

    bands = [list(b) for b in bands]
    n_bands = len(bands)
    if n_bands == 0:
        raise LimaceInputError("run_neb: no bands given")
    if optimizer not in OPTIMIZERS:
        raise LimaceInputError(f"run_neb: optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    neb = BatchedNEB(bands, model, k=k, climb=climb, endpoint_energies=endpoint_energies)
    end_e = [tuple(float(v) for v in e) for e in neb.end_e]
    active = list(range(n_bands))  # original band numbers, in the order of the current batch
    x = neb.state.positions.detach().clone()
    opt = OPTIMIZERS[optimizer]
    params = dict(dt_start=dt, dt_max=max_dt) if optimizer == "fire" else dict(memory=memory)
    fire = opt.init(x, neb.group_idx, n_bands, max_step=max_step, **params)
    last_climbers = None
    final: dict[int, dict] = {}
    calls = evaluations = 0
    band_evals = [0] * n_bands
    bar = _bar(max_steps, progress)
    for step in range(max_steps + 1):
        ev_before = neb._last_x
        f, energies, climbers = neb.forces(x)
        # images evaluated this step, per band (all on the first step and after a batch change)
        for pos_in_batch, b in enumerate(active):
            r0, r1 = neb.rows[pos_in_batch]
            n = neb.n_images[pos_in_batch]
            if ev_before is None:
                band_evals[b] += n
            else:
                moved = (x[r0:r1] != ev_before[r0:r1]).any(dim=1).reshape(n, -1).any(dim=1)
                band_evals[b] += int(moved.sum())
        fm = _band_fmax(energies, fmax, tight_fmax, tight_below, x.device)
        frozen_rows = None
        if freeze:
            img_idx = torch.repeat_interleave(
                torch.arange(sum(neb.n_images), device=x.device),
                torch.as_tensor([m for n, m in zip(neb.n_images, neb.n_atoms) for _ in range(n)], device=x.device))
            img_f = group_max_force(f, img_idx, sum(neb.n_images))
            img_band = torch.repeat_interleave(torch.arange(len(active), device=x.device),
                                               torch.as_tensor(neb.n_images, device=x.device))
            is_climber = torch.zeros_like(img_f, dtype=torch.bool)
            offs = np.cumsum([0] + neb.n_images[:-1])
            for pos_in_batch, c in enumerate(climbers):
                is_climber[int(offs[pos_in_batch]) + c] = True
            frozen_img = (img_f < fm[img_band]) & ~is_climber
            frozen_rows = frozen_img[img_idx]
            f = torch.where(frozen_rows[:, None], torch.zeros_like(f), f)
        if optimizer == "fire":
            x_new, fire = opt.step(fire, x, f, fmax=fm)
        else:
            reset = None if last_climbers is None else torch.as_tensor(
                [a != b for a, b in zip(climbers, last_climbers)], device=x.device)
            x_new, fire = opt.step(fire, x, f, fmax=fm, reset=reset)
            last_climbers = climbers
        if frozen_rows is not None:
            x_new = torch.where(frozen_rows[:, None], x, x_new)
        conv = fire.converged.cpu()
        out_of_steps = step == max_steps
        for pos_in_batch, b in enumerate(active):
            if bool(conv[pos_in_batch]) or out_of_steps:
                r0, r1 = neb.rows[pos_in_batch]
                final[b] = {"x": x[r0:r1].detach().cpu().double().numpy().reshape(neb.n_images[pos_in_batch], -1, 3),
                            "energies": energies[pos_in_batch].cpu().double().numpy(),
                            "climber": climbers[pos_in_batch], "converged": bool(conv[pos_in_batch]),
                            "steps": step, "max_force": float(fire.max_force[pos_in_batch]),
                            "fmax": float(fm[pos_in_batch])}
        if out_of_steps or bool(conv.all()):
            calls += neb.calls
            evaluations += neb.evaluations
            break
        if bool(conv.any()):
            keep = ~conv
            calls += neb.calls
            evaluations += neb.evaluations
            x_new = x_new[keep.to(x.device)[fire.group_idx]]
            fire = opt.select(fire, keep)
            if last_climbers is not None:
                last_climbers = [c for c, kp in zip(last_climbers, keep.tolist()) if kp]
            active = [b for b, c in zip(active, conv.tolist()) if not c]
            neb = BatchedNEB([bands[b] for b in active], model, k=k, climb=climb,
                             endpoint_energies=[end_e[b] for b in active])
        x = x_new
        bar.update(1)
        bar.set_postfix(fmax=f"{float(fire.max_force.max()):.3f}", left=len(active))
    bar.close()
    results = []
    for b, band in enumerate(bands):
        rec = final[b]
        pos = [band[0].positions.copy(), *rec["x"], band[-1].positions.copy()]
        imgs = []
        for p, src in zip(pos, band):
            a = src.copy()
            a.positions = p
            imgs.append(a)
        results.append(NEBResult(energies=rec["energies"], positions=pos, converged=rec["converged"],
                                 steps=rec["steps"], fmax=rec["fmax"], max_force=rec["max_force"],
                                 climbing_image=rec["climber"] + 1, images=imgs,
                                 info={"model_calls": calls, "image_evaluations": evaluations,
                                       "band_evaluations": band_evals[b]},
                                 cell=band[0].cell[:].copy() if band[0].pbc.any() else None,
                                 pbc=band[0].pbc.copy()))
    return results


def _bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="NEB", disable=not enabled, unit="step", dynamic_ncols=True)
