"""``limace md CONFIG.yaml``: batched MD of many systems. Only typer is imported here; the rest inside the command.

The MD engine does not import the potentials: :func:`register` takes the two functions that deal with them (check a
potential name or path before any work, load a batched model), and the top-level CLI passes those of
:mod:`limace.potentials`.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Optional

import typer


def make_md_command(load_model: Callable[..., object], check_potential: Callable[[str], object]):
    """The ``limace md`` command, loading its potential with ``load_model`` (as
    :func:`limace.md.runner.run_config` takes it) after ``check_potential(spec)`` accepted the name or path."""

    def md(config: Path = typer.Argument(..., help="YAML run configuration (see limace.md.config.MDConfig)"),
           fresh: bool = typer.Option(False, "--fresh", help="ignore a checkpoint in output_dir and start again"),
           steps: Optional[int] = typer.Option(None, help="override the number of steps"),
           device: Optional[str] = typer.Option(None, help="override the device (cpu, cuda, cuda:1)"),
           progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="show a progress bar")):
        """Run MD of every structure in the config at once (NVE, NVT Langevin/NHC/CSVR, NPT); resumes from its
        checkpoint when run again."""
        _md(config, fresh, steps, device, progress, load_model, check_potential)

    return md


def _md(config, fresh, steps, device, progress, load_model, check_potential_spec):
    import dataclasses
    import json
    import re
    import sys

    from limace.core.errors import LimaceInputError, check_number
    from limace.core.fileio import check_output_path
    from limace.data.io import read_structures
    from limace.md.config import MDConfig

    # the config, the structures, the output directory and the potential are checked before any model is loaded
    cfg = MDConfig.from_yaml(config)
    check_number("--steps", steps, at_least=0)
    if device is not None and not re.fullmatch(r"cpu|cuda(:\d+)?|mps", device):
        raise LimaceInputError(f"--device must be cpu, cuda or cuda:N, not {device!r}")
    if progress is None:  # a progress bar only on a terminal (no kB-long \r lines in logs)
        progress = cfg.progress and sys.stderr.isatty()
    overrides = {k: v for k, v in (("steps", steps), ("device", device), ("progress", progress)) if v is not None}
    if overrides:
        cfg = dataclasses.replace(cfg, **overrides)
    for path in cfg.structures:
        read_structures(path, allowed_elements=None, require_periodic=False)
    check_output_path(cfg.output_dir, f"{config}: output_dir", directory=True)
    check_potential_spec(cfg.potential)
    from limace.md.runner import run_config

    result = run_config(cfg, restart=not fresh, load_model=load_model)
    typer.echo(json.dumps(result.as_dict()))
    for s in result.stopped:
        typer.echo(f"system {s.system} stopped at step {s.step}: {s.reason}", err=True)
    n = len(result.final)
    if n and len(result.stopped) == n:  # nothing ran to the end: a failed run, whatever the JSON says
        typer.echo(f"limace: md: all {n} systems were stopped (see {cfg.output_dir}/summary.json)", err=True)
        raise typer.Exit(1)


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
    from limace.md.diffusion import ArrheniusFit, analyze_run, save_plots

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


def register(app: typer.Typer, *, load_model: Callable[..., object], check_potential: Callable[[str], object]) -> None:
    """Add ``limace md`` (with the potential loader and checker given, see :func:`make_md_command`) and
    ``limace diffusion`` to the main app."""
    app.command("md")(make_md_command(load_model, check_potential))
    app.command("diffusion")(diffusion)
