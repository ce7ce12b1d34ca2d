"""Import mace-torch the way that works with torch >= 2.6 (mace first, then e3nn), quietly.

mace's package ``__init__`` sets ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` so that e3nn 0.4.4 can load its constants;
importing e3nn before mace fails. Every limace module that needs mace imports it through :func:`import_mace`.
"""

from __future__ import annotations

import os
import warnings


def import_mace():
    """Return the ``mace`` package (importing it first if needed)."""
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD.*")
        import mace
        import mace.data  # noqa: F401
        import mace.modules  # noqa: F401
        import mace.tools  # noqa: F401
    return mace


def dtype_of(precision: str):
    import torch

    return {"float32": torch.float32, "float64": torch.float64}[precision]
