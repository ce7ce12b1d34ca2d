"""``limace potentials ...``: list, info and fetch registered potentials. Heavy imports stay inside the commands."""

import typer

potentials_app = typer.Typer(help="Pretrained potentials: list, show, download into the cache.",
                             no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the ``potentials`` sub-commands to the main ``limace`` app."""
    app.add_typer(potentials_app, name="potentials")


def _metrics_short(metrics: dict) -> str:
    return "\n".join(f"{k}={v}" for k, v in metrics.items()) if metrics else "-"


def _where(entry) -> str:
    w = entry.weights
    if w.file is not None and w.file.is_file():
        return "bundled" if entry.source == "limace" else "local file"
    if entry.cache_path.is_file():
        return "cached"
    return "download"


@potentials_app.command("list")
def potentials_list(as_json: bool = typer.Option(False, "--json", help="print JSON"),
                    offline: bool = typer.Option(False, "--offline", help="do not fetch remote registries")):
    """The registered potentials as a table (shipped, plus those of LIMACE_REGISTRY)."""
    import json

    from limace.potentials.registry import REGISTRY_ENV, cache_dir, list_potentials

    entries = list_potentials(offline=offline or None)
    if as_json:
        typer.echo(json.dumps([e.as_dict() | {"weights_at": _where(e)} for e in entries], indent=1))
        return
    if not entries:
        typer.echo(f"no potentials registered yet; set {REGISTRY_ENV} to a lab registry, or load a .model path")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="limace potentials")
    for col in ("name", "version", "elements", "DFT", "dataset", "test metrics", "license", "weights", "registry"):
        table.add_column(col, overflow="fold")
    for e in entries:
        table.add_row(e.name, e.version, " ".join(e.elements), e.dft_protocol or "-",
                      (e.dataset or {}).get("name", "-"), _metrics_short(e.metrics), e.license, _where(e),
                      "shipped" if e.source == "limace" else e.source)
    Console(width=max(120, Console().width)).print(table)
    typer.echo(f"cache: {cache_dir() / 'potentials'}")


@potentials_app.command("info")
def potentials_info(name: str = typer.Argument(..., help="registry name"),
                    as_json: bool = typer.Option(False, "--json", help="print JSON"),
                    offline: bool = typer.Option(False, "--offline", help="do not fetch remote registries")):
    """Everything the registry says about one potential, and where its weights are."""
    import json

    from limace.potentials.registry import get_potential

    entry = get_potential(name, offline=offline or None)
    d = entry.as_dict()
    d["cache_path"] = str(entry.cache_path)
    d["weights_at"] = _where(entry)
    if as_json:
        typer.echo(json.dumps(d, indent=1))
        return
    for key, val in d.items():
        if isinstance(val, dict):
            typer.echo(f"{key}:")
            for k, v in val.items():
                if v is not None:
                    typer.echo(f"  {k}: {v}")
        elif isinstance(val, list):
            typer.echo(f"{key}: {', '.join(map(str, val))}")
        elif val is not None:
            typer.echo(f"{key}: {val}")


@potentials_app.command("fetch")
def potentials_fetch(names: list[str] = typer.Argument(..., help="registry names"),
                     offline: bool = typer.Option(False, "--offline", help="only verify the cached copies")):
    """Download (or verify) the weights into the cache, e.g. on a login node before offline compute jobs."""
    from limace.potentials.registry import fetch

    for name in names:
        path = fetch(name, offline=offline or None)
        typer.echo(f"{name}: {path}")
