"""The ``limace`` command line. Imports of heavy packages happen inside the commands so ``--help`` is instant.

User mistakes (:class:`limace.core.errors.LimaceInputError`) print one line ``limace: error: ...`` and exit with 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from limace import __version__

app = typer.Typer(help="limace: MACE potentials for Li-In and Li-Sn alloy anodes.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Structures, configurations, DFT labels and datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _version(value: bool):
    if value:
        typer.echo(f"limace {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Show the version and exit.")):
    pass


@app.command("demo")
def demo(out: Optional[Path] = typer.Option(None, help="output directory (default limace-demo/)"),
         workers: int = typer.Option(2, help="worker processes"),
         pipeline: bool = typer.Option(False, "--pipeline", help="run the DFT data pipeline on a tiny example instead")):
    """Run the main job (a reduced screen with the shipped potential) and say where the report is."""
    from limace.core.errors import check_number
    from limace.core.fileio import check_output_path

    check_number("--workers", workers, at_least=1)
    check_output_path(out or Path("limace-demo-data" if pipeline else "limace-demo"), "--out", directory=True)
    from limace.demo import run_pipeline_demo, run_screen_demo

    if pipeline:
        run_pipeline_demo(out or Path("limace-demo-data"), workers=workers)
    else:
        run_screen_demo(out or Path("limace-demo"), workers=workers)


@app.command("learn")
def learn_cmd(config: Path = typer.Argument(..., help="active-learning YAML (see examples/learn.yaml)")):
    """Active learning: explore -> select by committee disagreement -> label -> fine-tune -> evaluate -> register,
    for the configured number of rounds; resumes after a kill. Prints the summary as JSON."""
    from limace.learn import learn, load_learn_config

    cfg = load_learn_config(config)
    from limace.core.fileio import check_output_path

    check_output_path(cfg.run_dir, "run_dir", directory=True)
    summary = learn(cfg, log=lambda m: typer.echo(m, err=True), progress=sys.stderr.isatty())  # bars: terminal only
    typer.echo(json.dumps(summary, indent=1))


# -- data ------------------------------------------------------------------------------------------------------------


@data_app.command("phases")
def data_phases(system: Optional[str] = typer.Option(None, help="Li-In, Li-Sn or element")):
    """List the structure library: id, formula, space group, atoms (conventional/primitive) and provenance
    (refined / isotypic prototype / model-built, or space group only when not built); docs/phases.md has the sources."""
    from limace.data.structures import list_phases

    typer.echo(f"{'id':14s} {'formula':9s} {'system':7s} {'space group':26s} {'atoms':8s} provenance")
    for p in list_phases(system=system):
        n = f"{p.natoms_conv or '-'}/{p.natoms_prim or '-'}"
        sg = str(p.spacegroup_symbol or "?")
        sg = sg if len(sg) <= 26 else sg[:25] + "~"
        typer.echo(f"{p.id:14s} {p.formula:9s} {p.system:7s} {sg:26s} {n:8s} {p.provenance_label}")


@data_app.command("plan")
def data_plan(out: Path = typer.Argument(..., help="extxyz file to write the unlabelled configurations to"),
              seed: int = typer.Option(20261128, help="seed of every generator")):
    """Write the configurations of dataset li-in-sn-v1 (unlabelled, cheapest first) to OUT."""
    import io

    from ase.io import write

    from limace.core.errors import check_number
    from limace.core.fileio import atomic_write_text, check_output_path

    check_number("--seed", seed, at_least=0, at_most=2**63 - 1)
    check_output_path(out, "OUT")
    from limace.data.plan import cheapest_first, plan_v1

    configs = cheapest_first(plan_v1(seed=seed))  # the labelling job works through them in this order
    buf = io.StringIO()
    write(buf, configs, format="extxyz")
    atomic_write_text(out, buf.getvalue())  # no stray temporary file if the rename fails
    typer.echo(f"{len(configs)} configurations -> {out}")


@data_app.command("label")
def data_label(inp: Path = typer.Argument(..., help="configurations to label (extxyz, traj, ...)"),
               out: Path = typer.Argument(..., help="labelled extxyz (appended atomically; resumable)"),
               protocol: str = typer.Option("pbe-pw400", help="labelling protocol (pbe-pw400 = the reference DFT)"),
               workers: int = typer.Option(1, help="local worker processes (one per core)"),
               scheduler: Optional[str] = typer.Option(None, help="Dask scheduler address, e.g. tcp://host:8786"),
               limit: Optional[int] = typer.Option(None, help="label at most this many now"),
               retry_failed: bool = typer.Option(False, help="retry configurations recorded as failed"),
               smallest_first: bool = typer.Option(False, help="label the smallest cells first (a job stopped "
                                                   "early has labelled the most configurations)"),
               log_dir: Optional[Path] = typer.Option(None, help="write each calculation's own log (GPAW's SCF "
                                                      "iterations) to LOG_DIR/CONFIG_ID.txt")):
    """Label configurations with DFT (or another protocol); skips those already in OUT."""
    from limace.core.errors import LimaceInputError, check_number
    from limace.core.fileio import check_output_path

    check_number("--workers", workers, at_least=1)
    check_number("--limit", limit, at_least=0)
    check_output_path(out, "OUT")
    if inp.exists() and out.exists() and inp.resolve() == out.resolve():
        raise LimaceInputError(f"{out}: OUT is the input file; write the labels to another file")
    from limace.data.label import failure_path, get_protocol, label_file

    get_protocol(protocol)  # an unknown protocol fails before the configurations are read

    rep = label_file(inp, out, protocol=protocol, workers=workers, scheduler=scheduler, limit=limit,
                     retry_failed=retry_failed, progress=sys.stderr.isatty(),  # progress bar only on a terminal
                     log_dir=log_dir, smallest_first=smallest_first)
    typer.echo(json.dumps(rep.as_dict()))
    if rep.failed:
        typer.echo(f"{rep.failed} failure(s) recorded in {failure_path(out)}", err=True)


@data_app.command("info")
def data_info(target: str = typer.Argument("li-in-sn-v1", help="a data file, or the name of a shipped dataset"),
              as_json: bool = typer.Option(False, "--json", help="print JSON")):
    """Counts per element / config_type / composition / size, and label statistics (of a labelled file; a file of
    structures still to be labelled gets the counts)."""
    from limace.data.io import read_configurations, summarize

    if Path(target).exists():
        frames = read_configurations(target, labelled=False)  # labels are checked where present
        summary = summarize(frames)
        header = str(target)
    else:
        from limace.data.datasets import dataset_info

        summary = dataset_info(target)
        header = f"dataset {target}"
    if as_json:
        typer.echo(json.dumps(summary, indent=1))
        return
    typer.echo(header)

    def show(key, val, indent: int) -> None:  # nested mappings indented; floats at 5 significant digits
        pad = "  " * indent
        if isinstance(val, dict) and all(not isinstance(v, dict) for v in val.values()) and len(val) > 6:
            typer.echo(f"{pad}{key}: " + ", ".join(f"{k} {show_num(v)}" for k, v in val.items()))
        elif isinstance(val, dict):
            typer.echo(f"{pad}{key}:")
            for k, v in val.items():
                show(k, v, indent + 1)
        else:
            typer.echo(f"{pad}{key}: {show_num(val)}")

    def show_num(v):  # --json keeps every digit
        return f"{v:.5g}" if isinstance(v, float) else v

    for key, val in summary.items():
        show(key, val, 1)


@data_app.command("pack")
def data_pack(labels: list[Path] = typer.Argument(..., help="labelled extxyz files (one protocol; a configuration "
                                                            "in one file only)"),
              name: str = typer.Option("li-in-sn-v1", help="dataset name"),
              dest: Optional[Path] = typer.Option(None, help="directory to write the dataset to"),
              into_package: bool = typer.Option(False, "--into-package",
                                                help="write into the installed package (what limace ships) instead "
                                                     "of --dest"),
              force: bool = typer.Option(False, "--force", help="replace a dataset that is already there (the split "
                                                                  "of configurations already in it is kept)")):
    """Split (stratified, fixed in the manifest), compress and checksum labels into a dataset directory (--dest), or
    into the package's shipped datasets (--into-package)."""
    import re

    from limace.core.errors import LimaceInputError
    from limace.core.fileio import check_output_path

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise LimaceInputError(f"--name {name!r}: a dataset name is letters, digits, '.', '_' and '-'")
    if (dest is None) == (not into_package):
        raise LimaceInputError("data pack: give --dest DIR, or --into-package to replace what limace ships"
                               if dest is None else "data pack: give either --dest or --into-package, not both")
    from limace.data.datasets import datasets_root, pack

    target = dest if dest is not None else datasets_root() / name
    check_output_path(target, "--dest" if dest is not None else "package dataset", directory=True)
    if (target / "manifest.json").exists() and not force:
        raise LimaceInputError(f"{target}: already holds dataset {name!r}; pass --force to replace it (configurations "
                               "already in it keep their split)")
    man = pack(labels, name=name, dest=target)
    c = man["counts"]
    typer.echo(f"{name}: {man['n_configs']} configurations (train {c['train']['n']}, test {c['test']['n']})")


