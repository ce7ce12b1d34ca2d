"""``limace barriers`` (and, later, ``limace screen``). Heavy imports stay inside the commands."""

import re
import sys
from pathlib import Path
from typing import Optional

import typer

_STRUCTURE_SUFFIXES = (".extxyz", ".xyz", ".traj", ".cif", ".vasp", ".json", ".xml", ".pdb", ".gen", ".in")
_FORMULA = re.compile(r"(?:(?:Li|In|Sn)\d*)+")


def did_you_mean(value: str, choices, what: str, hint: str = "") -> str:
    """``unknown WHAT 'x' (did you mean 'y'?); HINT`` for an error line (difflib's closest of ``choices``)."""
    import difflib

    choices = list(dict.fromkeys(choices))
    close = difflib.get_close_matches(value, choices, n=3, cutoff=0.5)
    msg = f"unknown {what} {value!r}"
    if close:
        msg += f" (did you mean {' or '.join(repr(c) for c in close)}?)"
    elif len(choices) <= 8:
        msg += f"; choose from {', '.join(choices)}"
    return msg + (f"; {hint}" if hint else "")


def check_structure_specs(specs, option: str = "PHASES") -> None:
    """Each spec is a structure file (read and validated: finite positions, no overlapping atoms, a periodic cell,
    Li in it) or a buildable structure-library phase, checked before any model is loaded."""
    from limace.data.io import read_structures
    from limace.data.structures import list_phases
    from limace.core.errors import LimaceInputError

    phases = list_phases()
    by_name = {p.id: p for p in phases}
    for p in phases:
        if p.buildable:
            by_name.setdefault(p.formula, p)
    for spec in specs:
        path = Path(spec)
        if path.exists():
            frames = read_structures(path, allowed_elements=None)
            if not any("Li" in a.get_chemical_symbols() for a in frames):
                raise LimaceInputError(f"{spec}: has no Li, no Li hops to compute")
            continue
        if "/" in spec or spec.lower().endswith(_STRUCTURE_SUFFIXES):
            raise LimaceInputError(f"{spec}: no such structure file")
        p = by_name.get(spec)
        if p is None:
            raise LimaceInputError(did_you_mean(spec, list(by_name), f"phase in {option}",
                                                "give a structure file or a phase of `limace data phases`"))
        if not p.buildable:
            raise LimaceInputError(f"{spec}: phase {p.id} has no structure in the library (space group only); give a "
                                   "structure file")
        if "Li" not in re.findall(r"[A-Z][a-z]?", p.formula):
            raise LimaceInputError(f"{spec}: has no Li, no Li hops to compute")


def check_run_options(device: str, dtype: str) -> None:
    from limace.core.errors import LimaceInputError

    from limace.core.errors import check_dtype_name

    check_dtype_name(dtype, "--dtype")
    if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", device):
        raise LimaceInputError(f"--device must be cpu, cuda or cuda:N, not {device!r}")


def diffusion(runs: list[Path] = typer.Argument(..., help="output_dir(s) of limace md runs"),
              species: str = typer.Option("Li", help="species whose D and Arrhenius fit to report"),
              window: Optional[tuple[float, float]] = typer.Option(None, help="fit window of lag times, fs (2 numbers)"),
              out: Optional[Path] = typer.Option(None, help="where to write diffusion.json and PNGs (default: the "
                                                                 "first run's directory)")):
    """MSD and diffusion coefficients of every system of the runs; Arrhenius fit (Ea with 95 % CI) when there are
    two or more temperatures. Writes diffusion.json, msd.png and arrhenius.png."""
    import json
    import math

    from limace.core.errors import LimaceInputError
    from limace.core.fileio import check_output_path

    if window is not None:
        lo, hi = window
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo < 0 or not hi > lo:
            raise LimaceInputError(f"--window needs 0 <= start < end (fs, finite), got {lo:g} {hi:g}")
    for run in runs:
        if not run.is_dir():
            raise LimaceInputError(f"{run}: no such run directory" if not run.exists() else
                                   f"{run}: is a file; give the output_dir of a limace md run")
    check_output_path(out or runs[0], "--out", directory=True)
    from limace.analysis.diffusion import ArrheniusFit, analyze_run, save_plots

    analyses = []
    for run in runs:
        analyses += analyze_run(run, species=[species], window_fs=window)
    if not analyses:
        from limace.core.errors import ValidationError

        raise ValidationError(f"no trajectory with {species} in {', '.join(map(str, runs))}")
    fit = None
    temps = {a.temperature for a in analyses if a.temperature is not None}
    if len(temps) >= 2 and all(a.D[species] > 0 for a in analyses):
        fit = ArrheniusFit.from_analyses(analyses, species=species)
    dest = out or runs[0]
    save_plots(analyses, dest, species=species, arrhenius=fit)
    report = {"systems": [a.summary() for a in analyses], "arrhenius": fit.summary() if fit else None}
    (dest / "diffusion.json").write_text(json.dumps(report, indent=1) + "\n")
    for a in analyses:
        typer.echo(f"{a.label:12s} T={a.temperature} K  D_{species} = {a.D[species]:.3e} +- {a.D_err[species]:.1e} cm2/s")
    if fit:
        lo, hi = fit.Ea_ci
        typer.echo(f"Ea({species}) = {fit.Ea:.3f} eV, 95 % CI [{lo:.3f}, {hi:.3f}]")


