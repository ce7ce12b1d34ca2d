"""One batched state for many periodic systems of different sizes, validated once when it is built.

A :class:`BatchedState` holds every atom of every system in flat tensors on one device (positions ``[N, 3]``,
momenta ``[N, 3]``, masses ``[N]``, atomic numbers ``[N]``) plus per-system tensors (cell ``[S, 3, 3]`` with the
lattice vectors as rows, pbc ``[S, 3]``) and ``system_idx [N]``, the system of each atom (sorted: the atoms of a
system are contiguous, every system has at least one atom). Integrators, optimisers and the runner take and return
states; :class:`MDState` adds the potential's results (energy, forces, stress) an integrator carries between steps.

Units are ASE's: Angstrom, eV, amu, momenta in amu*Angstrom/(ASE time unit) (``atoms.get_momenta()``). Positions
are kept unwrapped (atoms may leave the cell); neighbour lists wrap internally, and :meth:`BatchedState.to_atoms`
returns the positions as stored (``wrap=True`` folds them back into the cell).

>>> state = BatchedState.from_atoms([atoms_a, atoms_b], device="cpu", dtype=torch.float64)  # doctest: +SKIP
>>> state.n_systems, state.n_atoms_per_system, state.temperature()                          # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from ase import Atoms

from limace.core.errors import FLOAT_DTYPES, ValidationError
from limace.core.units import KB_EV

ATOM = {"per": "atom"}  # field metadata: one row per atom
SYSTEM = {"per": "system"}  # one row per system

_FLOATS = (torch.float32, torch.float64)


def as_dtype(dtype) -> torch.dtype:
    """``torch.float32``/``torch.float64`` from a torch dtype or its name (``"float32"``, ``"float64"``)."""
    if isinstance(dtype, torch.dtype) and dtype in _FLOATS:
        return dtype
    if isinstance(dtype, str) and dtype in FLOAT_DTYPES:
        return getattr(torch, dtype)
    raise ValidationError(f"dtype {dtype!r} is not supported; use float32 or float64")


def dtype_name(dtype) -> str:
    """``"float32"``/``"float64"`` from a torch dtype or its name; the one dtype check (:func:`as_dtype`)."""
    return str(as_dtype(dtype)).removeprefix("torch.")


def as_device(device) -> torch.device:
    """``torch.device(device)`` with the index filled in (``"cuda"`` -> ``cuda:<current>``), so that it compares
    equal to the device of the tensors made on it."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)
    return dev


def per_system(value, n_systems: int, like: torch.Tensor, name: str = "value") -> torch.Tensor:
    """A per-system parameter (a number, a sequence of ``n_systems`` numbers or a tensor) as a ``[S]`` tensor with the
    dtype and device of ``like``."""
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if t.ndim == 0:
        return t.expand(n_systems).clone()
    if t.shape != (n_systems,):
        raise ValidationError(f"{name}: expected one value or {n_systems} (one per system), got shape {tuple(t.shape)}")
    return t


