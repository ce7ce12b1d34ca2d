"""Diffusion from MD: mean-squared displacements, diffusion coefficients with errors, Arrhenius fits.

- :class:`DiffusionAnalysis`: MSD of each species of one system (unwrapped positions, averaged over all time origins
  with the FFT algorithm, centre-of-mass drift removed), and D from a linear fit ``MSD = 6 D t + c`` over a time window.
  The error of D is the standard error over atoms (each atom's MSD fitted alone), which counts the finite length of
  the run; with one atom, the standard error of the regression.
- :class:`ArrheniusFit`: ``D = D0 exp(-Ea / kB T)`` by weighted least squares on ln D, with a confidence interval of
  Ea (Student t on the residual scatter; from the given errors of D when only two temperatures).
- :func:`analyze_run`: one analysis per system of a :func:`limace.md.runner.run_md` output directory.

Units: times in fs, MSD in A^2, D in cm^2/s (1 A^2/fs = 0.1 cm^2/s), Ea in eV, temperatures in K. Both classes have
``as_dict``/``from_dict`` and ``plot(ax=None)`` returning the matplotlib Axes; :func:`save_plots` writes PNGs.

>>> runs = analyze_run("md-out", species=["Li"])                              # doctest: +SKIP
>>> fit = ArrheniusFit.from_analyses(runs, species="Li")                       # doctest: +SKIP
>>> fit.Ea, fit.Ea_ci                                                          # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms

from limace.core.errors import ValidationError
from limace.core.units import KB_EV  # eV/K, ASE's value (the MD temperatures use it)

A2_PER_FS_TO_CM2_PER_S = 0.1


# -- MSD -------------------------------------------------------------------------------------------------------------


def unwrap(positions: np.ndarray, cells: np.ndarray, pbc=(True, True, True)) -> np.ndarray:
    """Unwrap a wrapped trajectory ``[T, N, 3]`` (cells ``[T, 3, 3]`` or ``[3, 3]``): each step's displacement is
    taken as the minimum image in fractional coordinates (atoms must move less than half a cell between frames)."""
    positions = np.asarray(positions, dtype=float)
    cells = np.broadcast_to(np.asarray(cells, dtype=float), (positions.shape[0], 3, 3))
    frac = np.einsum("tni,tij->tnj", positions, np.linalg.inv(cells))
    dfrac = np.diff(frac, axis=0)
    per = np.asarray(pbc, dtype=bool)
    dfrac[..., per] -= np.round(dfrac[..., per])
    frac_u = np.concatenate([frac[:1], frac[:1] + np.cumsum(dfrac, axis=0)])
    return np.einsum("tni,tij->tnj", frac_u, cells)


def msd_per_atom(positions: np.ndarray, max_lag: int | None = None) -> np.ndarray:
    """``[L, N]`` MSD of each atom for lags 0..L-1 frames, averaged over all time origins (FFT, O(T log T)).

    ``positions``: unwrapped ``[T, N, 3]``."""
    r = np.asarray(positions, dtype=float)
    t = r.shape[0]
    lag = t if max_lag is None else min(int(max_lag) + 1, t)
    d = (r ** 2).sum(-1)  # [T, N]
    c = np.concatenate([np.zeros((1, d.shape[1])), np.cumsum(d, axis=0)])  # C_k = sum_{i<k} D_i
    m = np.arange(lag)
    s1 = (c[t] - c[m] + c[t - m]) / (t - m)[:, None]
    f = np.fft.rfft(r, n=2 * t, axis=0)
    s2 = np.fft.irfft(f * f.conj(), n=2 * t, axis=0)[:lag].sum(-1) / (t - m)[:, None]
    return np.maximum(s1 - 2 * s2, 0.0)


def _linfit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Slopes, intercepts and slope standard errors of y[:, k] against x (ordinary least squares)."""
    xm = x.mean()
    sxx = ((x - xm) ** 2).sum()
    ym = y.mean(axis=0)
    slope = ((x - xm)[:, None] * (y - ym)).sum(axis=0) / sxx
    icpt = ym - slope * xm
    res = y - (icpt + slope * x[:, None])
    dof = max(len(x) - 2, 1)
    se = np.sqrt((res ** 2).sum(axis=0) / dof / sxx)
    return slope, icpt, se


