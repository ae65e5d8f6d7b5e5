"""Drive a RunLogger's progress bar as `rlbase train` does, for the tmux test in test_logger.py.

    python tests/progress_driver.py RUN_DIR

Prints a start line, starts the bar, moves it through 200 updates (~3 s) with a `log()` every 20
and one `message()` midway, closes it and prints a done line. The lines printed are the
constants below, which the test looks for on the screen.
"""

from __future__ import annotations

import sys
import time

from rlbase.logger import RunLogger

START_LINE = "rlbase: driver start line (before the bar)"
MESSAGE_LINE = "rlbase: driver message midway through"
DONE_LINE = "rlbase: driver done line (after the bar)"
UPDATES = 200
STEPS_PER_UPDATE = 64


def main(run_dir: str) -> None:
    total = UPDATES * STEPS_PER_UPDATE
    logger = RunLogger(run_dir, total, hparams={"driver": True})
    print(START_LINE, file=sys.stderr)
    logger.start_progress()
    try:
        for i in range(1, UPDATES + 1):
            time.sleep(0.015)
            step = i * STEPS_PER_UPDATE
            logger.progress(step)
            if i % 20 == 0:
                logger.log(step, {"rollout/ep_rew_mean": 10.0 + i, "train/loss": 1.0 / i})
            if i == UPDATES // 2:
                logger.message(MESSAGE_LINE)
    finally:
        logger.close()
    print(DONE_LINE, file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1])
