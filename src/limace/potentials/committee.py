"""A committee of batched potentials: the members' mean as the potential (or, with ``prediction="first"``, the first
member's own results: a shipped potential whose registered members only estimate its uncertainty), their spread as
its uncertainty.

:class:`BatchedCommittee` follows the :class:`limace.core.model.BatchedModel` contract (so MD, relaxations and NEBs
run on it unchanged) and adds two results:

- ``"energy_std"``: ``[S]`` standard deviation of the members' energies of each system (eV),
- ``"forces_std"``: ``[N]`` per atom, the norm of the standard deviation of the members' force vectors (eV/A),

only where forces are computed for the second. The members are evaluated one after the other (each with its own
neighbour lists), so a committee of ``M`` costs ``M`` single calls.

>>> from limace.potentials import load_batched
>>> committee = load_batched(["member_0.model", "member_1.model", "member_2.model", "member_3.model"])  # doctest: +SKIP
>>> out = committee(state)                                  # doctest: +SKIP
>>> out["energy"], out["energy_std"], out["forces_std"]      # doctest: +SKIP
"""

from __future__ import annotations

from typing import Sequence

import torch

from limace.core.errors import LimaceInputError
from limace.core.model import member_spread, system_max

__all__ = ["BatchedCommittee", "PREDICTIONS", "check_prediction", "spread_summary"]


PREDICTIONS = ("mean", "first")  # a committee's energy/forces/stress: the members' mean, or the first one's


def check_prediction(prediction: str) -> str:
    """``prediction`` if it is one of :data:`PREDICTIONS`, else a one-line :class:`LimaceInputError`."""
    if prediction not in PREDICTIONS:
        raise LimaceInputError(f"prediction must be 'mean' or 'first', got {prediction!r}")
    return prediction


class BatchedCommittee:
    """Members (``BatchedModel``s on one device, in one dtype) evaluated together; see the module docstring."""

    def __init__(self, members: Sequence, names: Sequence[str] = (), prediction: str = "mean"):
        members = list(members)
        self.prediction = check_prediction(prediction)
        if len(members) < 2:
            raise LimaceInputError(f"a committee needs at least 2 members, got {len(members)}")
        devs = {str(m.device) for m in members}
        dts = {m.dtype for m in members}
        if len(devs) > 1 or len(dts) > 1:
            raise LimaceInputError(f"committee members must share device and dtype, got {sorted(devs)} and "
                                   f"{sorted(str(d) for d in dts)}")
        self.members = members
        self.names = tuple(names) or tuple(f"member {i}" for i in range(len(members)))
        self.device = members[0].device
        self.dtype = members[0].dtype
        self.domain = getattr(members[0], "domain", None)  # the first member's domain check, if any

    def __len__(self) -> int:
        return len(self.members)

    @property
    def compute_stress(self) -> bool:
        return bool(getattr(self.members[0], "compute_stress", False))

    def __call__(self, state, compute_stress: bool | None = None, compute_forces: bool = True,
                 compute_descriptors: bool = False) -> dict:
        """The mean of the members' results plus ``energy_std`` and ``forces_std``; ``compute_descriptors``: the
        first member's descriptors (those its domain check, ``self.domain``, was built on)."""
        kw = {"compute_descriptors": True} if compute_descriptors else {}
        outs = [m(state, compute_stress=compute_stress, compute_forces=compute_forces, **(kw if k == 0 else {}))
                for k, m in enumerate(self.members)]
        res = {"descriptors": outs[0]["descriptors"]} if compute_descriptors else {}
        for key in ("energy", "forces", "stress"):
            if all(key in o for o in outs):
                res[key] = outs[0][key] if self.prediction == "first" else torch.stack([o[key] for o in outs]).mean(0)
        res["energy_std"], forces_std = member_spread(outs)
        if forces_std is not None:
            res["forces_std"] = forces_std
        return res


def spread_summary(out: dict, state) -> dict[str, list[float]] | None:
    """Per system: ``energy_std_meV_per_atom`` and ``forces_std_max_eV_A`` (the largest atom's force spread) from a
    committee's results, or None when ``out`` has no spread (a single potential)."""
    if "energy_std" not in out:
        return None
    n = torch.bincount(state.system_idx, minlength=state.n_systems).to(out["energy_std"].dtype)
    res = {"energy_std_meV_per_atom": (out["energy_std"] / n * 1000).tolist()}
    if "forces_std" in out:
        res["forces_std_max_eV_A"] = system_max(out["forces_std"], state).tolist()
    return res
