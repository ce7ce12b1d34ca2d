"""Formation energies and the convex hull of a Li-M binary (M = In or Sn) from total energies of one potential.

:class:`HullAnalysis` takes entries (a composition, its total energy in eV, a name and a source), picks the elemental
references, computes formation energies exactly as ``shared/reference/science.md`` defines them::

    E_f(Li_a M_b) = [E(Li_a M_b) - a mu_Li - b mu_M] / (a + b)      (eV/atom)

with ``mu`` the energy per atom of the elemental reference (same potential), and builds the lower convex envelope
with pymatgen's :class:`~pymatgen.analysis.phase_diagram.PhaseDiagram` for the energy above hull of every entry and
the stable set.

References: bcc Li (the entry named ``Li_bcc``, else the only pure-Li entry), tetragonal In (``In_tI2``, else the only
pure-In entry) and, for Sn, ``sn_reference="lowest"`` (default: the lowest-energy pure-Sn entry, alpha-Sn with PBE)
or ``"beta"`` (the entry named ``Sn_beta``: the phase electrodes contain) or ``"alpha"`` (``Sn_alpha``).
``references={"Li": "my_li"}`` names the reference entry of an element explicitly. Which entry was used is recorded
in :attr:`HullAnalysis.references`. The hull is built from the chosen references and all compounds; other elemental
polymorphs are placed against it (with ``sn_reference="beta"``, alpha-Sn then lies *below* the hull: a negative
energy above hull).

>>> hull = HullAnalysis.from_structures("Li-Sn", relaxed_atoms, sn_reference="beta")   # doctest: +SKIP
>>> hull.stable, hull.summary()["hull"][0]                                              # doctest: +SKIP
>>> hull.plot().figure.savefig("hull.png")                                              # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ase import Atoms

from limace.core.errors import LimaceInputError

__all__ = ["HullAnalysis", "HullEntry", "SYSTEMS", "REFERENCE_PHASES", "dataset_formation_energies"]

SYSTEMS = ("Li-In", "Li-Sn")
REFERENCE_PHASES = {"Li": "Li_bcc", "In": "In_tI2", "Sn": {"alpha": "Sn_alpha", "beta": "Sn_beta"}}
SN_REFERENCES = ("lowest", "beta", "alpha")


@dataclass
class HullEntry:
    """One structure on the hull: composition (element -> atoms in the cell), total energy (eV) of that cell.

    ``formation_energy`` (eV/atom), ``e_above_hull`` (eV/atom) and ``stable`` are filled in by :class:`HullAnalysis`.
    """

    name: str
    composition: dict[str, float]
    energy: float
    source: str = ""
    formation_energy: float = math.nan
    e_above_hull: float = math.nan
    stable: bool = False

    @property
    def n_atoms(self) -> float:
        return float(sum(self.composition.values()))

    @property
    def energy_per_atom(self) -> float:
        return self.energy / self.n_atoms

    @property
    def formula(self) -> str:
        """Reduced formula, Li first (``"Li7Sn2"``, ``"LiIn"``, ``"Sn"``)."""
        return _reduced_formula(self.composition)

    def fraction(self, element: str) -> float:
        return self.composition.get(element, 0.0) / self.n_atoms

    def as_dict(self) -> dict:
        return {"name": self.name, "composition": dict(self.composition), "energy": self.energy,
                "source": self.source}


def _reduced_formula(composition: Mapping[str, float]) -> str:
    from pymatgen.core import Composition

    reduced = Composition({el: n for el, n in composition.items() if n > 0}).reduced_composition.get_el_amt_dict()
    parts = []
    for el in sorted(reduced, key=lambda e: (e != "Li", e)):
        n = reduced[el]
        parts.append(el if abs(n - 1) < 1e-8 else el + (str(int(round(n))) if abs(n - round(n)) < 1e-8 else f"{n:g}"))
    return "".join(parts)


def _parse_composition(value, label: str, elements: tuple[str, str]) -> dict[str, float]:
    """Element -> amount from a formula, a mapping or ASE Atoms; only the system's elements are allowed."""
    from ase.data import chemical_symbols

    if isinstance(value, Atoms):
        comp: dict[str, float] = {}
        for s in value.get_chemical_symbols():
            comp[s] = comp.get(s, 0.0) + 1.0
    elif isinstance(value, Mapping):
        comp = {}
        for el, n in value.items():
            if not isinstance(n, (int, float)) or isinstance(n, bool) or not math.isfinite(n) or n < 0:
                raise LimaceInputError(f"{label}: amount of {el!r} must be a non-negative number, got {n!r}")
            comp[str(el)] = float(n)
    elif isinstance(value, str):
        from pymatgen.core import Composition

        try:
            comp = {str(el): float(n) for el, n in Composition(value).get_el_amt_dict().items()}
        except Exception:
            raise LimaceInputError(f"{label}: {value!r} is not a chemical formula (write e.g. 'Li7Sn2')") from None
    else:
        raise LimaceInputError(f"{label}: expected a formula, a composition dict or ase.Atoms, got "
                               f"{type(value).__name__}")
    comp = {el: n for el, n in comp.items() if n > 0}
    if not comp:
        raise LimaceInputError(f"{label}: empty composition")
    unknown = sorted(el for el in comp if el not in chemical_symbols[1:])
    if unknown:
        raise LimaceInputError(f"{label}: unknown element {', '.join(map(repr, unknown))}")
    outside = sorted(el for el in comp if el not in elements)
    if outside:
        raise LimaceInputError(f"{label}: {', '.join(outside)} is not in the {'-'.join(elements)} system")
    return comp