def register(app: typer.Typer) -> None:
    """Add the analysis commands to the main ``limace`` app."""
    app.command("barriers")(barriers)
    app.command("screen")(screen)
    app.command("diffusion")(diffusion)


def barriers(phases: list[str] = typer.Argument(..., help="structure-library names (LiSn, Li13Sn5, Li, ...) or files"),
             potential: str = typer.Option(..., "--potential", "-p", help="registered potential name or .model path"),
             out: Optional[Path] = typer.Option(None, "--out", "-o", help="directory for barriers.json/.md and plots"),
             device: str = typer.Option("cpu", help="cpu or cuda"),
             dtype: str = typer.Option("float64", help="float64 or float32"),
             cutoff: float = typer.Option(3.6, help="longest Li-Li hop (A)"),
             min_image_distance: float = typer.Option(13.0, help="distance between vacancy images (A)"),
             n_images: int = typer.Option(5, help="NEB images between the endpoints"),
             fmax: float = typer.Option(0.03, help="NEB convergence: max force (eV/A)"),
             optimizer: str = typer.Option("lbfgs", help="NEB and endpoint-relaxation optimizer: lbfgs or fire"),
             max_steps: int = typer.Option(400, help="NEB steps before a hop is reported as not converged"),
             tight_fmax: float = typer.Option(0.01, help="NEB convergence of hops whose smaller barrier is below "
                                              "0.15 eV (eV/A)"),
             all_hops: bool = typer.Option(False, "--all-hops", help="NEB of every hop, not only those the "
                                           "percolation barriers need"),
             check_size: bool = typer.Option(False, "--check-size", help="recompute the percolating hops in the "
                                             "next larger supercell and report the change"),
             max_band_atoms: Optional[int] = typer.Option(None, help="atoms (images x atoms) of the NEB bands run "
                                                          "in one batch (default: all)"),
             recheck_images: int = typer.Option(9, help="a second NEB, from a fresh band of this many images, of "
                                                "each hop that sets a percolation barrier; the lower saddle is kept "
                                                "(0: off)"),
             plane_saddle: bool = typer.Option(True, "--plane-saddle/--no-plane-saddle", help="a hop whose "
                                               "dividing-plane minimum is a stationary point at the top of its path "
                                               "takes it as its saddle without an NEB (--no-plane-saddle: an NEB "
                                               "for every hop computed)"),
             verify_dft: bool = typer.Option(False, "--verify-dft", help="reference-protocol DFT single points of "
                                             "the endpoints and climbing image of every percolating hop (needs --out)"),
             dft_labels: Optional[Path] = typer.Option(None, help="--verify-dft labels file (resumable; default "
                                                       "OUT/dft_verify.extxyz)"),
             workers: int = typer.Option(1, help="--verify-dft: local worker processes"),
             scheduler: Optional[str] = typer.Option(None, help="--verify-dft: Dask scheduler address"),
             committee: Optional[str] = typer.Option(None, help="more potentials (comma-separated names or .model "
                                                     "paths, or 'shipped': the committee registered with -p): with "
                                                     "-p, a committee whose spread of each barrier is reported (the "
                                                     "NEBs run on -p alone; needs --out)")):
    """Li vacancy-hop barriers: distinct hops -> batched CI-NEB -> percolation; table, JSON and NEB plots.

    Resumable: with --out, phases already computed with the same settings and model file are not recomputed.
    """
    from limace.core.errors import LimaceInputError, check_number
    from limace.core.fileio import check_output_path
    from limace.potentials.registry import check_potential_spec

    # everything the user gave is checked before the model is loaded and any work starts
    check_number("--cutoff", cutoff, above=0)
    check_number("--min-image-distance", min_image_distance, above=0)
    check_number("--n-images", n_images, at_least=1)
    check_number("--fmax", fmax, above=0)
    check_number("--max-steps", max_steps, at_least=1)
    check_number("--tight-fmax", tight_fmax, above=0)
    check_number("--recheck-images", recheck_images, at_least=0)
    check_number("--workers", workers, at_least=1)
    if verify_dft and out is None:
        raise LimaceInputError("--verify-dft needs --out (the bands it checks are read from there)")
    if max_band_atoms is not None:
        check_number("--max-band-atoms", max_band_atoms, at_least=1)
    check_run_options(device, dtype)
    if out is not None:
        check_output_path(out, "--out", directory=True)
    check_structure_specs(phases)
    check_potential_spec(potential)
    members = _committee_members(committee, potential)
    if members and out is None:
        raise LimaceInputError("--committee needs --out (the bands it checks are read from there)")
    for m in members:
        check_potential_spec(m)
    from limace.core.optimize import OPTIMIZERS

    if optimizer not in OPTIMIZERS:
        raise LimaceInputError(did_you_mean(optimizer, OPTIMIZERS, "--optimizer"))
    from limace.analysis.barriers import BarrierSettings, markdown_table, run_barriers
    from limace.potentials import load_batched
    from limace.potentials.calculator import potential_sha256

    # with --committee the members are read together (checked against -p: elements, cutoff); the NEBs run on -p
    loaded = load_batched([potential, *members] if members else potential, device=device, dtype=dtype)
    model = loaded.members[0] if members else loaded
    settings = BarrierSettings(cutoff=cutoff, min_image_distance=min_image_distance, n_images=n_images, fmax=fmax,
                               optimizer=optimizer, max_steps=max_steps, tight_fmax=tight_fmax, all_hops=all_hops,
                               check_size=check_size, max_band_atoms=max_band_atoms,
                               recheck_images=recheck_images, plane_saddle=plane_saddle)
    report = run_barriers(phases, model, out=out, potential_name=potential, settings=settings,
                          potential_sha256=potential_sha256(potential), progress=sys.stderr.isatty(),
                          committee=loaded if members else None)
    if verify_dft:
        from limace.analysis.barriers import run_verify_dft

        labels = run_verify_dft(report, out, labels=dft_labels, workers=workers, scheduler=scheduler,
                                progress=sys.stderr.isatty())
        typer.echo(f"DFT labels: {labels}")
    typer.echo(markdown_table(report))
    if out is not None:
        typer.echo(f"wrote {out / 'barriers.json'}, {out / 'barriers.md'}, bands (extxyz) and NEB profile plots")


