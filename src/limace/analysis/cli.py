"""``limace barriers`` (and, later, ``limace screen``). Heavy imports stay inside the commands."""

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    """Add the analysis commands to the main ``limace`` app."""
    app.command("barriers")(barriers)
    app.command("screen")(screen)


def barriers(phases: list[str] = typer.Argument(..., help="structure-library names (LiSn, Li13Sn5, Li, ...) or files"),
             potential: str = typer.Option(..., "--potential", "-p", help="registered potential name or .model path"),
             out: Optional[Path] = typer.Option(None, "--out", "-o", help="directory for barriers.json/.md and plots"),
             device: str = typer.Option("cpu", help="cpu or cuda"),
             dtype: str = typer.Option("float64", help="float64 or float32"),
             cutoff: float = typer.Option(3.6, help="longest Li-Li hop (A)"),
             min_image_distance: float = typer.Option(9.0, help="distance between vacancy images (A)"),
             n_images: int = typer.Option(5, help="NEB images between the endpoints"),
             fmax: float = typer.Option(0.03, help="NEB convergence: max force (eV/A)"),
             optimizer: str = typer.Option("lbfgs", help="NEB and endpoint-relaxation optimizer: lbfgs or fire"),
             max_steps: int = typer.Option(400, help="NEB steps before a hop is reported as not converged")):
    """Li vacancy-hop barriers: distinct hops -> batched CI-NEB -> percolation; table, JSON and NEB plots.

    Resumable: with --out, phases already computed with the same settings and model file are not recomputed.
    """
    from limace.analysis.barriers import BarrierSettings, markdown_table, run_barriers, resolve_phase
    from limace.potentials import load
    from limace.potentials.calculator import potential_sha256

    from limace.analysis.neb import OPTIMIZERS
    from limace.errors import LimaceInputError

    if optimizer not in OPTIMIZERS:
        raise LimaceInputError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    for spec in phases:  # bad names fail before the model is loaded
        resolve_phase(spec)
    model = load(potential, device=device, dtype=dtype, batched=True)
    settings = BarrierSettings(cutoff=cutoff, min_image_distance=min_image_distance, n_images=n_images, fmax=fmax,
                               optimizer=optimizer, max_steps=max_steps)
    report = run_barriers(phases, model, out=out, potential_name=potential, settings=settings,
                          potential_sha256=potential_sha256(potential))
    typer.echo(markdown_table(report))
    if out is not None:
        typer.echo(f"wrote {out / 'barriers.json'}, {out / 'barriers.md'} and NEB profile plots")


def screen(systems: list[str] = typer.Argument(..., help="Li-In and/or Li-Sn"),
           potential: str = typer.Option(..., "--potential", "-p", help="registered potential name or .model path"),
           out: Path = typer.Option(Path("screen-report"), "--out", "-o", help="report directory"),
           max_atoms: int = typer.Option(4, help="structure search: orderings with up to this many atoms"),
           prototypes: bool = typer.Option(True, help="structure search: decorate the library's prototypes"),
           min_volume_ratio: float = typer.Option(0.7, help="keep off the hull relaxed cells denser than this x "
                                                  "Vegard's volume (a potential's hole)"),
           min_formation_energy: float = typer.Option(-1.0, help="keep off the hull relaxed cells below this "
                                                      "formation energy (eV/atom)"),
           barrier_phases: Optional[list[str]] = typer.Option(None, "--barrier-phase",
                                                              help="phases for barriers (default: stable ones)"),
           max_barrier_phases: Optional[int] = typer.Option(None, help="at most this many barrier phases per system"),
           max_barrier_atoms: int = typer.Option(160, help="skip phases whose vacancy supercell is larger"),
           min_image_distance: float = typer.Option(9.0, help="distance between vacancy images (A)"),
           n_images: int = typer.Option(5, help="NEB images"),
           neb_steps: int = typer.Option(400, help="NEB steps before a hop counts as not converged"),
           sn_reference: str = typer.Option("lowest", help="Sn reference: lowest, beta or alpha"),
           verify_dft: bool = typer.Option(False, "--verify-dft", help="DFT single points of near-hull structures"),
           workers: int = typer.Option(1, help="local worker processes for independent tasks"),
           scheduler: Optional[str] = typer.Option(None, help="Dask scheduler address (instead of local workers)"),
           device: str = typer.Option("cpu", help="cpu or cuda"),
           dtype: str = typer.Option("float64", help="float64 or float32")):
    """Hull, voltage, structure search and Li barriers in one report (resumable: finished tasks are kept)."""
    from limace.analysis.barriers import BarrierSettings
    from limace.analysis.screen import ScreenSettings, run_screen
    from limace.analysis.search import SearchSettings

    settings = ScreenSettings(
        search=SearchSettings(max_atoms=max_atoms, prototypes=prototypes, min_volume_ratio=min_volume_ratio,
                              min_formation_energy=min_formation_energy),
        barriers=BarrierSettings(min_image_distance=min_image_distance, n_images=n_images, max_steps=neb_steps),
        barrier_phases=tuple(barrier_phases) if barrier_phases else None, max_barrier_phases=max_barrier_phases,
        max_barrier_atoms=max_barrier_atoms, sn_reference=sn_reference, verify_dft=verify_dft)
    results = run_screen(systems, potential, out, settings, workers=workers, scheduler=scheduler, device=device,
                         dtype=dtype)
    for s, r in results["systems"].items():
        typer.echo(f"{s}: stable {', '.join(r['stable'])}; average voltage {r['voltage']['average_V']} V")
    typer.echo(f"report: {(out / 'report.md').resolve()}")
