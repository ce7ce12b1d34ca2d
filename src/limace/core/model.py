"""The call contract of a batched potential, shared by the potentials and the engines.

A batched model maps a :class:`~limace.core.state.BatchedState` of ``S`` systems and ``N`` atoms to

- ``"energy"``: ``[S]`` potential energy of each system (eV),
- ``"forces"``: ``[N, 3]`` (eV/A), unless called with ``compute_forces=False``,
- ``"stress"``: ``[S, 3, 3]`` (eV/A^3, ASE sign: positive under tension), when asked (``compute_stress=True``, or
  ``None`` and the model was built with ``compute_stress=True``),

as tensors on the state's device in the state's dtype. :class:`limace.potentials.batched.BatchedMACE` and
:class:`limace.potentials.pair.BatchedMorse` implement it; the engines (:mod:`limace.md`, relaxation, NEB) accept
any object that does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

    from limace.core.state import BatchedState

__all__ = ["BatchedModel", "committee_spread", "member_energies", "member_spread", "system_max"]


@runtime_checkable
class BatchedModel(Protocol):
    """``model(state, compute_stress=None, compute_forces=True) -> {"energy", "forces", ("stress")}`` (see the module
    docstring); ``device`` and ``dtype`` say where and in which precision it evaluates."""

    device: "torch.device"
    dtype: "torch.dtype"

    def __call__(self, state: "BatchedState", compute_stress: bool | None = None,
                 compute_forces: bool = True) -> dict[str, "torch.Tensor"]:
        ...



def member_spread(outs: list[dict]) -> tuple["torch.Tensor", "torch.Tensor | None"]:
    """From the members' results of one call: ``[S]`` the standard deviation of their energies (eV) and ``[N]`` per
    atom the norm of the standard deviation of their force vectors (eV/A; None when forces were not computed)."""
    import torch

    e_std = torch.stack([o["energy"].detach() for o in outs]).std(0, unbiased=False)
    if not all("forces" in o for o in outs):
        return e_std, None
    f = torch.stack([o["forces"].detach() for o in outs]).std(0, unbiased=False)  # [N, 3]
    return e_std, torch.linalg.vector_norm(f, dim=-1)


def system_max(values: "torch.Tensor", state: "BatchedState") -> "torch.Tensor":
    """``[S]`` the largest of per-atom ``values`` ``[N]`` in each system of ``state``."""
    import torch

    out = torch.zeros(state.n_systems, dtype=values.dtype, device=values.device)
    return out.scatter_reduce(0, state.system_idx, values, reduce="amax", include_self=True)


def committee_spread(members, state: "BatchedState", first: dict | None = None
                     ) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Per system of ``state``: the standard deviation of the ``members``' energies (eV) and the largest atom's
    force spread (:func:`member_spread`, eV/A). ``first``: the first member's results at ``state`` when already known
    (e.g. the MD state's own energy and forces), so that it is not evaluated again."""
    outs = [first if (k == 0 and first is not None) else m(state) for k, m in enumerate(members)]
    e_std, f_atom = member_spread(outs)
    return e_std, system_max(f_atom, state)


def member_energies(members, frames) -> "np.ndarray":
    """``[M, F]`` each member's energy (eV) of each of ``frames`` (ASE Atoms), from one energy-only call per member
    on the first member's device and dtype."""
    import numpy as np

    from limace.core.state import BatchedState

    state = BatchedState.from_atoms(list(frames), dtype=members[0].dtype, device=members[0].device)
    return np.stack([m(state, compute_forces=False)["energy"].detach().cpu().numpy() for m in members])