@dataclass
class DiffusionAnalysis:
    """MSD and diffusion coefficient of each species of one system (see the module docstring)."""

    lags_fs: np.ndarray  # [L]
    msd: dict[str, np.ndarray]  # species -> [L] A^2
    n_atoms: dict[str, int]
    window_fs: tuple[float, float]
    D: dict[str, float]  # cm^2/s
    D_err: dict[str, float]  # cm^2/s
    intercept: dict[str, float]  # A^2 (fit)
    temperature: float | None = None
    label: str = ""
    meta: dict = field(default_factory=dict)

    @classmethod
    def from_positions(cls, positions, symbols: Sequence[str], dt_fs: float, *, species: Sequence[str] | None = None,
                       window_fs: tuple[float, float] | None = None, max_lag_fraction: float = 0.5,
                       masses: Sequence[float] | None = None, remove_drift: bool = True,
                       temperature: float | None = None, label: str = "") -> "DiffusionAnalysis":
        """From unwrapped positions ``[T, N, 3]`` sampled every ``dt_fs``.

        ``window_fs``: the fit range of lag times (default: 20 % to 100 % of the longest lag); ``max_lag_fraction``:
        longest lag as a fraction of the run; ``remove_drift``: subtract the centre-of-mass displacement of the
        system (weighted by ``masses``, default the ASE masses of ``symbols``)."""
        r = np.asarray(positions, dtype=float)
        symbols = [str(s) for s in symbols]
        if r.ndim != 3 or r.shape[2] != 3 or r.shape[1] != len(symbols):
            raise ValidationError(f"positions: expected [frames, {len(symbols)}, 3], got {r.shape}")
        if r.shape[0] < 4:
            raise ValidationError(f"positions: {r.shape[0]} frames are too few for an MSD (need >= 4)")
        if not dt_fs > 0:
            raise ValidationError(f"dt_fs: must be > 0, got {dt_fs}")
        if remove_drift:
            if masses is None:
                from ase.data import atomic_masses, atomic_numbers

                masses = [atomic_masses[atomic_numbers[s]] for s in symbols]
            w = np.asarray(masses, dtype=float)
            com = (r * w[None, :, None]).sum(1) / w.sum()
            r = r - (com - com[0])[:, None, :]
        present = list(dict.fromkeys(symbols))
        species = present if species is None else [str(s) for s in species]
        missing = [s for s in species if s not in present]
        if missing:
            raise ValidationError(f"species {', '.join(missing)} not in the system (it has {', '.join(present)})")
        max_lag = max(3, int((r.shape[0] - 1) * max_lag_fraction))
        lags = np.arange(min(max_lag + 1, r.shape[0])) * dt_fs
        if window_fs is None:
            window_fs = (0.2 * lags[-1], lags[-1])
        lo, hi = float(window_fs[0]), float(window_fs[1])
        sel = (lags >= lo) & (lags <= hi)
        if sel.sum() < 3:
            raise ValidationError(f"window_fs ({lo:g}, {hi:g}) holds {int(sel.sum())} lag times; it must hold >= 3 "
                                  f"within 0..{lags[-1]:g} fs")
        msd, n_atoms, dd, de, ic = {}, {}, {}, {}, {}
        sym = np.asarray(symbols)
        for s in species:
            per_atom = msd_per_atom(r[:, sym == s], max_lag)  # [L, n]
            msd[s] = per_atom.mean(axis=1)
            n_atoms[s] = int(per_atom.shape[1])
            slope, icpt, se = _linfit(lags[sel], per_atom[sel])
            d_atoms = slope / 6 * A2_PER_FS_TO_CM2_PER_S
            dd[s] = float(d_atoms.mean())
            ic[s] = float(icpt.mean())
            if per_atom.shape[1] > 1:
                de[s] = float(d_atoms.std(ddof=1) / np.sqrt(per_atom.shape[1]))
            else:
                de[s] = float(se[0] / 6 * A2_PER_FS_TO_CM2_PER_S)
        return cls(lags_fs=lags, msd=msd, n_atoms=n_atoms, window_fs=(lo, hi), D=dd, D_err=de, intercept=ic,
                   temperature=temperature, label=label, meta={"frames": int(r.shape[0]), "dt_fs": float(dt_fs)})

    @classmethod
    def from_structures(cls, frames: Sequence[Atoms], dt_fs: float | None = None, *, unwrap_positions: bool = False,
                        **kwargs) -> "DiffusionAnalysis":
        """From a trajectory (ASE Atoms). ``dt_fs`` defaults to the spacing of ``info['time_fs']`` (our trajectories);
        ``unwrap_positions``: the positions were wrapped into the cell (ours are not)."""
        frames = list(frames)
        if len(frames) < 4:
            raise ValidationError(f"trajectory: {len(frames)} frames are too few for an MSD (need >= 4)")
        n = len(frames[0])
        if any(len(a) != n for a in frames):
            raise ValidationError("trajectory: frames differ in their number of atoms")
        if dt_fs is None:
            times = [a.info.get("time_fs") for a in frames[:2]]
            if None in times:
                raise ValidationError("trajectory: frames carry no info['time_fs']; give dt_fs")
            dt_fs = float(times[1]) - float(times[0])
        pos = np.stack([a.positions for a in frames])
        if unwrap_positions:
            pos = unwrap(pos, np.stack([a.cell.array for a in frames]), frames[0].pbc)
        return cls.from_positions(pos, frames[0].get_chemical_symbols(), dt_fs, masses=frames[0].get_masses(),
                                  **kwargs)

    @classmethod
    def from_file(cls, path: str | Path, dt_fs: float | None = None, **kwargs) -> "DiffusionAnalysis":
        """From a trajectory file ASE reads (our ``traj_KKKK.extxyz``)."""
        from ase.io import read

        path = Path(path)
        if not path.is_file():
            raise ValidationError(f"{path}: no such trajectory file")
        kwargs.setdefault("label", path.stem)
        return cls.from_structures(read(path, index=":"), dt_fs, **kwargs)

    # -- output ----------------------------------------------------------------------------------------------------

    def summary(self) -> dict:
        return {"label": self.label, "temperature": self.temperature, "window_fs": list(self.window_fs),
                **{f"D_{s}_cm2_s": self.D[s] for s in self.D}, **{f"D_{s}_err_cm2_s": self.D_err[s] for s in self.D}}

    def as_dict(self) -> dict:
        return {"lags_fs": self.lags_fs.tolist(), "msd": {k: v.tolist() for k, v in self.msd.items()},
                "n_atoms": dict(self.n_atoms), "window_fs": list(self.window_fs), "D": dict(self.D),
                "D_err": dict(self.D_err), "intercept": dict(self.intercept), "temperature": self.temperature,
                "label": self.label, "meta": dict(self.meta)}

    @classmethod
    def from_dict(cls, d: dict) -> "DiffusionAnalysis":
        return cls(lags_fs=np.asarray(d["lags_fs"], dtype=float),
                   msd={k: np.asarray(v, dtype=float) for k, v in d["msd"].items()}, n_atoms=dict(d["n_atoms"]),
                   window_fs=tuple(d["window_fs"]), D=dict(d["D"]), D_err=dict(d["D_err"]),
                   intercept=dict(d["intercept"]), temperature=d.get("temperature"), label=d.get("label", ""),
                   meta=dict(d.get("meta", {})))

    def plot(self, ax=None, species: Sequence[str] | None = None):
        """MSD against lag time per species with the fitted lines over the window; returns the Axes."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(5, 3.5))
        t_ps = self.lags_fs / 1000
        for s in (species or list(self.msd)):
            line, = ax.plot(t_ps, self.msd[s], label=f"{s} {self._tag()}".strip())
            lo, hi = self.window_fs
            tw = np.linspace(lo, hi, 2)
            ax.plot(tw / 1000, self.intercept[s] + 6 * self.D[s] / A2_PER_FS_TO_CM2_PER_S * tw, "--",
                    color=line.get_color(), lw=1)
        ax.set_xlabel("lag time (ps)")
        ax.set_ylabel(r"MSD ($\AA^2$)")
        ax.legend(fontsize="small")
        return ax

    def _tag(self) -> str:
        return f"{self.temperature:g} K" if self.temperature is not None else self.label


# -- Arrhenius -------------------------------------------------------------------------------------------------------


@dataclass
class ArrheniusFit:
    """``D = D0 exp(-Ea / kB T)`` fitted to D(T) (see the module docstring)."""

    temperatures: np.ndarray  # K
    D: np.ndarray  # cm^2/s
    D_err: np.ndarray | None
    Ea: float  # eV
    Ea_ci: tuple[float, float]  # eV, confidence interval
    D0: float  # cm^2/s
    confidence: float = 0.95
    species: str = ""
    cov: np.ndarray | None = None  # covariance of (ln D0, -Ea/kB)

    @classmethod
    def fit(cls, temperatures, D, D_err=None, confidence: float = 0.95, species: str = "") -> "ArrheniusFit":
        from scipy import stats

        t = np.asarray(temperatures, dtype=float)
        d = np.asarray(D, dtype=float)
        if t.shape != d.shape or t.ndim != 1 or len(t) < 2:
            raise ValidationError(f"Arrhenius fit: needs >= 2 temperatures with one D each, got {t.shape}, {d.shape}")
        if not (d > 0).all() or not (t > 0).all():
            raise ValidationError("Arrhenius fit: every D and temperature must be > 0 (a run without diffusion "
                                  "gives D <= 0; fit over a longer run or higher temperatures)")
        err = None if D_err is None else np.asarray(D_err, dtype=float)
        x = 1 / (KB_EV * t)
        y = np.log(d)
        w = np.ones_like(y) if err is None else 1 / np.maximum(err / d, 1e-12) ** 2
        a = np.stack([np.ones_like(x), x], axis=1)
        aw = a * w[:, None]
        cov = np.linalg.inv(a.T @ aw)
        coef = cov @ (aw.T @ y)
        n = len(t)
        if n > 2:
            chi2 = float(((y - a @ coef) ** 2 * w).sum()) / (n - 2)
            cov = cov * chi2 if err is None else cov * max(chi2, 1.0)
            q = stats.t.ppf(0.5 + confidence / 2, n - 2)
        elif err is not None:
            q = stats.norm.ppf(0.5 + confidence / 2)
        else:
            q = float("nan")
        ea = -coef[1]
        half = q * np.sqrt(cov[1, 1])
        return cls(temperatures=t, D=d, D_err=err, Ea=float(ea), Ea_ci=(float(ea - half), float(ea + half)),
                   D0=float(np.exp(coef[0])), confidence=confidence, species=species, cov=cov)

    @classmethod
    def from_analyses(cls, analyses: Sequence[DiffusionAnalysis], species: str = "Li",
                      confidence: float = 0.95) -> "ArrheniusFit":
        """From one :class:`DiffusionAnalysis` per temperature (each with ``temperature`` set)."""
        if any(a.temperature is None for a in analyses):
            raise ValidationError("Arrhenius fit: every analysis needs its temperature")
        return cls.fit([a.temperature for a in analyses], [a.D[species] for a in analyses],
                       [a.D_err[species] for a in analyses], confidence=confidence, species=species)

    def D_at(self, temperature: float) -> float:
        """D (cm^2/s) extrapolated to ``temperature`` K."""
        return float(self.D0 * np.exp(-self.Ea / (KB_EV * temperature)))

    def summary(self) -> dict:
        return {"species": self.species, "Ea_eV": self.Ea, "Ea_ci_eV": list(self.Ea_ci), "confidence": self.confidence,
                "D0_cm2_s": self.D0, "D_300K_cm2_s": self.D_at(300.0)}

    def as_dict(self) -> dict:
        return {"temperatures": self.temperatures.tolist(), "D": self.D.tolist(),
                "D_err": None if self.D_err is None else self.D_err.tolist(), "Ea": self.Ea, "Ea_ci": list(self.Ea_ci),
                "D0": self.D0, "confidence": self.confidence, "species": self.species,
                "cov": None if self.cov is None else self.cov.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "ArrheniusFit":
        return cls(temperatures=np.asarray(d["temperatures"], float), D=np.asarray(d["D"], float),
                   D_err=None if d.get("D_err") is None else np.asarray(d["D_err"], float), Ea=float(d["Ea"]),
                   Ea_ci=tuple(d["Ea_ci"]), D0=float(d["D0"]), confidence=float(d.get("confidence", 0.95)),
                   species=d.get("species", ""), cov=None if d.get("cov") is None else np.asarray(d["cov"], float))

    def plot(self, ax=None):
        """log10 D against 1000/T with error bars and the fit; returns the Axes."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(5, 3.5))
        inv = 1000 / self.temperatures
        yerr = None
        if self.D_err is not None:
            yerr = self.D_err / (self.D * np.log(10))
        ax.errorbar(inv, np.log10(self.D), yerr=yerr, fmt="o", label=f"{self.species} MD".strip())
        xs = np.linspace(inv.min() * 0.97, inv.max() * 1.03, 50)
        ys = np.log10(self.D0) - self.Ea / (KB_EV * 1000 / xs) / np.log(10)
        lo, hi = self.Ea_ci
        ax.plot(xs, ys, "-", label=f"Ea = {self.Ea:.3f} eV [{lo:.3f}, {hi:.3f}]")
        ax.set_xlabel("1000 / T (1/K)")
        ax.set_ylabel(r"log$_{10}$ D (cm$^2$/s)")
        ax.legend(fontsize="small")
        return ax


