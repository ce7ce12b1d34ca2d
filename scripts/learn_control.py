"""What a round's new labels buy: fine-tune committee member 0 exactly as round K of ``limace learn`` does, but
without round K's labels (same recipe, same starting weights, same seed), evaluate it on the same files, and write
``RUN_DIR/round_K/control.json``. The difference to ``round_K/evaluate.json`` is the effect of the labels alone
(the fine-tune itself also moves the errors). For a run configured without ``control: true`` (which does this in the
loop, every round); the loop's report shows the comparison from then on.

    python scripts/learn_control.py examples/learn.yaml K
"""

import json
import sys

from limace.learn import ActiveLearning, load_learn_config


def main(config: str, k: int) -> None:
    al = ActiveLearning(load_learn_config(config), log=print)
    al.materialize_dataset()
    rep = al.control(k)
    print(json.dumps({n: round(r["energy_mae_mev_per_atom"], 2) for n, r in rep["sets"].items()}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
