"""NEB speed: ASE NEB (shared calculator), ASE NEB (one calculator per image) and limace's batched NEB.

Same hops, same relaxed endpoints, same IDPP images, same potential, same convergence (fmax 0.03 eV/A,
improved tangent, climbing image, FIRE with ASE's defaults), in one run. Prints wall time, model evaluations
(images evaluated), optimizer steps and the largest barrier difference, then the speed-up ratios.

    python bench/neb_speed.py --potential limace-lisnin-small --phases Li LiSn Li13Sn5
    python bench/neb_speed.py --potential my.model --device cuda --dtype float32     # GPU
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")


class CountingCalculator:
    """Wraps an ASE calculator class so that every real calculation is counted."""

    count = 0

    @classmethod
    def wrap(cls, calc):
        original = calc.calculate

        def calculate(*args, **kwargs):
            cls.count += 1
            return original(*args, **kwargs)

        calc.calculate = calculate
        return calc


def setup_bands(phases, model, min_image_distance, n_images, max_hops):
    from limace.analysis.barriers import resolve_phase
    from limace.analysis.hops import distinct_hops, hop_endpoints_for
    from limace.analysis.relax import relax_structures
    from limace.analysis.neb import check_band
    from limace.data.generate import hop_images
    from limace.errors import LimaceInputError

    bands, labels = [], []
    for spec in phases:
        name, bulk = resolve_phase(spec)
        bulk = relax_structures([bulk], model, fmax=0.01, relax_cell=True, progress=False)[0]
        hops = distinct_hops(bulk)[:max_hops]
        eps = [hop_endpoints_for(bulk, h, min_image_distance) for h in hops]
        ends = relax_structures([a for ep in eps for a in (ep.initial, ep.final)], model, fmax=0.01,
                                relax_cell=False, progress=False)
        for k, h in enumerate(hops):
            ini, fin = ends[2 * k], ends[2 * k + 1]
            ini.calc = fin.calc = None
            band = [ini, *hop_images(ini, fin, n_images=n_images, method="idpp"), fin]
            label = f"{name} hop {h.index} ({h.length:.2f} A, {len(ini)} atoms)"
            try:  # the potential may relax an endpoint into nonsense: such a hop is no benchmark
                check_band(band, where=label)
            except LimaceInputError as exc:
                print(f"skipped: {exc}", flush=True)
                continue
            bands.append(band)
            labels.append(label)
    return bands, labels


def cached_bands(path, *args):
    """The bands of :func:`setup_bands`, stored in ``path`` (extxyz) so that several runs share one setup."""
    from ase.io import read, write

    if path and os.path.exists(path):
        frames = read(path, ":")
        bands, labels = {}, {}
        for a in frames:
            bands.setdefault(a.info["band"], []).append(a)
            labels[a.info["band"]] = a.info["label"]
        return [bands[k] for k in sorted(bands)], [labels[k] for k in sorted(bands)]
    bands, labels = setup_bands(*args)
    if path:
        for k, (band, label) in enumerate(zip(bands, labels)):
            for a in band:
                a.info.update(band=k, label=label)
        write(path, [a for band in bands for a in band], format="extxyz")
    return bands, labels


def ase_neb(bands, make_calc, shared, fmax, max_steps):
    from ase.mep import NEB
    from ase.optimize import FIRE

    out = []
    CountingCalculator.count = 0
    t0 = time.perf_counter()
    shared_calc = CountingCalculator.wrap(make_calc()) if shared else None
    for band in bands:
        images = [a.copy() for a in band]
        for a in images:
            a.calc = shared_calc if shared else CountingCalculator.wrap(make_calc())
        neb = NEB(images, method="improvedtangent", climb=True, allow_shared_calculator=shared)
        opt = FIRE(neb, logfile=None)
        converged = opt.run(fmax=fmax, steps=max_steps)
        energies = [neb.energies[k] for k in range(len(images))]
        # endpoints are not evaluated by ASE's NEB: use the interior images relative to the initial state energy
        e0 = images[0].copy()
        e0.calc = make_calc()
        e_init = e0.get_potential_energy()
        out.append({"barrier": max(energies[1:-1]) - e_init, "steps": opt.nsteps, "converged": bool(converged)})
    wall = time.perf_counter() - t0
    return out, wall, CountingCalculator.count


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--potential", required=True, help="registered name or .model path")
    p.add_argument("--phases", nargs="+", default=["Li", "LiSn"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float64")
    p.add_argument("--min-image-distance", type=float, default=9.0)
    p.add_argument("--n-images", type=int, default=5)
    p.add_argument("--max-hops", type=int, default=2, help="hops per phase")
    p.add_argument("--fmax", type=float, default=0.03)
    p.add_argument("--max-steps", type=int, default=300)
    p.add_argument("--optimizer", default="lbfgs", choices=["fire", "lbfgs"], help="optimizer of limace's NEB")
    p.add_argument("--ours-dtype", default=None, help="dtype of limace's NEB (default: --dtype)")
    p.add_argument("--bands", default=None, help="extxyz file caching the relaxed bands (written if missing)")
    p.add_argument("--skip-ase-shared", action="store_true", help="skip (a), the slowest")
    args = p.parse_args()

    import torch

    from limace.analysis.neb import run_neb
    from limace.potentials import load

    model = load(args.potential, device=args.device, dtype=args.dtype, batched=True)
    ours_model = model if args.ours_dtype in (None, args.dtype) else \
        load(args.potential, device=args.device, dtype=args.ours_dtype, batched=True)
    make_calc = lambda: load(args.potential, device=args.device, dtype=args.dtype)  # noqa: E731
    bands, labels = cached_bands(args.bands, args.phases, model, args.min_image_distance, args.n_images,
                                 args.max_hops)
    print(f"{len(bands)} hops: " + "; ".join(labels), flush=True)
    print(f"torch threads {torch.get_num_threads()}, device {args.device}, dtype {args.dtype} "
          f"(limace: {args.ours_dtype or args.dtype}, {args.optimizer})")

    rows = {}
    t0 = time.perf_counter()
    ours = run_neb(bands, ours_model, fmax=args.fmax, max_steps=args.max_steps, optimizer=args.optimizer)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    wall_c = time.perf_counter() - t0
    rows["c: limace batched NEB"] = ([{"barrier": r.barrier_forward, "steps": r.steps, "converged": r.converged}
                                      for r in ours], wall_c, ours[0].info["image_evaluations"])
    rows["b: ASE NEB, calculator per image"] = ase_neb(bands, make_calc, False, args.fmax, args.max_steps)
    if not args.skip_ase_shared:
        rows["a: ASE NEB, shared calculator"] = ase_neb(bands, make_calc, True, args.fmax, args.max_steps)

    ref = rows["c: limace batched NEB"][0]
    print(f"\n| method | wall (s) | image evaluations | steps (sum) | all converged | max |barrier - ours| (meV) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, (res, wall, evals) in rows.items():
        diff = max(abs(r["barrier"] - o["barrier"]) for r, o in zip(res, ref)) * 1000
        print(f"| {name} | {wall:.1f} | {evals} | {sum(r['steps'] for r in res)} | "
              f"{all(r['converged'] for r in res)} | {diff:.2f} |")
    print()
    for name, (_, wall, _) in rows.items():
        if not name.startswith("c"):
            print(f"speed-up of limace over {name[3:]}: {wall / wall_c:.2f}x")
    print("\nper hop: barrier (eV) / steps")
    print("| hop | " + " | ".join(name[:1] for name in rows) + " |")
    print("| --- |" + " --- |" * len(rows))
    for k, label in enumerate(labels):
        cells = [f"{res[k]['barrier']:.3f} / {res[k]['steps']}{'' if res[k]['converged'] else ' (not converged)'}"
                 for res, _, _ in rows.values()]
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
