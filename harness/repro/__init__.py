"""Turn one finished cell back into a run: bundles and `harness repro` (above the runner: what a cell
records for this is written by the runner itself, harness/runner/repro_record.py).

source.py   a cell directory, a result file or a bundle -> ReproSource (the guest file as it was
            and the recorded cell)
bundle.py   `harness bundle`: one tar.gz with the result, console, events, guest file, host facts
            and an asset manifest (and, with --with-assets, the assets)
run.py      `harness repro`: the same cell again, N times, "reproduced k/N"
"""
