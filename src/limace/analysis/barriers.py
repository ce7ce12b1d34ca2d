"""Li vacancy-hop barriers of whole phases: hops -> vacancy sites -> bounds -> batched NEB -> percolation -> reports.

Pipeline of one phase (:func:`phase_barriers`):

1. reduce the bulk to its primitive cell and relax it (cell and positions); find the symmetry-distinct Li hops (:func:`limace.analysis.hops.distinct_hops`)
   and one vacancy supercell shared by all hops (:func:`limace.analysis.hops.vacancy_supercell_matrix`: periodic
   images of the vacancy >= ``min_image_distance`` apart, every width >= twice the hop cutoff);
2. relax one vacancy per symmetry-distinct site the hops need and map it onto the equivalent sites
   (:func:`limace.analysis.hops.vacancy_sites`): the site energies E_i and every hop's relaxed endpoints;
3. bound every hop's absolute saddle energy S_ij: below by max(E_i, E_j), and estimate it from above by the highest
   energy along the interpolated (IDPP) band between the relaxed endpoints (one batched single-point call);
4. certify lazily: the 1D, 2D and 3D percolation barriers are certified when the value from the converged hops
   equals the value with every remaining hop at its lower bound (E* only grows with a saddle,
   :func:`limace.analysis.percolation.percolation_bounds`). While a dimension is open, the unknown hops of the
   component that makes its lower bound are the only ones that can close it: they first get the dividing-plane bound
   (one constrained image each), and if they are still on that component their climbing-image NEBs run (batched);
   repeat. Hops that never reach such a component are never computed. ``all_hops=True`` runs every hop;
5. percolation from site and saddle energies (science.md); optionally (``check_size``) the percolating hops again in
   the next larger supercell, with the change reported.

``barriers.json`` (written with ``--out DIR`` by ``limace barriers``) has the schema of docs/outputs.md. Energies in
it are relative to ``energy_reference_eV`` (the lowest vacancy-site energy of the phase, absolute). Barriers of hops
whose NEB did not converge are null (never reported silently as barriers) and such hops are left out of the
percolation analysis (a percolation value they might lower is reported as not certified). Work is resumable: each
phase's results are stored in ``DIR/<phase>/neb.json`` (atomic write) and not recomputed. Bands on disk:
``DIR/<phase>/hops/hop_<k>/{initial,final,band,climbing_image}.extxyz`` and ``profile.png``.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms

from limace.core.errors import LimaceInputError
from limace.core.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text


@dataclass(frozen=True)
class BarrierSettings:
    cutoff: float = 3.6  # A, longest Li-Li hop considered
    min_image_distance: float = 13.0  # A, between periodic images of the vacancy (shortest supercell vector)
    n_images: int = 5
    interpolation: str = "idpp"
    fmax: float = 0.03  # eV/A, NEB convergence
    tight_fmax: float = 0.01  # eV/A, NEB convergence of hops whose smaller barrier is below tight_below
    tight_below: float = 0.15  # eV
    optimizer: str = "lbfgs"  # NEB and endpoint-relaxation optimizer: lbfgs (fewer steps) or fire (ASE's defaults)
    endpoint_fmax: float = 0.01  # eV/A
    max_steps: int = 400
    spring: float = 0.1
    relax_bulk: bool = True
    coordination_cutoff: float = 3.5
    all_hops: bool = False  # NEB of every hop, not only those the percolation barriers need
    freeze: bool = True  # DyNEB: images below fmax are held and not re-evaluated
    max_band_atoms: int | None = None  # atoms (images x atoms) of the bands run together; None: all at once
    check_size: bool = False  # the percolating hops again in the next larger supercell
    plane_bound: bool = True  # lower bound of each saddle from its dividing plane (a constrained relaxation)
    plane_fmax: float = 0.005  # eV/A: a minimum stopped early lies above the true one (by ~F^2/2k on soft modes)
    bound_margin: float = 0.005  # eV taken off the plane bound: converged NEB saddles and minima differ by that much
    # a second NEB, from a fresh band of this many images, of each hop that sets a percolation value (the lower
    # converged saddle is kept); 0: off. Li17Sn4's hop 7: 0.160 eV with 5 images, 0.147 with 9 (float64)
    recheck_images: int = 9
    recheck_max_steps: int = 100  # a second look that has not converged by then keeps the first saddle
    # no second look at a hop whose saddle lies within this of its dividing-plane minimum: every path between the
    # endpoints crosses that plane, so no other saddle can be lower than the plane's minimum (the same bound that lets
    # the certification skip hops); Li17Sn4's hop 7, whose second look finds a lower saddle, is 36 meV above its plane
    recheck_plane_tol: float = 0.002  # eV
    # a hop's saddle without an NEB where its dividing-plane minimum is one: every force there below the NEB's fmax
    # (a stationary point) and, within plane_saddle_tol, the highest point of the interpolated path endpoint -> it ->
    # endpoint (energies only; that path is not the minimum-energy path, so it may rise a little beside the saddle:
    # Li13In3's hop 1, 0.8 meV)
    plane_saddle: bool = True
    plane_saddle_tol: float = 0.002  # eV
    plane_search_steps: int = 6  # planes moved along an asymmetric hop's jump to find its saddle (0: middle plane only)


def resolve_phase(spec: str) -> tuple[str, Atoms]:
    """A structure-library name (``"LiSn"``) or a structure file."""
    from limace.data.structures import get_phase

    if os.path.exists(spec):
        from ase.io import read

        return Path(spec).stem, read(spec)
    phase = get_phase(spec)
    return phase.id, phase.build(primitive=True)


# -- one supercell: sites, bounds, NEBs ----------------------------------------------------------------------------------


@dataclass
class _HopWork:
    """Everything computed for the hops of one phase in one supercell."""

    sites: object  # VacancySites
    bands: list  # per hop: [initial, *images, final] or None (error)
    errors: dict
    lower: list  # per hop: max(E_i, E_j), absolute eV
    upper: list  # per hop: highest energy of the interpolated band, absolute eV
    results: dict  # hop -> NEBResult (the lower of two converged saddles for rechecked hops)
    order: list  # hops in the order their NEBs ran
    rounds: int
    evaluations: int
    bound_evaluations: int
    relaxations: int
    relax_steps: int
    rechecks: dict = field(default_factory=dict)  # hop -> second NEB: images, both saddles (absolute eV), kept
    plane: dict = field(default_factory=dict)  # hop -> converged dividing-plane minimum (absolute eV)
    plane_tried: set = field(default_factory=set)  # hops whose plane relaxation ran (converged or not)
    plane_image: dict = field(default_factory=dict)  # hop -> (plane minimum, largest force, force across, energy)
    plane_fraction: dict = field(default_factory=dict)  # hop -> position of its highest plane along the jump (0.5: middle)
    plane_saddles: list = field(default_factory=list)  # hops whose saddle is their plane minimum (no NEB)
    margin: float = BarrierSettings.bound_margin  # eV off the plane minima; grown by _grow_margin


def _interpolated_bands(ends, settings: BarrierSettings, name: str, n_images: int | None = None,
                        labels=None, what: str = ""):
    """Bands of ``n_images`` (default ``settings.n_images``) interpolated images between each pair of ``ends``;
    ``labels``: the hop number of each pair (default its position). A band that fails ``check_band`` is None, its
    reason in the returned errors."""
    from limace.analysis.neb import check_band
    from limace.data.generate import hop_images

    n_images = settings.n_images if n_images is None else n_images
    bands, errors = [], {}
    for k, (ini, fin) in zip(range(len(ends)) if labels is None else labels, ends):
        band = [ini, *hop_images(ini, fin, n_images=n_images, method=settings.interpolation), fin]
        try:  # e.g. a relaxation that rearranged the crystal: the interpolated path puts atoms on top of each other
            check_band(band, where=f"{name} hop {k}{what}")
        except LimaceInputError as exc:
            errors[k] = str(exc)
            band = None
        bands.append(band)
    return bands, errors


def _single_points(structures: list[Atoms], model, atom_budget: int | None) -> np.ndarray:
    """Energies of many structures, batched (at most ``atom_budget`` atoms per batch), without forces (no backward
    pass)."""
    import torch

    from limace.core.state import BatchedState

    out, batch, n = [], [], 0
    for a in [*structures, None]:
        if a is None or (batch and atom_budget is not None and n + len(a) > atom_budget):
            if batch:
                st = BatchedState.from_atoms(batch, device=model.device, dtype=torch.float64)
                out.extend(model(st, compute_forces=False)["energy"].detach().cpu().double().tolist())
            batch, n = [], 0
        if a is not None:
            batch.append(a)
            n += len(a)
    return np.asarray(out)


def _plane_minima(bands: list, model, fmax: float, max_steps: int = 300, fractions: dict | None = None,
                  starts: dict | None = None) -> tuple[list, int]:
    """Lowest energy on each hop's dividing plane: the middle image of the band relaxed with the mover held on the
    plane through the middle of its jump, perpendicular to it, relative to the centre of the other atoms.

    Every continuous path between the endpoints crosses that plane, so the energy where the minimum-energy path
    crosses it, and hence the saddle, is at least the plane's minimum; the relaxation (batched L-BFGS with the forces
    projected onto the plane: a linear constraint, kept exactly) finds the local minimum nearest the interpolated
    middle image, which for a hop is where the path crosses. ``fractions`` ({band: t}): the plane through the
    point at fraction t of the jump instead of its middle (every path crosses that plane too); ``starts`` ({band:
    Atoms}): the image to start from instead of the band's middle one (its mover is moved onto the plane). Returns,
    per band, (energy, converged, relaxed image, largest force on an atom there without the projection, the force
    across the plane: the mover's force along the jump relative to the others', whose sign says on which side of
    the plane the saddle lies) or None, and the number of image evaluations."""
    import torch

    from limace.core.optimize import lbfgs_init, lbfgs_step
    from limace.core.state import BatchedState

    idx = [h for h, b in enumerate(bands) if b is not None]
    if not idx:
        return [None] * len(bands), 0
    dt = torch.float64
    first, normals = [], []  # each band's start image, its mover on the plane
    for h in idx:
        b = bands[h]
        ini, fin = b[0], b[-1]
        mid = (b[len(b) // 2] if starts is None or h not in starts else starts[h]).copy()
        # put the mover exactly on the plane: q at fraction t (default halfway) between the endpoints'
        n, q = _jump_axis(ini, fin)
        t = 0.5 if fractions is None else fractions.get(h, 0.5)
        mid.positions[-1] += ((1 - t) * q(ini) + t * q(fin) - q(mid)) * n
        first.append(mid)
        normals.append(n)
    st = BatchedState.from_atoms(first, device=model.device, dtype=dt)
    ranges = st.atom_ranges()
    movers = torch.as_tensor([b - 1 for _, b in ranges], device=st.device)
    nvec = torch.as_tensor(np.asarray(normals), dtype=dt, device=st.device)  # [S, 3]
    counts = st.n_atoms_per_system.to(dt) - 1  # others per system
    is_mover = torch.zeros(st.n_atoms, dtype=torch.bool, device=st.device)
    is_mover[movers] = True
    sys_idx = st.system_idx

    def across(f):  # the generalized force along q (minus dE/dq at fixed positions of the rest)
        fn = (f * nvec[sys_idx]).sum(-1)  # n.F per atom
        f_m = fn[movers]
        f_o = st.sum_per_system(torch.where(is_mover, torch.zeros_like(fn), fn)) / counts
        return (f_m - f_o) / (1 + 1 / counts)

    def project(f):
        lam = across(f)
        coef = torch.where(is_mover, -lam[sys_idx], lam[sys_idx] / counts[sys_idx])
        return f + coef[:, None] * nvec[sys_idx]

    x = st.positions.clone()
    opt = lbfgs_init(x, sys_idx, st.n_systems)
    done_e = torch.full((st.n_systems,), float("nan"), dtype=dt)
    done_x = x.clone()
    done_f = torch.full((st.n_systems,), float("nan"), dtype=dt)  # largest force, not projected
    done_g = torch.full((st.n_systems,), float("nan"), dtype=dt)  # force across the plane
    finished = torch.zeros(st.n_systems, dtype=torch.bool)
    evaluations = 0
    energy = torch.zeros(st.n_systems, dtype=dt, device=st.device)
    forces = torch.zeros_like(x)
    for step in range(max_steps + 1):
        todo = ~finished.to(st.device)
        cur = st.replace(positions=x)
        sub = cur if bool(todo.all()) else cur.select(todo)  # finished planes are not evaluated again
        out = model(sub)
        evaluations += sub.n_systems
        rows = todo[sys_idx]
        energy = energy.clone()
        energy[todo] = out["energy"].detach().to(dt)
        forces = torch.zeros_like(x)
        forces[rows] = out["forces"].detach().to(dt)
        f = project(forces)
        g = across(forces)
        x_new, opt = lbfgs_step(opt, x, f, fmax=fmax, objective=energy)
        newly = opt.converged.cpu() & ~finished
        if step == max_steps:
            newly = ~finished
        for k in torch.nonzero(newly).flatten().tolist():
            done_e[k] = energy[k]
            a, b = ranges[k]
            done_x[a:b] = x[a:b]
            done_f[k] = forces[a:b].norm(dim=1).max()
            done_g[k] = g[k]
        finished |= newly
        if bool(finished.all()):
            break
        x = torch.where(finished.to(x.device)[sys_idx][:, None], x, x_new)
    conv = opt.converged.cpu()
    out_list: list = [None] * len(bands)
    for k, h in enumerate(idx):
        a, b = ranges[k]
        im = first[k].copy()
        im.positions = done_x[a:b].cpu().numpy()
        out_list[h] = (float(done_e[k]), bool(conv[k]), im, float(done_f[k]), float(done_g[k]))
    return out_list, evaluations


def _neb_groups(bands: dict, settings: BarrierSettings) -> list[list[int]]:
    """The hops of ``bands`` ({hop: band}) in batches of at most ``settings.max_band_atoms`` image atoms."""
    groups, cur, n = [], [], 0
    for h, band in bands.items():
        size = len(band[0]) * (len(band) - 2)
        if cur and settings.max_band_atoms is not None and n + size > settings.max_band_atoms:
            groups.append(cur)
            cur, n = [], 0
        cur.append(h)
        n += size
    if cur:
        groups.append(cur)
    return groups


def _neb_batch(bands: list, model, settings: BarrierSettings, progress: bool, max_steps: int | None = None) -> list:
    from limace.analysis.neb import run_neb

    return run_neb(bands, model, fmax=settings.fmax, max_steps=max_steps or settings.max_steps, k=settings.spring,
                   optimizer=settings.optimizer,
                   endpoint_energies=[(float(b[0].info["energy"]), float(b[-1].info["energy"])) for b in bands],
                   tight_fmax=settings.tight_fmax, tight_below=settings.tight_below, freeze=settings.freeze,
                   progress=progress)


def _run_nebs(work: _HopWork, todo: list[int], model, settings: BarrierSettings, progress: bool) -> None:
    """The saddles of hops ``todo``: at the dividing-plane minimum where that is one (:func:`_plane_saddles`), else
    by climbing-image NEB (batched)."""
    at_plane = _plane_saddles(work, todo, model, settings) if settings.plane_saddle else []
    bands = {h: work.bands[h] for h in todo if work.bands[h] is not None and h not in at_plane}
    for g in _neb_groups(bands, settings):
        for h, r in zip(g, _neb_batch([bands[h] for h in g], model, settings, progress)):
            work.results[h] = r
            work.order.append(h)
            work.evaluations += r.info["band_evaluations"]
        work.rounds += 1


def _saddle_fmax(work: _HopWork, h: int, energy: float, settings: BarrierSettings) -> float:
    """The fmax an NEB of hop ``h`` with its saddle at ``energy`` converges to (tight below ``tight_below``)."""
    from limace.analysis.neb import converged_fmax

    band = work.bands[h]
    low = energy - max(float(band[0].info["energy"]), float(band[-1].info["energy"]))  # the smaller barrier
    return converged_fmax(low, settings.fmax, settings.tight_fmax, settings.tight_below)


def _jump_axis(ini: Atoms, fin: Atoms):
    """The unit vector n of the mover's (last atom's) jump and its coordinate along it, q(a) = n.(x_mover - mean of
    the other atoms): the dividing planes are planes of constant q."""
    n = fin.positions[-1] - ini.positions[-1]
    n = n / np.linalg.norm(n)
    return n, lambda a: float(n @ (a.positions[-1] - a.positions[:-1].mean(axis=0)))


def _jump(band, image: Atoms) -> tuple[float, float]:
    """The length of the mover's jump (along it, relative to the centre of the other atoms) and the fraction of it
    at which ``image`` has its mover."""
    ini, fin = band[0], band[-1]
    _, q = _jump_axis(ini, fin)
    return abs(q(fin) - q(ini)), (q(image) - q(ini)) / (q(fin) - q(ini))


def _next_plane(hist: list[tuple[float, float]], length: float) -> float:
    """The next plane position t along a jump of ``length`` (A) from the (t, force across) pairs so far: the force
    across is negative below the top of W(t) and positive above it. Once the top is bracketed, linear interpolation
    between the nearest planes on either side, kept at least a tenth of the bracket from its ends (so the bracket
    shrinks); before that a secant step where the force grows through the top, else a step uphill; at most 0.3 A."""
    t1, g1 = hist[-1]
    lim = 0.3 / length
    below = [(t, g) for t, g in hist if g < 0]
    above = [(t, g) for t, g in hist if g > 0]
    if below and above:
        (ta, ga), (tb, gb) = max(below), min(above)
        if ta < tb:
            t = ta - ga * (tb - ta) / (gb - ga)
            return float(np.clip(t, ta + 0.1 * (tb - ta), tb - 0.1 * (tb - ta)))
    step = -np.sign(g1) * min(0.3, max(0.05, abs(g1) / 0.5)) / length  # uphill; ~0.5 eV/A^2 curvature
    if len(hist) > 1:
        t0, g0 = hist[-2]
        if g1 != g0 and (g1 - g0) / (t1 - t0) > 0:  # the force across grows through the top: secant
            step = float(np.clip(-g1 * (t1 - t0) / (g1 - g0), -lim, lim))
    return float(np.clip(t1 + step, 0.1, 0.9))


def _plane_search(work: _HopWork, hops: list[int], model, settings: BarrierSettings) -> None:
    """Move the dividing plane of each of ``hops`` (whose middle-plane minimum is not a stationary point) along the
    jump to where the force across it vanishes: the maximum over the plane position t of W(t), the plane's lowest
    energy. Every path between the endpoints crosses every such plane, so each W(t) is a lower bound of the saddle
    (``work.plane`` keeps the highest); at the maximum the plane's minimum is a stationary point, the saddle of an
    asymmetric hop. Secant steps on the force across the plane, false position once the top is bracketed
    (:func:`_next_plane`; batched over hops, each plane relaxation started from the last one), at most
    ``settings.plane_search_steps`` planes per hop; a stationary one replaces ``work.plane_image``."""
    jump = {h: _jump(work.bands[h], work.plane_image[h][0]) for h in hops}
    length = {h: jump[h][0] for h in hops}
    hist = {h: [(jump[h][1], work.plane_image[h][2])] for h in hops}  # (plane position t, force across)
    last = {h: work.plane_image[h][0] for h in hops}
    active = list(hops)
    for _ in range(settings.plane_search_steps):
        fractions = {}
        for h in active:
            fractions[h] = _next_plane(hist[h], length[h])
        sub = [work.bands[h] if h in fractions else None for h in range(len(work.bands))]
        res, evals = _plane_minima(sub, model, settings.plane_fmax, fractions=fractions, starts=last)
        work.bound_evaluations += evals
        keep = []
        for h in active:
            pm = res[h]
            if pm is None or not pm[1]:
                continue
            energy, _, image, f_max, g = pm
            hist[h].append((fractions[h], g))
            last[h] = image
            if energy > work.plane[h]:  # a higher plane minimum: a tighter lower bound
                work.plane[h] = energy
                work.plane_fraction[h] = fractions[h]
                work.lower[h] = max(work.lower[h], energy - work.margin)
                work.upper[h] = max(work.upper[h], work.lower[h])
            if f_max < _saddle_fmax(work, h, energy, settings):
                work.plane_image[h] = (image, f_max, g, energy)
            else:
                keep.append(h)
        active = keep
        if not active:
            return


def _plane_saddles(work: _HopWork, todo: list[int], model, settings: BarrierSettings) -> list[int]:
    """Hops of ``todo`` whose saddle is a dividing-plane minimum P, so that no NEB is needed: every force at P (not
    only those in the plane) is below the fmax the NEB would use (a stationary point), and P is the highest point,
    within ``settings.plane_saddle_tol``, of the path initial -> P -> final, interpolated with
    ``settings.n_images // 2`` images on each side (energies only), and of every plane minimum computed for the hop.
    Then the saddle energy S of the hop obeys S <= E(P) + tol (the highest point of one continuous path between the
    endpoints bounds the minimum-energy path's from above) and S >= E(P) (every path crosses P's plane, whose lowest
    point P is), as far as the relaxation found the plane's lowest point, which :func:`_grow_margin` checks against
    the phase's NEB saddles. A symmetric hop (the middle plane a mirror of the endpoints) usually qualifies at once;
    for another the plane is first moved along the jump to where the force across it vanishes
    (:func:`_plane_search`); a hop that still does not qualify gets its NEB. The result is recorded as a converged
    band: the path, its climbing image P, whose energy is the saddle's (``saddle_energy``; ``info["saddle"]``:
    ``"dividing_plane"``)."""
    from limace.analysis.neb import NEBResult
    from limace.data.generate import hop_images

    hops = [h for h in todo if h not in work.results and h in work.plane_image and work.bands[h] is not None]
    off = [h for h in hops if not work.plane_image[h][1] < _saddle_fmax(work, h, work.plane_image[h][3], settings)]
    if off and settings.plane_search_steps > 0:
        _plane_search(work, off, model, settings)
    side = max(1, settings.n_images // 2)
    cand, paths = [], []
    for h in hops:
        band = work.bands[h]
        ini, fin = band[0], band[-1]
        image, f_max, _, e_p = work.plane_image[h]
        fmax = _saddle_fmax(work, h, e_p, settings)
        if not f_max < fmax or e_p <= max(float(ini.info["energy"]), float(fin.info["energy"])):
            continue
        if work.plane[h] > e_p + settings.plane_saddle_tol:  # another plane's minimum is higher: not the saddle
            continue
        cand.append((h, fmax, f_max, e_p))
        paths.append([ini, *hop_images(ini, image, n_images=side, method=settings.interpolation), image,
                      *hop_images(image, fin, n_images=side, method=settings.interpolation), fin])
    if not cand:
        return []
    e = _single_points([a for p in paths for a in p[1:side + 1] + p[side + 2:-1]], model, settings.max_band_atoms)
    work.bound_evaluations += len(e)
    accepted = []
    for k, ((h, fmax, f_max, e_p), path) in enumerate(zip(cand, paths)):
        ek = e[2 * side * k:2 * side * (k + 1)]
        if ek.max() > e_p + settings.plane_saddle_tol:  # the path is higher elsewhere: P is not the path's top
            if 2 * side == settings.n_images - 1:  # the NEB starts from that path, its climbing image at P
                work.bands[h] = path  # (a stationary point: the band's straight sides bend into the valley)
            continue
        energies = np.asarray([float(path[0].info["energy"]), *ek[:side], e_p, *ek[side:],
                               float(path[-1].info["energy"])])
        work.results[h] = NEBResult(energies=energies, positions=[a.positions.copy() for a in path], converged=True,
                                    steps=0, fmax=fmax, max_force=f_max, climbing_image=side + 1, images=path,
                                    saddle_energy=e_p,
                                    info={"saddle": "dividing_plane", "band_evaluations": 0,
                                          "path_evaluations": 2 * side,
                                          "plane_fraction": _jump(path, image)[1]},
                                    cell=path[0].cell[:].copy() if path[0].pbc.any() else None,
                                    pbc=path[0].pbc.copy())
        work.plane_saddles.append(h)
        work.order.append(h)
        accepted.append(h)
    return accepted


def _recheck(work: _HopWork, todo: list[int], model, settings: BarrierSettings, name: str,
             progress: bool) -> dict[int, float | None]:
    """A second NEB of each converged hop of ``todo`` from a fresh interpolated band of ``settings.recheck_images``
    images between the same relaxed endpoints; the lower converged saddle is kept (recorded in ``work.rechecks``).
    Returns each hop's second saddle (None: not converged)."""
    hops = [h for h in todo if h in work.results and work.results[h].converged and h not in work.rechecks]
    out: dict[int, float | None] = {}
    # |saddle - plane minimum| small: the plane's minimum is where the path crosses. A saddle well below it would show
    # a plane relaxation that stopped in a higher local minimum, so such a hop is rechecked
    # (and only while this phase's saddles have not shown its plane minima too high: see _compute)
    trusted = work.margin <= settings.bound_margin
    saddles = _saddles(work)
    at_plane = [h for h in hops if trusted and h in work.plane
                and abs(saddles[h] - work.plane[h]) <= settings.recheck_plane_tol]
    for h in at_plane:  # the saddle is the lowest point of a plane every path crosses: a second NEB cannot go lower
        work.rechecks[h] = {"n_images": 0, "first_saddle": saddles[h], "second_saddle": None,
                            "kept": "first", "image_evaluations": 0, "skipped": "saddle at the dividing-plane minimum",
                            "plane_minimum": work.plane[h]}
        out[h] = None
    hops = [h for h in hops if h not in at_plane]
    fresh, _ = _interpolated_bands([(work.bands[h][0], work.bands[h][-1]) for h in hops], settings, name,
                                   n_images=settings.recheck_images, labels=hops, what=" (recheck)")
    bands = {h: b for h, b in zip(hops, fresh) if b is not None}
    for g in _neb_groups(bands, settings):
        for h, r in zip(g, _neb_batch([bands[h] for h in g], model, settings, progress,
                                      max_steps=min(settings.max_steps, settings.recheck_max_steps))):
            first = work.results[h].top
            second = r.top if r.converged else None
            keep = second is not None and second < first
            work.rechecks[h] = {"n_images": settings.recheck_images, "first_saddle": first, "second_saddle": second,
                                "kept": "second" if keep else "first",
                                "image_evaluations": int(r.info["band_evaluations"])}
            if keep:
                work.results[h] = r
            work.evaluations += r.info["band_evaluations"]
            out[h] = second
    return out


