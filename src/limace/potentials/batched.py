"""A MACE model as a batched potential: one forward call for many systems, neighbour lists on the device.

:class:`BatchedMACE` maps a :class:`limace.core.state.BatchedState` to the fixed output contract of our engines
(:class:`limace.core.model.BatchedModel`):
``energy [S]`` (eV), ``forces [N, 3]`` (eV/A) and, when asked, ``stress [S, 3, 3]`` (eV/A^3, ASE sign: positive
under tension). It builds mace-torch's input graph for all systems at once from a :class:`VerletList` (skin, rebuilt
only when needed), computes forces by autograd and skips the virial/stress graph unless stress is asked for.
Results equal mace-torch's :class:`~mace.calculators.MACECalculator` on the same model (see tests/test_batched_mace.py).

>>> model = BatchedMACE.from_file("my.model", device="cuda", dtype="float32")      # doctest: +SKIP
>>> out = model(state)   # {"energy": [S], "forces": [N, 3]}                         # doctest: +SKIP
"""

from __future__ import annotations

import copy as _copy
from pathlib import Path

import torch

from limace.core.errors import LimaceInputError, ModelFileError, UnsupportedElementError
from limace.core.neighbors import VerletList
from limace.core.state import BatchedState, as_device, as_dtype


CPU_ATOMS_PER_CALL = 128


