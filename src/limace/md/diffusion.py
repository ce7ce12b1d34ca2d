"""Deprecated alias: the diffusion analysis moved to :mod:`limace.analysis.diffusion` (post-processing of MD runs
belongs to analysis). This alias re-exports it for scripts written against the old path and will be removed."""
from limace.analysis.diffusion import *  # noqa: F401,F403
from limace.analysis.diffusion import (  # noqa: F401
    KB_EV,
    ArrheniusFit,
    DiffusionAnalysis,
    analyze_run,
    msd_per_atom,
    save_plots,
    unwrap,
)
