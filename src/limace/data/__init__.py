"""Structures, configuration generators, DFT labelling, readers and the shipped dataset."""

from limace.data.structures import Phase, get_phase, get_structure, list_phases

__all__ = ["Phase", "get_phase", "get_structure", "list_phases", "load_dataset"]


def load_dataset(name: str = "li-in-sn-v1", split: str = "all"):
    """The shipped dataset as a list of ASE Atoms (see :mod:`limace.data.datasets`)."""
    from limace.data.datasets import load_dataset as _load

    return _load(name, split=split)
