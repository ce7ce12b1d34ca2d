"""Import mace-torch the way that works with torch >= 2.6 (see :mod:`limace.core.compat`), quietly and without
leaving ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` set for the rest of the process. Every limace module that needs mace
imports it through :func:`import_mace`.
"""

from __future__ import annotations

from limace.core.compat import import_mace

__all__ = ["dtype_of", "import_mace"]


def dtype_of(precision: str):
    """``torch.float32``/``torch.float64`` from ``"float32"``/``"float64"`` (:func:`limace.core.state.as_dtype`)."""
    from limace.core.state import as_dtype

    return as_dtype(precision)
