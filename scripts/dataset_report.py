"""Write docs/dataset.md for a shipped dataset: counts by config_type and composition, the label-consistency check
(equal structures, equal energies per atom) and the formation energies of its phases from its own elemental
references. Run after `limace data pack` (`make dataset` does both).

    python scripts/dataset_report.py [li-in-sn-v1]
"""

import sys
from collections import Counter
from pathlib import Path

from limace.analysis.hull import dataset_formation_energies
from limace.data.consistency import equal_structure_groups, fit_pulay_stress, pressure_consistency
from limace.data.datasets import load_dataset, manifest
from limace.data.io import composition_label


def main(name: str = "li-in-sn-v1") -> None:
    man = manifest(name)
    frames = load_dataset(name)
    lines = [f"# Dataset `{name}`", "",
             f"{man['n_configs']} configurations labelled at the reference protocol `{man['protocol']['name']}` "
             f"({man['protocol']['description']}); code versions {man['code_versions']}. "
             f"Train {man['counts']['train']['n']}, held-out test {man['counts']['test']['n']} "
             f"({man['split_rule']}). {sum(len(a) >= 12 for a in frames)} configurations have >= 12 atoms.", "",
             *[f"Frozen test split `{tag}` ({fz['n']} configurations, {fz['frozen']}): {fz['rule']}.\n" for tag, fz
               in man.get("frozen", {}).items()],
             *([f"Extrapolation split ({man['files']['extrapolation']['n']} configurations, `{name}:extrapolation`): "
                "drawn by rules fixed before labelling (limace.data.extrapolation), never trained on; "
                "not counted above."] if "extrapolation" in man["files"] else []), "",
             "## Counts by config_type", "", "| config_type | train | test |", "| --- | --- | --- |"]
    for t, n in man["counts"]["all"]["config_type"].items():
        lines.append(f"| {t} | {man['counts']['train']['config_type'].get(t, 0)} | "
                     f"{man['counts']['test']['config_type'].get(t, 0)} |")
    lines += ["", "## Counts by composition", "", "| composition | x_Li | configurations |", "| --- | --- | --- |"]
    comp = Counter(composition_label(a) for a in frames)
    xli = {composition_label(a): a.get_chemical_symbols().count("Li") / len(a) for a in frames}
    for c in sorted(comp, key=lambda c: (xli[c], c)):
        lines.append(f"| {c} | {xli[c]:.3f} | {comp[c]} |")
    lines += ["", "## Consistency: equal structures, equal energies", "",
              "Undistorted configurations that are the same crystal in different cells (StructureMatcher, no scaling):",
              "", "| formula | cells (atoms) | spread (meV/atom) |", "| --- | --- | --- |"]
    groups = equal_structure_groups(frames)
    for g in groups:
        lines.append(f"| {g['formula']} | {', '.join(map(str, g['sizes']))} | {g['spread_meV_per_atom']:.2f} |")
    if not groups:
        lines.append("| (no repeated structure yet) | | |")
    lines += ["", "## Consistency: stress labels against the energies", "",
              "Per phase, the pressure -dE/dV of a polynomial through the labelled energies of its equilibrium and "
              "isotropically strained cells against the pressure -tr(stress)/3 of the stress labels "
              "(`limace.data.consistency.pressure_consistency`). A constant offset is a Pulay stress of the "
              "fixed plane-wave cutoff: those stress labels contradict the energies a potential learns.", "",
              "| phase | formula | cells | offset (GPa) | spread (GPa) |", "| --- | --- | --- | --- | --- |"]
    for r in pressure_consistency(frames):
        lines.append(f"| {r['phase']} | {r['formula']} | {r['n']} | {r['offset_GPa']:+.2f} | {r['spread_GPa']:.2f} |")
    fit = fit_pulay_stress(load_dataset(name, "train"))
    lines += ["", "One value per element, weighted by atom fraction, describes the alloys (LiSn, Li7Sn2 and Li13Sn5 sit "
              "at the Sn value times their Sn fraction). Fitted on the train split (`fit_pulay_stress`): "
              + ", ".join(f"{el} {v:+.2f} GPa" for el, v in sorted(fit.items()))
              + ". Training with `data.stress_offset: fit` (the `small` recipe) removes it from the training and "
              "validation stress labels, so the stress a potential learns is -dE/dV of the energies it learns; "
              "`limace evaluate` compares with the labels as computed."]
    for system in ("Li-In", "Li-Sn"):
        lines += ["", f"## Formation energies, {system} (DFT, the dataset's own elemental references)", ""]
        try:
            hull = dataset_formation_energies(frames, system)
        except Exception as exc:  # a system whose references are not labelled yet
            lines.append(f"Not available yet: {exc}")
            continue
        summ = hull.summary()
        refs = ", ".join(f"{el}: {r['name']}" for el, r in summ["references"].items())
        lines += [f"References: {refs}.", "",
                  "| structure | formula | x_Li | E_f (meV/atom) | E above hull (meV/atom) |", "| --- | --- | --- | --- | --- |"]
        for r in summ["hull"]:
            lines.append(f"| {r['name']} | {r['formula']} | {r['x_Li']:.3f} | {1000 * r['formation_energy_eV_per_atom']:.1f} | "
                         f"{1000 * r['e_above_hull_eV_per_atom']:.1f} |")
    out = Path(__file__).resolve().parents[1] / "docs" / "dataset.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
