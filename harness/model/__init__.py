"""The leaf model layer: the records every floor shares, each with its JSON form beside it.

VM events (events.py), gap records (gap.py), cell results and their parts with the outcomes
(result.py), the guest-file parts the watcher reads (guest.py), the boot request and session
summary a backend exchanges with the runner (session.py), and the one atomic file write
(files.py). It imports nothing of the harness but errors, so every other package may import it.
"""