def _check_system(system: str) -> tuple[str, str]:
    if system not in SYSTEMS:
        raise LimaceInputError(f"unknown system {system!r}; choose one of {', '.join(SYSTEMS)}")
    li, host = system.split("-")
    return li, host


class HullAnalysis:
    """Formation energies, energies above hull and the stable set of one Li-M system from one potential.

    Args:
        system: ``"Li-In"`` or ``"Li-Sn"``.
        entries: :class:`HullEntry` objects, or tuples ``(formula | composition dict | Atoms, total energy eV[, name[,
            source]])``, or dicts with ``formula`` or ``composition``, ``energy`` and optional ``name``/``source``.
            Names default to the formula; they must be unique.
        sn_reference: ``"lowest"`` (default), ``"beta"`` or ``"alpha"`` (Li-Sn only; see the module docstring).
        references: optional ``{element: entry name}`` overriding the choice of a reference entry.
        potential: a label of the potential the energies come from (kept in the summary).
    """

    def __init__(self, system: str, entries: Iterable, *, sn_reference: str = "lowest",
                 references: Mapping[str, str] | None = None, potential: str | None = None):
        self.system = system
        self.li, self.host = _check_system(system)
        if sn_reference not in SN_REFERENCES:
            raise LimaceInputError(f"sn_reference {sn_reference!r} is not one of {', '.join(SN_REFERENCES)}")
        self.sn_reference = sn_reference
        self.potential = potential
        self.entries: list[HullEntry] = [self._entry(e, k) for k, e in enumerate(entries)]
        if not self.entries:
            raise LimaceInputError(f"{system}: no entries given")
        names = [e.name for e in self.entries]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise LimaceInputError(f"{system}: entry names must be unique; repeated: {', '.join(dup)}")
        self._references_override = dict(references or {})
        for el in self._references_override:
            if el not in (self.li, self.host):
                raise LimaceInputError(f"references: {el!r} is not an element of {system}")
        self.references: dict[str, dict] = {el: self._pick_reference(el) for el in (self.li, self.host)}
        self._compute()

    # -- construction --------------------------------------------------------------------------------------------------

    def _entry(self, item, k: int) -> HullEntry:
        elements = (self.li, self.host)
        if isinstance(item, HullEntry):
            label = f"entry {k} ({item.name})"
            comp = _parse_composition(item.composition, label, elements)
            name, energy, source = item.name, item.energy, item.source
        elif isinstance(item, Mapping):
            label = f"entry {k}"
            unknown = sorted(set(item) - {"formula", "composition", "energy", "name", "source"})
            if unknown:
                raise LimaceInputError(f"{label}: unknown key(s) {', '.join(unknown)}; known: formula, composition, "
                                       "energy, name, source")
            if "composition" in item:
                comp = _parse_composition(item["composition"], label, elements)
            elif "formula" in item:
                comp = _parse_composition(item["formula"], label, elements)
            else:
                raise LimaceInputError(f"{label}: needs 'formula' or 'composition'")
            if "energy" not in item:
                raise LimaceInputError(f"{label}: needs 'energy' (total eV of the composition)")
            energy, name, source = item["energy"], item.get("name"), item.get("source", "")
        elif isinstance(item, (tuple, list)) and 2 <= len(item) <= 4:
            label = f"entry {k}"
            comp = _parse_composition(item[0], label, elements)
            energy = item[1]
            name = item[2] if len(item) > 2 else None
            source = item[3] if len(item) > 3 else ""
            if name is None and isinstance(item[0], Atoms):
                name = item[0].info.get("phase")
        else:
            raise LimaceInputError(f"entry {k}: expected (composition, energy[, name[, source]]), a dict or a "
                                   f"HullEntry, got {type(item).__name__}")
        if isinstance(energy, bool) or not isinstance(energy, (int, float)) or not math.isfinite(float(energy)):
            raise LimaceInputError(f"{label}: energy must be a finite number (eV), got {energy!r}")
        name = str(name) if name else _reduced_formula(comp)
        return HullEntry(name=name, composition=comp, energy=float(energy), source=str(source or ""))

    @classmethod
    def from_structures(cls, system: str, structures: Sequence[Atoms], energies: Sequence[float] | None = None,
                        *, source: str = "", **kwargs) -> "HullAnalysis":
        """Entries from ASE Atoms: energy from ``energies`` or ``atoms.info["energy"]`` (as
        :func:`limace.analysis.relax.relax_structures` sets it) or the attached calculator; name from
        ``info["phase"]`` (library structures), ``info["name"]``, else the formula with a counter; source from
        ``info["source"]`` or ``source``."""
        structures = list(structures)
        if energies is not None and len(energies) != len(structures):
            raise LimaceInputError(f"{len(energies)} energies for {len(structures)} structures")
        entries, seen = [], {}
        for k, atoms in enumerate(structures):
            if not isinstance(atoms, Atoms):
                raise LimaceInputError(f"structure {k}: expected ase.Atoms, got {type(atoms).__name__}")
            if energies is not None:
                energy = energies[k]
            elif "energy" in atoms.info:
                energy = atoms.info["energy"]
            elif atoms.calc is not None:
                energy = atoms.get_potential_energy()
            else:
                raise LimaceInputError(f"structure {k} ({atoms.get_chemical_formula()}): no energy (give energies=, "
                                       "info['energy'] or a calculator)")
            name = atoms.info.get("phase") or atoms.info.get("name")
            if not name:
                base = atoms.get_chemical_formula(mode="metal")
                seen[base] = seen.get(base, 0) + 1
                name = base if seen[base] == 1 else f"{base}-{seen[base]}"
            entries.append((atoms, energy, str(name), str(atoms.info.get("source", source))))
        return cls(system, entries, **kwargs)

    def _pick_reference(self, element: str) -> dict:
        pure = [e for e in self.entries if set(e.composition) == {element}]
        if not pure:
            raise LimaceInputError(f"{self.system}: no elemental reference for {element}: add the energy of "
                                   f"{self._wanted_name(element)} (a pure-{element} entry)")
        by_name = {e.name: e for e in pure}
        chosen, rule = None, ""
        if element in self._references_override:
            want = self._references_override[element]
            if want not in by_name:
                raise LimaceInputError(f"references: no pure-{element} entry named {want!r} (have: "
                                       f"{', '.join(sorted(by_name))})")
            chosen, rule = by_name[want], "given"
        elif element == "Sn" and self.sn_reference == "lowest":
            chosen, rule = min(pure, key=lambda e: e.energy_per_atom), "lowest"
        else:
            want = self._wanted_name(element)
            if want in by_name:
                chosen, rule = by_name[want], want
            elif element != "Sn" and len(pure) == 1:
                chosen, rule = pure[0], "only entry"
            elif element == "Sn":
                raise LimaceInputError(f"sn_reference={self.sn_reference!r} needs a pure-Sn entry named {want!r} "
                                       f"(have: {', '.join(sorted(by_name))})")
            else:
                raise LimaceInputError(f"{self.system}: several pure-{element} entries ({', '.join(sorted(by_name))})"
                                       f" and none named {want!r}; name the reference {want} or pass "
                                       f"references={{'{element}': NAME}}")
        out = {"name": chosen.name, "energy_per_atom": chosen.energy_per_atom, "rule": rule}
        if element == "Sn":
            label = {"Sn_alpha": "alpha", "Sn_beta": "beta"}.get(chosen.name)
            out["phase"] = label or chosen.name
        return out

    def _wanted_name(self, element: str) -> str:
        ref = REFERENCE_PHASES[element]
        if isinstance(ref, dict):
            return ref.get(self.sn_reference, ref["beta"])
        return ref

    # -- the hull --------------------------------------------------------------------------------------------------

    def _compute(self) -> None:
        from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram

        mu = {el: ref["energy_per_atom"] for el, ref in self.references.items()}
        ref_names = {ref["name"] for ref in self.references.values()}
        for e in self.entries:
            e.formation_energy = (e.energy - sum(n * mu[el] for el, n in e.composition.items())) / e.n_atoms
        # Formation energies (times atoms) as PDEntry energies: the references are exactly at 0.
        pd_entries = {}
        for e in self.entries:
            pd_entries[e.name] = PDEntry(e.composition, e.formation_energy * e.n_atoms, name=e.name)
        building = [pd_entries[e.name] for e in self.entries if len(e.composition) > 1 or e.name in ref_names]
        self.phase_diagram = PhaseDiagram(building)
        stable_names = {s.name for s in self.phase_diagram.stable_entries}
        for e in self.entries:
            ehull = self.phase_diagram.get_e_above_hull(pd_entries[e.name], allow_negative=True)
            e.e_above_hull = float(ehull) if abs(ehull) > 1e-12 else 0.0
            e.stable = e.name in stable_names

    @property
    def stable_entries(self) -> list[HullEntry]:
        """Entries on the hull (the vertices of the lower envelope), by Li fraction."""
        return sorted((e for e in self.entries if e.stable), key=lambda e: e.fraction(self.li))

    @property
    def stable(self) -> list[str]:
        """Formulas on the hull, by Li fraction."""
        return [e.formula for e in self.stable_entries]

    def entry(self, name: str) -> HullEntry:
        for e in self.entries:
            if e.name == name:
                return e
        raise LimaceInputError(f"{self.system}: no entry named {name!r}")

    def voltage(self):
        """The voltage curve of Li insertion into the host from this hull
        (:meth:`limace.analysis.voltage.VoltageCurve.from_hull`)."""
        from limace.analysis.voltage import VoltageCurve

        return VoltageCurve.from_hull(self)

    def lowest_per_composition(self) -> list[HullEntry]:
        """The lowest-energy entry of every reduced composition, by Li fraction."""
        best: dict[str, HullEntry] = {}
        for e in self.entries:
            if e.formula not in best or e.formation_energy < best[e.formula].formation_energy:
                best[e.formula] = e
        return sorted(best.values(), key=lambda e: (e.fraction(self.li), e.formation_energy))

    def summary(self) -> dict:
        """JSON-ready summary: system, potential, references (with the Sn reference used), the stable formulas and a
        ``hull`` table (``formula``, ``name``, ``x_Li``, ``formation_energy_eV_per_atom``, ``e_above_hull_eV_per_atom``,
        ``stable``, ``source``) sorted by Li fraction."""
        rows = [{
            "formula": e.formula,
            "name": e.name,
            "x_Li": e.fraction(self.li),
            "formation_energy_eV_per_atom": e.formation_energy,
            "e_above_hull_eV_per_atom": e.e_above_hull,
            "stable": e.stable,
            "source": e.source,
        } for e in sorted(self.entries, key=lambda e: (e.fraction(self.li), e.formation_energy))]
        out = {"system": self.system, "potential": self.potential,
               "references": {el: dict(ref) for el, ref in self.references.items()},
               "stable": self.stable, "hull": rows}
        if self.host == "Sn":
            out["sn_reference"] = self.references["Sn"]["phase"]
        return out

    def as_dict(self) -> dict:
        """The inputs (entries, options) plus the summary; :meth:`from_dict` rebuilds from the inputs."""
        return {"@class": "HullAnalysis", "system": self.system, "sn_reference": self.sn_reference,
                "references": dict(self._references_override), "potential": self.potential,
                "entries": [e.as_dict() for e in self.entries], "summary": self.summary()}

    @classmethod
    def from_dict(cls, d: Mapping) -> "HullAnalysis":
        try:
            return cls(d["system"], [dict(e) for e in d["entries"]], sn_reference=d.get("sn_reference", "lowest"),
                       references=d.get("references") or None, potential=d.get("potential"))
        except KeyError as exc:
            raise LimaceInputError(f"HullAnalysis.from_dict: missing key {exc.args[0]!r}") from None

    # -- plot ------------------------------------------------------------------------------------------------------

    def plot(self, ax=None, *, max_e_above_hull: float | None = 0.1, label_stable: bool = True, filename=None):
        """Formation energy (meV/atom) against Li fraction: the hull line through the stable phases, others as open
        markers (only those within ``max_e_above_hull`` eV/atom; ``None`` shows all). Returns the Axes; writes a PNG
        when ``filename`` is given."""
        ax = _axes(ax)
        x_of = lambda e: e.fraction(self.li)  # noqa: E731
        stable = self.stable_entries
        ax.plot([x_of(e) for e in stable], [1000 * e.formation_energy for e in stable], "-o", color="C0",
                label="hull", zorder=3)
        others = [e for e in self.entries if not e.stable and
                  (max_e_above_hull is None or e.e_above_hull <= max_e_above_hull)]
        if others:
            ax.scatter([x_of(e) for e in others], [1000 * e.formation_energy for e in others], facecolors="none",
                       edgecolors="C3", label="above hull", zorder=2)
        ax.axhline(0, color="0.6", lw=0.8)
        ax.set_xlim(-0.02, 1.02)
        if label_stable:
            compounds = [e for e in stable if len(e.composition) > 1]
            _label_points(ax, [e.formula for e in compounds], [x_of(e) for e in compounds],
                          [1000 * e.formation_energy for e in compounds])
        ax.set_xlabel(f"x in {self.li}$_x${self.host}$_{{1-x}}$")
        ax.set_ylabel("formation energy (meV/atom)")
        ref = f", Sn reference: {self.references['Sn']['phase']}" if self.host == "Sn" else ""
        ax.set_title(f"{self.system} hull{ref}" + (f" ({self.potential})" if self.potential else ""), fontsize=10)
        ax.legend(fontsize=8)
        if filename is not None:
            ax.figure.savefig(filename, dpi=150, bbox_inches="tight")
        return ax

    def __repr__(self) -> str:
        return f"HullAnalysis({self.system}, {len(self.entries)} entries, stable: {', '.join(self.stable)})"


