"""Evaluation of an MQT model at many m, and reading back what it wrote.

- `run`: `EvalArgs`, the held-out questions, answering them at every m, the calibration
  tables and the oracle, merging several runs' rows;
- `report`: the files `mqt eval` writes (calibration.json, results.parquet, eval.md, the
  plot);
- `results.rows_by_question` reads the per-question rows of `mqt eval` (results.parquet),
  which the scheduler's calibration and the benchmarks are built on.
"""