def screen(systems: list[str] = typer.Argument(..., help="Li-In and/or Li-Sn"),
           potential: str = typer.Option(..., "--potential", "-p", help="registered potential name or .model path"),
           out: Path = typer.Option(Path("screen-report"), "--out", "-o", help="report directory"),
           max_atoms: int = typer.Option(11, help="structure search: bcc orderings with up to this many atoms "
                                         "(fcc and bct: up to 8)"),
           prototypes: bool = typer.Option(True, help="structure search: decorate the library's prototypes"),
           max_library_atoms: Optional[int] = typer.Option(None, help="leave out library phases with more atoms per "
                                                           "primitive cell (a quick look; default: every phase)"),
           min_volume_ratio: float = typer.Option(0.7, help="keep off the hull relaxed cells denser than this x "
                                                  "Vegard's volume (a potential's hole)"),
           min_formation_energy: float = typer.Option(-1.0, help="keep off the hull relaxed cells below this "
                                                      "formation energy (eV/atom)"),
           barrier_phases: Optional[list[str]] = typer.Option(None, "--barrier-phase",
                                                              help="phases for barriers (default: stable ones)"),
           max_barrier_phases: Optional[int] = typer.Option(None, help="at most this many barrier phases per system"),
           max_barrier_atoms: int = typer.Option(256, help="skip phases whose vacancy supercell is larger"),
           min_image_distance: float = typer.Option(13.0, help="distance between vacancy images (A)"),
           n_images: int = typer.Option(5, help="NEB images"),
           neb_steps: int = typer.Option(400, help="NEB steps before a hop counts as not converged"),
           sn_reference: str = typer.Option("lowest", help="Sn reference: lowest, beta or alpha"),
           verify_dft: bool = typer.Option(False, "--verify-dft", help="DFT single points of near-hull structures "
                                           "(the references, then the hull's stable entries and the library's "
                                           "known phases, then entries the committee flags, then the rest; each "
                                           "group cheapest first)"),
           verify_limit: Optional[int] = typer.Option(None, help="--verify-dft: label at most this many new "
                                                      "structures in this run, per system (0: report the checks made "
                                                      "so far); a later run goes on"),
           verify_reuse: Optional[list[Path]] = typer.Option(None, "--verify-reuse", metavar="FILE",
                                                             help="--verify-dft: labelled "
                                                             "files (extxyz, same protocol) whose frame stands in for "
                                                             "a new single point when it is the same structure "
                                                             "(within 0.1 A and a strain of 1 %; the model's error "
                                                             "is then taken at that frame); repeatable"),
           workers: int = typer.Option(1, help="local worker processes for independent tasks"),
           scheduler: Optional[str] = typer.Option(None, help="Dask scheduler address (instead of local workers)"),
           device: str = typer.Option("cpu", help="cpu or cuda"),
           dtype: str = typer.Option("float64", help="float64 or float32"),
           committee: Optional[str] = typer.Option(None, help="more potentials (comma-separated names or .model "
                                                   "paths, or 'shipped': the committee registered with -p; default "
                                                   "'shipped' when -p ships one, 'none' to turn it off): with -p, "
                                                   "a committee whose spread of each hull entry and barrier is "
                                                   "reported and flagged (the work runs on -p)")):
    """Hull, voltage, structure search and Li barriers in one report (resumable: finished tasks are kept)."""
    from limace.analysis.hull import SN_REFERENCES, SYSTEMS
    from limace.core.errors import LimaceInputError, check_number
    from limace.core.fileio import check_output_path
    from limace.potentials.registry import check_potential_spec

    # everything the user gave is checked before the model is loaded and any work starts
    for system in systems:
        if system not in SYSTEMS:
            raise LimaceInputError(did_you_mean(system, SYSTEMS, "system"))
    systems = list(dict.fromkeys(systems))  # `limace screen Li-In Li-In` screens Li-In once
    if sn_reference not in SN_REFERENCES:
        raise LimaceInputError(did_you_mean(sn_reference, SN_REFERENCES, "--sn-reference"))
    check_number("--max-atoms", max_atoms, at_least=1)
    check_number("--min-volume-ratio", min_volume_ratio)  # finite here; the bounds are run_screen's first check
    check_number("--min-formation-energy", min_formation_energy)
    check_number("--max-barrier-phases", max_barrier_phases, at_least=0)
    check_number("--max-barrier-atoms", max_barrier_atoms, at_least=1)
    check_number("--max-library-atoms", max_library_atoms, at_least=1)
    check_number("--min-image-distance", min_image_distance, above=0)
    check_number("--n-images", n_images, at_least=1)
    check_number("--neb-steps", neb_steps, at_least=1)
    check_number("--workers", workers, at_least=1)
    check_number("--verify-limit", verify_limit, at_least=0)
    if verify_limit is not None and not verify_dft:
        raise LimaceInputError("--verify-limit works with --verify-dft")
    if verify_reuse and not verify_dft:
        raise LimaceInputError("--verify-reuse works with --verify-dft")
    for f in verify_reuse or ():
        _check_labels_file(f, "--verify-reuse")
    check_run_options(device, dtype)
    for name in barrier_phases or ():
        _check_barrier_phase(name, max_atoms)
    check_output_path(out, "--out", directory=True)
    check_potential_spec(potential)
    if committee is None:  # the potential's own committee when it ships one (it costs a few per cent here)
        from limace.potentials.registry import registered_committee

        members = list(registered_committee(potential))
    elif committee.strip().lower() == "none":
        members = []
    else:
        members = _committee_members(committee, potential)
    for m in members:
        check_potential_spec(m)
    from limace.analysis.barriers import BarrierSettings
    from limace.analysis.screen import ScreenSettings, run_screen
    from limace.analysis.search import SearchSettings

    settings = ScreenSettings(
        search=SearchSettings(max_atoms=max_atoms, prototypes=prototypes, min_volume_ratio=min_volume_ratio,
                              min_formation_energy=min_formation_energy, max_library_atoms=max_library_atoms),
        barriers=BarrierSettings(min_image_distance=min_image_distance, n_images=n_images, max_steps=neb_steps),
        barrier_phases=tuple(barrier_phases) if barrier_phases else None, max_barrier_phases=max_barrier_phases,
        max_barrier_atoms=max_barrier_atoms, sn_reference=sn_reference, verify_dft=verify_dft,
        verify_limit=verify_limit, verify_reuse=tuple(str(f) for f in verify_reuse or ()), committee=tuple(members))
    results = run_screen(systems, potential, out, settings, workers=workers, scheduler=scheduler, device=device,
                         dtype=dtype, progress=sys.stderr.isatty())  # progress bars only on a terminal
    for s, r in results["systems"].items():
        typer.echo(f"{s}: stable {', '.join(r['stable'])}; average voltage {_fmt(r['voltage']['average_V'], 3)} V")
    typer.echo(f"report: {(out / 'report.md').resolve()}")