def dataset_formation_energies(frames: Sequence[Atoms], system: str, sn_reference: str = "lowest") -> HullAnalysis:
    """:class:`HullAnalysis` of the undistorted configurations of ``system`` in a labelled dataset with their DFT
    energies (:func:`limace.data.consistency.formation_energy_structures`)."""
    from limace.data.consistency import formation_energy_structures

    return HullAnalysis.from_structures(system, formation_energy_structures(frames, system), sn_reference=sn_reference,
                                        potential="DFT pbe-pw400")


def _label_points(ax, labels, xs, ys, fontsize: float = 8.0) -> None:
    """Labels below the points, each moved one line further down while its box would overlap a label already placed
    (close compositions such as Li7Sn3 and Li13Sn5), with a thin leader line then. Boxes are estimated in display
    units from the axes' limits at this point (the data are plotted, so autoscaling is done)."""
    ax.autoscale_view()
    lo, hi = ax.get_ylim()
    ax.set_ylim(lo - 0.15 * (hi - lo), hi)  # room for the labels below the lowest points; fixed from here on, so the
    # positions computed below stay where they were computed
    px = ax.figure.dpi / 72  # display pixels per point
    placed: list[tuple[float, float, float, float]] = []  # x0, x1, y0, y1 (display pixels)
    for text, x, y in sorted(zip(labels, xs, ys), key=lambda t: t[1]):
        cx, cy = ax.transData.transform((x, y))
        half, height = (0.31 * fontsize * len(text) + 2) * px, 1.3 * fontsize * px
        level = 0
        while True:
            top = cy - (0.6 * fontsize * px + level * height)
            box = (cx - half, cx + half, top - height, top)
            if not any(box[0] < b[1] and b[0] < box[1] and box[2] < b[3] and b[2] < box[3] for b in placed):
                break
            level += 1
        placed.append(box)
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(0, (top - cy) / px), ha="center", va="top",
                    fontsize=fontsize, arrowprops=dict(arrowstyle="-", lw=0.5, color="0.5") if level else None)


def _axes(ax):
    """The given Axes or a new one on a Figure of its own (no pyplot global state)."""
    if ax is not None:
        return ax
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.6))
    return fig.add_subplot()
