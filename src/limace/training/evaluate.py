"""Errors of a potential against labelled configurations: MAE/RMSE per config_type, parity plots, JSON summary.

The core is model-agnostic so any potential can be compared on the same data (MACE ``.model`` files batched
through mace-torch, or any ASE calculator such as CHGNet)::

    pred = predict_calculator(calc, frames)            # or predict_mace(model, frames)
    res = evaluate_predictions(frames, pred, name="chgnet", fit_energy_offsets=True)
    res.summary()["all"]["energy_mae"]                  # meV/atom
    res.plot_parity("forces")                           # matplotlib Axes

Units: energies meV/atom, forces meV/A (per Cartesian component), stress GPa (per Voigt component).
``fit_energy_offsets`` fits one energy per element (least squares on the differences) before the energy metrics,
which removes the dependence on the reference energy zero of a different DFT code or potential.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from limace.data.io import VOIGT_COLS, VOIGT_ROWS, to_voigt
from limace.core.errors import ValidationError
from limace.core.fileio import atomic_write_json
from limace.core.units import EV_PER_A3_TO_GPA
from limace.keys import CONFIG_TYPE_KEY, ENERGY_KEY, FORCES_KEY, STRESS_KEY


@dataclass
class Predictions:
    """energy [n_configs] eV, forces [n_atoms_total, 3] eV/A (frames concatenated), stress [n_configs, 6] eV/A^3
    (Voigt xx yy zz yz xz xy, ASE sign convention; NaN where not predicted)."""

    energy: np.ndarray
    forces: np.ndarray
    stress: np.ndarray


def predict_mace(model, frames: Sequence, batch_size: int = 16, device: str = "cpu") -> Predictions:
    """Batched predictions of a mace-torch model (e.g. from :func:`limace.training.export.load_model`)."""
    from limace.training._mace import import_mace

    import_mace()
    import torch
    from mace.tools import AtomicNumberTable, torch_geometric

    from limace.training.graphs import to_graphs

    zs = [int(z) for z in model.atomic_numbers]
    unknown = sorted({int(z) for a in frames for z in a.numbers} - set(zs))
    if unknown:
        from ase.data import chemical_symbols

        raise ValidationError(f"the model does not know element(s) {', '.join(chemical_symbols[z] for z in unknown)}"
                              f" (it knows {', '.join(chemical_symbols[z] for z in zs)})")
    dtype = next(model.parameters()).dtype
    model = model.to(device)
    graphs = to_graphs(frames, AtomicNumberTable(zs), float(model.r_max), dtype)
    loader = torch_geometric.dataloader.DataLoader(graphs, batch_size=batch_size, shuffle=False)
    energies, forces, stresses = [], [], []
    for batch in loader:
        batch = batch.to(device)
        out = model(batch.to_dict(), training=False, compute_force=True, compute_stress=True)
        energies.append(out["energy"].detach().cpu().double().numpy())
        forces.append(out["forces"].detach().cpu().double().numpy())
        stresses.append(out["stress"].detach().cpu().double().numpy()[:, VOIGT_ROWS, VOIGT_COLS])
    stress = np.concatenate(stresses)
    periodic = np.array([bool(np.all(a.pbc)) and abs(a.cell.volume) > 1e-9 for a in frames])
    stress[~periodic] = np.nan
    return Predictions(np.concatenate(energies), np.concatenate(forces), stress)


def predict_calculator(calc, frames: Sequence) -> Predictions:
    """Predictions of any ASE calculator, one configuration at a time."""
    energies, forces, stresses = [], [], []
    for a in frames:
        b = a.copy()
        b.calc = calc
        energies.append(float(b.get_potential_energy()))
        forces.append(np.asarray(b.get_forces(), dtype=float))
        if np.all(b.pbc) and abs(b.cell.volume) > 1e-9 and "stress" in getattr(calc, "implemented_properties", ()):
            stresses.append(to_voigt(b.get_stress()))
        else:
            stresses.append(np.full(6, np.nan))
    return Predictions(np.array(energies), np.concatenate(forces), np.array(stresses))


def _metrics(de: np.ndarray, df: np.ndarray, ds: np.ndarray, n_configs: int, n_atoms: int) -> dict[str, Any]:
    def mae(x):
        return float(np.mean(np.abs(x))) if x.size else None

    def rmse(x):
        return float(np.sqrt(np.mean(x ** 2))) if x.size else None

    return {"n_configs": n_configs, "n_atoms": n_atoms,
            "energy_mae": mae(de), "energy_rmse": rmse(de),
            "forces_mae": mae(df), "forces_rmse": rmse(df),
            "stress_mae": mae(ds), "stress_rmse": rmse(ds)}


@dataclass
class EvaluationResult:
    """Per-configuration reference and predicted values, and metrics per config_type (see module docstring)."""

    name: str
    config_types: list[str]
    n_atoms: np.ndarray  # [n_configs]
    energy_ref: np.ndarray  # [n_configs] eV (total)
    energy_pred: np.ndarray  # [n_configs] eV (after offsets, if fitted)
    forces_ref: np.ndarray  # [n_atoms_total, 3] eV/A
    forces_pred: np.ndarray
    stress_ref: np.ndarray  # [n_configs, 6] eV/A^3, NaN where missing
    stress_pred: np.ndarray
    energy_offsets: Optional[dict[str, float]] = None  # eV per atom of each element, added to predictions
    units: dict[str, str] = field(default_factory=lambda: {"energy": "meV/atom", "forces": "meV/A", "stress": "GPa"})

    # -- metrics -----------------------------------------------------------------------------------------------

    def _group(self, mask: np.ndarray) -> dict[str, Any]:
        atom_frame = np.repeat(np.arange(len(self.n_atoms)), self.n_atoms)
        amask = mask[atom_frame]
        de = (self.energy_pred[mask] - self.energy_ref[mask]) / self.n_atoms[mask] * 1000.0
        df = (self.forces_pred[amask] - self.forces_ref[amask]).reshape(-1) * 1000.0
        ds = (self.stress_pred[mask] - self.stress_ref[mask]).reshape(-1) * EV_PER_A3_TO_GPA
        ds = ds[np.isfinite(ds)]
        return _metrics(de, df, ds, int(mask.sum()), int(self.n_atoms[mask].sum()))

    def summary(self) -> dict[str, Any]:
        """``{"name", "units", "all": metrics, "by_config_type": {ct: metrics}, "energy_offsets"}``."""
        cts = np.array(self.config_types)
        by = {ct: self._group(cts == ct) for ct in sorted(set(self.config_types))}
        return {"name": self.name, "units": dict(self.units), "all": self._group(np.ones(len(cts), bool)),
                "by_config_type": by, "energy_offsets": self.energy_offsets}

    def table(self) -> str:
        """The summary as an aligned text table (what ``limace evaluate`` prints)."""
        s = self.summary()
        head = (f"{'config_type':24s} {'n':>5s} {'E MAE':>9s} {'E RMSE':>9s} {'F MAE':>9s} {'F RMSE':>9s} "
                f"{'S MAE':>8s} {'S RMSE':>8s}")
        units = f"{'':24s} {'':>5s} {'meV/atom':>9s} {'meV/atom':>9s} {'meV/A':>9s} {'meV/A':>9s} {'GPa':>8s} {'GPa':>8s}"

        def f(x, w, p):
            return f"{'-':>{w}s}" if x is None else f"{x:{w}.{p}f}"

        def row(name, m):
            return (f"{name[:24]:24s} {m['n_configs']:5d} {f(m['energy_mae'], 9, 2)} {f(m['energy_rmse'], 9, 2)} "
                    f"{f(m['forces_mae'], 9, 1)} {f(m['forces_rmse'], 9, 1)} {f(m['stress_mae'], 8, 3)} "
                    f"{f(m['stress_rmse'], 8, 3)}")

        lines = [head, units] + [row(ct, m) for ct, m in s["by_config_type"].items()] + [row("all", s["all"])]
        return "\n".join(lines)

    # -- (de)serialisation ---------------------------------------------------------------------------------------

    def as_dict(self) -> dict[str, Any]:
        def arr(x):
            return np.where(np.isfinite(x), x, np.nan).tolist()

        return {"name": self.name, "config_types": list(self.config_types), "n_atoms": self.n_atoms.tolist(),
                "energy_ref": arr(self.energy_ref), "energy_pred": arr(self.energy_pred),
                "forces_ref": arr(self.forces_ref), "forces_pred": arr(self.forces_pred),
                "stress_ref": [[None if not np.isfinite(v) else v for v in r] for r in self.stress_ref.tolist()],
                "stress_pred": [[None if not np.isfinite(v) else v for v in r] for r in self.stress_pred.tolist()],
                "energy_offsets": self.energy_offsets, "units": dict(self.units)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EvaluationResult":
        def arr(x, shape=None):
            a = np.array([[np.nan if v is None else v for v in r] for r in x] if x and isinstance(x[0], list)
                         else x, dtype=float)
            return a.reshape(shape) if shape is not None else a

        return cls(name=d["name"], config_types=list(d["config_types"]), n_atoms=np.array(d["n_atoms"], dtype=int),
                   energy_ref=arr(d["energy_ref"]), energy_pred=arr(d["energy_pred"]),
                   forces_ref=arr(d["forces_ref"], (-1, 3)), forces_pred=arr(d["forces_pred"], (-1, 3)),
                   stress_ref=arr(d["stress_ref"], (-1, 6)), stress_pred=arr(d["stress_pred"], (-1, 6)),
                   energy_offsets=d.get("energy_offsets"), units=d.get("units") or {})

    # -- plots ----------------------------------------------------------------------------------------------------

    def plot_parity(self, quantity: str = "energy", ax=None):
        """Parity plot of 'energy' (eV/atom), 'forces' (eV/A components) or 'stress' (GPa), colored by config_type."""
        if ax is None:
            import matplotlib.pyplot as plt

            _, ax = plt.subplots(figsize=(4.5, 4.5))
        cts = np.array(self.config_types)
        atom_frame = np.repeat(np.arange(len(self.n_atoms)), self.n_atoms)
        if quantity == "energy":
            x, y, lab = self.energy_ref / self.n_atoms, self.energy_pred / self.n_atoms, "energy (eV/atom)"
            groups = cts
            m = self._group(np.ones(len(cts), bool))
            note = f"MAE {m['energy_mae']:.2f} meV/atom"
        elif quantity == "forces":
            x, y, lab = self.forces_ref.reshape(-1), self.forces_pred.reshape(-1), "force component (eV/A)"
            groups = np.repeat(cts[atom_frame], 3)
            m = self._group(np.ones(len(cts), bool))
            note = f"MAE {m['forces_mae']:.1f} meV/A"
        elif quantity == "stress":
            x, y = self.stress_ref.reshape(-1) * EV_PER_A3_TO_GPA, self.stress_pred.reshape(-1) * EV_PER_A3_TO_GPA
            lab, groups = "stress component (GPa)", np.repeat(cts, 6)
            m = self._group(np.ones(len(cts), bool))
            note = "no stress" if m["stress_mae"] is None else f"MAE {m['stress_mae']:.3f} GPa"
        else:
            raise ValueError(f"quantity must be 'energy', 'forces' or 'stress', not {quantity!r}")
        ok = np.isfinite(x) & np.isfinite(y)
        for ct in sorted(set(groups.tolist())):
            sel = ok & (groups == ct)
            ax.scatter(x[sel], y[sel], s=6, alpha=0.7, label=ct)
        if ok.any():
            lo, hi = float(min(x[ok].min(), y[ok].min())), float(max(x[ok].max(), y[ok].max()))
            pad = 0.03 * (hi - lo or 1.0)
            ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=0.8)
        ax.set_xlabel(f"reference {lab}")
        ax.set_ylabel(f"{self.name} {lab}")
        ax.set_title(f"{quantity}: {note}", fontsize=9)
        ax.legend(fontsize=6, markerscale=1.5, loc="upper left")
        return ax

    def save(self, out_dir: Union[str, Path], plots: bool = True) -> dict[str, Path]:
        """Write ``summary.json`` (metrics and per-configuration values) and parity PNGs; return their paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"summary": out / "summary.json"}
        atomic_write_json(paths["summary"], {"summary": self.summary(), "data": self.as_dict()})
        if plots:
            from matplotlib.figure import Figure  # no pyplot: no global backend state

            for q in ("energy", "forces", "stress"):
                fig = Figure(figsize=(4.5, 4.5))
                self.plot_parity(q, ax=fig.subplots())
                fig.tight_layout()
                paths[q] = out / f"parity_{q}.png"
                fig.savefig(paths[q], dpi=120)
        return paths