def _saddles(work: _HopWork) -> list[float | None]:
    return [work.results[h].top if h in work.results and work.results[h].converged else None
            for h in range(len(work.bands))]


def _known_saddles(work: _HopWork):
    """``compute`` for :func:`certify_percolation` when every NEB has already run: the saddles, looked up (each time
    afresh, since a recheck may have lowered one)."""
    def lookup(todo: list[int]) -> dict[int, float | None]:
        saddles = _saddles(work)
        return {h: saddles[h] for h in todo}
    return lookup


def _compute(bulk: Atoms, hops, reps, model, settings: BarrierSettings, name: str, progress: bool,
             certify: bool = True) -> _HopWork:
    """Sites, bounds and the NEBs that certify the percolation barriers (all with ``certify=False``)."""
    from limace.analysis.hops import vacancy_sites
    from limace.analysis.percolation import certify_percolation
    from limace.analysis.relax import relax_structures

    sites = vacancy_sites(bulk, hops, reps)
    reps_list = sites.representatives
    relaxed = relax_structures([sites.vacancy_structure(r) for r in reps_list], model, fmax=settings.endpoint_fmax,
                               relax_cell=False, optimizer=settings.optimizer, progress=progress)
    for r, a in zip(reps_list, relaxed):
        sites.set_relaxed(r, a)
    ends = [sites.hop_endpoints(h) for h in hops]
    bands, errors = _interpolated_bands(ends, settings, name)
    lower = [max(sites.energy(h.i), sites.energy(h.j)) for h in hops]
    images = [im for b in bands if b is not None for im in b[1:-1]]
    e = _single_points(images, model, settings.max_band_atoms) if images else np.zeros(0)
    upper, k = [], 0
    for h, b in enumerate(bands):
        if b is None:
            upper.append(None)
            continue
        n = len(b) - 2
        upper.append(float(max(lower[h], e[k:k + n].max())))
        k += n
    work = _HopWork(sites=sites, bands=bands, errors=errors, lower=lower, upper=upper, results={}, order=[],
                    rounds=0, evaluations=0, bound_evaluations=len(images), relaxations=len(reps_list),
                    relax_steps=sum(int(a.info.get("relax_steps", 0)) for a in relaxed), margin=settings.bound_margin)
    site_lower = list(lower)
    usable = [h for h in range(len(hops)) if bands[h] is not None]
    n_sites = len(bulk)

    def recheck(todo: list[int]) -> dict[int, float | None]:
        return _recheck(work, todo, model, settings, name, progress)

    if not certify:
        if settings.plane_bound:  # every NEB starts the same way, whichever mode runs it (certified, all, size check)
            _plane_bounds(work, usable, model, settings)
        _run_nebs(work, usable, model, settings, progress)
        while True:  # the same second look at the hops that set the values, and the same bound check, as below
            if settings.recheck_images:
                certify_percolation(n_sites, [h.copies for h in hops], _site_energy_list(sites, n_sites),
                                    list(work.lower), _known_saddles(work), usable=usable, recheck=recheck)
            if not _grow_margin(work, site_lower, settings) or not settings.recheck_images:
                return work

    def refine(todo: list[int]) -> dict[int, float]:
        if not settings.plane_bound:
            return {}
        new = [h for h in todo if h not in work.plane_tried]
        if new:  # one constrained image per hop: it may show they cannot matter
            _plane_bounds(work, new, model, settings)
        return {h: work.lower[h] for h in todo}

    def compute(todo: list[int]) -> dict[int, float | None]:
        new = [h for h in todo if h not in work.results]
        if new:
            _run_nebs(work, new, model, settings, progress)
        saddles = _saddles(work)
        return {h: saddles[h] for h in todo}

    # The plane bounds are checked against the phase's own converged saddles: a saddle lower than its plane minimum
    # less the margin shows the margin too small for this phase (a plane relaxation that stopped above the plane's
    # lowest point), so the margin grows to that excess plus the usual one and the certification runs again, with
    # every saddle and plane minimum computed so far kept.
    while True:
        certify_percolation(n_sites, [h.copies for h in hops], _site_energy_list(sites, n_sites), list(work.lower),
                            compute, refine, usable=usable, recheck=recheck if settings.recheck_images else None)
        if not _grow_margin(work, site_lower, settings):
            return work


