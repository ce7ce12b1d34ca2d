"""``limace train`` and ``limace evaluate``. Only typer is imported here; the work is imported inside the commands."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def train_cmd(config: Path = typer.Argument(..., help="training config (YAML; see examples/train_small.yaml) or a packaged recipe name (small)"),
              resume: Optional[Path] = typer.Option(None, help="checkpoint to resume from (default: RUN_DIR/checkpoints/last.ckpt when it exists)"),
              run_dir: Optional[Path] = typer.Option(None, help="override the config's run_dir"),
              member: Optional[list[int]] = typer.Option(None, help="train only this committee member (repeatable; "
                                                         "run members side by side, one process per core or GPU)")):
    """Train a MACE potential (or a committee) with Lightning; resumes automatically after a kill.

    CONFIG is a YAML file, or the name of a packaged recipe (`small`: limace-lisnin-small).
    """
    from limace.core.errors import LimaceInputError
    from limace.core.fileio import check_output_path
    from limace.training.config import load_config

    cfg = load_config(config)  # validated before anything heavy is imported
    if run_dir is not None:
        check_output_path(run_dir, "--run-dir", directory=True)
        cfg.run_dir = str(run_dir.resolve())
    else:
        check_output_path(cfg.run_dir, f"{config}: run_dir", directory=True)
    if resume is not None and not resume.is_file():
        raise LimaceInputError(f"--resume {resume}: no such checkpoint file")
    import sys

    if not sys.stderr.isatty():  # Lightning's progress bar only on a terminal (no kB-long \r lines in logs)
        cfg.trainer.progress_bar = False
    from limace.training.run import train

    result = train(cfg, resume=resume, log=lambda m: typer.echo(m, err=True), members=member or None)
    for m in result.members:
        if m.model_path is None:  # not rank zero
            continue
        line = f"{m.model_path}: step {m.global_step}"
        if m.valid:
            line += (f", valid E MAE {m.valid['energy_mae']:.2f} meV/atom, F MAE {m.valid['forces_mae']:.1f} meV/A")
        typer.echo(line)


def evaluate_cmd(model: str = typer.Argument(..., help="a .model file (limace or mace_run_train) or a registered "
                                              "potential name such as limace-lisnin-small"),
                 data: Path = typer.Argument(..., help="labelled configurations (extxyz with REF_* keys), or a "
                                             "shipped dataset split such as li-in-sn-v1:test"),
                 out: Optional[Path] = typer.Option(None, help="directory for summary.json and parity plots (default: MODEL's name + '_eval/' next to a model file, in the working directory for a registered name)"),
                 batch_size: int = typer.Option(16, help="configurations per model call"),
                 device: str = typer.Option("cpu", help="cpu or cuda"),
                 dtype: Optional[str] = typer.Option(None, help="float32 or float64 (default: the model's)"),
                 fit_offsets: bool = typer.Option(False, "--fit-offsets", help="fit one energy per element first (other DFT code or potential)"),
                 plots: bool = typer.Option(True, help="write parity plots (PNG)")):
    """Errors of MODEL on DATA: E (meV/atom), F (meV/A), stress (GPa) MAE/RMSE per config_type; JSON and plots."""
    from limace.core.errors import ValidationError, check_dtype_name
    from limace.core.fileio import check_output_path
    from limace.potentials.registry import check_model_archive

    if dtype is not None:
        check_dtype_name(dtype, "--dtype")
    if batch_size < 1:
        raise ValidationError(f"--batch-size must be >= 1, not {batch_size}")
    _check_device(device)
    from limace.potentials.calculator import resolve

    path, entry = resolve(model)  # a registered name is fetched (or found in the package) and checksum-verified
    check_model_archive(path)
    name = entry.name if entry is not None else path.stem
    if out is None:  # never into the installed package or the download cache
        out = Path(f"{name}_eval") if entry is not None else path.with_name(f"{name}_eval")
    check_output_path(out, "--out", directory=True)
    if data.exists():
        from limace.data.io import read_configurations

        frames = read_configurations(data, allowed_elements=None, require_periodic=False)  # checked before the model
    else:
        frames = _dataset_split(str(data))
    from limace.training.evaluate import evaluate_model

    res = evaluate_model(path, frames, name=name, batch_size=batch_size, device=device, dtype=dtype,
                         fit_energy_offsets=fit_offsets)
    paths = res.save(out, plots=plots)
    typer.echo(f"{model} on {data}")
    typer.echo(res.table())
    if res.energy_offsets:
        typer.echo("energy offsets (eV/atom): " + ", ".join(f"{k} {v:+.4f}" for k, v in res.energy_offsets.items()))
    typer.echo(f"-> {paths['summary']}" + (f" and parity_*.png in {out}" if plots else ""))


def _check_device(device: str) -> None:
    """``cpu``, ``cuda`` or ``cuda:N`` (whether CUDA is there is checked when the model is loaded)."""
    import re

    from limace.core.errors import ValidationError

    if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", device):
        raise ValidationError(f"--device must be cpu, cuda or cuda:N, not {device!r}")


def _dataset_split(spec: str):
    """``NAME:SPLIT`` (or ``NAME``, all splits) of a dataset shipped with limace, else the file-not-found error."""
    from limace.data.datasets import available, load_dataset
    from limace.core.errors import ValidationError

    name, _, split = spec.partition(":")
    if name not in available():
        raise ValidationError(f"{spec}: no such file, and {name!r} is not a shipped dataset "
                              f"({', '.join(available()) or 'none'})")
    return load_dataset(name, split or "all")


def register(app: typer.Typer) -> None:
    """Add ``train`` and ``evaluate`` to the ``limace`` app."""
    app.command("train")(train_cmd)
    app.command("evaluate")(evaluate_cmd)
