"""What a round's new labels buy: fine-tune committee member 0 exactly as round K of ``limace learn`` does, but
without round K's labels (same recipe, same starting weights, same seed), evaluate it on the same files, and write
``RUN_DIR/round_K/control.json``. The difference to ``round_K/evaluate.json`` is the effect of the labels alone
(the fine-tune itself also moves the errors).

    python scripts/learn_control.py examples/learn.yaml K
"""

import json
import sys

from limace.core.fileio import atomic_write_json
from limace.learn import ActiveLearning, _load_models, evaluate_committee, load_learn_config


def main(config: str, k: int) -> None:
    al = ActiveLearning(load_learn_config(config), log=print)
    al.materialize_dataset()
    data = al.training_files(k, with_round_k=False)
    init = al.committee_of(k)[0]
    model = al.fine_tune(k, 0, init, data, name=f"{al.cfg.name}-r{k}-control", run_dir=al.round_dir(k) / "control")
    rep = {"round": k, "without_labels_of_round": k, "train_files": data, "init_from": str(init),
           "sets": evaluate_committee(_load_models([model], al.cfg.dtype), al.eval_files)}
    atomic_write_json(al.round_dir(k) / "control.json", rep)
    print(json.dumps({n: round(r["energy_mae_mev_per_atom"], 2) for n, r in rep["sets"].items()}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
