"""Moved to :mod:`limace.core.neighbors` (neighbour lists are shared by the potentials and the engines).

Kept so that existing imports keep working; new code imports :mod:`limace.core.neighbors`.
"""

from limace.core.neighbors import *  # noqa: F401,F403
from limace.core.neighbors import VerletList, neighbor_list  # noqa: F401
