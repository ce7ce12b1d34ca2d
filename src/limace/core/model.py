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
    import torch

    from limace.core.state import BatchedState

__all__ = ["BatchedModel", "committee_spread"]


@runtime_checkable
class BatchedModel(Protocol):
    """``model(state, compute_stress=None, compute_forces=True) -> {"energy", "forces", ("stress")}`` (see the module
    docstring); ``device`` and ``dtype`` say where and in which precision it evaluates."""

    device: "torch.device"
    dtype: "torch.dtype"

    def __call__(self, state: "BatchedState", compute_stress: bool | None = None,
                 compute_forces: bool = True) -> dict[str, "torch.Tensor"]:
        ...


def committee_spread(members, state: "BatchedState") -> tuple["torch.Tensor", "torch.Tensor"]:
    """Per system of ``state``: the standard deviation of the ``members``' energies (eV) and the largest atom's
    force spread (the norm of the standard deviation of its force vector over the members, eV/A)."""
    import torch

    outs = [m(state) for m in members]
    e_std = torch.stack([o["energy"].detach() for o in outs]).std(0, unbiased=False)
    f_atom = torch.linalg.vector_norm(torch.stack([o["forces"].detach() for o in outs]).std(0, unbiased=False), dim=-1)
    f_max = torch.zeros_like(e_std).scatter_reduce(0, state.system_idx, f_atom, reduce="amax", include_self=True)
    return e_std, f_max
