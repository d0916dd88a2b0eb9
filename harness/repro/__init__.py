"""Turn one finished cell back into a run: what a cell records for that, bundles, `harness repro`.

record.py   the `repro` block of a CellResult (axes, asset sha256s, timeouts, host kind, harness
            version) and the copy of the guest file kept in the cell's work directory
source.py   a cell directory, a result file or a bundle -> ReproSource (the guest file as it was
            and the recorded cell)
bundle.py   `harness bundle`: one tar.gz with the result, console, events, guest file, host facts
            and an asset manifest (and, with --with-assets, the assets)
run.py      `harness repro`: the same cell again, N times, "reproduced k/N"
"""
