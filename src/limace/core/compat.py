"""Importing mace-torch under torch >= 2.6 without process-wide side effects.

e3nn 0.4.4 (mace-torch's pin) calls ``torch.load`` on its constants when imported, which torch >= 2.6 refuses with
its new ``weights_only=True`` default unless ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is set; mace's package
``__init__`` sets that variable for the whole process. :func:`import_mace` imports mace (and so e3nn) with the
variable set only for the import and restores what was there before, so that no other ``torch.load`` of the
process silently loses the weights-only protection. Our own ``torch.load`` calls pass ``weights_only=False``
explicitly where they read pickles we trust.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import warnings

_ENV = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
_DEFAULT_MODULES = ("mace", "mace.data", "mace.modules", "mace.tools")

__all__ = ["import_mace", "weights_only_fallback"]


@contextlib.contextmanager
def weights_only_fallback():
    """Within the block, ``torch.load`` without ``weights_only`` loads pickles (what e3nn 0.4.4 needs); the variable
    is restored (or removed) afterwards, whatever the block did to it."""
    before = os.environ.get(_ENV)
    os.environ[_ENV] = "1"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=f".*{_ENV}.*")
            yield
    finally:
        if before is None:
            os.environ.pop(_ENV, None)
        else:
            os.environ[_ENV] = before


def import_mace(*modules: str):
    """Import the ``mace`` package and ``modules`` (default: mace.data, mace.modules, mace.tools) under
    :func:`weights_only_fallback`; returns the ``mace`` package."""
    with weights_only_fallback():
        for name in modules or _DEFAULT_MODULES:
            importlib.import_module(name)
        import mace
    return mace
