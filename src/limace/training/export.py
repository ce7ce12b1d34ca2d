"""Export a trained model as a mace-torch ``.model`` file, and load one back.

The file is what mace_run_train writes: ``torch.save`` of the whole ScaleShiftMACE module (EMA weights when EMA
was on), on CPU, in eval mode. ``mace.calculators.MACECalculator(model_paths=PATH)`` loads it, and so does
:func:`load_model`. Files are written atomically (temporary file, then ``os.replace``).
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Optional, Union

from limace.core.errors import ValidationError
from limace.core.fileio import atomic_write
from limace.training._mace import import_mace

import_mace()

import torch  # noqa: E402


def module_from_checkpoint(ckpt: Union[str, Path], map_location: str = "cpu"):
    """The :class:`~limace.training.module.MaceModule` saved in a Lightning checkpoint."""
    from limace.training.module import MaceModule

    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise ValidationError(f"{ckpt}: no such checkpoint")
    return MaceModule.load_from_checkpoint(str(ckpt), map_location=map_location, weights_only=False)


def export_model(source, path: Union[str, Path], ema: bool = True) -> Path:
    """Write ``source`` (a MaceModule, a checkpoint path or a MACE ``nn.Module``) to ``path`` as a ``.model`` file."""
    from limace.training.module import MaceModule

    if isinstance(source, (str, Path)):
        source = module_from_checkpoint(source)
    if isinstance(source, MaceModule):
        model = source.eval_model() if ema else source.model
    elif isinstance(source, torch.nn.Module):
        model = source
    else:
        raise TypeError(f"cannot export {type(source).__name__}")
    model = copy.deepcopy(model).to("cpu").eval()
    for p in model.parameters():
        p.requires_grad_(False)
    path = Path(path)
    atomic_write(path, lambda tmp: torch.save(model, tmp))
    return path


def load_model(path: Union[str, Path], device: str = "cpu", dtype: Optional[str] = None) -> torch.nn.Module:
    """Load a ``.model`` file (ours or mace_run_train's) in eval mode; ``dtype`` 'float32'/'float64' converts."""
    path = Path(path)
    if not path.is_file():
        raise ValidationError(f"{path}: no such model file")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*weights_only.*")
        try:
            model = torch.load(path, map_location=device, weights_only=False)
        except Exception as exc:
            raise ValidationError(f"{path}: not a MACE .model file ({type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "atomic_numbers") or not hasattr(model, "r_max"):
        raise ValidationError(f"{path}: not a MACE .model file (got {type(model).__name__})")
    if dtype is not None:
        model = model.to({"float32": torch.float32, "float64": torch.float64}[dtype])
    return model.eval()


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    return next(p for p in model.parameters()).dtype
