"""How a screened hull compares with the assessed phase diagram: the known phases of the structure library.

A screen is only as good as its hull. The phases of the library whose status is ``experimental`` (``phases.yaml``;
a "model alternative to X" counts for X's formula) are what the assessed Li-In and Li-Sn phase diagrams contain.
For one system this module reports, from the screen's hull rows (and its DFT checks when ``--verify-dft`` ran):

- every known compound: the best library structure of its formula, its energy above the model's hull, whether it
  is within ``tolerance`` of it (default 10 meV/atom), and the DFT energy above the DFT hull of the checked set;
- the Li-richest known compound and whether the model's hull reaches it (within the tolerance);
- the two-phase regions the voltage curve should have up to that compound (host -> known compounds in order of Li
  content) against the model's plateaus, and the stable compounds the assessment does not list;
- with DFT checks (:func:`dft_comparison`): how many near-hull entries were checked and how many are within
  ``error_tolerance`` (default 5 meV/atom) of DFT, and the stable compositions of the model's hull against those of
  the DFT hull of the checked set (in both, model only, DFT only, stable in the model but not yet checked).

Formulas are compared as reduced formulas (``In20Li88`` is ``Li22In5``).
"""

from __future__ import annotations

from dataclasses import dataclass

from pymatgen.core import Composition

DEFAULT_TOLERANCE_EV = 0.010  # eV/atom: "on the hull or within 10 meV/atom of it"
DEFAULT_ERROR_TOLERANCE_MEV = 5.0  # meV/atom: "model - DFT within +-5 meV/atom for every hull entry"
ON_HULL_EV = 1e-4  # eV/atom: an entry this close to its hull counts as stable (ties between structures of a formula)


def _reduced(formula: str) -> str:
    return Composition(formula).reduced_formula


def _li_per_host(formula: str) -> float:
    c = Composition(formula)
    li = c.get("Li", 0)
    host = c.num_atoms - li
    return float("inf") if host == 0 else float(li / host)


@dataclass(frozen=True)
class KnownCompound:
    formula: str  # reduced
    ids: tuple[str, ...]  # library entries of this formula (the experimental one first)
    status: str
    provenance: str | None


def known_compounds(system: str) -> list[KnownCompound]:
    """The compounds of ``system`` that the library lists as experimental, in order of Li per host atom."""
    from limace.data.structures import list_phases

    phases = [p for p in list_phases(system=system) if p.system == system]  # compounds, not the elements
    exp = {}
    for p in phases:
        if p.status.startswith("experimental"):
            exp.setdefault(_reduced(p.formula), p)
    out = []
    for f, p in exp.items():
        ids = [p.id] + [q.id for q in phases if q.id != p.id and _reduced(q.formula) == f
                        and q.status.startswith("model alternative")]
        out.append(KnownCompound(formula=f, ids=tuple(ids), status=p.status, provenance=p.provenance))
    return sorted(out, key=lambda k: _li_per_host(k.formula))


def known_phase_check(system: str, hull_rows: list[dict], plateaus: list[dict],
                      near_hull: list[dict] | None = None, tolerance: float = DEFAULT_TOLERANCE_EV,
                      absent: dict[str, str] | None = None) -> dict:
    """The comparison described in the module docstring, as a JSON-ready dict.

    ``hull_rows``: the screen's rows (``name``, ``formula``, ``e_above_hull_eV_per_atom``, ``stable``, ``source``);
    ``plateaus``: the voltage curve's (``phases`` as formulas); ``near_hull``: the DFT-checked rows, if any;
    ``absent``: why a library phase is not among the hull rows (rejected as unphysical, relaxation not converged,
    left out by size), by phase id. A known compound none of whose structures is on the hull carries the reason
    of its first structure that has one (``absent``; ``None``: not built). The Li-richest known compound is the
    assessment's, reached or not.
    """
    absent = absent or {}
    host = next(e for e in system.split("-") if e != "Li")
    dft = {n["name"]: n.get("dft_e_above_hull_eV_per_atom") for n in (near_hull or [])}
    by_name = {r["name"]: r for r in hull_rows}
    rows = []
    for k in known_compounds(system):
        built = [by_name[i] for i in k.ids if i in by_name]
        best = min(built, key=lambda r: r["e_above_hull_eV_per_atom"]) if built else None
        e = None if best is None else float(best["e_above_hull_eV_per_atom"])
        rows.append({"formula": k.formula, "li_per_host": round(_li_per_host(k.formula), 4),
                     "name": None if best is None else best["name"], "provenance": k.provenance,
                     "e_above_hull_meV_per_atom": None if e is None else round(1000 * e, 1),
                     "within_tolerance": None if e is None else bool(e <= tolerance + 1e-12),
                     "stable": None if best is None else bool(best["stable"]),
                     "dft_e_above_hull_meV_per_atom": (None if best is None or dft.get(best["name"]) is None
                                                       else round(1000 * dft[best["name"]], 1)),
                     "absent": None if best is not None else next((f"{i}: {absent[i]}" for i in k.ids if i in absent),
                                                                  None)})
    richest = max(rows, key=lambda r: r["li_per_host"]) if rows else None
    known_formulas = {r["formula"] for r in rows}
    stable = [r for r in hull_rows if r["stable"] and _reduced(r["formula"]) not in (_reduced("Li"), _reduced(host))]
    extra = [{"formula": _reduced(r["formula"]), "name": r["name"], "source": r["source"],
              "li_per_host": round(_li_per_host(r["formula"]), 4)}
             for r in sorted(stable, key=lambda r: _li_per_host(r["formula"]))
             if _reduced(r["formula"]) not in known_formulas]
    y_max = richest["li_per_host"] if richest else 0.0
    seq = [_reduced(host)] + [r["formula"] for r in rows if r["li_per_host"] <= y_max + 1e-9]
    expected = [[a, b] for a, b in zip(seq, seq[1:])]
    model = [[_reduced(p["phases"][0]), _reduced(p["phases"][1])] for p in plateaus
             if p["y_start"] < y_max - 1e-9]
    return {
        "dft": dft_comparison(host, near_hull or []),
        "tolerance_meV_per_atom": round(1000 * tolerance, 3),
        "compounds": rows,
        "all_within_tolerance": bool(rows) and all(r["within_tolerance"] for r in rows),
        "li_richest_known": None if richest is None else richest["formula"],
        "li_richest_reached": None if richest is None else richest["within_tolerance"] is True,
        "expected_plateaus": expected,
        "model_plateaus": model,
        "plateaus_match": model == expected,
        "extra_stable": extra,
    }