@data_app.command("validate")
def data_validate(files: list[Path] = typer.Argument(..., help="labelled files to validate")):
    """Validate labelled files; the first problem is reported as one line (exit code 2)."""
    from limace.data.io import read_configurations

    for f in files:
        frames = read_configurations(f)
        typer.echo(f"{f}: {len(frames)} configurations OK")


# -- potentials (src/limace/potentials/cli.py) -----------------------------------------------------------------------
from limace.potentials.cli import register as _register_potentials  # noqa: E402

_register_potentials(app)

# -- training (src/limace/training/cli.py) -------------------------------------------------------------------------
from limace.training.cli import register as _register_training  # noqa: E402

_register_training(app)

# -- md (src/limace/md/cli.py) ---------------------------------------------------------------------------------------
# The MD engine does not import the potentials; this layer gives it their loader and name check.
from limace.md.cli import register as _register_md  # noqa: E402


def _load_batched(spec, **options):
    from limace.potentials import load_batched

    return load_batched(spec, **options)


def _check_potential(spec):
    from limace.potentials.registry import check_potential_spec

    return check_potential_spec(spec)


_register_md(app, load_model=_load_batched, check_potential=_check_potential)

from limace.analysis.cli import register as _register_analysis  # noqa: E402

_register_analysis(app)


