"""``limace potentials ...``: list, info and fetch registered potentials. Heavy imports stay inside the commands."""

import typer

potentials_app = typer.Typer(help="Pretrained potentials: list, info, fetch (download the weights into the cache).",
                             no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the ``potentials`` sub-commands to the main ``limace`` app."""
    app.add_typer(potentials_app, name="potentials")


# registry metric key -> (short label, unit) for the compact metrics column
_METRICS = {"energy_mae_mev_per_atom": ("E", "meV/atom"), "forces_mae_mev_per_a": ("F", "meV/A"),
            "stress_mae_gpa": ("S", "GPa")}


def _num(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _metrics_short(metrics: dict) -> str:
    """``E 2.9 meV/atom, F 12.3 meV/A, S 1.19 GPa MAE (test, 125)``: the MAEs, the split and its size; any other
    key as key=value."""
    if not metrics:
        return "-"
    parts = [f"{label} {_num(metrics[k])} {unit}" for k, (label, unit) in _METRICS.items() if k in metrics]
    where = ", ".join(str(metrics[k]) for k in ("split", "n_configs") if k in metrics)
    text = ", ".join(parts) + (" MAE" if parts else "") + (f" ({where})" if where else "")
    skip = set(_METRICS) | {"split", "n_configs"} | {k.replace("_mae_", "_rmse_") for k in _METRICS}
    extra = []
    if "extrapolation_energy_mae_mev_per_atom" in metrics:  # the extrapolation set, compactly
        ext = f"extrapolation E {_num(metrics['extrapolation_energy_mae_mev_per_atom'])} meV/atom"
        if "extrapolation_energy_max_mev_per_atom" in metrics:
            ext += f" (max {_num(metrics['extrapolation_energy_max_mev_per_atom'])})"
        if "extrapolation_n_configs" in metrics:
            ext += f" on {metrics['extrapolation_n_configs']}"
        extra.append(ext)
    skip |= {k for k in metrics if k.startswith("extrapolation_")} | {"domain_threshold"}
    rest = [f"{k}={_num(v)}" for k, v in metrics.items() if k not in skip]
    return "; ".join(p for p in (text.strip(), *extra, *rest) if p) or "-"


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
    import sys

    member_of: dict[str, list[str]] = {}
    for e in entries:
        for m in e.committee:
            member_of.setdefault(m, []).append(e.name)

    def committee(e) -> str:  # its own committee (`--committee shipped`), or whose committees it belongs to
        if e.committee:
            return f"{len(e.committee)} members"
        return f"member of {', '.join(member_of[e.name])}" if e.name in member_of else "-"

    cols = ("name", "version", "use", "elements", "DFT", "dataset", "test metrics", "committee", "license", "weights",
            "registry")
    rows = [(e.name, e.version, e.use or "-", " ".join(e.elements), e.dft_protocol or "-",
             (e.dataset or {}).get("name", "-"), _metrics_short(e.metrics), committee(e), e.license, _where(e),
             "shipped" if e.source == "limace" else e.source)
            for e in entries]
    from rich.console import Console
    from rich.table import Table

    widths = [max(len(str(r[i])) for r in (cols, *rows)) for i in range(len(cols))]
    # a pipe, a file or a terminal too narrow for the table: plain rows, one per potential, nothing wrapped or cut
    if not sys.stdout.isatty() or Console().width < sum(widths) + 3 * len(cols) + 1:
        for r in (cols, *rows):
            typer.echo("  ".join(f"{str(v):{w}s}" for v, w in zip(r[:-1], widths)) + "  " + str(r[-1]))
        if sys.stdout.isatty():
            typer.echo(f"cache: {cache_dir() / 'potentials'}")
        return

    table = Table(title="limace potentials")
    for col in cols:
        table.add_column(col, no_wrap=col == "name", overflow="fold")
    for r in rows:
        table.add_row(*r)
    Console().print(table)
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

    import sys

    for name in names:
        path = fetch(name, offline=offline or None, progress=sys.stderr.isatty())
        typer.echo(f"{name}: {path}")
