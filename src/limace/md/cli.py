"""``limace md CONFIG.yaml``: batched MD of many systems. Only typer is imported here; the rest inside the command."""

from pathlib import Path
from typing import Optional

import typer


def md(config: Path = typer.Argument(..., help="YAML run configuration (see limace.md.config.MDConfig)"),
       fresh: bool = typer.Option(False, "--fresh", help="ignore a checkpoint in output_dir and start again"),
       steps: Optional[int] = typer.Option(None, help="override the number of steps"),
       device: Optional[str] = typer.Option(None, help="override the device (cpu, cuda, cuda:1)"),
       progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="show a progress bar")):
    """Run MD of every structure in the config at once (NVE, NVT Langevin/NHC/CSVR, NPT); resumes from its
    checkpoint when run again."""
    import dataclasses
    import json

    from limace.md.config import MDConfig
    from limace.md.runner import run_config

    cfg = MDConfig.from_yaml(config)
    overrides = {k: v for k, v in (("steps", steps), ("device", device), ("progress", progress)) if v is not None}
    if overrides:
        cfg = dataclasses.replace(cfg, **overrides)
    result = run_config(cfg, restart=not fresh)
    typer.echo(json.dumps(result.as_dict()))
    for s in result.stopped:
        typer.echo(f"system {s.system} stopped at step {s.step}: {s.reason}", err=True)


def register(app: typer.Typer) -> None:
    """Add ``limace md`` to the main app."""
    app.command("md")(md)