def fit_element_offsets(frames: Sequence, residual: np.ndarray) -> dict[str, float]:
    """Least-squares energy per element c such that residual_i ~ sum_el n_i,el c_el."""
    symbols = sorted({s for a in frames for s in a.get_chemical_symbols()})
    A = np.array([[a.get_chemical_symbols().count(s) for s in symbols] for a in frames], dtype=float)
    c, *_ = np.linalg.lstsq(A, residual, rcond=None)
    return {s: float(v) for s, v in zip(symbols, c)}


def _check_finite(frames: Sequence, pred: Predictions, name: str) -> None:
    """Non-finite energies or forces are an error naming the first such configuration, never NaN in a summary
    (a damaged or diverging model; stress may be NaN only where it was not predicted)."""
    from limace.core.errors import LimaceInputError

    bad_e = ~np.isfinite(pred.energy)
    n_atoms = np.array([len(a) for a in frames], dtype=int)
    bad_f = ~np.isfinite(pred.forces).all(axis=1)
    bad_f_cfg = np.repeat(np.arange(len(frames)), n_atoms)[bad_f] if bad_f.any() else np.array([], dtype=int)
    bad_s = np.isinf(pred.stress).any(axis=1)
    bad = sorted(set(np.flatnonzero(bad_e).tolist()) | set(bad_f_cfg.tolist()) | set(np.flatnonzero(bad_s).tolist()))
    if bad:
        raise LimaceInputError(f"{name} gives non-finite energies, forces or stresses for {len(bad)} of {len(frames)} "
                               f"configurations (first: configuration {bad[0]}); the model file is damaged or the "
                               "model diverges on these structures")


