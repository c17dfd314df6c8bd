"""Ray job entrypoint for an NST batch.

    ray job submit --working-dir . -- python jobs/nst_batch.py MANIFEST --output URI [options]

takes the options of `amnst run` (see `amnst run --help`); inside a Ray job it
joins the job's cluster through RAY_ADDRESS.
"""

import sys

from amnst.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
