"""limace.core: what the potentials, the engines (MD, relaxation, NEB) and the workflows share.

The bottom layer of the package: it imports nothing of limace outside itself, and both :mod:`limace.potentials` and
:mod:`limace.md` build on it without importing each other.

- :mod:`limace.core.state`: :class:`~limace.core.state.BatchedState` / :class:`~limace.core.state.MDState`, many
  periodic systems as flat tensors, and the dtype/device checks (:func:`~limace.core.state.as_dtype`,
  :func:`~limace.core.state.as_device`).
- :mod:`limace.core.neighbors`: batched neighbour lists and the Verlet list with a skin.
- :mod:`limace.core.model`: :class:`~limace.core.model.BatchedModel`, the call contract of a batched potential
  (``model(state) -> {"energy", "forces", ("stress")}``).
- :mod:`limace.core.optimize`: batched FIRE and L-BFGS over groups of rows (relaxation, NEB).
- :mod:`limace.core.units`: unit constants (k_B, eV/A^3 -> GPa, ...), in one place.
- :mod:`limace.core.errors`: the exception hierarchy; :mod:`limace.core.fileio`: atomic file writes.

Importing this package is light; the names below are imported on first use.
"""

_LAZY = {
    "BatchedState": "limace.core.state",
    "MDState": "limace.core.state",
    "as_dtype": "limace.core.state",
    "as_device": "limace.core.state",
    "per_system": "limace.core.state",
    "BatchedModel": "limace.core.model",
    "VerletList": "limace.core.neighbors",
    "neighbor_list": "limace.core.neighbors",
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'limace.core' has no attribute {name!r}")
