"""Moved to :mod:`limace.core.errors`.

Kept so that existing imports keep working; new code imports :mod:`limace.core.errors`.
"""

from limace.core.errors import *  # noqa: F401,F403
from limace.core.errors import CalculationError, ChecksumError, DownloadError, LimaceError, LimaceInputError, LimaceWarning, ModelFileError, UnknownNameError, UnsupportedElementError, ValidationError, check_number  # noqa: F401
