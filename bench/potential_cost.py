"""Cost of each registered potential: energy + forces of the same structures, the potentials timed in alternating
rounds in one process (so a shared machine's load hits all alike), one torch thread by default.

What it answers: how much slower the accuracy option (limace-lisnin-medium) is than the default
(limace-lisnin-small) for the work MD, relaxation and NEB do (no stress). The structures are library phases of both
systems repeated to about ``--atoms`` atoms each, evaluated one at a time (a user's ASE loop) through the batched
engine's one-system path.

    python bench/potential_cost.py [--potentials limace-lisnin-small limace-lisnin-medium] [--calls 10]
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--potentials", nargs="+", default=["limace-lisnin-small", "limace-lisnin-medium"])
    ap.add_argument("--phases", nargs="+", default=["Li13In3", "LiSn", "Li7Sn2", "LiIn"])
    ap.add_argument("--atoms", type=int, default=64, help="each phase repeated to at least this many atoms")
    ap.add_argument("--calls", type=int, default=10, help="energy + forces calls per structure and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from limace.core.state import BatchedState
    from limace.data.structures import get_structure
    from limace.md.explore import _repeat_to
    from limace.potentials import load_batched

    systems = [_repeat_to(get_structure(p), args.atoms) for p in args.phases]
    models = {name: load_batched(name, dtype=args.dtype, progress=False) for name in args.potentials}
    states = [BatchedState.from_atoms([a], dtype=getattr(torch, args.dtype)) for a in systems]
    for m in models.values():  # warm-up: neighbour lists, allocator
        for s in states:
            m(s)
    wall = {name: 0.0 for name in models}
    for _ in range(args.rounds):
        for name, m in models.items():
            t0 = time.perf_counter()
            for s in states:
                for _ in range(args.calls):
                    m(s)
            wall[name] += time.perf_counter() - t0
    atom_calls = args.rounds * args.calls * sum(len(a) for a in systems)
    base = args.potentials[0]
    rows = {name: {"atom_calls_per_s": round(atom_calls / w, 1), "slower_than_first": round(w / wall[base], 2)}
            for name, w in wall.items()}
    print(f"{len(systems)} structures ({', '.join(f'{a.get_chemical_formula()} {len(a)}' for a in systems)}), "
          f"{args.threads} thread(s), {args.dtype}, energy + forces")
    print("| potential | atom-calls/s | time relative to the first |")
    print("|---|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['atom_calls_per_s']} | {r['slower_than_first']}x |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
