"""limace.md: batched molecular dynamics of many systems at once.

- :mod:`limace.core.state`: :class:`~limace.core.state.BatchedState` / :class:`~limace.core.state.MDState`.
- :mod:`limace.md.integrators`: NVE, Langevin (BAOAB), Nose-Hoover chain, CSVR, NPT (stochastic cell rescaling).
- :mod:`limace.md.runner`: :func:`~limace.md.runner.run_md` (logs, trajectories, checkpoints, blow-up guard).
- :mod:`limace.md.config`: :class:`~limace.md.config.MDConfig`, the typed config of ``limace md CONFIG.yaml``.
- diffusion analysis of the runs (MSD, D, Arrhenius): :mod:`limace.analysis.diffusion`.

Importing this package is light; the names below are imported on first use.
"""

_LAZY = {
    "BatchedState": "limace.core.state",
    "MDState": "limace.core.state",
    "MDConfig": "limace.md.config",
    "run_md": "limace.md.runner",
    "run_config": "limace.md.runner",
    "MDResult": "limace.md.runner",
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'limace.md' has no attribute {name!r}")