# -- runs ------------------------------------------------------------------------------------------------------------


def analyze_run(output_dir: str | Path, species: Sequence[str] | None = ("Li",),
                window_fs: tuple[float, float] | None = None, **kwargs) -> list[DiffusionAnalysis]:
    """One :class:`DiffusionAnalysis` per trajectory of a run (``traj_KKKK.extxyz``), temperatures from the run's
    config (``summary.json``). Stopped systems and systems without ``species`` are skipped."""
    out = Path(output_dir)
    summary_path = out / "summary.json"
    if not summary_path.is_file():
        raise ValidationError(f"{out}: no summary.json; is this the output_dir of a finished limace md run?")
    summary = json.loads(summary_path.read_text())
    stopped = {s["system"] for s in summary.get("stopped", [])}
    temps = (summary.get("config") or {}).get("temperature_K")
    n = summary.get("n_systems", 0)
    results = []
    for k in range(n):
        path = out / f"traj_{k:04d}.extxyz"
        if k in stopped or not path.is_file():
            continue
        temp = temps[k] if isinstance(temps, list) else temps
        try:
            results.append(DiffusionAnalysis.from_file(path, species=species, window_fs=window_fs,
                                                       temperature=temp, label=f"system {k}", **kwargs))
        except ValidationError as exc:
            if "not in the system" in str(exc):
                continue
            raise
    return results


def save_plots(analyses: Sequence[DiffusionAnalysis], out_dir: str | Path, species: str = "Li",
               arrhenius: ArrheniusFit | None = None) -> list[Path]:
    """Write ``msd.png`` (every analysis) and, given a fit, ``arrhenius.png`` into ``out_dir``; returns the paths."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    for a in analyses:
        a.plot(ax=ax, species=[species] if species in a.msd else None)
    fig.tight_layout()
    fig.savefig(out / "msd.png", dpi=150)
    paths.append(out / "msd.png")
    if arrhenius is not None:
        fig = Figure(figsize=(5, 3.5))
        arrhenius.plot(ax=fig.subplots())
        fig.tight_layout()
        fig.savefig(out / "arrhenius.png", dpi=150)
        paths.append(out / "arrhenius.png")
    return paths
