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
    for spec in (cfg.potential, *cfg.committee):
        if spec != "shipped":  # the committee registered with the potential, read when the model is loaded
            check_potential_spec(spec)
    from limace.md.runner import run_config

    result = run_config(cfg, restart=not fresh, load_model=load_model)
    typer.echo(json.dumps(result.as_dict()))
    for s in result.stopped:
        typer.echo(f"system {s.system} stopped at step {s.step}: {s.reason}", err=True)
    n = len(result.final)
    if n and len(result.stopped) == n:  # nothing ran to the end: a failed run, whatever the JSON says
        typer.echo(f"limace: md: all {n} systems were stopped (see {cfg.output_dir}/summary.json)", err=True)
        raise typer.Exit(1)


def register(app: typer.Typer, *, load_model: Callable[..., object], check_potential: Callable[[str], object]) -> None:
    """Add ``limace md`` (with the potential loader and checker given, see :func:`make_md_command`) to the main
    app (``limace diffusion``, the analysis of its runs, lives in :mod:`limace.analysis.cli`)."""
    app.command("md")(make_md_command(load_model, check_potential))
