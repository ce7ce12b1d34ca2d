"""Moved to :mod:`limace.core.fileio`.

Kept so that existing imports keep working; new code imports :mod:`limace.core.fileio`.
"""

from limace.core.fileio import *  # noqa: F401,F403
from limace.core.fileio import atomic_append, atomic_write, atomic_write_bytes, atomic_write_json, atomic_write_text, check_output_path  # noqa: F401
