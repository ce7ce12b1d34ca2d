"""Pretrained potentials: a registry of named potentials, verified download into a cache, and loading.

>>> import limace.potentials
>>> atoms.calc = limace.potentials.load("limace-lisnin-small")       # ASE calculator   # doctest: +SKIP
>>> atoms.calc = limace.potentials.load("my.model", dtype="float32")  # any MACE .model file  # doctest: +SKIP
>>> model = limace.potentials.load_batched("limace-lisnin-small", device="cuda")  # MD/NEB  # doctest: +SKIP

Importing this package is light (no torch); :func:`load` imports torch and mace when called.
"""

from limace.potentials.registry import (
    PotentialEntry,
    cache_dir,
    fetch,
    get_potential,
    is_offline,
    list_potentials,
)

__all__ = ["PotentialEntry", "cache_dir", "fetch", "get_potential", "is_offline", "list_potentials", "load",
           "load_batched"]


def load(name_or_path, device: str = "cpu", dtype: str = "float64", batched: bool = False, *,
         offline: bool | None = None, progress: bool = True, domain: bool = True, prediction: str | None = None):
    """A potential as an ASE calculator (or, with ``batched=True``, our batched model); see
    :func:`limace.potentials.calculator.load`."""
    from limace.potentials.calculator import load as _load

    return _load(name_or_path, device=device, dtype=dtype, batched=batched, offline=offline, progress=progress,
                 domain=domain, prediction=prediction)


def load_batched(name_or_path, device: str = "cpu", dtype: str = "float64", **options):
    """The batched model (MD, relaxation, NEB, screening) of a registry name or ``.model`` path; see
    :func:`limace.potentials.calculator.load_batched` for the options."""
    from limace.potentials.calculator import load_batched as _load_batched

    return _load_batched(name_or_path, device=device, dtype=dtype, **options)
