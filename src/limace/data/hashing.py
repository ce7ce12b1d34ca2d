"""A stable identity for a structure: species, cell and wrapped positions rounded to 1e-8 A, hashed.

1e-8 A is the precision extxyz files are written with (``%.8f``), so a structure hashes the same before and after
a round trip through a file (a coarser grid would flip coordinates that sit near a rounding boundary).
"""

from __future__ import annotations

import hashlib

import numpy as np
from ase import Atoms

from limace.keys import CONFIG_ID_KEY


def structure_hash(atoms: Atoms, decimals: int = 8) -> str:
    """16-hex-digit SHA-256 of (numbers, pbc, cell, wrapped Cartesian positions), rounded to ``decimals``.

    Independent of labels, info and calculators; equal for copies and extxyz round trips, different after any
    move > 1e-8 A.
    """
    cell = np.round(np.asarray(atoms.cell[:], dtype=float), decimals) + 0.0
    frac = atoms.get_scaled_positions(wrap=True) if atoms.pbc.any() else None
    if frac is not None:
        frac = np.where(np.round(frac, 7) >= 1.0, frac - 1.0, frac)
        pos = frac @ atoms.cell[:]
    else:
        pos = atoms.positions
    pos = np.round(pos, decimals) + 0.0  # + 0.0 turns -0.0 into 0.0
    h = hashlib.sha256()
    h.update(np.asarray(atoms.numbers, dtype=np.int64).tobytes())
    h.update(np.asarray(atoms.pbc, dtype=np.int8).tobytes())
    h.update(cell.tobytes())
    h.update(pos.tobytes())
    return h.hexdigest()[:16]


def ensure_config_id(atoms: Atoms) -> str:
    """The configuration's ``info['config_id']``, set from :func:`structure_hash` when missing."""
    cid = atoms.info.get(CONFIG_ID_KEY)
    if not cid:
        cid = structure_hash(atoms)
        atoms.info[CONFIG_ID_KEY] = cid
    return str(cid)
