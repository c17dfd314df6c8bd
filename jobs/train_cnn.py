"""Ray job entrypoint for training the genre CNN.

    ray job submit --working-dir . -- python jobs/train_cnn.py --data URI --output URI --workers N [options]

takes the options of `amnst train` (see `amnst train --help`); inside a Ray job it
joins the job's cluster through RAY_ADDRESS.
"""

import sys

from amnst.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
