"""What a round's new labels buy: fine-tune committee member 0 exactly as round K of ``limace learn`` does, but
without round K's labels (same recipe, same starting weights, same seed), evaluate it on the same files, and write
``RUN_DIR/round_K/control.json``. The difference to ``round_K/evaluate.json`` is the effect of the labels alone
(the fine-tune itself also moves the errors).

    python scripts/learn_control.py examples/learn.yaml K
"""

import json
import sys

from limace.core.fileio import atomic_write_json
from limace.learn import ActiveLearning, _load_models, _read, committee_predict, load_learn_config, member_train_config


def main(config: str, k: int) -> None:
    import dataclasses
    from pathlib import Path

    import numpy as np

    from limace.data.io import read_configurations
    from limace.training.evaluate import evaluate_model
    from limace.training.run import train

    al = ActiveLearning(load_learn_config(config), log=print)
    al.materialize_dataset()
    out = al.round_dir(k) / "control.json"
    data = list(al.base_files) + [str(al.round_dir(j) / "labels.extxyz") for j in range(k)
                                  if _read(al.round_dir(j) / "labels.extxyz")]
    init = al.committee_of(k)[0]
    cfg = member_train_config(al.cfg.train_config, data, str(init))
    cfg = dataclasses.replace(cfg, name=f"{al.cfg.name}-r{k}-control", seed=al.cfg.seed + k, committee_size=1,
                              run_dir=str(al.round_dir(k) / "control"))
    res = train(cfg, log=lambda m: None)
    model = _load_models([Path(res.members[0].model_path)], al.cfg.dtype)[0]
    rep = {"round": k, "without_labels_of_round": k, "train_files": data, "init_from": str(init), "sets": {}}
    for f in al.eval_files:
        frames = read_configurations(f, allowed_elements=None, require_periodic=False)
        summ = evaluate_model(model, frames, name=Path(f).name).summary()
        n = np.array([len(a) for a in frames])
        err = np.abs(committee_predict([model], frames).energy[0] - np.array([a.info["REF_energy"] for a in frames])) / n
        rep["sets"][Path(f).name] = {"n": len(frames), "energy_mae_mev_per_atom": float(err.mean() * 1000),
                                     "energy_max_mev_per_atom": float(err.max() * 1000), "metrics": summ["all"]}
    atomic_write_json(out, rep)
    print(json.dumps({n: round(r["energy_mae_mev_per_atom"], 2) for n, r in rep["sets"].items()}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
