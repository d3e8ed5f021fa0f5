"""Benchmarks and research scripts, outside the installed packages and the `mqt` command.

Run from the repository root as `python -m bench.NAME [args]`; each writes its tables and
plots into docs/bench/ (or the docs page it names), with the command that produced them.
"""
