"""NEB speed, reported honestly: ASE's NEB (one calculator per image) against limace's batched NEB.

Three comparisons, reported separately, on the same hops (same relaxed endpoints, same IDPP images, same potential,
improved tangent, climbing image, the same fmax for both, no tight fmax):

1. FIRE vs FIRE: ``ase.optimize.FIRE`` on ``ase.mep.NEB`` against ``run_neb(optimizer="fire")`` (ASE's defaults):
   what the batched engine alone is worth;
2. best vs best: the faster of ASE's ``NEBOptimizer`` (ODE) and ``ase.optimize.LBFGS`` on ``ase.mep.NEB`` against
   ``run_neb(optimizer="lbfgs", freeze=True)``;
3. whole phase (``--whole-phase``): everything from the relaxed bulk to the percolation barriers — limace's
   ``phase_barriers`` (shared vacancy relaxations, bounds, only the saddles the certified answer needs, each from
   its dividing-plane minimum where that is a stationary point at the top of its path, else by NEB) against ASE
   doing the same job the plain way (two endpoint relaxations per hop with ASE's LBFGS, then ASE's best NEB
   optimizer on every distinct hop, and the same second NEB from a fresh 9-image band for the hops ours rechecked).

A row whose barriers differ from ours by more than 5 meV on any hop is flagged: speed without the same answer is no
result. Prints Markdown tables (wall time, image evaluations, steps, converged, largest barrier difference).

    python bench/neb_speed.py --potential limace-lisnin-small --phases Li LiSn --max-hops 2
    python bench/neb_speed.py --potential limace-lisnin-small --phases Li7Sn2 --whole-phase
    python bench/neb_speed.py --potential my.model --device cuda --dtype float32     # GPU
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")

TOLERANCE_EV = 0.005


class CountingCalculator:
    """Counts every real calculation of wrapped ASE calculators."""

    count = 0
    pool: list = []

    @classmethod
    def make_pool(cls, make_calc, n):
        """``n`` wrapped calculators, loaded once before any timing (ASE's side does not pay model loading)."""
        cls.pool = [cls.wrap(make_calc()) for _ in range(n)]

    @classmethod
    def wrap(cls, calc):
        original = calc.calculate

        def calculate(*args, **kwargs):
            cls.count += 1
            return original(*args, **kwargs)

        calc.calculate = calculate
        return calc


def setup_bands(phases, model, min_image_distance, n_images, max_hops):
    """Relaxed endpoints (one relaxation per distinct vacancy site) and IDPP bands of the first hops of each phase."""
    import numpy as np

    from limace.analysis.barriers import _interpolated_bands, BarrierSettings, resolve_phase
    from limace.analysis.hops import distinct_hops, vacancy_sites, vacancy_supercell_matrix
    from limace.analysis.relax import relax_structures

    bands, labels = [], []
    for spec in phases:
        name, bulk = resolve_phase(spec)
        bulk = relax_structures([bulk], model, fmax=0.01, relax_cell=True, progress=False)[0]
        hops = distinct_hops(bulk)[:max_hops]
        reps = np.diag(vacancy_supercell_matrix(bulk, min_image_distance))
        sites = vacancy_sites(bulk, hops, reps)
        relaxed = relax_structures([sites.vacancy_structure(r) for r in sites.representatives], model, fmax=0.01,
                                   relax_cell=False, optimizer="lbfgs", progress=False)
        for r, a in zip(sites.representatives, relaxed):
            sites.set_relaxed(r, a)
        ends = [sites.hop_endpoints(h) for h in hops]
        hb, errors = _interpolated_bands(ends, BarrierSettings(n_images=n_images), name)
        for h, band in zip(hops, hb):
            if band is None:
                print(f"skipped {name} hop {h.index}: {errors}", flush=True)
                continue
            bands.append(band)
            labels.append(f"{name} hop {h.index} ({h.length:.2f} A, {len(band[0])} atoms)")
    return bands, labels


def _norm_residual_neb():
    """``ase.mep.NEB`` whose residual is the largest per-atom force norm on any moving image: the fmax of ASE's
    FIRE/LBFGS on a NEB and of ours. ``NEBOptimizer`` (ODE) otherwise stops on the largest force *component*
    (``np.linalg.norm(..., np.inf)`` of the flattened forces), up to sqrt(3) looser at the same ``fmax``."""
    import numpy as np
    from ase.mep import NEB

    class NormResidualNEB(NEB):
        def get_forces(self):
            f = super().get_forces()
            self.residuals = list(np.linalg.norm(f.reshape(self.nimages - 2, -1, 3), axis=2).max(axis=1))
            return f

    return NormResidualNEB


def ase_neb(bands, optimizer, fmax, max_steps, tight_fmax=None, tight_below=0.15):
    """ASE NEB with one calculator per image (from the pool); ``optimizer``: fire, lbfgs or ode (NEBOptimizer, its
    residual the per-atom force norm as everywhere else: :func:`_norm_residual_neb`). With ``tight_fmax``, a band
    whose smaller barrier is below ``tight_below`` eV at ``fmax`` goes on to ``tight_fmax``, as ours does."""
    from ase.mep.neb import NEBOptimizer
    from ase.optimize import FIRE, LBFGS

    NEB = _norm_residual_neb()

    out = []
    CountingCalculator.count = 0
    t0 = time.perf_counter()
    for band in bands:
        images = [a.copy() for a in band]
        for a, calc in zip(images, CountingCalculator.pool):
            a.calc = calc
        neb = NEB(images, method="improvedtangent", climb=True)
        if optimizer == "ode":
            opt = NEBOptimizer(neb, method="ode", logfile=None)
        else:
            opt = (FIRE if optimizer == "fire" else LBFGS)(neb, logfile=None)
        converged = opt.run(fmax=fmax, steps=max_steps)
        e0, e1 = float(band[0].info["energy"]), float(band[-1].info["energy"])
        top = max(neb.energies[k] for k in range(1, len(images) - 1))
        if tight_fmax is not None and tight_fmax < fmax and min(top - e0, top - e1) < tight_below:
            converged = opt.run(fmax=tight_fmax, steps=max_steps)
            top = max(neb.energies[k] for k in range(1, len(images) - 1))
        out.append({"barrier": max(top, e0) - e0, "steps": opt.nsteps, "converged": bool(converged)})
    return out, time.perf_counter() - t0, CountingCalculator.count


def ours_neb(bands, model, optimizer, freeze, fmax, max_steps, device):
    import torch

    from limace.analysis.neb import run_neb

    t0 = time.perf_counter()
    res = run_neb(bands, model, fmax=fmax, max_steps=max_steps, optimizer=optimizer, freeze=freeze,
                  endpoint_energies=[(float(b[0].info["energy"]), float(b[-1].info["energy"])) for b in bands])
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    rows = [{"barrier": r.barrier_forward, "steps": r.steps, "converged": r.converged} for r in res]
    return rows, wall, res[0].info["image_evaluations"]


def table(title, rows, ref_name):
    ref = rows[ref_name][0]
    print(f"\n### {title}\n")
    print("| method | wall (s) | image evaluations | steps (sum) | all converged | max |barrier - ours| (meV) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, (res, wall, evals) in rows.items():
        diff = max(abs(r["barrier"] - o["barrier"]) for r, o in zip(res, ref)) * 1000
        flag = "" if diff <= TOLERANCE_EV * 1000 else " (**> 5 meV: not the same answer**)"
        print(f"| {name} | {wall:.1f} | {evals} | {sum(r['steps'] for r in res)} | "
              f"{all(r['converged'] for r in res)} | {diff:.2f}{flag} |")
    wall_ours = rows[ref_name][1]
    for name, (_, wall, _) in rows.items():
        if name != ref_name:
            print(f"\nspeed-up of {ref_name} over {name}: {wall / wall_ours:.2f}x")


def whole_phase(specs, model, args):
    """limace's phase pipeline against ASE doing every hop plainly (see the module docstring)."""
    from ase.optimize import LBFGS

    from limace.analysis.barriers import BarrierSettings, phase_barriers, resolve_phase
    from limace.analysis.hops import distinct_hops, hop_endpoints_for
    from limace.analysis.relax import relax_structures
    from limace.data.generate import hop_images

    print("\n### whole phase: bulk relaxed -> percolation barriers\n")
    print("| phase | hops | limace wall (s) | NEBs run / saddles at the plane / skipped | ASE wall (s) | ASE NEBs "
          "| speed-up | "
          "1D/3D limace (eV) | max |saddle diff| on limace's NEBs (meV) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for spec in specs:
        name, bulk = resolve_phase(spec)
        bulk = relax_structures([bulk], model, fmax=0.01, relax_cell=True, progress=False)[0]
        settings = BarrierSettings(fmax=args.fmax, tight_fmax=args.tight_fmax, relax_bulk=False,
                                   min_image_distance=args.min_image_distance, n_images=args.n_images,
                                   max_steps=args.max_steps)
        t0 = time.perf_counter()
        entry, results, _ = phase_barriers(name, bulk, model, settings, progress=False)
        wall_ours = time.perf_counter() - t0
        hops = distinct_hops(bulk, cutoff=settings.cutoff)
        print(f"{name}: limace {wall_ours:.1f} s ({entry['work']['nebs_run']} NEBs and "
              f"{len(entry['work']['saddles_at_plane'])} saddles at the plane of {len(hops)} hops); ASE:",
              flush=True)
        t0 = time.perf_counter()
        ase_barriers = []
        for h in hops:
            if args.ase_max_factor and time.perf_counter() - t0 > args.ase_max_factor * wall_ours:
                break  # ASE has already taken that many times our wall: the ratio below is a lower bound
            ep = hop_endpoints_for(bulk, h, settings.min_image_distance)
            ends = []
            for a in (ep.initial, ep.final):
                a = a.copy()
                a.calc = CountingCalculator.pool[0]
                LBFGS(a, logfile=None).run(fmax=settings.endpoint_fmax, steps=500)
                a.info["energy"] = a.get_potential_energy()
                ends.append(a)
            band = [ends[0], *hop_images(ends[0], ends[1], n_images=args.n_images), ends[1]]
            res, _, _ = ase_neb([band], args.ase_best, args.fmax, args.max_steps, tight_fmax=settings.tight_fmax,
                                tight_below=settings.tight_below)
            saddle = res[0]["barrier"] + ends[0].info["energy"]  # absolute saddle
            if h.index in entry["work"]["rechecked"]:  # the same second look as ours: a fresh band, the lower saddle
                band = [ends[0], *hop_images(ends[0], ends[1], n_images=settings.recheck_images), ends[1]]
                res2, _, _ = ase_neb([band], args.ase_best, args.fmax, settings.recheck_max_steps,
                                     tight_fmax=settings.tight_fmax, tight_below=settings.tight_below)
                if res2[0]["converged"]:
                    saddle = min(saddle, res2[0]["barrier"] + ends[0].info["energy"])
            ase_barriers.append(saddle)
            el = time.perf_counter() - t0
            mine = entry["hops"][len(ase_barriers) - 1]["saddle_eV"]
            mine = "not run" if mine is None else f"{mine + entry['energy_reference_eV'] - saddle:+.4f} eV"
            print(f"  ASE hop {len(ase_barriers)}/{len(hops)}: {el:.1f} s ({el / wall_ours:.2f}x ours so far); "
                  f"limace saddle - ASE saddle: {mine}", flush=True)
        wall_ase = time.perf_counter() - t0
        ref = entry["energy_reference_eV"]
        diffs = [abs(h["saddle_eV"] + ref - s) * 1000 for h, s in zip(entry["hops"], ase_barriers)
                 if h["saddle_eV"] is not None]
        w = entry["work"]
        pc = entry["percolation"]
        fmt = lambda x: "—" if x is None else f"{x:.3f}"  # noqa: E731
        done = len(ase_barriers)
        partial = done < len(hops)
        print(f"| {name} | {len(hops)} | {wall_ours:.1f} | {w['nebs_run']} / {len(w['saddles_at_plane'])} / {w['nebs_skipped']} | {wall_ase:.1f} | "
              f"{done}{' (stopped)' if partial else ''} ({args.ase_best}) | {'>= ' if partial else ''}"
              f"{wall_ase / wall_ours:.2f}x | {fmt(pc['1d']['barrier_eV'])} / "
              f"{fmt(pc['3d']['barrier_eV'])} | {max(diffs) if diffs else float('nan'):.1f} |", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--potential", required=True, help="registered name or .model path")
    p.add_argument("--phases", nargs="+", default=["Li", "LiSn"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float64")
    p.add_argument("--min-image-distance", type=float, default=13.0)
    p.add_argument("--n-images", type=int, default=5)
    p.add_argument("--max-hops", type=int, default=2, help="hops per phase (comparisons 1 and 2)")
    p.add_argument("--fmax", type=float, default=0.03)
    p.add_argument("--tight-fmax", type=float, default=0.01,
                   help="whole phase: both sides converge bands whose smaller barrier is below 0.15 eV to this "
                        "(limace barriers' default); --tight-fmax equal to --fmax turns it off")
    p.add_argument("--max-steps", type=int, default=400)
    p.add_argument("--skip-fire", action="store_true", help="skip comparison 1")
    p.add_argument("--skip-best", action="store_true", help="skip comparison 2")
    p.add_argument("--ase-best", default=None, choices=["ode", "lbfgs"],
                   help="ASE's optimizer for the whole-phase run (default: the faster one of comparison 2)")
    p.add_argument("--whole-phase", action="store_true", help="comparison 3 on --phases (all hops)")
    p.add_argument("--ase-max-factor", type=float, default=None,
                   help="whole phase: stop ASE's hops once its wall exceeds this many times ours (the speed-up is "
                        "then a measured lower bound, marked '>=', with the hops ASE finished)")
    args = p.parse_args()

    import torch

    from limace.potentials import load

    model = load(args.potential, device=args.device, dtype=args.dtype, batched=True)
    # ASE's side at its best: one calculator per image on the same weights, energy and forces (and stress, ~5 %
    # here), without the domain check (a second forward per call that doubled its cost until the seventeenth
    # session). limace's ASE calculator without it is faster here than mace-torch's MACECalculator (0.34 against
    # 0.42 s per 179-atom call, one thread), so it is the baseline.
    make_calc = lambda: load(args.potential, device=args.device, dtype=args.dtype, domain=False)  # noqa: E731
    CountingCalculator.make_pool(make_calc, max(args.n_images, 9) + 2)  # 9: the recheck's band (whole phase)
    print(f"torch threads {torch.get_num_threads()}, device {args.device}, dtype {args.dtype}, fmax {args.fmax}")
    if not (args.skip_fire and args.skip_best):
        bands, labels = setup_bands(args.phases, model, args.min_image_distance, args.n_images, args.max_hops)
        print(f"{len(bands)} hops: " + "; ".join(labels), flush=True)
    if not args.skip_fire:
        rows = {"limace FIRE": ours_neb(bands, model, "fire", False, args.fmax, args.max_steps, args.device),
                "ASE FIRE": ase_neb(bands, "fire", args.fmax, args.max_steps)}
        table("FIRE vs FIRE (same optimizer, the engine alone)", rows, "limace FIRE")
    if not args.skip_best:
        rows = {"limace L-BFGS + frozen images": ours_neb(bands, model, "lbfgs", True, args.fmax, args.max_steps,
                                                          args.device),
                "ASE NEBOptimizer (ODE)": ase_neb(bands, "ode", args.fmax, args.max_steps),
                "ASE LBFGS": ase_neb(bands, "lbfgs", args.fmax, args.max_steps)}
        table("best vs best", rows, "limace L-BFGS + frozen images")
        if args.ase_best is None:
            args.ase_best = "ode" if rows["ASE NEBOptimizer (ODE)"][1] <= rows["ASE LBFGS"][1] else "lbfgs"
    if args.whole_phase:
        args.ase_best = args.ase_best or "ode"
        whole_phase(args.phases, model, args)


if __name__ == "__main__":
    main()
