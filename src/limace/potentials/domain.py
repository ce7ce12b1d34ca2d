"""Is a structure like the training data? A cheap, committee-free domain check for a MACE potential.

Every atom is described by the invariant (l = 0) node features of every interaction layer of the potential itself.
The check stores these descriptors for the atoms of the training configurations (one bank per element, each
feature divided by its spread over the training atoms) and scores an atom by the distance to its nearest training
atom of the same element; a structure's score is the largest over its atoms.

The threshold comes from held-out training configurations, by k-fold cross-validation: the configurations are split
at random into ``folds`` groups, each group's atoms are scored against a bank built from the other groups, and
``threshold = margin x`` the ``quantile`` of all those scores (every training atom is scored once). With a single
random 10 % held out, the threshold of the same training set moved between 5.4 and 19.0 with the seed (the 99.9th
percentile of ~750 atoms is the one most unusual atom); with ten folds it moves between 11.1 and 11.8
(bench/RESULTS.md). A structure above
it is *outside the training domain*: its energy, forces and everything computed from them are extrapolation (on the
extrapolation set of li-in-sn-v1, a Li interstitial scores 48 against 3.6 for the worst test-split atom, and the
potential is 150 meV/atom off there; bench/RESULTS.md).

The check of a shipped potential lives beside its weights as ``<name>.domain.npz`` and
:func:`limace.potentials.load_batched` attaches it as ``model.domain`` (``None`` when there is none).

>>> from limace.potentials import load_batched
>>> model = load_batched("limace-lisnin-small")              # doctest: +SKIP
>>> model.domain.outside(model, [atoms])                     # doctest: +SKIP
array([False])
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from limace.core.errors import ModelFileError
from limace.core.fileio import atomic_write

DOMAIN_SUFFIX = ".domain.npz"


def domain_path(model_path: str | Path) -> Path:
    """Where the domain check of ``model_path`` (``x.model``) lives: ``x.domain.npz``."""
    p = Path(model_path)
    return p.with_name(p.name[: -len(p.suffix)] + DOMAIN_SUFFIX if p.suffix else p.name + DOMAIN_SUFFIX)


def atom_descriptors(model, frames: Sequence, batch_atoms: int = 2048) -> list[np.ndarray]:
    """Per structure, the ``[atoms, D]`` invariant descriptors of a :class:`~limace.potentials.batched.BatchedMACE`."""
    from limace.core.state import BatchedState

    out, chunk, n = [], [], 0
    for i, a in enumerate(frames):
        chunk.append(a)
        n += len(a)
        if n >= batch_atoms or i == len(frames) - 1:
            state = BatchedState.from_atoms(chunk, device=model.device, dtype=model.dtype)
            d = model(state, compute_forces=False, compute_descriptors=True)["descriptors"].double().cpu().numpy()
            ends = np.cumsum([len(x) for x in chunk])
            out += np.split(d, ends[:-1])
            chunk, n = [], 0
    return out


@dataclass
class DomainCheck:
    """Nearest-training-atom distances in the potential's descriptor space (see the module's text)."""

    banks: dict[int, np.ndarray]  # atomic number -> [training atoms, D] scaled descriptors
    scale: np.ndarray  # [D] spread of each feature over the training atoms
    threshold: float
    meta: dict = field(default_factory=dict)
    _trees: dict = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, model, frames: Sequence, folds: int = 10, quantile: float = 0.999, margin: float = 1.5,
              seed: int = 0) -> "DomainCheck":
        """From the training configurations ``frames`` (all of them end up in the bank)."""
        if len(frames) < 10:
            raise ValueError(f"a domain check needs at least 10 training configurations, got {len(frames)}")
        return cls.from_descriptors(atom_descriptors(model, frames), [np.asarray(a.numbers) for a in frames],
                                    folds=folds, quantile=quantile, margin=margin, seed=seed)

    @classmethod
    def from_descriptors(cls, desc: list[np.ndarray], numbers: list[np.ndarray], folds: int = 10,
                         quantile: float = 0.999, margin: float = 1.5, seed: int = 0) -> "DomainCheck":
        """:meth:`build` from per-configuration descriptors (``atom_descriptors``) and atomic numbers."""
        if not 2 <= folds <= len(desc):
            raise ValueError(f"folds must be between 2 and the number of configurations ({len(desc)}), got {folds}")
        scale = cls.feature_scale(desc)
        fold = np.random.default_rng(seed).permutation(len(desc)) % folds
        scores = []
        for j in range(folds):
            rest = cls._make(desc, numbers, fold != j, scale)
            scores += [rest._atom_scores(desc[i], numbers[i]) for i in np.flatnonzero(fold == j)]
        scores = np.concatenate(scores)
        scores = scores[np.isfinite(scores)]  # an element seen in one fold only
        q = float(np.quantile(scores, quantile))
        full = cls._make(desc, numbers, np.ones(len(desc), dtype=bool), scale)
        full.threshold = margin * q
        full.meta = {"n_configs": len(desc), "n_atoms": sum(len(d) for d in desc), "folds": folds,
                     "holdout_configs": len(desc), "holdout_quantile": quantile, "holdout_score_at_quantile": q,
                     "margin": margin, "holdout_score_max": float(scores.max())}
        return full

    @staticmethod
    def feature_scale(desc: list[np.ndarray]) -> np.ndarray:
        """The spread of each descriptor feature over all atoms of ``desc`` (1 where a feature does not vary)."""
        scale = np.concatenate(desc).std(axis=0)
        scale[scale < 1e-8] = 1.0
        return scale

    @classmethod
    def _make(cls, desc, numbers, mask, scale) -> "DomainCheck":
        x = np.concatenate([d for d, m in zip(desc, mask) if m]) / scale
        z = np.concatenate([n for n, m in zip(numbers, mask) if m])
        return cls({int(e): x[z == e].astype(np.float32) for e in np.unique(z)}, scale, np.inf)

    def _tree(self, z: int):
        if z not in self._trees:
            from scipy.spatial import cKDTree

            self._trees[z] = cKDTree(self.banks[z])
        return self._trees[z]

    def _atom_scores(self, desc: np.ndarray, numbers: np.ndarray) -> np.ndarray:
        x = desc / self.scale
        out = np.full(len(x), np.inf)  # an element without training atoms is outside by definition
        for z in np.unique(numbers):
            if int(z) in self.banks:
                sel = numbers == z
                out[sel] = self._tree(int(z)).query(x[sel])[0]
        return out

    # -- use ----------------------------------------------------------------------------------------------------

    def atom_scores(self, model, frames: Sequence) -> list[np.ndarray]:
        """Per structure, each atom's distance to its nearest training atom (scaled descriptor units)."""
        return [self._atom_scores(d, np.asarray(a.numbers)) for d, a in zip(atom_descriptors(model, frames), frames)]

    def scores(self, model, frames: Sequence) -> np.ndarray:
        """Per structure, the largest atom score."""
        return np.array([s.max() if len(s) else 0.0 for s in self.atom_scores(model, frames)])

    def state_scores(self, model, state) -> np.ndarray:
        """Per system of a :class:`~limace.core.state.BatchedState` on ``model``'s device, the largest atom score
        (what the MD guard checks without leaving the device for anything but the descriptors)."""
        d = model(state, compute_forces=False, compute_descriptors=True)["descriptors"].double().cpu().numpy()
        atom = self._atom_scores(d, state.numbers.cpu().numpy())
        out = np.zeros(state.n_systems)
        np.maximum.at(out, state.system_idx.cpu().numpy(), atom)
        return out

    def outside(self, model, frames: Sequence) -> np.ndarray:
        """Per structure, whether it lies outside the training domain (score > threshold)."""
        return self.scores(model, frames) > self.threshold

    # -- files --------------------------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        import json

        path = Path(path)
        arrays = {f"bank_{z}": b for z, b in self.banks.items()}

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, scale=self.scale, threshold=np.array(self.threshold),
                                    meta=np.array(json.dumps(self.meta)), **arrays)

        atomic_write(path, write)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "DomainCheck":
        import json
        import zipfile

        try:
            with np.load(path, allow_pickle=False) as f:
                banks = {int(k[5:]): f[k] for k in f.files if k.startswith("bank_")}
                return cls(banks, f["scale"], float(f["threshold"]), json.loads(str(f["meta"])))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            raise ModelFileError(f"{path}: not a readable domain check ({e})") from None