def _committee_members(committee: Optional[str], potential: str) -> list[str]:
    """``--committee``'s comma-separated potentials, ``shipped`` replaced by the committee registered with
    ``potential``; none given: []."""
    from limace.core.errors import LimaceInputError
    from limace.potentials.registry import expand_committee

    if committee is None:
        return []
    members = [c.strip() for c in committee.split(",") if c.strip()]
    if not members:
        raise LimaceInputError("--committee: give one or more potentials, comma-separated")
    return expand_committee(members, potential)


def _fmt(value, digits: int) -> str:
    """A number at ``digits`` decimals for a summary line (``0.480``); anything else as it is."""
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def _check_labels_file(path: Path, option: str) -> None:
    """A labelled extxyz file a user passed (``limace: error: ...`` if it is missing, unreadable or unlabelled)."""
    from limace.core.errors import ValidationError
    from limace.data.io import read_configurations

    try:
        read_configurations(path, labelled=True)
    except ValidationError as exc:
        raise ValidationError(f"{option}: {exc}") from None


def _check_barrier_phase(name: str, max_atoms: int) -> None:
    """A ``--barrier-phase``: a library phase or formula (also with In and Sn swapped, as the prototype search makes
    them), the formula of an ordering the search can make (``max_atoms`` atoms at most), or a structure-search name
    (``LiSn-type-...``, ``PARENT-K-FORMULA``); anything else is a typo, refused at once with the closest names."""
    from limace.data.structures import list_phases
    from limace.core.errors import LimaceInputError

    phases = list_phases()
    swap = {"In": "Sn", "Sn": "In"}
    formulas = {p.formula for p in phases}
    formulas |= {re.sub(r"In|Sn", lambda m: swap[m.group()], f) for f in formulas}
    known = [p.id for p in phases] + sorted(formulas)
    if name in known or re.fullmatch(r".+-(type|\d+)-(?:(?:Li|In|Sn)\d*)+", name):
        return
    if _FORMULA.fullmatch(name) and sum(int(n or 1) for n in re.findall(r"[A-Z][a-z]?(\d*)", name)) <= max_atoms:
        return
    raise LimaceInputError(did_you_mean(name, known, "--barrier-phase",
                                        "give a phase of `limace data phases`, a formula, or a search name"))
