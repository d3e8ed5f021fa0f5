"""Training of the MQT vision-language model: plain PyTorch, no Ray.

- `config`: `TrainArgs` (every field the loop reads) and `validate_train`;
- `data`: the training and held-out examples, the yes/no balancing;
- `steps`: the feature cache, the answer loss, the learning rate, accuracy, `Ranks`
  (a process among data-parallel ranks);
- `describe`: the description target and the describe and alignment stages;
- `state`: `TorchTraining`, checkpoints and resuming;
- `deepspeed`: `DeepSpeedTraining` (ZeRO-2 / ZeRO-3), the DeepSpeed config;
- `fit`: the loop (`fit`) and `LocalSession`, one process alone.

The Ray Train adapter that runs `fit` on many workers is pipeline.train.
"""