def evaluate_predictions(frames: Sequence, pred: Predictions, name: str = "model",
                         fit_energy_offsets: bool = False) -> EvaluationResult:
    """Compare ``pred`` with the REF_* labels of ``frames`` (see :class:`EvaluationResult`)."""
    n_atoms = np.array([len(a) for a in frames], dtype=int)
    e_ref = np.array([float(a.info[ENERGY_KEY]) for a in frames])
    f_ref = np.concatenate([np.asarray(a.arrays[FORCES_KEY], dtype=float) for a in frames])
    s_ref = np.array([to_voigt(a.info[STRESS_KEY]) if STRESS_KEY in a.info else np.full(6, np.nan) for a in frames])
    if pred.energy.shape != e_ref.shape or pred.forces.shape != f_ref.shape or pred.stress.shape != s_ref.shape:
        raise ValueError(f"predictions do not match the frames: energy {pred.energy.shape} vs {e_ref.shape}, "
                         f"forces {pred.forces.shape} vs {f_ref.shape}, stress {pred.stress.shape} vs {s_ref.shape}")
    _check_finite(frames, pred, name)
    e_pred = pred.energy.astype(float).copy()
    offsets = None
    if fit_energy_offsets:
        offsets = fit_element_offsets(frames, e_ref - e_pred)
        e_pred = e_pred + np.array([sum(offsets[s] for s in a.get_chemical_symbols()) for a in frames])
    cts = [str(a.info.get(CONFIG_TYPE_KEY, "Default")) for a in frames]
    return EvaluationResult(name=name, config_types=cts, n_atoms=n_atoms, energy_ref=e_ref, energy_pred=e_pred,
                            forces_ref=f_ref, forces_pred=pred.forces.astype(float), stress_ref=s_ref,
                            stress_pred=pred.stress.astype(float), energy_offsets=offsets)


