"""Evaluation of an MQT model at many m, and reading back what it wrote.

`results.rows_by_question` reads the per-question rows of `mqt eval` (results.parquet), which
the scheduler's calibration and the benchmarks are built on.
"""
