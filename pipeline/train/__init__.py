"""`mqt train` on Ray Train, around the plain-PyTorch loop of mqt.train.

- `config`: `TrainConfig`, the training config plus what Ray Train adds (`ScalingArgs`,
  where checkpoints go, the run's name), and the checks of those;
- `data`: training rows from a manifest or a folder of captioned images (pipeline.sources);
- `ray_train`: the Ray Train adapter: the driver (`run`), the workers' `RaySession`, the
  controller's report log, the export of the last checkpoint. Imports Ray.
"""