def evaluate_model(model, data, name: Optional[str] = None, batch_size: int = 16, device: str = "cpu",
                   dtype: Optional[str] = None, fit_energy_offsets: bool = False) -> EvaluationResult:
    """Evaluate ``model`` (a ``.model`` path, a mace-torch module, or an ASE calculator) on ``data``
    (a labelled file or a list of labelled Atoms)."""
    if isinstance(data, (str, Path)):
        from limace.data.io import read_configurations

        frames = read_configurations(data, allowed_elements=None, require_periodic=False)
    else:
        frames = list(data)
    if not frames:
        raise ValidationError("no configurations to evaluate")
    if isinstance(model, (str, Path)):
        from limace.training.export import load_model

        from limace.potentials.registry import check_model_archive

        name = name or Path(model).stem
        check_model_archive(model)  # a damaged file (zip CRC) is an error, not NaN predictions
        model = load_model(model, device=device, dtype=dtype)
    from ase.calculators.calculator import BaseCalculator

    if isinstance(model, BaseCalculator):
        pred = predict_calculator(model, frames)
        name = name or type(model).__name__
    else:
        if dtype is not None:
            import torch

            model = model.to({"float32": torch.float32, "float64": torch.float64}[dtype])
        pred = predict_mace(model, frames, batch_size=batch_size, device=device)
        name = name or "model"
    return evaluate_predictions(frames, pred, name=name, fit_energy_offsets=fit_energy_offsets)