def dft_comparison(host: str, near_hull: list[dict],
                   error_tolerance: float = DEFAULT_ERROR_TOLERANCE_MEV) -> dict | None:
    """The model's near-hull entries against their DFT checks (``near_hull`` rows of ``limace screen --verify-dft``);
    ``None`` when none was checked. Compounds only (the elements are the references of both hulls)."""
    errors = [(n["name"], n["dft_error_meV_per_atom"]) for n in near_hull
              if n.get("dft_error_meV_per_atom") is not None]
    if not errors:
        return None
    elemental = {_reduced("Li"), _reduced(host)}
    rows = [n for n in near_hull if _reduced(n["formula"]) not in elemental]
    model = {_reduced(n["formula"]) for n in rows if n["e_above_hull_eV_per_atom"] <= ON_HULL_EV}
    checked = [n for n in rows if n.get("dft_e_above_hull_eV_per_atom") is not None]
    model_checked = {_reduced(n["formula"]) for n in checked if n["e_above_hull_eV_per_atom"] <= ON_HULL_EV}
    dft = {_reduced(n["formula"]) for n in checked if n["dft_e_above_hull_eV_per_atom"] <= ON_HULL_EV}
    order = lambda fs: sorted(fs, key=_li_per_host)  # noqa: E731
    worst = max(errors, key=lambda e: abs(e[1]))
    outside = [{"name": n, "error_meV_per_atom": e} for n, e in errors if abs(e) > error_tolerance]
    unchecked = order(model - model_checked)
    return {"error_tolerance_meV_per_atom": error_tolerance,
            "n_near_hull": len(near_hull), "n_checked": len(errors),
            "n_within": len(errors) - len(outside), "outside": outside,
            "worst": {"name": worst[0], "error_meV_per_atom": worst[1]},
            "stable_both": order(model_checked & dft), "model_only": order(model_checked - dft),
            "dft_only": order(dft - model_checked), "model_stable_unchecked": unchecked,
            "same_stable": not unchecked and model_checked == dft}


def markdown_lines(check: dict) -> list[str]:
    """The report's section for one system."""
    tol = check["tolerance_meV_per_atom"]
    lines = [f"Known phases (experimental entries of the structure library) against the model's hull "
             f"(tolerance {tol:g} meV/atom):", "",
             "| compound | Li per host | structure | provenance | E above hull (meV/atom) | within | DFT E above hull "
             "(meV/atom) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    fmt = lambda v: "—" if v is None else f"{v:.1f}"  # noqa: E731
    for r in check["compounds"]:
        within = (("**" + r["absent"] + "**" if r.get("absent") else "not built") if r["within_tolerance"] is None
                  else ("yes" if r["within_tolerance"] else "**no**"))
        lines.append(f"| {r['formula']} | {r['li_per_host']:.3g} | {r['name'] or '—'} | {r['provenance'] or '—'} | "
                     f"{fmt(r['e_above_hull_meV_per_atom'])} | {within} | "
                     f"{fmt(r['dft_e_above_hull_meV_per_atom'])} |")
    arrow = lambda seq: ", ".join(f"{a}/{b}" for a, b in seq) or "none"  # noqa: E731
    lines += ["", f"Li-richest known compound: {check['li_richest_known']} "
                  f"({'reached' if check['li_richest_reached'] else '**not reached**'} within {tol:g} meV/atom).",
              f"Two-phase regions up to it, assessed: {arrow(check['expected_plateaus'])}; the model's voltage "
              f"curve: {arrow(check['model_plateaus'])} ({'same' if check['plateaus_match'] else '**different**'})."]
    if check["extra_stable"]:
        lines.append("Stable on the model's hull but not an assessed phase (check with `--verify-dft`): "
                     + ", ".join(f"{e['formula']} ({e['name']}, {e['source']})" for e in check["extra_stable"])
                     + ".")
    d = check.get("dft")
    if d:
        names = lambda fs: ", ".join(fs) or "none"  # noqa: E731
        lines += ["", f"DFT checks: {d['n_checked']} of {d['n_near_hull']} near-hull entries; model − DFT within "
                      f"±{d['error_tolerance_meV_per_atom']:g} meV/atom for {d['n_within']} (worst "
                      f"{d['worst']['name']}, {d['worst']['error_meV_per_atom']:+.1f})"
                      + ("; outside: " + ", ".join(f"{o['name']} ({o['error_meV_per_atom']:+.1f})"
                                                   for o in d["outside"]) if d["outside"] else "") + ".",
                  f"Stable compounds, model's hull against the DFT hull of the checked set "
                  f"({'same' if d['same_stable'] else '**different**'}): in both {names(d['stable_both'])}; "
                  f"model only {names(d['model_only'])}; DFT only {names(d['dft_only'])}"
                  + (f"; stable in the model, not yet checked: {names(d['model_stable_unchecked'])}"
                     if d["model_stable_unchecked"] else "") + "."]
    return lines + [""]
