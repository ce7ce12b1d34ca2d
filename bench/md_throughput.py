"""MD throughput: atom*steps/s of M alloy systems, the ASE loop a user would write against our batched engine.

(a) ASE: one mace-torch ``MACECalculator`` per system and ASE's ``Langevin``, the systems stepped one after the other
(``ase``: as shipped, stress at every call; ``ase-nostress``: energy and forces only, the same work as ours and the
baseline of the ratios; ``ase+compile`` with ``--compile``: that with mace's ``compile_mode="default"``);
(b) limace: all systems in one :class:`BatchedState`, :class:`BatchedMACE` (no stress) and ``langevin_step``;
with ``--compile`` also (c) the same with the model compiled by ``torch.compile`` (compile time reported apart).
Same model file, dtype, time step, temperature and friction. The two are timed in alternating rounds in this one
process (so a shared machine's load hits both alike); peak memory is the CUDA allocator's peak, or on a CPU what the
resident set grew to during the timed steps over what it was at their start (see :class:`Peak`).

    python bench/md_throughput.py --m 1 32 --steps 3            # default: a 64-channel L=1 random-weight MACE
    python bench/md_throughput.py --model my.model --device cuda --m 256 --steps 20
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402


def random_mace(path: Path, channels: int = 64, max_L: int = 1, seed: int = 0) -> Path:
    """A random-weight ScaleShiftMACE (Li/In/Sn, r_max 5 A, 2 interactions, correlation 3, max_ell 3) saved like a
    mace-torch .model file: the size of a 'small' production model."""
    import torch
    from mace import modules
    from e3nn import o3

    block = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    hidden = " + ".join(f"{channels}x{l}{'e' if l % 2 == 0 else 'o'}" for l in range(max_L + 1))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = modules.ScaleShiftMACE(
            r_max=5.0, num_bessel=8, num_polynomial_cutoff=5, max_ell=3, interaction_cls=block,
            interaction_cls_first=block, num_interactions=2, num_elements=3, hidden_irreps=o3.Irreps(hidden),
            MLP_irreps=o3.Irreps("16x0e"), gate=torch.nn.functional.silu, atomic_energies=np.array([-1.9, -2.6, -3.8]),
            avg_num_neighbors=30.0, atomic_numbers=[3, 49, 50], correlation=3, pair_repulsion=True,
            atomic_inter_scale=1.0, atomic_inter_shift=0.0)
    torch.save(model.float().eval(), path)
    return path


def alloy_cells(m: int, sizes: list[int], seed: int = 0):
    """M bcc Li-In / Li-Sn cells cycling through ``sizes`` (16, 54, 128 = 2x2x2, 3x3x3, 4x4x4 conventional cells),
    a quarter of the atoms In or Sn, rattled."""
    from ase.build import bulk

    rng = np.random.default_rng(seed)
    cells = []
    for k in range(m):
        n = sizes[k % len(sizes)]
        rep = round((n / 2) ** (1 / 3))
        if 2 * rep ** 3 != n:
            raise SystemExit(f"--sizes: {n} is not 2*k^3 (16, 54, 128, 250)")
        atoms = bulk("Li", "bcc", a=3.45, cubic=True).repeat(rep)
        idx = rng.choice(n, n // 4, replace=False)
        atoms.numbers[idx] = 49 if k % 2 else 50
        atoms.rattle(0.05, seed=seed + k)
        cells.append(atoms)
    return cells


class Peak:
    """Peak memory of a phase: the CUDA allocator's peak on a GPU; on a CPU the resident-set high-water mark during
    the phase less the resident set at its start (the working memory of the steps; reset through
    /proc/self/clear_refs)."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.base = 0.0

    def reset(self):
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass
        self.base = self._status("VmRSS:")

    @staticmethod
    def _status(key: str) -> float:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith(key):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    def read_mib(self) -> float:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() / 2 ** 20
        return self._status("VmHWM:") - self.base


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="MACE .model file (default: a random 64-ch L=1 MACE)")
    ap.add_argument("--m", type=int, nargs="+", default=[1, 32], help="numbers of systems to run")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds (ASE, limace, ASE, limace...)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[54, 16, 128], help="atoms per system, cycled")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--max-atoms-per-call", default="auto",
                    help="atoms per forward call of BatchedMACE: a number, 'none' (all at once) or 'auto' (128 on CPU)")
    ap.add_argument("--skip-ase", action="store_true", help="only time limace (large M on a GPU)")
    ap.add_argument("--compile", action="store_true", help="also time limace with torch.compile (minutes to compile)")
    args = ap.parse_args(argv)

    import torch
    import mace  # noqa: F401  (before e3nn)
    from ase import units
    from ase.md.langevin import Langevin
    from mace.calculators import MACECalculator

    from limace.md import integrators as md
    from limace.core.state import BatchedState
    from limace.potentials.batched import BatchedMACE

    torch.set_num_threads(args.threads)
    text = str(args.max_atoms_per_call).lower()
    chunk = "auto" if text == "auto" else None if text == "none" else int(text)
    tmp = tempfile.TemporaryDirectory()
    path = args.model or random_mace(Path(tmp.name) / "random-64x1.model")
    dt_fs, temp_k, friction = 2.0, 600.0, 0.01
    peak = Peak(args.device)
    cpu = platform.processor() or platform.machine()
    print(f"# md_throughput: model={path if args.model else 'random 64-ch L=1 MACE'} device={args.device} "
          f"dtype={args.dtype} threads={args.threads} steps={args.steps}x{args.rounds} sizes={args.sizes} "
          f"atoms/call={args.max_atoms_per_call} "
          f"cpu={cpu} torch={torch.__version__}")
    print(f"{'M':>5} {'atoms':>6} {'variant':>15} {'atom*steps/s':>14} {'vs ASE':>6} {'peak MiB':>9}"
          "   (vs ASE: against ase-nostress, the same work)")
    variants = ["limace"] + (["limace+compile"] if args.compile else [])
    for m in args.m:
        cells = alloy_cells(m, args.sizes)
        n_atoms = sum(len(a) for a in cells)
        runners, extra = {}, []
        # (a) the ASE loop a user would write: one MACECalculator and one Langevin per system. "ase" is the
        # calculator as shipped (it computes the stress at every call); "ase-nostress" does the same work as ours
        # (energy and forces only: mace's calculator has no switch, so its model_type is set to one it does not
        # compute stress for, which changes nothing else in its calculate()); with --compile, "ase+compile" is
        # "ase-nostress" with mace's own compile_mode="default" beside our compiled model.
        ase_variants = [] if args.skip_ase else ["ase", "ase-nostress"] + (["ase+compile"] if args.compile else [])
        if "ase+compile" in ase_variants:
            # each of the M calculators compiles its own graph in dynamo's one cache: let all M compile (the default
            # limit of 8 ends M > 8 in a hard failure under mace's fullgraph=True), the baseline at its best
            import torch._dynamo

            cfg = torch._dynamo.config
            for key in ("recompile_limit", "cache_size_limit"):
                if hasattr(cfg, key):
                    setattr(cfg, key, max(getattr(cfg, key), 4 * m))
        for name in ase_variants:
            t0 = time.perf_counter()
            dyns = []
            for k, atoms in enumerate(cells):
                atoms = atoms.copy()
                kw = {"compile_mode": "default"} if name == "ase+compile" else {}
                atoms.calc = MACECalculator(model_paths=str(path), device=args.device, default_dtype=args.dtype, **kw)
                if name != "ase":
                    atoms.calc.model_type = "EnergyForcesOnly"
                dyns.append(Langevin(atoms, timestep=dt_fs * units.fs, temperature_K=temp_k,
                                     friction=friction / units.fs, rng=np.random.default_rng(k)))
            for dyn in dyns:
                dyn.run(1)  # warm-up (and compilation)
            if name == "ase+compile":
                extra.append(f"ASE compile+warm-up {time.perf_counter() - t0:.0f} s")

            def run_ase(steps, dyns=dyns):
                for dyn in dyns:
                    dyn.run(steps)

            runners[name] = run_ase
        # (b) our batched engine, all systems in one state (and optionally a compiled model)
        for name in variants:
            t0 = time.perf_counter()
            model = BatchedMACE.from_file(path, device=args.device, dtype=args.dtype, compile=name.endswith("compile"),
                                          max_atoms_per_call=chunk)
            gens = [torch.Generator(device=args.device).manual_seed(k) for k in range(m)]
            state = md.init_md(BatchedState.from_atoms(cells, device=args.device, dtype=args.dtype), model,
                               temperature=temp_k, generator=gens)
            state = md.langevin_step(state, model, dt=dt_fs, temperature=temp_k, friction=friction, generator=gens)
            if name.endswith("compile"):
                extra.append(f"compile+warm-up {time.perf_counter() - t0:.0f} s")
            box = {"state": state}

            def run_ours(steps, model=model, gens=gens, box=box):
                for _ in range(steps):
                    box["state"] = md.langevin_step(box["state"], model, dt=dt_fs, temperature=temp_k,
                                                    friction=friction, generator=gens)

            runners[name] = run_ours
        times = dict.fromkeys(runners, 0.0)
        mems = dict.fromkeys(runners, 0.0)
        for _ in range(args.rounds):  # alternate, so the machine's load hits every variant alike
            for name, fn in runners.items():
                peak.reset()
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                fn(args.steps)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                times[name] += time.perf_counter() - t0
                mems[name] = max(mems[name], peak.read_mib())
        work = n_atoms * args.steps * args.rounds
        rate = {k: work / t for k, t in times.items()}
        base = rate.get("ase-nostress", float("nan"))  # like with like: energy + forces on both sides
        for name in runners:
            print(f"{m:>5} {n_atoms:>6} {name:>15} {rate[name]:>14.1f} {rate[name] / base:>6.2f} {mems[name]:>9.0f}",
                  flush=True)
        if extra:
            print(f"#   M={m}: " + "; ".join(extra), flush=True)
    tmp.cleanup()


if __name__ == "__main__":
    main()
