"""CI pipelines for the nightly matrix: `harness ci github|gitlab --shards N` writes one.

plan.py owns what the jobs do (the shell lines of every shard job and of the merge job);
github.py and gitlab.py only wrap those lines in each engine's YAML, so the two pipelines run
the same commands and a test can run them locally. `harness ci verdict RUN` is the merge job's
pass/fail.
"""