# -- formation energies: the release gate of a shipped potential -------------------------------------------------------


def is_undistorted(atoms) -> bool:
    """A labelled configuration at its own equilibrium geometry: a library phase (``equilibrium``) or an enumerated
    ordering (``enum_*``), i.e. not strained, rattled, a vacancy cell or a hop image."""
    t = str(atoms.info.get(CONFIG_TYPE_KEY, ""))
    return t == "equilibrium" or t.startswith("enum_")


def gate_frames(frames: Sequence, hull_checks: bool = True) -> list:
    """The release gate's structures among ``frames``: every two-element configuration at its own equilibrium
    geometry (:func:`is_undistorted`) or, with ``hull_checks``, relaxed by a potential and checked with DFT by a
    screen (``screen_verify``), i.e. what a hull is built from. Read from a validation set: the frozen test split only
    reports (its record leaves the hull checks out, as it always did)."""
    return [a for a in frames if len(set(a.get_chemical_symbols())) > 1
            and (is_undistorted(a) or (hull_checks and a.info.get(CONFIG_TYPE_KEY) == "screen_verify"))]


def elemental_references(frames: Sequence) -> dict:
    """science.md's references among labelled ``frames``: bcc Li and tetragonal In at equilibrium, and for Sn the
    lowest-energy undistorted pure-Sn cell. {element: Atoms}; an element without one is missing."""
    out = {}
    for a in frames:
        if a.info.get(CONFIG_TYPE_KEY) == "equilibrium" and a.info.get("phase") in ("Li_bcc", "In_tI2"):
            out[a.get_chemical_symbols()[0]] = a
    sn = [a for a in frames if is_undistorted(a) and set(a.get_chemical_symbols()) == {"Sn"}]
    if sn:
        out["Sn"] = min(sn, key=lambda a: a.info[ENERGY_KEY] / len(a))
    return out


def formation_energy_errors(calc, frames: Sequence, references: dict) -> np.ndarray:
    """|model - DFT| formation energy per atom (meV/atom) of each of ``frames``, each side against its own energies
    of the same ``references`` ({element: labelled Atoms}, e.g. :func:`elemental_references`): what a hull built
    with the potential gets wrong, free of a constant per-element offset."""
    def energy(a):
        b = a.copy()
        b.calc = calc
        return b.get_potential_energy()

    missing = {s for a in frames for s in a.get_chemical_symbols()} - set(references)
    if missing:
        raise ValidationError(f"no elemental reference for {', '.join(sorted(missing))}")
    mu_dft = {el: a.info[ENERGY_KEY] / len(a) for el, a in references.items()}
    mu_model = {el: energy(a) / len(a) for el, a in references.items()}

    def formation(e, a, mu):
        return (e - sum(mu[s] for s in a.get_chemical_symbols())) / len(a)

    return np.array([1000 * abs(formation(energy(a), a, mu_model) - formation(a.info[ENERGY_KEY], a, mu_dft))
                     for a in frames])