class BatchedMACE:
    """A mace-torch model evaluated on a whole :class:`BatchedState` per call.

    Args:
        model: a mace-torch model (``MACE``, ``ScaleShiftMACE``, ...), e.g. ``torch.load`` of a ``.model`` file.
        device, dtype: where and in which precision to evaluate (the weights are converted); states of another
            float dtype are cast in and the results cast back.
        compute_stress: also return ``stress`` (costs the virial graph; NPT needs it, NVE/NVT do not).
        skin: neighbour-list skin (Angstrom); the list is rebuilt when an atom moved more than ``skin / 2``.
        head: output head of a multi-head model (default: the only head, else ``"Default"``, else the last).
        max_atoms_per_call: evaluate at most this many atoms per forward call (whole systems per call; ``None``:
            all at once; ``"auto"``: 128 on a CPU, where one forward over thousands of atoms costs ~30 % more per atom
            than over ~100 (the working set leaves the caches; bench/RESULTS.md), all at once on a GPU).
        compile: compile the model with ``torch.compile`` (inductor, dynamic shapes), the way mace-torch prepares
            models for it. The first call takes minutes (and again when the number of systems changes); later
            calls run faster, most of all on CPUs where it fuses the many small element-wise operations (1.29x at
            M=1 here, bench/RESULTS.md). Sets mace-torch's dynamo option that keeps autograd.grad out of compiled
            graphs.
        copy: work on a copy of ``model`` (default), so that the caller's module keeps its device, dtype, training
            mode and ``requires_grad`` flags; ``False`` converts ``model`` itself (no second copy of the weights in
            memory; :func:`limace.potentials.load_batched` does that with the model it has just read).
    """

    implemented_properties = ("energy", "forces", "stress")

    def __init__(self, model: torch.nn.Module, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype | str = torch.float64, compute_stress: bool = False, skin: float = 0.5,
                 head: str | None = None, max_atoms_per_call: int | str | None = "auto", compile: bool = False,
                 copy: bool = True):
        if not (isinstance(model, torch.nn.Module) and hasattr(model, "atomic_numbers") and hasattr(model, "r_max")):
            raise ModelFileError(f"BatchedMACE needs a mace-torch model (atomic_numbers, r_max), got "
                                 f"{type(model).__name__}")
        self.device = as_device(device)
        self.dtype = as_dtype(dtype)
        if copy:  # Module.to/eval/requires_grad_ act in place: leave the caller's module as it was
            model = _copy.deepcopy(model)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.compute_stress = bool(compute_stress)
        self.domain = None  # a limace.potentials.domain.DomainCheck (load_batched attaches the shipped one)
        self._inv_index = None  # l = 0 channels of the node features (descriptors), built at first use
        self.r_max = float(self.model.r_max)
        self.atomic_numbers = [int(z) for z in self.model.atomic_numbers]
        z_to_index = torch.full((119,), -1, dtype=torch.long)
        z_to_index[torch.tensor(self.atomic_numbers)] = torch.arange(len(self.atomic_numbers))
        self._z_to_index = z_to_index.to(self.device)
        heads = list(getattr(self.model, "heads", ["Default"]))
        if head is None:
            head = heads[0] if len(heads) == 1 else ("Default" if "Default" in heads else heads[-1])
        if head not in heads:
            raise LimaceInputError(f"head {head!r} is not in the model (heads: {', '.join(heads)})")
        self.head = head
        self._head_index = heads.index(head)
        if max_atoms_per_call == "auto":
            max_atoms_per_call = CPU_ATOMS_PER_CALL if self.device.type == "cpu" else None
        if max_atoms_per_call is not None and (not isinstance(max_atoms_per_call, int) or max_atoms_per_call < 1):
            raise LimaceInputError(f"max_atoms_per_call must be an integer >= 1, None or 'auto', got "
                                   f"{max_atoms_per_call!r}")
        self.max_atoms_per_call = max_atoms_per_call
        self.neighbors = VerletList(self.r_max, skin)
        self._compiled = False
        if compile:
            self.compile_model()
        self._attrs_key: torch.Tensor | None = None
        self._node_attrs: torch.Tensor | None = None

    @classmethod
    def from_file(cls, path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | str = torch.float64,
                  **kwargs) -> "BatchedMACE":
        """Load a mace-torch ``.model`` file (``torch.save`` of the model; a pickle: only load files you trust)."""
        from limace.potentials.calculator import read_model

        kwargs.setdefault("copy", False)  # read here: nobody else holds it
        return cls(read_model(path, device=str(torch.device(device))), device=device, dtype=dtype, **kwargs)

    def compile_model(self) -> None:
        """Compile the model now (see ``compile`` in the class docstring)."""
        if self._compiled:
            return
        from mace.tools.compile import prepare
        from mace.tools.scripts_utils import extract_model

        try:
            # autograd.grad stays out of the compiled graph (a graph break): forward and backward are compiled, forces
            # need no double-backward graph (less memory than mace-torch's calculator, which traces the grad in)
            prepared = prepare(extract_model, allow_autograd=False)(model=self.model, map_location=str(self.device))
        except Exception as exc:  # a model class mace-torch cannot rebuild from its config
            raise LimaceInputError(f"compile=True: cannot prepare {type(self.model).__name__} for torch.compile "
                                   f"({type(exc).__name__}: {exc}); use compile=False") from None
        prepared = prepared.to(device=self.device, dtype=self.dtype).eval()
        for p in prepared.parameters():
            p.requires_grad_(False)
        self.model = torch.compile(prepared, dynamic=True, fullgraph=False)
        self._compiled = True

    # -- graph ---------------------------------------------------------------------------------------------------------

    def _node_attrs_for(self, numbers: torch.Tensor) -> torch.Tensor:
        if self._attrs_key is not None and self._attrs_key.shape == numbers.shape and \
                torch.equal(self._attrs_key, numbers):
            return self._node_attrs
        idx = self._z_to_index[numbers.clamp(0, 118)]
        if bool((idx < 0).any()):
            from ase.data import chemical_symbols

            bad = sorted({int(z) for z in numbers[idx < 0].tolist()})
            known = ", ".join(chemical_symbols[z] for z in self.atomic_numbers)
            raise UnsupportedElementError(f"the structures contain {', '.join(chemical_symbols[z] for z in bad)}, "
                                          f"which the model was not trained on (it knows {known})")
        self._attrs_key = numbers.clone()
        self._node_attrs = torch.nn.functional.one_hot(idx, len(self.atomic_numbers)).to(self.dtype)
        return self._node_attrs

    def __call__(self, state: BatchedState, compute_stress: bool | None = None,
                 compute_forces: bool = True, compute_descriptors: bool = False,
                 systems: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``{"energy": [S], "forces": [N, 3]}`` plus ``"stress": [S, 3, 3]`` when asked (here or at construction).
        ``compute_forces=False``: energies only (no backward pass, about half the cost; no stress either).
        ``compute_descriptors=True`` adds ``"descriptors": [N, D]``, the invariant (l = 0) node features of every
        interaction layer (what :mod:`limace.potentials.domain` compares with the training data).
        ``systems`` (a ``[S]`` bool mask): evaluate only these systems of ``state`` (the results are those of
        ``state.select(systems)``), with the neighbour list of the whole ``state``: a NEB whose frozen images change
        from step to step (:class:`limace.analysis.neb.BatchedNEB`) keeps one list instead of rebuilding it."""
        stress = (self.compute_stress if compute_stress is None else bool(compute_stress)) and compute_forces
        if state.device != self.device:
            raise LimaceInputError(f"state on {state.device}, model on {self.device}; move one of them (state.to())")
        out_dtype = state.dtype
        edge_index, unit_shifts = self.neighbors.get(state.positions.detach().to(self.dtype),
                                                     state.cell.detach().to(self.dtype), state.pbc, state.system_idx)
        if systems is not None:
            systems = torch.as_tensor(systems, device=state.device)
            keep_atom = systems[state.system_idx]
            new_atom = torch.cumsum(keep_atom.long(), 0) - 1
            keep_edge = keep_atom[edge_index[0]]
            edge_index, unit_shifts = new_atom[edge_index[:, keep_edge]], unit_shifts[keep_edge]
            state = state.select(systems)
        pos = state.positions.detach().to(self.dtype)
        cell = state.cell.detach().to(self.dtype)
        node_attrs = self._node_attrs_for(state.numbers)
        unit_shifts = unit_shifts.to(self.dtype)
        # Pairs in the skin (r >= r_max) contribute exactly zero: drop them so the model does no work for them. The
        # test is MACE's own (norm of the same vector < r_max), and the kept edges stay in canonical order.
        vec = pos[edge_index[1]] - pos[edge_index[0]] + torch.einsum(
            "ei,eij->ej", unit_shifts, cell[state.system_idx[edge_index[0]]])
        keep = torch.linalg.norm(vec, dim=-1) < self.r_max
        edge_index, unit_shifts = edge_index[:, keep], unit_shifts[keep]
        chunks = self._chunks(state)
        if len(chunks) == 1:
            res = self._forward(pos, cell, node_attrs, state.system_idx, edge_index, unit_shifts, stress,
                                compute_forces, compute_descriptors)
        else:
            parts = []
            edge_sys = state.system_idx[edge_index[0]]
            for (s0, s1), (a0, a1) in chunks:
                e = (edge_sys >= s0) & (edge_sys < s1)
                parts.append(self._forward(pos[a0:a1], cell[s0:s1], node_attrs[a0:a1], state.system_idx[a0:a1] - s0,
                                           edge_index[:, e] - a0, unit_shifts[e], stress, compute_forces,
                                           compute_descriptors))
            res = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        return {k: v.to(out_dtype) for k, v in res.items()}

    def _chunks(self, state: BatchedState) -> list[tuple[tuple[int, int], tuple[int, int]]]:
        """``[((first system, end system), (first atom, end atom)), ...]`` of at most ``max_atoms_per_call`` atoms."""
        if self.max_atoms_per_call is None or state.n_atoms <= self.max_atoms_per_call:
            return [((0, state.n_systems), (0, state.n_atoms))]
        chunks, s0, a0 = [], 0, 0
        for k, (a, b) in enumerate(state.atom_ranges()):
            if b - a0 > self.max_atoms_per_call and k > s0:
                chunks.append(((s0, k), (a0, a)))
                s0, a0 = k, a
        chunks.append(((s0, state.n_systems), (a0, state.n_atoms)))
        return chunks

    def _forward(self, pos, cell, node_attrs, batch, edge_index, unit_shifts, stress: bool,
                 forces: bool = True, descriptors: bool = False) -> dict:
        n_sys = cell.shape[0]
        counts = torch.bincount(batch, minlength=n_sys)
        ptr = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
        positions = pos.detach().clone().requires_grad_(True)  # (mace skips this when compiled)
        data = {
            "positions": positions,
            "node_attrs": node_attrs,
            "edge_index": edge_index,
            "unit_shifts": unit_shifts,
            "shifts": torch.einsum("ei,eij->ej", unit_shifts, cell[batch[edge_index[0]]]),
            "cell": cell,
            "batch": batch,
            "ptr": ptr,
            "head": torch.full((n_sys,), self._head_index, dtype=torch.long, device=self.device),
        }
        out = self.model(data, training=False, compute_force=forces, compute_stress=stress, compute_virials=False)
        res = {"energy": out["energy"].detach()}
        if forces:
            res["forces"] = out["forces"].detach()
        if stress:
            res["stress"] = out["stress"].detach()
        if descriptors:
            res["descriptors"] = self._invariants(out["node_feats"].detach())
        return res

    def _invariants(self, node_feats: torch.Tensor) -> torch.Tensor:
        """The l = 0 channels of each layer's block of MACE's concatenated node features."""
        if getattr(self, "_inv_index", None) is None or self._inv_index.device != node_feats.device:
            from e3nn import o3

            idx, start = [], 0
            for prod in self.model.products:
                irreps = o3.Irreps(str(prod.linear.irreps_out))
                off = start
                for mul, ir in irreps:
                    if ir.l == 0:
                        idx.extend(range(off, off + mul))
                    off += mul * ir.dim
                start = off
            self._inv_index = torch.as_tensor(idx, dtype=torch.long, device=node_feats.device)
        return node_feats[:, self._inv_index]

    def __repr__(self) -> str:
        return (f"BatchedMACE({type(self.model).__name__}, elements={self.atomic_numbers}, r_max={self.r_max:g}, "
                f"device={self.device}, dtype={self.dtype}, compute_stress={self.compute_stress})")
