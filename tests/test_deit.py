"""DeiT's distillation-token loss: hand-computed values, label smoothing, gradients, jit, checks.

The values are worked out by hand on two or three classes from the released `losses.py`
(`DistillationLoss`) and timm's `LabelSmoothingCrossEntropy`, which `kd.methods.deit` follows.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd import methods
from kd.errors import ConfigError
from kd.methods import common
from kd.methods import deit

LN2, LN3 = math.log(2.0), math.log(3.0)


def _outputs(class_logits, distillation_logits):
  return {"logits": jnp.asarray(class_logits, jnp.float32),
          "features": {"head_dist": jnp.asarray(distillation_logits, jnp.float32)}}


def _loss(class_logits, distillation_logits, teacher_logits, labels, **params):
  return deit.loss(_outputs(class_logits, distillation_logits),
                   {"logits": jnp.asarray(teacher_logits, jnp.float32), "features": {}},
                   {"label": jnp.asarray(labels, jnp.int32)}, **{**deit.DEFAULTS, **params})


def test_hard_distillation_is_half_label_ce_and_half_ce_on_the_teacher_argmax():
  # Class head [0, 0]: CE = ln 2 whatever the label. Distillation head [ln 3, 0] gives [3/4, 1/4];
  # the teacher picks class 1, so its CE is -ln(1/4) = 2 ln 2.
  total, metrics = _loss([[0.0, 0.0]], [[LN3, 0.0]], [[1.0, 5.0]], [0], label_smoothing=0.0)
  np.testing.assert_allclose(metrics["ce"], LN2, rtol=1e-6)
  np.testing.assert_allclose(metrics["hard_distillation"], 2 * LN2, rtol=1e-6)
  np.testing.assert_allclose(total, 0.5 * LN2 + 0.5 * 2 * LN2, rtol=1e-6)


def test_label_smoothing_spreads_eps_over_all_classes_as_timm_does():
  # K = 2, eps = 0.1: target [0.95, 0.05] (timm: (1 - eps) NLL + eps * mean -log p). Class head
  # [ln 3, 0] gives p = [3/4, 1/4].
  _, metrics = _loss([[LN3, 0.0]], [[0.0, 0.0]], [[0.0, 1.0]], [0], label_smoothing=0.1)
  expected = 0.95 * -math.log(0.75) + 0.05 * -math.log(0.25)
  np.testing.assert_allclose(metrics["ce"], expected, rtol=1e-6)
  # The same as (1 - eps) NLL + eps * mean_k -log p_k.
  np.testing.assert_allclose(expected, 0.9 * -math.log(0.75) + 0.1 * (-math.log(0.75) - math.log(0.25)) / 2)
  # The teacher's hard label is not smoothed: CE(uniform, y_t) = ln 2 exactly.
  np.testing.assert_allclose(metrics["hard_distillation"], LN2, rtol=1e-6)


def test_soft_distillation_divides_the_summed_kl_by_the_number_of_logits():
  # Teacher [0, 0] is uniform at any T. At T = 2 the distillation head [ln 3, 0] becomes
  # [ln sqrt 3, 0]: q = [sqrt3, 1] / (1 + sqrt3). KL(p || q) = 1/2 ln(p0/q0) + 1/2 ln(p1/q1).
  root3 = math.sqrt(3.0)
  kl = 0.5 * math.log(0.5 * (1 + root3) / root3) + 0.5 * math.log(0.5 * (1 + root3))
  temperature = 2.0
  # reduction='sum' over 1 example x 2 classes, times T^2, divided by numel = 2.
  soft = temperature**2 * kl / 2
  total, metrics = _loss([[0.0, 0.0]], [[LN3, 0.0]], [[0.0, 0.0]], [1], distillation="soft",
                         distillation_weight=0.1, temperature=temperature, label_smoothing=0.0)
  np.testing.assert_allclose(metrics["soft_distillation"], soft, rtol=1e-6)
  np.testing.assert_allclose(total, 0.9 * LN2 + 0.1 * soft, rtol=1e-6)


def test_soft_term_is_the_batch_mean_kd_term_over_the_class_count():
  rng = np.random.default_rng(0)
  distillation, teacher = rng.normal(size=(4, 5)), rng.normal(size=(4, 5))
  _, metrics = _loss(np.zeros((4, 5)), distillation, teacher, np.zeros(4), distillation="soft")
  batch_mean = common.kd_term(jnp.asarray(distillation, jnp.float32), jnp.asarray(teacher, jnp.float32), 3.0)
  np.testing.assert_allclose(metrics["soft_distillation"], batch_mean / 5, rtol=1e-5)


def test_no_gradient_reaches_the_teacher_and_the_student_gets_one():
  rng = np.random.default_rng(1)
  class_logits, distillation, teacher = (jnp.asarray(rng.normal(size=(3, 4)), jnp.float32) for _ in range(3))
  labels = jnp.asarray([0, 2, 3])
  for kind in deit.DISTILLATION:
    def total(c, d, t):
      return deit.loss(_outputs(c, d), {"logits": t}, {"label": labels},
                       **{**deit.DEFAULTS, "distillation": kind})[0]
    grad_class, grad_distillation, grad_teacher = jax.grad(total, argnums=(0, 1, 2))(
        class_logits, distillation, teacher)
    assert np.all(np.asarray(grad_teacher) == 0), kind
    assert np.all(np.isfinite(grad_class)) and np.any(np.asarray(grad_class) != 0), kind
    assert np.all(np.isfinite(grad_distillation)) and np.any(np.asarray(grad_distillation) != 0), kind


def test_jit_gives_the_eager_values():
  rng = np.random.default_rng(2)
  args = (rng.normal(size=(3, 4)), rng.normal(size=(3, 4)), rng.normal(size=(3, 4)), [1, 0, 3])
  for kind in deit.DISTILLATION:
    params = {**deit.DEFAULTS, "distillation": kind}
    jitted = jax.jit(functools.partial(deit.loss, **params))
    outputs = (_outputs(args[0], args[1]), {"logits": jnp.asarray(args[2], jnp.float32)},
               {"label": jnp.asarray(args[3])})
    eager_total, eager_metrics = deit.loss(*outputs, **params)
    jit_total, jit_metrics = jitted(*outputs)
    np.testing.assert_allclose(jit_total, eager_total, rtol=1e-6)
    for key in eager_metrics:
      np.testing.assert_allclose(jit_metrics[key], eager_metrics[key], rtol=1e-6)


def test_registered_with_the_papers_defaults():
  config = methods.method_config("deit")
  assert config["distillation"] == "hard" and config["distillation_weight"] == 0.5
  assert config["temperature"] == 3.0 and config["label_smoothing"] == 0.1
  assert methods.feature_patterns(config) == (("head_dist",), ())
  assert methods.needs_teacher(config)


@pytest.mark.parametrize("overrides,words", [
    ({"distillation": "medium"}, "not a DeiT objective"),
    ({"distillation_weight": 1.5}, "in [0, 1]"),
    ({"label_smoothing": 1.0}, "in [0, 1)"),
    ({"temperature": 0.0}, "> 0"),
    ({"student_features": "head_dist"}, "one tap point"),
    ({"student_features": ("head", "head_dist")}, "one tap point"),
])
def test_check_rejects_impossible_parameters(overrides, words):
  with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace(")", r"\)")):
    methods.check_method_config(methods.method_config("deit", **overrides), "method")


def test_check_features_wants_one_logits_tap():
  deit.check_features(deit.DEFAULTS, {"head_dist": (2, 10)}, {}, "method")
  with pytest.raises(ConfigError, match="not logits"):
    deit.check_features(deit.DEFAULTS, {"blocks_0": (2, 5, 16)}, {}, "method")
  with pytest.raises(ConfigError, match="exactly one"):
    deit.check_features(deit.DEFAULTS, {}, {}, "method")
