"""Ray job entrypoint for a night's batches.

    ray job submit --working-dir . -- python jobs/nightly.py --manifests URI_PREFIX --output URI [--date D]

or `amnst submit nightly -- ...`; takes the options of `amnst run` besides
(see `python jobs/nightly.py --help`). Inside a Ray job it joins the job's
cluster through RAY_ADDRESS.
"""

import sys

from amnst.cli.nightly import nightly_main

if __name__ == "__main__":
    sys.exit(nightly_main(sys.argv[1:]))
