r"""Times S seeds of a stage trained in one vmapped program against S separate runs.

    python benchmarks/vmap_seeds.py --config=experiments/quickstart.py --stage=student --seeds=8 \
        [--steps=300] [--json=out.json]

Trains the stage's teacher first (one seed, in a temporary folder), then the stage for S seeds
(a) one after another, each its own compiled program (`kd.vmap_seeds.train_members` with one seed:
what S separate jobs compute, without their process start-up, checkpoints and evaluation), and
(b) all at once with `jax.vmap` over the train state, one compile. Prints the wall-clock times (first
step, mostly the compile; the other steps) and the speedup of (b) over (a).
"""

import json
import os
import tempfile
import time

from absl import app
from absl import flags
from ml_collections import config_flags

from kd import train
from kd import vmap_seeds

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/quickstart.py", "Experiment file.")
_STAGE = flags.DEFINE_string("stage", "student", "The stage to train for every seed.")
_SEEDS = flags.DEFINE_integer("seeds", 8, "S, the number of seeds.")
_STEPS = flags.DEFINE_integer("steps", 300, "Training steps of each run.")
_JSON = flags.DEFINE_string("json", "", "Also write the results to this file.")


def main(argv):
  del argv
  config = _CONFIG.value
  stage = config.stages[_STAGE.value]
  stage.num_steps = _STEPS.value
  stage.optimizer.warmup_steps = min(stage.optimizer.warmup_steps, _STEPS.value - 1)
  seeds = tuple(range(_SEEDS.value))
  with tempfile.TemporaryDirectory() as workdir:
    run_dir = train.seed_dir(workdir, 0)
    if stage.teacher:
      teacher = config.stages[stage.teacher]
      teacher.num_steps = min(teacher.num_steps, _STEPS.value)
      teacher.optimizer.warmup_steps = min(teacher.optimizer.warmup_steps, teacher.num_steps - 1)
      train.train_stage(config, stage.teacher, run_dir, seed=0)
    start = time.perf_counter()
    separate = [vmap_seeds.train_members(config, _STAGE.value, run_dir, seeds=(seed,)) for seed in seeds]
    separate_seconds = time.perf_counter() - start
    start = time.perf_counter()
    together = vmap_seeds.train_members(config, _STAGE.value, run_dir, seeds=seeds)
    together_seconds = time.perf_counter() - start
  figures = {
      "seeds": len(seeds), "steps": _STEPS.value, "batch_size": config.data.batch_size,
      "separate_seconds": separate_seconds,
      "separate_first_step_seconds": sum(r["first_step_seconds"] for r in separate),
      "separate_other_steps_seconds": sum(r["train_seconds"] for r in separate),
      "vmapped_seconds": together_seconds,
      "vmapped_first_step_seconds": together["first_step_seconds"],
      "vmapped_other_steps_seconds": together["train_seconds"],
      "speedup": separate_seconds / together_seconds,
      "accuracy_mean": together["groups"][0]["accuracy_mean"],
      "accuracy_std": together["groups"][0]["accuracy_std"],
  }
  print(f"{len(seeds)} seeds x {_STEPS.value} steps of stage {_STAGE.value!r} (batch {config.data.batch_size}):")
  print(f"  {len(seeds)} separate runs: {separate_seconds:8.2f} s  "
        f"(first steps {figures['separate_first_step_seconds']:.2f} s, "
        f"other steps {figures['separate_other_steps_seconds']:.2f} s)")
  print(f"  one vmapped run:  {together_seconds:8.2f} s  (first step {together['first_step_seconds']:.2f} s, "
        f"other steps {together['train_seconds']:.2f} s)")
  print(f"  speedup {figures['speedup']:.2f}x; accuracy {100 * figures['accuracy_mean']:.2f}% ± "
        f"{100 * figures['accuracy_std']:.2f}% over the seeds")
  print(json.dumps(figures))
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(figures, f, indent=2)


if __name__ == "__main__":
  app.run(main)