@dataclass(eq=False)
class BatchedState:
    """Many periodic systems as flat batched tensors on one device (see the module docstring)."""

    positions: torch.Tensor = field(metadata=ATOM)  # [N, 3] Angstrom, unwrapped
    momenta: torch.Tensor = field(metadata=ATOM)  # [N, 3] amu*Angstrom/ASE-time
    masses: torch.Tensor = field(metadata=ATOM)  # [N] amu
    numbers: torch.Tensor = field(metadata=ATOM)  # [N] atomic numbers (long)
    cell: torch.Tensor = field(metadata=SYSTEM)  # [S, 3, 3] rows are lattice vectors
    pbc: torch.Tensor = field(metadata=SYSTEM)  # [S, 3] bool
    system_idx: torch.Tensor = field(metadata=ATOM)  # [N] long, sorted, 0..S-1 all present

    def __post_init__(self):
        self.validate()

    # -- construction ------------------------------------------------------------------------------------------------

    def validate(self) -> None:
        """Check shapes, dtypes, devices and the system index; raise :class:`ValidationError` naming the field."""
        pos = self.positions
        if not isinstance(pos, torch.Tensor) or pos.ndim != 2 or pos.shape[1] != 3:
            raise ValidationError(f"positions: expected a [n_atoms, 3] tensor, got {_shape(pos)}")
        if pos.dtype not in _FLOATS:
            raise ValidationError(f"positions: dtype {pos.dtype} is not float32/float64")
        n, dev, dt = pos.shape[0], pos.device, pos.dtype
        if n == 0:
            raise ValidationError("positions: a state needs at least one atom")
        if not isinstance(self.cell, torch.Tensor) or self.cell.ndim != 3 or self.cell.shape[1:] != (3, 3):
            raise ValidationError(f"cell: expected a [n_systems, 3, 3] tensor, got {_shape(self.cell)}")
        s = self.cell.shape[0]
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            per = f.metadata.get("per")
            if per is None or value is None:
                continue
            if not isinstance(value, torch.Tensor):
                raise ValidationError(f"{f.name}: expected a torch tensor, got {type(value).__name__}")
            if value.device != dev:
                raise ValidationError(f"{f.name}: on {value.device}, positions on {dev}; put the state on one device")
            rows = n if per == "atom" else s
            if value.shape[0] != rows:
                raise ValidationError(f"{f.name}: expected {rows} rows (one per {per}), got shape {tuple(value.shape)}")
            if value.is_floating_point() and value.dtype != dt:
                raise ValidationError(f"{f.name}: dtype {value.dtype} differs from positions ({dt})")
        for name, shape in (("momenta", (n, 3)), ("masses", (n,)), ("numbers", (n,)), ("pbc", (s, 3)),
                            ("system_idx", (n,))):
            if tuple(getattr(self, name).shape) != shape:
                raise ValidationError(f"{name}: expected shape {shape}, got {tuple(getattr(self, name).shape)}")
        if self.numbers.dtype != torch.long or self.system_idx.dtype != torch.long:
            raise ValidationError("numbers and system_idx must be integer (torch.long) tensors")
        if self.pbc.dtype != torch.bool:
            raise ValidationError(f"pbc: dtype {self.pbc.dtype} is not bool")
        idx = self.system_idx
        if bool((idx[1:] < idx[:-1]).any()) or int(idx[0]) != 0 or int(idx[-1]) != s - 1 or \
                bool(((idx[1:] - idx[:-1]) > 1).any()):
            raise ValidationError(f"system_idx: must be sorted and cover systems 0..{s - 1}, each with at least one "
                                  "atom (atoms of a system contiguous)")
        if not bool((self.masses > 0).all()):
            raise ValidationError("masses: every mass must be positive")
        vol = torch.linalg.det(self.cell).abs()
        bad = self.pbc.any(dim=1) & ~(vol > 1e-6)
        if bool(bad.any()):
            k = int(torch.nonzero(bad)[0])
            raise ValidationError(f"cell of system {k}: periodic but with zero volume; give all three lattice vectors")

    @classmethod
    def from_atoms(cls, atoms: Atoms | Sequence[Atoms], device: str | torch.device = "cpu",
                   dtype: torch.dtype | str = torch.float64, **extra) -> "BatchedState":
        """One state from ASE Atoms (momenta from ``atoms.get_momenta()``, masses from ``atoms.get_masses()``)."""
        if isinstance(atoms, Atoms):
            atoms = [atoms]
        atoms = list(atoms)
        if not atoms:
            raise ValidationError("from_atoms: got no structures")
        dtype = as_dtype(dtype)
        for k, a in enumerate(atoms):
            if not isinstance(a, Atoms):
                raise ValidationError(f"structure {k}: expected ase.Atoms, got {type(a).__name__}")
            if len(a) == 0:
                raise ValidationError(f"structure {k}: has no atoms")

        def cat(get, dt):
            return torch.as_tensor(np.concatenate([np.asarray(get(a)) for a in atoms]), dtype=dt, device=device)

        counts = [len(a) for a in atoms]
        return cls(
            positions=cat(lambda a: a.positions, dtype),
            momenta=cat(lambda a: a.get_momenta(), dtype),
            masses=cat(lambda a: a.get_masses(), dtype),
            numbers=cat(lambda a: a.numbers, torch.long),
            cell=torch.as_tensor(np.stack([a.cell.array for a in atoms]), dtype=dtype, device=device),
            pbc=torch.as_tensor(np.stack([a.pbc for a in atoms]), dtype=torch.bool, device=device),
            system_idx=torch.repeat_interleave(torch.arange(len(atoms), device=device),
                                               torch.as_tensor(counts, device=device)),
            **extra,
        )

    def to_atoms(self, wrap: bool = False) -> list[Atoms]:
        """One ASE Atoms per system (positions, cell, pbc, numbers, momenta; energy/forces/stress of an
        :class:`MDState` as a SinglePointCalculator)."""
        from ase.calculators.singlepoint import SinglePointCalculator

        pos = self.positions.detach().cpu().double().numpy()
        mom = self.momenta.detach().cpu().double().numpy()
        num = self.numbers.cpu().numpy()
        cell = self.cell.detach().cpu().double().numpy()
        pbc = self.pbc.cpu().numpy()
        energy = getattr(self, "energy", None)
        forces = getattr(self, "forces", None)
        stress = getattr(self, "stress", None)
        out = []
        for k, (a, b) in enumerate(self.atom_ranges()):
            atoms = Atoms(numbers=num[a:b], positions=pos[a:b], cell=cell[k], pbc=pbc[k])
            atoms.set_momenta(mom[a:b], apply_constraint=False)
            if wrap:
                atoms.wrap()
            results = {}
            if energy is not None:
                results["energy"] = float(energy[k])
                results["free_energy"] = float(energy[k])
            if forces is not None:
                results["forces"] = forces[a:b].detach().cpu().double().numpy()
            if stress is not None:
                from ase.stress import full_3x3_to_voigt_6_stress

                results["stress"] = full_3x3_to_voigt_6_stress(stress[k].detach().cpu().double().numpy())
            if results:
                atoms.calc = SinglePointCalculator(atoms, **results)
            out.append(atoms)
        return out

    # -- sizes and per-system views ------------------------------------------------------------------------------------

    @property
    def n_atoms(self) -> int:
        return self.positions.shape[0]

    @property
    def n_systems(self) -> int:
        return self.cell.shape[0]

    @property
    def device(self) -> torch.device:
        return self.positions.device

    @property
    def dtype(self) -> torch.dtype:
        return self.positions.dtype

    @property
    def n_atoms_per_system(self) -> torch.Tensor:
        """``[S]`` atoms in each system."""
        return torch.bincount(self.system_idx, minlength=self.n_systems)

    def atom_ranges(self) -> list[tuple[int, int]]:
        """``[(first, end), ...]`` atom index range of each system (python ints)."""
        ends = torch.cumsum(self.n_atoms_per_system, 0).tolist()
        return list(zip([0] + ends[:-1], ends))

    def volume(self) -> torch.Tensor:
        """``[S]`` cell volumes (Angstrom^3)."""
        return torch.linalg.det(self.cell).abs()

    def sum_per_system(self, values: torch.Tensor) -> torch.Tensor:
        """Sum per-atom ``values`` (``[N]`` or ``[N, ...]``) over the atoms of each system -> ``[S, ...]``."""
        out = torch.zeros((self.n_systems, *values.shape[1:]), dtype=values.dtype, device=values.device)
        return out.index_add_(0, self.system_idx, values)

    def kinetic_energy(self) -> torch.Tensor:
        """``[S]`` kinetic energies (eV)."""
        return self.sum_per_system((self.momenta ** 2).sum(-1) / (2 * self.masses))

    def degrees_of_freedom(self) -> torch.Tensor:
        """``[S]`` degrees of freedom: 3N - 3 (centre-of-mass motion is removed by every integrator), 3 for one atom."""
        n = self.n_atoms_per_system
        return torch.where(n > 1, 3 * n - 3, 3 * n).to(self.dtype)

    def temperature(self) -> torch.Tensor:
        """``[S]`` instantaneous temperatures (K) from the kinetic energy and :meth:`degrees_of_freedom`."""
        return 2 * self.kinetic_energy() / (self.degrees_of_freedom() * KB_EV)

    def center_of_mass_momentum(self) -> torch.Tensor:
        """``[S, 3]`` total momentum of each system."""
        return self.sum_per_system(self.momenta)

    # -- new states ----------------------------------------------------------------------------------------------------

    def replace(self, **changes) -> "BatchedState":
        """A copy with some fields replaced (same type). Shapes are checked, the full validation is not re-run:
        integrators call this every step."""
        for name, value in changes.items():
            old = getattr(self, name)
            if old is not None and value is not None and isinstance(value, torch.Tensor) and value.shape != old.shape:
                raise ValidationError(f"{name}: shape {tuple(value.shape)} differs from {tuple(old.shape)}")
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.__dict__.update(changes)
        return new

    def select(self, systems) -> "BatchedState":
        """The sub-state of some systems (a ``[S]`` bool mask or a list of indices), renumbered 0..k-1."""
        systems = torch.as_tensor(systems, device=self.device)
        if systems.dtype == torch.bool:
            if systems.shape != (self.n_systems,):
                raise ValidationError(f"select: mask of shape {tuple(systems.shape)}, expected ({self.n_systems},)")
            keep_sys = systems
        else:
            keep_sys = torch.zeros(self.n_systems, dtype=torch.bool, device=self.device)
            keep_sys[systems.long()] = True
        if not bool(keep_sys.any()):
            raise ValidationError("select: no system selected")
        keep_atom = keep_sys[self.system_idx]
        new_index = torch.cumsum(keep_sys.long(), 0) - 1
        values = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            per = f.metadata.get("per")
            if value is None or per is None:
                values[f.name] = value
            elif f.name == "system_idx":
                values[f.name] = new_index[value[keep_atom]]
            else:
                values[f.name] = value[keep_atom] if per == "atom" else value[keep_sys]
        return type(self)(**values)

    def split(self) -> list["BatchedState"]:
        """One state per system."""
        return [self.select([k]) for k in range(self.n_systems)]

    @classmethod
    def concatenate(cls, states: Sequence["BatchedState"]) -> "BatchedState":
        """One state from several (same type, device and dtype); systems keep their order."""
        states = list(states)
        if not states:
            raise ValidationError("concatenate: got no states")
        typ = type(states[0])
        values = {}
        offset = 0
        idx = []
        for st in states:
            idx.append(st.system_idx + offset)
            offset += st.n_systems
        for f in dataclasses.fields(typ):
            vals = [getattr(st, f.name) for st in states]
            if f.name == "system_idx":
                values[f.name] = torch.cat(idx)
            elif f.metadata.get("per") is None or any(v is None for v in vals):
                values[f.name] = vals[0] if f.metadata.get("per") is None else None
            else:
                values[f.name] = torch.cat(vals)
        return typ(**values)

    def to(self, device=None, dtype=None) -> "BatchedState":
        """The state on another device and/or float dtype."""
        dtype = as_dtype(dtype) if dtype is not None else None
        values = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                v = v.to(device=device, dtype=dtype if (dtype is not None and v.is_floating_point()) else None)
            values[f.name] = v
        return type(self)(**values)


