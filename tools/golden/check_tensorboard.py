"""Reads the TensorBoard event files rustformers' Trainer writes with TensorBoard's own
reader (the one `tensorboard --logdir` uses), and prints each scalar curve.

    rustformers train ... --report-to tensorboard --output-dir OUT
    python tools/golden/check_tensorboard.py OUT/runs      (pip install tensorboard)

Exits non-zero when the folder has no scalars, or no `train/loss` curve.
"""

import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def main() -> int:
    acc = EventAccumulator(sys.argv[1])
    acc.Reload()
    tags = acc.Tags().get("scalars", [])
    for tag in tags:
        events = acc.Scalars(tag)
        first, last = events[0], events[-1]
        print(f"{tag}: {len(events)} points, step {first.step} = {first.value:.4g} ... step {last.step} = {last.value:.4g}")
    return 0 if "train/loss" in tags else 1


if __name__ == "__main__":
    sys.exit(main())
