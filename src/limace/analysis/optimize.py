"""Moved to :mod:`limace.core.optimize` (the batched optimisers are an engine shared by relaxation and NEB).

Kept so that existing imports keep working; new code imports :mod:`limace.core.optimize`.
"""

from limace.core.optimize import *  # noqa: F401,F403
from limace.core.optimize import OPTIMIZERS, FireParams, FireState, LBFGSParams, LBFGSState, Optimizer, fire_concat, fire_init, fire_select, fire_step, group_max_force, group_sum, lbfgs_concat, lbfgs_init, lbfgs_select, lbfgs_step  # noqa: F401