def _click_flavours():
    """The exception classes of every click the installed typer may raise: its bundled copy (``typer._click``, typer
    >= 0.2x) and the separate ``click`` package (older typer, or commands built with click directly)."""
    usage, exits, aborts, others = [], [typer.Exit], [typer.Abort], []
    for modname in ("typer._click.exceptions", "click.exceptions"):
        try:
            mod = __import__(modname, fromlist=["ClickException"])
        except ImportError:
            continue
        usage.append(mod.ClickException)
        exits += [getattr(mod, "Exit", typer.Exit)]
        aborts += [getattr(mod, "Abort", typer.Abort)]
        others += [c for c in (getattr(mod, "NoArgsIsHelpError", None),) if c is not None]
    return tuple(usage), tuple(exits), tuple(aborts), tuple(others)


def _usage_line(exc) -> str:
    """One line for a click usage error: ``data plan: Missing argument 'OUT'. (see limace data plan --help)``."""
    try:
        msg = exc.format_message()
    except Exception:  # pragma: no cover - a click exception that cannot format itself
        msg = str(exc)
    msg = " ".join(str(msg).split())
    ctx = getattr(exc, "ctx", None)
    path = getattr(ctx, "command_path", "") or ""
    sub = " ".join(path.split()[1:])
    where = f"{sub}: " if sub else ""
    hint = f" (see limace {sub + ' ' if sub else ''}--help)" if ctx is not None else ""
    return f"{where}{msg}{hint}"


