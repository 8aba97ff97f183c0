"""A user's experiment next to its model file: a kd-zoo teacher distilled into their own TinyMixer.

    python -m kd.main --config=tests/user_project/mixer_digits.py:smoke --workdir=/tmp/mixer
"""

from kd.config import base_config
from kd.config import stage_config
from kd.methods import method_config

import tiny_models  # Beside this file: the config's folder is importable.


def get_config(arg=None):
  config = base_config()
  student = {"name": tiny_models.TinyMixer, "hidden": 16}
  config.stages.teacher = stage_config({"name": "cnn", "channels": (16,), "hidden": 64},
                                       method_config("supervised"), num_steps=300, learning_rate=3e-3)
  config.stages.baseline = stage_config(student, method_config("supervised"), num_steps=300,
                                        learning_rate=3e-3)
  config.stages.student = stage_config(student, method_config("hinton_kd", temperature=4.0),
                                       teacher="teacher", num_steps=300, learning_rate=3e-3)
  config.stage_order = ("teacher", "baseline", "student")
  config.log_every_steps = 50
  config.checkpoint.every_steps = 300
  if arg == "smoke":
    for stage in config.stages.values():
      stage.num_steps = 8
    config.log_every_steps = 4
  elif arg == "broken":
    config.stages.student.model = {"name": "tiny_models:Broken"}
  elif arg:
    raise ValueError(f"unknown variant {arg!r}: use :smoke or :broken")
  return config
