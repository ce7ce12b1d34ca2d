"""Exception hierarchy, and :func:`check_number` for the numbers users give.

User/setup mistakes (bad files, keys, values) derive from :class:`LimaceInputError` and are reported by the CLI as
one line with exit code 2. Failures of a calculation (SCF not converged, calculator crash) derive from
:class:`CalculationError` and are recorded, not raised through long jobs.
"""


class LimaceError(Exception):
    """Base class of every error limace raises on purpose."""


class LimaceInputError(LimaceError, ValueError):
    """Bad input: a file, key or value the user gave. The message names it."""


class ValidationError(LimaceInputError):
    """A configuration or file failed validation (names file, frame and key)."""


class UnknownNameError(LimaceInputError, KeyError):
    """A name (phase, protocol, potential) that is not known; the message lists the closest ones."""

    def __str__(self) -> str:  # KeyError quotes its message; we want the plain line
        return str(self.args[0]) if self.args else ""


class LimaceWarning(UserWarning):
    """Something the user should know that does not stop the work (an unreachable registry, a cached copy used);
    the CLI shows it as one line ``limace: warning: ...``."""


class CalculationError(LimaceError, RuntimeError):
    """A calculation failed (SCF not converged, calculator crash, non-finite result)."""


class ChecksumError(LimaceInputError):
    """A file's SHA-256 differs from the one recorded for it; the file is removed or quarantined, never used."""


class DownloadError(LimaceInputError):
    """A file could not be downloaded (no network, server error) and no verified cached copy exists."""


class ModelFileError(LimaceInputError):
    """A model file is missing, unreadable or not a MACE model."""


class UnsupportedElementError(LimaceInputError):
    """A structure contains elements the potential was not trained on."""


def check_number(name: str, value, *, at_least: float | None = None, above: float | None = None,
                 at_most: float | None = None):
    """``value`` if it is a finite number within the bounds given, else :class:`LimaceInputError` naming ``name``
    (``--workers must be >= 1, got 0``). ``None`` passes (an option left unset)."""
    import math

    if value is None:
        return value
    if isinstance(value, float) and not math.isfinite(value):
        raise LimaceInputError(f"{name} must be a finite number, got {value}")
    if at_least is not None and value < at_least:
        raise LimaceInputError(f"{name} must be >= {at_least:g}, got {value:g}")
    if above is not None and not value > above:
        raise LimaceInputError(f"{name} must be > {above:g}, got {value:g}")
    if at_most is not None and value > at_most:
        raise LimaceInputError(f"{name} must be <= {at_most:g}, got {value:g}")
    return value


FLOAT_DTYPES = ("float32", "float64")  # the floating-point precisions limace runs in


def check_dtype_name(value, what: str = "--dtype") -> str:
    """``value`` when it names a supported precision (:data:`FLOAT_DTYPES`), else a one-line
    :class:`ValidationError` naming ``what``; the one dtype check of options and configs (it needs no torch, so a
    bad option fails before anything heavy is imported; :func:`limace.core.state.as_dtype` uses the same list)."""
    if not isinstance(value, str) or value not in FLOAT_DTYPES:
        raise ValidationError(f"{what} must be float32 or float64, not {value!r}")
    return value
