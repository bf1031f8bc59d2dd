"""Benchmarks: each runs with one command (``.venv/bin/python -m bench.<name>``), measures its
figure beside a baseline taken in the same run on the same database, checks the invariants it
could have broken, and prints one JSON object as its last line. See
``../shared/docs/performance.md`` for the rules and goals."""