@dataclass(eq=False)
class MDState(BatchedState):
    """A :class:`BatchedState` with the potential's results at the current positions (and the heat a thermostat
    exchanged, see ``heat``)."""

    energy: torch.Tensor | None = field(default=None, metadata=SYSTEM)  # [S] eV
    forces: torch.Tensor | None = field(default=None, metadata=ATOM)  # [N, 3] eV/A
    stress: torch.Tensor | None = field(default=None, metadata=SYSTEM)  # [S, 3, 3] eV/A^3, ASE sign
    # [S] eV: energy a stochastic thermostat (Langevin, CSVR) gave the particles since the start, so that
    # E_pot + E_kin - heat is conserved up to the integration error; None where nothing counts it
    heat: torch.Tensor | None = field(default=None, metadata=SYSTEM)

    def pressure(self) -> torch.Tensor:
        """``[S]`` instantaneous pressure (eV/A^3) including the kinetic term: 2K/(3V) - tr(stress)/3.

        Needs ``stress`` (a potential asked for stress)."""
        if self.stress is None:
            raise ValidationError("pressure: this state carries no stress; ask the potential for stress "
                                  "(compute_stress=True)")
        vol = self.volume()
        return 2 * self.kinetic_energy() / (3 * vol) - torch.diagonal(self.stress, dim1=-2, dim2=-1).sum(-1) / 3


def _shape(x) -> str:
    return f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
