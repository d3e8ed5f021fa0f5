"""`python -m bench.train`: each run is a fresh `mqt train` config at a fixed m."""

from bench import train as trainbench


def test_benchmark_runs_are_fresh_fixed_m_train_configs(tmp_path):
    cfg = trainbench.resolve([f"output={tmp_path}", "m=4", "workers=[1,2]"])
    two = trainbench.run_config(cfg, "ddp", 2)
    assert (two.backend, two.scaling.workers, two.name) == ("ddp", 2, "ddp-2")
    assert two.stage1.schedule.values == [4] and two.stage2.steps == 0
    assert two.output == str(tmp_path / "ddp-2") and two.batch_size == 16
    zero = trainbench.run_config(cfg, "deepspeed", 1)
    assert (zero.backend, zero.deepspeed.stage, zero.name) == ("deepspeed", 2, "zero2-1")
    assert trainbench.runs(cfg)[0] == ("local", 1) and len(trainbench.runs(cfg)) == 5
    assert two.report_every == 0
    cfg = trainbench.resolve([f"output={tmp_path}", "report=[2]"])
    assert trainbench.runs(cfg)[-1] == ("ddp+report", 2)
    rep = trainbench.run_config(cfg, "ddp+report", 2)
    assert (rep.backend, rep.report_every, rep.name) == ("ddp", 1, "ddp-2+report")
    rows = [{"run": "local", "workers": 1, "per_worker": 16, "step_s": 0.5,
             "samples_per_s": 32.0, "tokens_per_s": 2000},
            {"run": "ddp-2", "workers": 2, "per_worker": 8, "step_s": 0.25,
             "samples_per_s": 64.0, "tokens_per_s": 4000}]
    assert trainbench.markdown(rows, cfg).splitlines()[-1].endswith("| 64.0 | 4000 | 2.00x |")