def _grow_margin(work: _HopWork, site_lower: list, settings: BarrierSettings) -> bool:
    """If a converged saddle lies below its plane minimum by more than ``work.margin``: grow the margin to that
    excess plus ``settings.bound_margin``, lower every plane bound with it and withdraw the recheck skips made on the
    old bound; True when it grew (the certification must run again)."""
    excess = _plane_excess(work)
    if excess <= work.margin + 1e-9:
        return False
    work.margin = excess + settings.bound_margin
    for h, pm in work.plane.items():
        work.lower[h] = max(site_lower[h], pm - work.margin)
    for h in [h for h, rc in work.rechecks.items() if "skipped" in rc]:  # skipped on the same bound: look again
        del work.rechecks[h]
    return True


def _plane_excess(work: _HopWork) -> float:
    """The largest (dividing-plane minimum - converged saddle) over the hops that have both (0 if none)."""
    saddles = _saddles(work)
    return max([work.plane[h] - saddles[h] for h in work.plane if saddles[h] is not None], default=0.0)


def _plane_bounds(work: _HopWork, todo: list[int], model, settings: BarrierSettings) -> None:
    """Raise the lower bounds of hops ``todo`` to their dividing-plane minimum (less ``bound_margin``) and start
    their NEBs with the middle image there (near the saddle of a simple hop)."""
    sub = [work.bands[h] if h in todo else None for h in range(len(work.bands))]
    plane, evals = _plane_minima(sub, model, settings.plane_fmax)
    work.bound_evaluations += evals
    work.plane_tried.update(todo)
    for h in todo:
        pm = plane[h]
        if pm is None or not pm[1]:
            continue
        work.plane[h] = pm[0]
        work.plane_image[h] = (pm[2], pm[3], pm[4], pm[0])  # image, largest force, force across, energy
        work.plane_fraction[h] = _jump(work.bands[h], pm[2])[1]
        work.lower[h] = max(work.lower[h], pm[0] - work.margin)
        work.upper[h] = max(work.upper[h], work.lower[h])
        b = work.bands[h]
        if (len(b) - 2) % 2 == 1:
            mid = b[len(b) // 2].copy()
            mid.positions = pm[2].positions
            b[len(b) // 2] = mid


def _site_energy_list(sites, n_sites: int) -> list[float | None]:
    return [sites.energy(s) if sites.has_energy(s) else None for s in range(n_sites)]


# -- one phase ---------------------------------------------------------------------------------------------------------


def phase_barriers(name: str, bulk: Atoms, model, settings: BarrierSettings = BarrierSettings(),
                   progress: bool = True) -> tuple[dict, list, dict]:
    """Barriers and percolation of one phase. Returns (JSON entry, NEB result or None per hop, files to write:
    {relative path: Atoms list})."""
    from limace.analysis.hops import distinct_hops, li_coordination, primitive_cell, vacancy_supercell_matrix
    from limace.analysis.percolation import percolation_bounds
    from limace.analysis.relax import relax_structures

    bulk = primitive_cell(bulk)  # a conventional cell and the primitive one give the same supercell and barriers
    if settings.relax_bulk:
        bulk = relax_structures([bulk], model, fmax=settings.endpoint_fmax, relax_cell=True, progress=False)[0]
    hops = distinct_hops(bulk, cutoff=settings.cutoff)
    reps = tuple(int(x) for x in np.diag(vacancy_supercell_matrix(bulk, settings.min_image_distance,
                                                                  2 * settings.cutoff)))
    work = _compute(bulk, hops, reps, model, settings, name, progress, certify=not settings.all_hops)
    sites = work.sites
    n_sites = len(bulk)
    site_e = _site_energy_list(sites, n_sites)
    ref = min(e for e in site_e if e is not None)
    rel = lambda x: None if x is None else float(x - ref)  # noqa: E731
    known = _saddles(work)
    lower_for_bounds = [lo if work.bands[h] is not None else np.inf for h, lo in enumerate(work.lower)]
    perc, low, cert = percolation_bounds(n_sites, [h.copies for h in hops], [rel(e) for e in site_e],
                                         [rel(s) for s in known], [rel(lo) for lo in lower_for_bounds])
    results = [work.results.get(k) for k in range(len(hops))]
    files: dict[str, list[Atoms]] = {}
    rows = []
    for k, (h, res) in enumerate(zip(hops, results)):
        ok = res is not None and res.converged
        fwd = res.barrier_forward if ok else None
        bwd = res.barrier_backward if ok else None
        status = "error" if k in work.errors else ("skipped" if res is None else
                                                   ("converged" if ok else "not_converged"))
        d = f"{name}/hops/hop_{k}"
        hop_files = {"initial": f"{d}/initial.extxyz", "final": f"{d}/final.extxyz"}
        band = work.bands[k]
        ini, fin = (band[0], band[-1]) if band is not None else sites.hop_endpoints(h)
        files[hop_files["initial"]] = [ini]
        files[hop_files["final"]] = [fin]
        if res is not None:
            hop_files.update(band=f"{d}/band.extxyz", climbing_image=f"{d}/climbing_image.extxyz",
                             profile=f"{d}/profile.png")
            imgs = []
            for j, (im, e) in enumerate(zip(res.images, res.energies)):
                a = im.copy()
                a.info = {"energy": float(e), "image": j, "hop": k, "converged": ok}
                imgs.append(a)
            files[hop_files["band"]] = imgs
            files[hop_files["climbing_image"]] = [imgs[res.climbing_image]]
        row = {
            "hop": h.index, "i": h.i, "j": h.j, "offset": list(h.offset), "site_classes": [h.site_class_i, h.site_class_j],
            "copies": [[a, b, list(o)] for a, b, o in h.copies],
            "length_A": round(h.length, 4), "multiplicity": h.multiplicity, "status": status,
            "saddle_eV": rel(known[k]),
            "barrier_eV": None if fwd is None else max(fwd, bwd),
            "forward_eV": fwd, "backward_eV": bwd, "converged": ok, "steps": 0 if res is None else res.steps,
            "fmax_eV_A": None if res is None else res.fmax,
            # "neb", or "dividing_plane": the plane minimum, a stationary point at the top of a path (no NEB)
            "saddle_method": None if res is None else res.info.get("saddle", "neb"),
            "bounds_eV": [rel(work.lower[k]), rel(work.upper[k])],
            "plane_minimum_eV": rel(work.plane.get(k)),  # the highest dividing-plane minimum, where computed
            "plane_position": work.plane_fraction.get(k),  # where that plane cuts the jump (0.5: the middle)
            "li_coordination": {"initial_site": li_coordination(bulk, h.i, settings.coordination_cutoff),
                                "final_site": li_coordination(bulk, h.j, settings.coordination_cutoff)},
            "files": hop_files,
            "profile": None if res is None else res.as_dict(),
        }
        if k in work.rechecks:  # the second NEB of a hop that set a percolation value
            rc = work.rechecks[k]
            row["recheck"] = {"n_images": rc["n_images"], "first_saddle_eV": rel(rc["first_saddle"]),
                              "second_saddle_eV": rel(rc["second_saddle"]), "kept": rc["kept"],
                              "image_evaluations": rc["image_evaluations"]}
            if "skipped" in rc:
                row["recheck"].update(skipped=rc["skipped"], plane_minimum_eV=rel(rc["plane_minimum"]))
        if k in work.errors:
            row["error"] = work.errors[k]
        rows.append(row)
    site_rows = [{"site": s, "class": sites.representative[s], "energy_eV": rel(sites.energy(s)),
                  "converged": sites.converged[sites.representative[s]],
                  "li_coordination": li_coordination(bulk, s, settings.coordination_cutoff)}
                 for s in sorted(sites.representative)]
    percolation_d = perc.as_dict()
    for d in percolation_d:
        percolation_d[d]["certified"] = bool(cert[d])
    n_run = len(work.results) - len(work.plane_saddles)  # NEBs; plane saddles are computed without one
    usable = sum(b is not None for b in work.bands)
    n_atoms = len(sites.supercell) - 1
    entry = {"phase": name, "formula": bulk.get_chemical_formula(), "supercell": list(reps), "n_atoms": n_atoms,
             "energy_reference_eV": ref, "sites": site_rows, "site_classes": {str(k): v for k, v in
                                                                             sites.site_class.items()},
             "hops": rows, "percolation": percolation_d,
             "work": {"hops": len(hops), "nebs_run": n_run,
                      "saddles_at_plane": sorted(work.plane_saddles),  # no NEB: the plane minimum is the saddle
                      "nebs_skipped": usable - n_run - len(work.plane_saddles),
                      "neb_rounds": work.rounds, "neb_order": work.order,
                      "rechecked": sorted(h for h, rc in work.rechecks.items() if "skipped" not in rc),
                      "recheck_skipped_at_plane": sorted(h for h, rc in work.rechecks.items() if "skipped" in rc),
                      "vacancy_relaxations": work.relaxations,
                      "vacancy_relaxations_per_hop_pair": 2 * len(hops),
                      "neb_image_evaluations": work.evaluations,
                      # the margin under the plane minima, and the largest (plane minimum - saddle) seen
                      "bound_margin_eV": work.margin, "plane_excess_eV": _plane_excess(work),
                      "bound_image_evaluations": work.bound_evaluations,
                      "atom_evaluations": (work.evaluations + work.bound_evaluations) * n_atoms}}
    if settings.check_size:
        entry["size_check"] = _size_check(bulk, hops, reps, work, perc, model, settings, name, progress)
    return entry, results, files


def _size_check(bulk, hops, reps, work, perc, model, settings, name, progress) -> dict:
    """The percolating hops again in the next larger supercell (the smallest one whose vacancy images are farther
    apart than in the current one)."""
    from limace.analysis.percolation import percolation

    path = sorted({h for d in ("1d", "2d", "3d") for h in perc.hops[d]})
    if not path:
        return {"hops": [], "note": "no percolating hop"}
    from limace.analysis.hops import shortest_lattice_vector, vacancy_supercell_matrix

    d_now = shortest_lattice_vector(np.diag(reps) @ bulk.cell[:])
    bigger = tuple(int(x) for x in np.diag(vacancy_supercell_matrix(bulk, d_now + 0.05, 2 * settings.cutoff)))
    big = _compute(bulk, [hops[h] for h in path], bigger, model, settings, name, progress, certify=False)
    n_sites = len(bulk)
    small_sites = _site_energy_list(work.sites, n_sites)
    big_sites = _site_energy_list(big.sites, n_sites)
    small_s, big_s = _saddles(work), _saddles(big)
    copies = [hops[h].copies for h in path]
    p_small = percolation(n_sites, copies, [small_s[h] for h in path], small_sites)
    p_big = percolation(n_sites, copies, big_s, big_sites)
    rows = []
    for k, h in enumerate(path):
        a, b = work.results.get(h), big.results.get(k)
        ok = a is not None and a.converged and b is not None and b.converged
        rows.append({"hop": h, "converged": bool(b is not None and b.converged),
                     "forward_eV": b.barrier_forward if b is not None and b.converged else None,
                     "backward_eV": b.barrier_backward if b is not None and b.converged else None,
                     "change_forward_eV": b.barrier_forward - a.barrier_forward if ok else None,
                     "change_backward_eV": b.barrier_backward - a.barrier_backward if ok else None})
    change = {}
    for d in ("1d", "2d", "3d"):
        x, y = p_small.barriers[d], p_big.barriers[d]
        change[d] = {"barrier_eV": y, "change_eV": None if x is None or y is None else y - x}
    return {"supercell": list(bigger), "n_atoms": len(big.sites.supercell) - 1, "hops": rows,
            "percolation": change}


# -- several phases, files ---------------------------------------------------------------------------------------------


def _write_extxyz(path: Path, images: list[Atoms]) -> None:
    from ase.io import write

    buf = io.StringIO()
    clean = []
    for a in images:
        b = a.copy()
        b.calc = None
        clean.append(b)
    write(buf, clean, format="extxyz")
    atomic_write_text(path, buf.getvalue())


def _write_phase_files(out: Path, entry: dict, results, files: dict) -> None:
    for rel_path, images in files.items():
        _write_extxyz(out / rel_path, images)
    for h, res in zip(entry["hops"], results):
        if res is not None and "profile" in h["files"]:
            _plot_one(res, h, out / h["files"]["profile"])
    _plot_profiles(entry, results, out / entry["phase"] / "neb_profiles.png")


def domain_check_hops(model, entry: dict, base: Path) -> None:
    """Score the climbing image (the saddle) of every computed hop with the potential's domain check: a hop whose
    saddle lies outside the training domain gets ``outside_domain: true`` and the phase lists it in
    ``outside_domain_hops`` (its barrier is an extrapolation)."""
    from ase.io import read

    dom = getattr(model, "domain", None)
    if dom is None:
        return
    hops = [h for h in entry["hops"] if (h.get("files") or {}).get("climbing_image")
            and (base / h["files"]["climbing_image"]).is_file()]
    if not hops:
        return
    scores = dom.scores(model, [read(base / h["files"]["climbing_image"]) for h in hops])
    for h, sc in zip(hops, scores):
        h["domain_score"] = round(float(sc), 2)
        h["outside_domain"] = bool(sc > dom.threshold)
    entry["domain_threshold"] = round(float(dom.threshold), 2)
    entry["outside_domain_hops"] = [h["hop"] for h in hops if h["outside_domain"]]


def committee_check_hops(members, entry: dict, base: Path, threshold_eV: float = 0.05) -> None:
    """Each computed hop's ``barrier_std_eV``: the standard deviation over a committee's ``members`` (batched models;
    a :class:`~limace.potentials.committee.BatchedCommittee`'s members, or the potential that ran the NEBs plus
    others) of their forward barriers at the bands' geometries (climbing image minus initial endpoint, each member's
    own energies). Hops above ``threshold_eV`` are listed in the phase's ``uncertain_hops``; the phase gets
    ``committee_size``. Fewer than two members: nothing."""
    from ase.io import read

    from limace.core.model import member_energies

    members = getattr(members, "members", members)  # a BatchedCommittee, or a list of batched models
    if not isinstance(members, (list, tuple)) or len(members) < 2:  # a single potential: no spread
        return
    hops = [h for h in entry["hops"] if all((base / ((h.get("files") or {}).get(k) or "")).is_file()
                                            for k in ("initial", "climbing_image"))]
    entry["committee_size"] = len(members)
    entry["committee_threshold_eV"] = threshold_eV
    entry["uncertain_hops"] = []
    if not hops:
        return
    e = member_energies(members, [read(base / h["files"][k]) for h in hops
                                  for k in ("initial", "climbing_image")])  # [M, 2H]
    barriers = e[:, 1::2] - e[:, 0::2]  # [M, H]
    for h, sd in zip(hops, barriers.std(0)):
        h["barrier_std_eV"] = round(float(sd), 4)
    entry["uncertain_hops"] = [h["hop"] for h in hops if h["barrier_std_eV"] > threshold_eV]


def run_barriers(specs: Sequence[str], model, out: str | Path | None = None, potential_name: str = "",
                 settings: BarrierSettings = BarrierSettings(), progress: bool = True,
                 potential_sha256: str | None = None, committee=None) -> dict:
    """Barriers for several phases; with ``out`` writes barriers.json, barriers.md, bands and PNG profiles, resumably.

    ``committee``: batched models whose spread of each computed barrier is reported (:func:`committee_check_hops`;
    the NEBs run on ``model`` alone); a ``model`` that is a committee reports its own members' spread.

    A phase finished earlier in ``out`` is reused only when its settings, ``potential_name`` and
    ``potential_sha256`` (the model file's checksum: a retrained potential keeps its name) all match."""
    out = Path(out) if out else None
    phases = []
    for spec in specs:
        name, bulk = resolve_phase(spec)
        if "Li" not in bulk.get_chemical_symbols():
            raise LimaceInputError(f"{spec}: has no Li, no Li hops to compute")
        cache = out / name / "neb.json" if out else None
        if cache is not None and cache.exists():
            saved = json.loads(cache.read_text())
            if (saved.get("settings") == asdict(settings) and saved.get("potential") == potential_name
                    and saved.get("potential_sha256") == potential_sha256):
                if committee is not None and out is not None:  # cheap: one energy call per member
                    committee_check_hops(committee, saved["entry"], out)
                phases.append(saved["entry"])
                continue
        t0 = time.perf_counter()
        entry, results, files = phase_barriers(name, bulk, model, settings, progress=progress)
        entry["wall_s"] = round(time.perf_counter() - t0, 2)
        if out is not None:
            _write_phase_files(out, entry, results, files)
            domain_check_hops(model, entry, out)
            committee_check_hops(committee if committee is not None else model, entry, out)
            atomic_write_json(cache, {"settings": asdict(settings), "potential": potential_name,
                                      "potential_sha256": potential_sha256, "entry": entry})
        phases.append(entry)
    report = {"potential": potential_name, "potential_sha256": potential_sha256, "settings": asdict(settings),
              "phases": phases}
    if out is not None:
        # profiles (energies along each path) stay in DIR/<phase>/neb.json; barriers.json keeps the table
        public = {**report, "phases": [{**p, "hops": [{k: v for k, v in h.items() if k != "profile"} for h in p["hops"]]}
                                       for p in phases]}
        atomic_write_json(out / "barriers.json", public)
        atomic_write_text(out / "barriers.md", markdown_table(report))
        _plot_percolation(report, out / "barriers.png")
    return report


def markdown_table(report: dict) -> str:
    fmt = lambda x: "—" if x is None else f"{x:.3f}"  # noqa: E731
    lines = ["| phase | hop | sites i → j | length (Å) | ×/cell | saddle (eV) | fwd / bwd (eV) | status "
             "| Li coordination (i → j) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for p in report["phases"]:
        for h in p["hops"]:
            c = h["li_coordination"]
            cs = " → ".join(", ".join(f"{k}{v}" for k, v in s.items() if k != "n")
                            for s in (c["initial_site"], c["final_site"]))
            status = h.get("status", "converged" if h["converged"] else "not_converged")
            status = status if status in ("converged", "skipped") else f"**{status}**"
            if h.get("outside_domain"):  # its saddle is outside the training domain (limace.potentials.domain)
                status += " **outside the training domain**"
            if h.get("barrier_std_eV") is not None:  # a committee's spread of this barrier
                flag = h["hop"] in p.get("uncertain_hops", [])
                status += f" ({'**' if flag else ''}± {h['barrier_std_eV']:.3f} eV committee{'**' if flag else ''})"
            if status == "skipped" and h.get("bounds_eV"):
                status = f"skipped (saddle ≥ {fmt(h['bounds_eV'][0])})"
            sites = f"{h['i']} → {h['j']}" if "i" in h else "—"
            lines.append(f"| {p['phase']} | {h['hop']} | {sites} | {h['length_A']:.3f} | {h['multiplicity']} "
                         f"| {fmt(h.get('saddle_eV'))} | {fmt(h['forward_eV'])} / {fmt(h['backward_eV'])} | {status} "
                         f"| {cs} |")
    if any("sites" in p for p in report["phases"]):
        lines += ["", "| phase | vacancy site | energy (eV, rel. lowest) | Li coordination |", "| --- | --- | --- | --- |"]
        for p in report["phases"]:
            for s in p.get("sites", []):
                cs = ", ".join(f"{k}{v}" for k, v in s["li_coordination"].items() if k != "n")
                lines.append(f"| {p['phase']} | {s['site']} | {fmt(s['energy_eV'])} | {cs} |")
    lines += ["", "| phase | 1D percolation (eV) | 2D (eV) | 3D (eV) | path hops (1D / 2D / 3D) | highest saddle (3D, eV) "
              "| lowest site (3D) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for p in report["phases"]:
        pc = p["percolation"]

        def val(d):
            v = fmt(pc[d]["barrier_eV"])
            return v if pc[d].get("certified", True) else f"{v} (not certified)"

        paths = " / ".join(", ".join(map(str, pc[d]["hops"])) or "—" for d in ("1d", "2d", "3d"))
        lines.append(f"| {p['phase']} | {val('1d')} | {val('2d')} | {val('3d')} | {paths} "
                     f"| {fmt(pc['3d'].get('saddle_eV'))} | {_or_dash(pc['3d'].get('lowest_site'))} |")
    works = [p for p in report["phases"] if "work" in p]
    if works:
        lines += ["", "| phase | hops | NEBs run | saddles at the plane minimum (no NEB) | skipped (certified without) "
                  "| vacancy relaxations (vs 2 per hop) "
                  "| image evaluations (NEB + bounds) | rechecked: first → second saddle (eV) "
                  "| no recheck: saddle at its plane minimum | wall (s) |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for p in works:
            w = p["work"]
            rc = {h["hop"]: h["recheck"] for h in p["hops"] if "recheck" in h}
            redone = ", ".join(f"{h} ({fmt(rc[h]['first_saddle_eV'])} → {fmt(rc[h]['second_saddle_eV'])}, "
                               f"{rc[h]['kept']} kept)" for h in w.get("rechecked", []) if h in rc) or "—"
            at_plane = ", ".join(map(str, w.get("recheck_skipped_at_plane", []))) or "—"
            planes = ", ".join(map(str, w.get("saddles_at_plane", []))) or "—"
            lines.append(f"| {p['phase']} | {w['hops']} | {w['nebs_run']} | {planes} | {w['nebs_skipped']} | "
                         f"{w['vacancy_relaxations']} (vs {w['vacancy_relaxations_per_hop_pair']}) | "
                         f"{w['neb_image_evaluations']} + {w['bound_image_evaluations']} | {redone} | {at_plane} "
                         f"| {p.get('wall_s', '—')} |")
    dft = [(p, h) for p in report["phases"] for h in p["hops"] if "dft" in h]
    if dft:
        lines += ["", "| phase | hop | DFT fwd / bwd along the model's path (eV) | model fwd / bwd (eV) |",
                  "| --- | --- | --- | --- |"]
        for p, h in dft:
            d = h["dft"]
            lines.append(f"| {p['phase']} | {h['hop']} | {fmt(d['forward_eV'])} / {fmt(d['backward_eV'])} | "
                         f"{fmt(d['model_forward_eV'])} / {fmt(d['model_backward_eV'])} |")
        for p in report["phases"]:
            if "dft_percolation" in p:
                dp = p["dft_percolation"]
                lines.append(f"\n{p['phase']}: DFT percolation along the model's paths 1D/2D/3D "
                             f"{fmt(dp['1d']['barrier_eV'])} / {fmt(dp['2d']['barrier_eV'])} / "
                             f"{fmt(dp['3d']['barrier_eV'])} eV (model {fmt(dp['1d']['model_barrier_eV'])} / "
                             f"{fmt(dp['2d']['model_barrier_eV'])} / {fmt(dp['3d']['model_barrier_eV'])})")
    checks = [p for p in report["phases"] if p.get("size_check", {}).get("supercell")]
    if checks:
        lines += ["", "| phase | size check: supercell | 1D (eV) | change (eV) | 3D (eV) | change (eV) |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for p in checks:
            sc = p["size_check"]
            pc = sc["percolation"]
            lines.append(f"| {p['phase']} | {'x'.join(map(str, p['supercell']))} → {'x'.join(map(str, sc['supercell']))} "
                         f"({sc['n_atoms']} atoms) | {fmt(pc['1d']['barrier_eV'])} | {fmt(pc['1d']['change_eV'])} "
                         f"| {fmt(pc['3d']['barrier_eV'])} | {fmt(pc['3d']['change_eV'])} |")
    return "\n".join(lines) + "\n"


def _or_dash(x) -> str:
    return "—" if x is None else str(x)


def _savefig(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, dpi=120, format="png")
    atomic_write_bytes(path, buf.getvalue())


def _plot_one(res, hop: dict, path: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    fig = Figure(figsize=(4.5, 3.2))
    ax = fig.add_subplot()
    res.plot(ax=ax, label=f"hop {hop['hop']} ({hop['length_A']:.2f} Å)")
    fig.tight_layout()
    _savefig(fig, path)


def _plot_profiles(entry: dict, results, path: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    fig = Figure(figsize=(5, 3.5))
    ax = fig.add_subplot()
    for h, res in zip(entry["hops"], results):
        if res is not None:
            res.plot(ax=ax, label=f"hop {h['hop']} ({h['length_A']:.2f} Å)")
    ax.set_title(entry["phase"])
    fig.tight_layout()
    _savefig(fig, path)


def _plot_percolation(report: dict, path: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    names = [p["phase"] for p in report["phases"]]
    fig = Figure(figsize=(max(4, 1.1 * len(names)), 3.5))
    ax = fig.add_subplot()
    width = 0.25
    for k, d in enumerate(("1d", "2d", "3d")):
        vals = [p["percolation"][d]["barrier_eV"] for p in report["phases"]]
        xs = np.arange(len(names)) + (k - 1) * width
        ax.bar(xs, [np.nan if v is None else v for v in vals], width, label=f"{d.upper()} percolation")
    ax.set_xticks(np.arange(len(names)), names, rotation=30)
    ax.set_ylabel("barrier (eV)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _savefig(fig, path)


# -- DFT check of the percolating hops ---------------------------------------------------------------------------------


def verify_configs(report: dict, out: str | Path) -> list[Atoms]:
    """The structures to check with DFT: both relaxed endpoints and the climbing image of every converged hop on a
    percolation path (any dimension), read from the band files under ``out``; ``info``: ``config_type``
    ``"barrier_verify"``, ``phase``, ``hop``, ``role`` (initial, final, climbing_image) and the model's energy."""
    from ase.io import read

    out = Path(out)
    configs = []
    for p in report["phases"]:
        path = sorted({h for d in ("1d", "2d", "3d") for h in p["percolation"][d]["hops"]})
        for k in path:
            h = p["hops"][k]
            if not h["converged"]:
                continue
            for role in ("initial", "final", "climbing_image"):
                a = read(out / h["files"][role])
                e = a.get_potential_energy() if a.calc is not None else a.info.get("energy")
                a.calc = None
                a.info = {"config_type": "barrier_verify", "phase": p["phase"], "hop": int(k), "role": role,
                          "model_energy": float(e)}
                configs.append(a)
    return configs


def dft_barriers(report: dict, configs: list[Atoms], labels: str | Path) -> None:
    """Add the DFT energies along the model's paths to ``report`` (in place): per checked hop ``dft`` =
    {forward_eV, backward_eV, saddle_minus_initial_model_eV, ...}; per phase ``dft_percolation``: the percolation
    barriers of the path hops with DFT site and saddle energies (None where a label is missing)."""
    from ase.io import read

    from limace.analysis.percolation import percolation
    from limace.data.hashing import ensure_config_id
    from limace.keys import ENERGY_KEY

    labels = Path(labels)
    done = {a.info["config_id"]: float(a.info[ENERGY_KEY]) for a in read(labels, ":")} if labels.exists() else {}
    energies: dict[tuple[str, int, str], float] = {}
    for a in configs:
        e = done.get(ensure_config_id(a))
        if e is not None:
            energies[(a.info["phase"], a.info["hop"], a.info["role"])] = e
    for p in report["phases"]:
        site_e: dict[int, float] = {}
        saddles: dict[int, float] = {}
        path = sorted({h for d in ("1d", "2d", "3d") for h in p["percolation"][d]["hops"]})
        for k in path:
            h = p["hops"][k]
            e = [energies.get((p["phase"], k, r)) for r in ("initial", "final", "climbing_image")]
            if not h["converged"] or None in e:
                continue
            ini, fin, ci = e
            h["dft"] = {"initial_eV": ini, "final_eV": fin, "climbing_image_eV": ci,
                        "forward_eV": ci - ini, "backward_eV": ci - fin,
                        "model_forward_eV": h["forward_eV"], "model_backward_eV": h["backward_eV"]}
            cls = p.get("site_classes", {})
            site_e.setdefault(cls.get(str(h["i"]), h["i"]), ini)  # by equivalence class: copies touch other sites
            site_e.setdefault(cls.get(str(h["j"]), h["j"]), fin)
            saddles[k] = ci
        if saddles and all(k in saddles for k in path):
            cls = p.get("site_classes", {})
            copies = [_copies(p["hops"][k]) for k in path]
            n_sites = max(max(i, j) for c in copies for i, j, _ in c) + 1
            res = percolation(n_sites, copies, [saddles[k] for k in path],
                              [site_e.get(cls.get(str(s), s)) for s in range(n_sites)])
            p["dft_percolation"] = {d: {"barrier_eV": res.barriers[d],
                                        "model_barrier_eV": p["percolation"][d]["barrier_eV"]}
                                    for d in ("1d", "2d", "3d")}


def _copies(hop_row: dict):
    return [(int(i), int(j), tuple(int(x) for x in off)) for i, j, off in hop_row["copies"]]


def run_verify_dft(report: dict, out: str | Path, labels: str | Path | None = None, protocol: str = "pbe-pw400",
                   workers: int = 1, scheduler: str | None = None, progress: bool = True) -> Path:
    """DFT single points (reference protocol, resumable: :func:`limace.data.label.label_configurations`) of the
    endpoints and climbing images of the percolating hops; labels in ``labels`` (default ``out/dft_verify.extxyz``;
    give ``dft/li-in-sn-v1/barrier_verify.extxyz`` for the dataset); the DFT barriers along the model's paths are
    added to ``report`` and barriers.json/.md rewritten."""
    from limace.data.label import label_configurations

    out = Path(out)
    labels = Path(labels) if labels is not None else out / "dft_verify.extxyz"
    configs = verify_configs(report, out)
    if configs:
        label_configurations(configs, labels, protocol=protocol, workers=workers, scheduler=scheduler,
                             progress=progress)
    dft_barriers(report, configs, labels)
    public = {**report, "phases": [{**p, "hops": [{k: v for k, v in h.items() if k != "profile"} for h in p["hops"]]}
                                   for p in report["phases"]]}
    atomic_write_json(out / "barriers.json", public)
    atomic_write_text(out / "barriers.md", markdown_table(report))
    return labels