class _NoisyImports:
    """A meta-path finder for the third-party modules that ``print`` at import (mace's ``tools/cg.py``: the
    "cuequivariance ... not available" line): while such a module is executed, its stdout goes to stderr with the
    known noise dropped, so stdout stays what the command prints (``limace md cfg.yaml | python -c 'json.load...'``).
    """

    NAMES = frozenset({"mace.tools.cg"})
    DROP = ("cuequivariance",)

    def find_spec(self, name, path, target=None):
        if name not in self.NAMES:
            return None
        from importlib.machinery import PathFinder

        spec = PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module
        drop = self.DROP

        class _Stderr:
            def write(self, text):
                if text.strip() and not any(d in text for d in drop):
                    sys.stderr.write(text)
                return len(text)

            def flush(self):
                sys.stderr.flush()

        def exec_module(module):
            import contextlib

            with contextlib.redirect_stdout(_Stderr()):
                run(module)

        spec.loader.exec_module = exec_module
        return spec


def _quiet_imports() -> None:
    if not any(isinstance(f, _NoisyImports) for f in sys.meta_path):
        sys.meta_path.insert(0, _NoisyImports())


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line on stderr, without source paths: ``limace: warning: registry ... unreachable ...``."""
    from limace.core.errors import LimaceWarning

    text = _one_line(str(message)).removeprefix("limace: ")
    if issubclass(category, LimaceWarning) or str(message).startswith("limace: "):
        line_ = f"limace: warning: {text}"
    else:
        line_ = f"limace: warning: {category.__name__}: {text}"
    (file or sys.stderr).write(line_ + "\n")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv: list[str] | None = None) -> None:
    """Run the ``limace`` command line: user mistakes (bad values, files, usage) are one line on stderr, exit 2."""
    import os
    import warnings

    # Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning. Spinning threads cost 10x when the
    # cores are shared (a DFT job or another run beside this one); set OMP_WAIT_POLICY=ACTIVE to override.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    from limace.core.errors import LimaceInputError

    # e3nn 0.4.4 under torch >= 2.6 warns on every import about the weights-only workaround mace sets; not for users
    warnings.filterwarnings("ignore", message=".*TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD.*")
    warnings.filterwarnings("ignore", message=".*weights_only.*")  # torch.load of our own .model files
    _quiet_imports()
    warnings.showwarning = _show_warning
    usage_errors, exits, aborts, no_args = _click_flavours()

    def fail(message: str) -> None:
        typer.echo(f"limace: error: {_one_line(message)}", err=True)
        sys.exit(2)

    try:
        rv = app(args=argv, standalone_mode=False)
    except LimaceInputError as exc:
        fail(str(exc))
    except no_args as exc:  # `limace`, `limace data`: the help, as click shows it
        exc.show()
        sys.exit(exc.exit_code)
    except usage_errors as exc:
        fail(_usage_line(exc))
    except exits as exc:
        sys.exit(exc.exit_code)
    except (*aborts, KeyboardInterrupt):
        typer.echo("limace: aborted", err=True)
        sys.exit(130)
    except FileNotFoundError as exc:
        fail(f"{exc.filename or exc}: no such file")
    except (PermissionError, IsADirectoryError, NotADirectoryError) as exc:
        fail(f"{exc.filename}: {exc.strerror.lower()}" if exc.filename else str(exc))
    if isinstance(rv, int) and rv:  # standalone_mode=False returns the exit code of `ctx.exit(code)`
        sys.exit(rv)


if __name__ == "__main__":
    main()
