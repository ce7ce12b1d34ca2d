"""``limace barriers`` (and, later, ``limace screen``). Heavy imports stay inside the commands."""

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    """Add the analysis commands to the main ``limace`` app."""
    app.command("barriers")(barriers)


def barriers(phases: list[str] = typer.Argument(..., help="structure-library names (LiSn, Li13Sn5, Li, ...) or files"),
             potential: str = typer.Option(..., "--potential", "-p", help="registered potential name or .model path"),
             out: Optional[Path] = typer.Option(None, "--out", "-o", help="directory for barriers.json/.md and plots"),
             device: str = typer.Option("cpu", help="cpu or cuda"),
             dtype: str = typer.Option("float64", help="float64 or float32"),
             cutoff: float = typer.Option(3.6, help="longest Li-Li hop (A)"),
             min_image_distance: float = typer.Option(9.0, help="distance between vacancy images (A)"),
             n_images: int = typer.Option(5, help="NEB images between the endpoints"),
             fmax: float = typer.Option(0.03, help="NEB convergence: max force (eV/A)"),
             max_steps: int = typer.Option(400, help="NEB steps before a hop is reported as not converged")):
    """Li vacancy-hop barriers: distinct hops -> batched CI-NEB -> percolation; table, JSON and NEB plots.

    Resumable: with --out, phases already computed with the same settings are not recomputed.
    """
    from limace.analysis.barriers import BarrierSettings, markdown_table, run_barriers, resolve_phase
    from limace.potentials import load

    for spec in phases:  # bad names fail before the model is loaded
        resolve_phase(spec)
    model = load(potential, device=device, dtype=dtype, batched=True)
    settings = BarrierSettings(cutoff=cutoff, min_image_distance=min_image_distance, n_images=n_images, fmax=fmax,
                               max_steps=max_steps)
    report = run_barriers(phases, model, out=out, potential_name=potential, settings=settings)
    typer.echo(markdown_table(report))
    if out is not None:
        typer.echo(f"wrote {out / 'barriers.json'}, {out / 'barriers.md'} and NEB profile plots")
