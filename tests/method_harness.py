"""Builds a jitted train step for one method on a small teacher/student pair, as kd.train does."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from kd import config as config_lib
from kd import features
from kd import methods
from kd import models
from kd import train

TEACHER = {"name": "cnn", "channels": (8, 16), "hidden": 32}
STUDENT = {"name": "cnn", "channels": (4,), "hidden": 16}


def module(model):
  return models.build_model(models.model_config(**model), 10)


def resolve_features(method, student, teacher, batch_size: int):
  """(student paths, teacher paths, connector) of `method` on two modules, as kd.train resolves them
  on 8x8 images: patterns matched to tap points, shapes checked, the connector built."""
  example = jax.ShapeDtypeStruct((2, 8, 8, 1), jnp.float32)
  s_patterns, t_patterns = methods.feature_patterns(method)
  s_taps, t_taps = features.tap_points(student, example), features.tap_points(teacher, example)
  s_paths = features.select(s_patterns, list(s_taps), "s") if s_patterns else []
  t_paths = features.select(t_patterns, list(t_taps), "t") if t_patterns else []
  s_shapes, t_shapes = {p: s_taps[p] for p in s_paths}, {p: t_taps[p] for p in t_paths}
  methods.check_feature_shapes(method, s_shapes, t_shapes, "method")
  return s_paths, t_paths, methods.build_connector(method, s_shapes, t_shapes, batch_size,
                                                   student_model=models.model_config(**STUDENT), num_classes=10,
                                                   input_key="image")


def build_method_step(method, *, learning_rate: float = 3e-3, batch_size: int = 16):
  """(state, teacher_variables, batch, jitted step) for `method` (a method config) on 8x8 images.

  Resolves the method's feature patterns, checks their shapes and builds its connector exactly as
  `kd.train.train_stage` does.
  """
  student, teacher = module(STUDENT), module(TEACHER)
  s_paths, t_paths, connector = resolve_features(method, student, teacher, batch_size)
  teacher_variables = models.init_variables(teacher, jax.random.PRNGKey(1), jnp.zeros((1, 8, 8, 1)))
  optimizer, schedule = train.make_optimizer(config_lib.optimizer_config(learning_rate=learning_rate), 100)
  student_apply = models.make_apply(student, "image", s_paths)
  teacher_apply = models.make_apply(teacher, "image", t_paths)
  batch = {"image": np.random.default_rng(0).integers(0, 255, (batch_size, 8, 8, 1), dtype=np.uint8),
           "label": np.arange(batch_size, dtype=np.int32) % 10,
           "index": np.arange(batch_size, dtype=np.int32)}
  state = train.init_train_state(jax.random.PRNGKey(0), batch, teacher_variables, module=student,
                                 optimizer=optimizer, connector=connector, student_apply=student_apply,
                                 teacher_apply=teacher_apply)
  step = jax.jit(functools.partial(train.train_step, student_apply=student_apply,
                                   teacher_apply=teacher_apply, loss_fn=methods.build_loss(method),
                                   optimizer=optimizer, learning_rate=schedule, connector=connector))
  return state, teacher_variables, batch, step
