"""The voltage curve of Li insertion into a host (In or Sn) from the hull: two-phase plateaus.

With ``y`` the Li per host atom, the energy per host atom of ``Li_y M`` is written through the formation energy,
``E(Li_y M) = (1 + y) E_f + y mu_Li + mu_M``. Between neighbouring stable phases ``Li_{y1} M`` and ``Li_{y2} M``
(``shared/reference/science.md``)::

    V = -[E(Li_{y2} M) - E(Li_{y1} M) - (y2 - y1) mu_Li] / (y2 - y1)        (volts, energies in eV per host atom)
      = -[(1 + y2) E_f2 - (1 + y1) E_f1] / (y2 - y1)

The curve starts at the pure host (``y = 0``) and ends at the last stable phase before pure Li, which sets the maximum
Li per host atom ``y_max``. The reported average voltage is the **capacity-weighted** mean of the plateaus,
``sum(V_i (y2_i - y1_i)) / y_max``, which equals ``-(1 + y_max) E_f(last) / y_max``: minus the formation energy of
the last phase per host atom over its Li per host atom.

>>> curve = VoltageCurve.from_hull(hull)                  # doctest: +SKIP
>>> curve.as_dict()["average_V"], curve.max_li_per_host   # doctest: +SKIP
>>> curve.plot().figure.savefig("voltage.png")            # doctest: +SKIP

``as_dict()`` follows the report schema ``{"average_V", "max_li_per_host", "plateaus": [{"y_start", "y_end",
"voltage_V", "phases": [formula at y_start, formula at y_end]}], ...}`` (``average_V`` is ``null`` when no compound
is stable).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from limace.core.errors import LimaceInputError

__all__ = ["Plateau", "VoltageCurve"]


@dataclass(frozen=True)
class Plateau:
    """One two-phase plateau: Li per host atom from ``y_start`` to ``y_end`` at ``voltage_V`` (V vs Li/Li+)."""

    y_start: float
    y_end: float
    voltage_V: float
    phases: tuple[str, str]

    @property
    def capacity(self) -> float:
        """Li per host atom inserted on this plateau."""
        return self.y_end - self.y_start

    def as_dict(self) -> dict:
        d = asdict(self)
        d["phases"] = list(self.phases)
        return d


class VoltageCurve:
    """Plateaus of Li insertion into ``host`` (see the module docstring).

    Build it with :meth:`from_hull` (a :class:`~limace.analysis.hull.HullAnalysis`) or :meth:`from_phases` (stable
    phases as ``(formula, y, formation energy eV/atom)``).
    """

    def __init__(self, host: str, plateaus: list[Plateau], *, system: str | None = None,
                 sn_reference: str | None = None, potential: str | None = None):
        self.host = host
        self.plateaus = list(plateaus)
        self.system = system or f"Li-{host}"
        self.sn_reference = sn_reference
        self.potential = potential

    @classmethod
    def from_hull(cls, hull) -> "VoltageCurve":
        """The plateaus between the hull's neighbouring stable phases, from the pure host to the last phase before
        pure Li."""
        phases = []
        for e in hull.stable_entries:
            n_host = e.composition.get(hull.host, 0.0)
            if n_host <= 0:
                continue  # pure Li: y is infinite
            phases.append((e.formula, e.composition.get(hull.li, 0.0) / n_host, e.formation_energy))
        sn_ref = hull.references[hull.host].get("phase") if hull.host == "Sn" else None
        return cls.from_phases(hull.host, phases, system=hull.system, sn_reference=sn_ref, potential=hull.potential)

    @classmethod
    def from_phases(cls, host: str, phases, **kwargs) -> "VoltageCurve":
        """From stable phases ``[(formula, y = Li per host atom, formation energy eV/atom), ...]`` including the pure
        host at ``y = 0`` (added with E_f = 0 when missing). Phases must lie on a convex hull (voltages must not
        increase with y); a non-convex input is an error naming the offending phase."""
        rows = []
        for k, item in enumerate(phases):
            try:
                formula, y, ef = item
                y, ef = float(y), float(ef)
            except (TypeError, ValueError):
                raise LimaceInputError(f"phase {k}: expected (formula, y, formation energy), got {item!r}") from None
            if not (math.isfinite(y) and y >= 0 and math.isfinite(ef)):
                raise LimaceInputError(f"phase {k} ({formula}): y must be finite and >= 0 and E_f finite, got "
                                       f"y={y}, E_f={ef}")
            rows.append((str(formula), y, ef))
        if not any(y == 0 for _, y, _ in rows):
            rows.append((host, 0.0, 0.0))
        rows.sort(key=lambda r: r[1])
        for (f1, y1, _), (f2, y2, _) in zip(rows, rows[1:]):
            if y2 - y1 < 1e-12:
                raise LimaceInputError(f"phases {f1} and {f2} have the same Li per host atom ({y1:g})")
        plateaus = []
        for (f1, y1, e1), (f2, y2, e2) in zip(rows, rows[1:]):
            g1, g2 = (1 + y1) * e1, (1 + y2) * e2  # formation energy per host atom
            plateaus.append(Plateau(y_start=y1, y_end=y2, voltage_V=-(g2 - g1) / (y2 - y1), phases=(f1, f2)))
        for a, b in zip(plateaus, plateaus[1:]):
            if b.voltage_V > a.voltage_V + 1e-9:
                raise LimaceInputError(f"phases are not on a convex hull: the plateau to {b.phases[1]} "
                                       f"({b.voltage_V:.4f} V) lies above the one before ({a.voltage_V:.4f} V)")
        return cls(host, plateaus, **kwargs)

    # -- numbers -----------------------------------------------------------------------------------------------------

    @property
    def max_li_per_host(self) -> float:
        """Li per host atom of the last stable phase before pure Li (0 when no compound is stable)."""
        return self.plateaus[-1].y_end if self.plateaus else 0.0

    @property
    def average_voltage(self) -> float:
        """Capacity-weighted mean plateau voltage (V); NaN when no compound is stable."""
        if not self.plateaus:
            return math.nan
        return sum(p.voltage_V * p.capacity for p in self.plateaus) / self.max_li_per_host

    def summary(self) -> dict:
        return self.as_dict()

    def as_dict(self) -> dict:
        """The report schema: ``average_V`` (capacity-weighted, ``null`` without a stable compound),
        ``average_kind``, ``max_li_per_host``, ``plateaus`` and ``host``/``system``/``sn_reference``/``potential``."""
        avg = self.average_voltage
        return {"average_V": None if math.isnan(avg) else avg, "average_kind": "capacity-weighted",
                "max_li_per_host": self.max_li_per_host, "plateaus": [p.as_dict() for p in self.plateaus],
                "host": self.host, "system": self.system, "sn_reference": self.sn_reference,
                "potential": self.potential}

    @classmethod
    def from_dict(cls, d: Mapping) -> "VoltageCurve":
        try:
            plateaus = [Plateau(y_start=float(p["y_start"]), y_end=float(p["y_end"]), voltage_V=float(p["voltage_V"]),
                                phases=tuple(p["phases"])) for p in d["plateaus"]]
            return cls(d["host"], plateaus, system=d.get("system"), sn_reference=d.get("sn_reference"),
                       potential=d.get("potential"))
        except KeyError as exc:
            raise LimaceInputError(f"VoltageCurve.from_dict: missing key {exc.args[0]!r}") from None

    # -- plot --------------------------------------------------------------------------------------------------------

    def plot(self, ax=None, *, label: str | None = None, show_average: bool = True, filename=None):
        """Voltage (V vs Li/Li+) against Li per host atom as a step curve; the capacity-weighted average as a dashed
        line. Returns the Axes; writes a PNG when ``filename`` is given."""
        from limace.analysis.hull import _axes

        ax = _axes(ax)
        label = label or self.system + (f" (Sn ref. {self.sn_reference})" if self.sn_reference else "")
        xs, vs = [], []
        for p in self.plateaus:
            xs += [p.y_start, p.y_end]
            vs += [p.voltage_V, p.voltage_V]
        line, = ax.plot(xs, vs, "-", label=label)
        if show_average and self.plateaus:
            ax.axhline(self.average_voltage, ls="--", lw=0.8, color=line.get_color(),
                       label=f"average {self.average_voltage:.3f} V")
        for p in self.plateaus:
            ax.annotate(p.phases[1], (p.y_end, p.voltage_V), textcoords="offset points", xytext=(2, 3), fontsize=7)
        ax.set_xlabel("Li per host atom")  # one axis for Li-In and Li-Sn curves alike
        ax.set_ylabel("voltage vs Li/Li$^+$ (V)")
        ax.legend(fontsize=8)
        if filename is not None:
            ax.figure.savefig(filename, dpi=150, bbox_inches="tight")
        return ax

    def __repr__(self) -> str:
        return (f"VoltageCurve({self.system}, {len(self.plateaus)} plateaus, max {self.max_li_per_host:g} Li/"
                f"{self.host}, average {self.average_voltage:.3f} V)")
