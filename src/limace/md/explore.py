"""Exploration by MD: snapshots of hot MD that a potential produces and nobody labelled yet.

Used for the model-made class of the extrapolation set (``extrap_md``, :mod:`limace.data.extrapolation`) and as the
MD part of the exploration stage of active learning. The rule is fixed up front: every library compound phase whose
primitive cell has at most ``max_prim_atoms`` atoms, repeated to at least ``min_atoms`` atoms, is run with Langevin
dynamics at each temperature for ``steps`` steps (all in one batched run) and its last frame is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from ase import Atoms

from limace.data.hashing import ensure_config_id
from limace.data.structures import list_phases, sort_species

TEMPERATURES_K = (600.0, 900.0)


def _repeat_to(atoms: Atoms, min_atoms: int) -> Atoms:
    """Repeat along the shortest cell vectors first until the cell has at least ``min_atoms`` atoms."""
    reps = np.ones(3, dtype=int)
    lengths = atoms.cell.lengths()
    while len(atoms) * reps.prod() < min_atoms:
        k = int(np.argmin(lengths * reps))
        reps[k] += 1
    return atoms.repeat(tuple(int(r) for r in reps))


def md_cells(max_prim_atoms: int = 10, min_atoms: int = 8) -> list[tuple[str, Atoms]]:
    """(phase id, cell) of the library compounds the MD rule applies to."""
    out = []
    for p in list_phases(buildable=True):
        if p.system == "element":
            continue
        prim = p.build(primitive=True)
        if len(prim) <= max_prim_atoms:
            out.append((p.id, _repeat_to(prim, min_atoms)))
    return out


def md_snapshots(cells: Sequence[tuple[str, Atoms]], model, temperatures_K: Sequence[float] = TEMPERATURES_K,
                 steps: int = 1000, timestep_fs: float = 2.0, seed: int = 20261204,
                 config_type: str = "extrap_md", output_dir: str | Path | None = None) -> list[Atoms]:
    """Last frame of a Langevin run of every (cell, temperature), unlabelled, tagged with ``config_type``,
    ``phase``, ``md_temperature_K`` and ``md_steps``. Systems the blow-up guard stopped are left out (their last
    frame is not a state the dynamics reached at that temperature)."""
    import hashlib

    import torch

    from limace.md.runner import run_md

    runs = [(pid, c, float(t)) for pid, c in cells for t in temperatures_K]
    # each (phase, temperature) draws from its own stream, so a snapshot does not depend on the other systems
    gens = [torch.Generator().manual_seed(int(hashlib.sha256(f"{seed}:{pid}:{t:g}".encode()).hexdigest()[:15], 16))
            for pid, _, t in runs]
    result = run_md([c for _, c, _ in runs], model, output_dir=output_dir, ensemble="nvt_langevin", steps=steps,
                    timestep_fs=timestep_fs, temperature_K=[t for *_, t in runs], generators=gens,
                    trajectory_every=steps, log_every=steps, checkpoint_every=steps)
    stopped = {s.system for s in result.stopped}
    out = []
    for k, ((pid, _, t), frame) in enumerate(zip(runs, result.final)):
        if k in stopped:
            continue
        a = Atoms(frame.get_chemical_symbols(), positions=frame.positions, cell=frame.cell, pbc=True)
        a.wrap()
        a = sort_species(a)
        a.info = {"config_type": config_type, "phase": pid, "md_temperature_K": t, "md_steps": steps}
        ensure_config_id(a)
        out.append(a)
    return out
