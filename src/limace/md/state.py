"""Moved to :mod:`limace.core.state` (the batched state is shared by the potentials and the engines).

Kept so that existing imports keep working; new code imports :mod:`limace.core.state`.
"""

from limace.core.state import *  # noqa: F401,F403
from limace.core.state import ATOM, SYSTEM, BatchedState, MDState, as_device, as_dtype, dtype_name, per_system  # noqa: F401
