"""Contrastive representation distillation (CRD): a contrastive bound on teacher-student mutual information.

Student and teacher embeddings (one feature each, flattened) are projected by linear maps g_s, g_t
to `feat_dim` dimensions and L2-normalised. An anchor's score against a memory row is

    P = exp(<memory row, anchor> / tau) / Z,

the critic's exponential normalised by an estimate Z of its partition function, and the loss is the
NCE objective (eq. 18, as RepDistiller's `ContrastLoss` computes it) with K negatives from a
uniform noise distribution P_n = 1/N over the N training examples: per anchor,

    -log(P_pos / (P_pos + K/N)) - sum_{k=1..K} log((K/N) / (P_neg_k + K/N)).

As in the reference code (RepDistiller's `CRDLoss`, `ContrastMemory`, `ContrastLoss`), the
objective is symmetric: a student anchor is scored against a memory bank of teacher embeddings,
and a teacher anchor against a memory bank of student embeddings; the loss is the sum of the two,
averaged over the batch. The memory banks ([N, feat_dim] each) start uniform in [-stdv, stdv] with
stdv = 1/sqrt(feat_dim/3), and after each training step the rows of the batch's examples move to
m * memory + (1 - m) * embedding (momentum m = 0.5) and are renormalised. The negatives are drawn
uniformly over the other N - 1 examples, with replacement. Z is estimated once, on the first
training batch, as mean(exp(<., .>/tau)) * N, and kept in the memory collection (as RepDistiller
fixes it on its first call); an evaluation before the first training step uses the batch's own
estimate.

The CRD table of the paper trains with CE (weight 1) plus beta = 0.8 times this loss and no KD
term; the CRD+KD row adds `kd_weight=1` (RepDistiller's `-r 1 -a 1 -b 0.8`).

Features: the pooled embedding before the classifier, `("pool",)` in the zoo (the reference's
`feat[-1]`); the default `("hidden",)` fits the quickstart `cnn`.

Token features [B, N, C] (or maps) are flattened per example, [B, N*C], before the linear
embeddings g_s, g_t, which then see every token; the paper embeds the pooled feature, which for a
ViT is its class token or pooled output (a [B, D] feature).

Differences from RepDistiller, all small: its CIFAR loader draws the K negatives from examples of
other classes (`CIFAR100InstanceSample`, mode "exact"), here uniformly over all other examples
(the `AliasMethod` path of `ContrastMemory`, taken when no negatives are given), since the
connector does not know the labels of examples outside the batch; `nce_k` defaults to
4096 (the reference's 16384), clipped to N - 1; the embeddings' L2 norm is guarded against a zero
vector; the Dense biases start at zero rather than PyTorch's uniform draw.

Reference: Y. Tian, D. Krishnan, P. Isola, "Contrastive Representation Distillation", ICLR 2020,
arXiv:1910.10699.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kd.errors import ConfigError
from kd.methods import common

NEEDS_TEACHER = True
DEFAULTS: dict[str, Any] = {
    "student_features": ("hidden",),
    "teacher_features": ("hidden",),
    "feat_dim": 128,
    "nce_k": 4096,
    "nce_t": 0.07,
    "nce_momentum": 0.5,
    "crd_weight": 0.8,
    "ce_weight": 1.0,
    "kd_weight": 0.0,
    "temperature": 4.0,
}

MEMORY = "memory"  # The connector's non-trainable collection: memory banks and Z.
_EPS = 1e-7  # RepDistiller's `eps` in ContrastLoss.

# PyTorch's nn.Linear kernels, as RepDistiller's `Embed` has them: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
_torch_linear_kernel = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def check(params: dict[str, Any], where: str) -> None:
  common.check_non_negative(params, ("crd_weight", "ce_weight", "kd_weight"), where)
  for key in ("feat_dim", "nce_k"):
    if not (isinstance(params[key], int) and params[key] >= 1):
      raise ConfigError(f"{where}.{key}={params[key]!r} must be an integer >= 1")
  common.check_positive(params, ("nce_t", "temperature"), where)
  if not 0 <= params["nce_momentum"] < 1:
    raise ConfigError(f"{where}.nce_momentum={params['nce_momentum']} must be in [0, 1) (the paper uses 0.5)")
  if len(params["student_features"]) != 1 or len(params["teacher_features"]) != 1:
    raise ConfigError(f"{where}: CRD contrasts one embedding of each network, but student_features="
                      f"{params['student_features']} and teacher_features={params['teacher_features']}: "
                      "name one feature each (e.g. ('pool',) for the zoo's models)")


def check_features(params, student_shapes, teacher_shapes, where: str) -> None:
  del params
  if len(student_shapes) != 1 or len(teacher_shapes) != 1:
    raise ConfigError(f"{where}: CRD contrasts one embedding of each network, but the feature patterns "
                      f"matched {list(student_shapes)} (student) and {list(teacher_shapes)} (teacher): "
                      "use exact paths such as 'pool'")


def _l2_normalize(x: jax.Array) -> jax.Array:
  """x / ||x|| per row (RepDistiller's `Normalize`), 0 for a zero row, with a finite gradient there."""
  squared = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
  positive = squared > 0
  return jnp.where(positive, x * jax.lax.rsqrt(jnp.where(positive, squared, 1.0)), 0.0)


def sample_negatives(rng: jax.Array, index_B: jax.Array, num_negatives: int, num_examples: int) -> jax.Array:
  """[B, K] example indices drawn uniformly, with replacement, from all examples but each row's own.

  Draws j in [0, N - 2] and skips the positive by shifting j >= index up by one, so every other
  example has probability 1/(N - 1).
  """
  draws_BxK = jax.random.randint(rng, (index_B.shape[0], num_negatives), 0, num_examples - 1)
  return draws_BxK + (draws_BxK >= index_B[:, None]).astype(draws_BxK.dtype)


# Up to this many [B, N] scores (64M floats, 256 MB) are computed densely by contrast_scores.
_DENSE_SCORES_MAX_ELEMENTS = 1 << 26


def contrast_scores(anchor_BxD: jax.Array, memory_NxD: jax.Array, indices_BxK1: jax.Array,
                    temperature: float) -> jax.Array:
  """exp(<memory[indices[b, j]], anchor[b]> / tau): [B, K+1], unnormalised (no Z).

  The memory rows are constants (RepDistiller detaches them); the gradient flows into the anchor.
  """
  memory_NxD = jax.lax.stop_gradient(memory_NxD)
  num_anchors, num_rows = anchor_BxD.shape[0], memory_NxD.shape[0]
  if num_anchors * num_rows <= _DENSE_SCORES_MAX_ELEMENTS:
    # Score every row with one matmul, then pick the [B, K+1] scalars: gathering [B, K+1, D] rows
    # instead moves K+1 times more memory and was ~100x slower on CPU (B=64, K=1437, D=128).
    scores_BxN = jnp.einsum("bd,nd->bn", anchor_BxD, memory_NxD)
    dots_BxK1 = jnp.take_along_axis(scores_BxN, indices_BxK1, axis=1)
  else:  # Banks too large for a [B, N] matrix (e.g. ImageNet's 1.28M rows at large B).
    dots_BxK1 = jnp.einsum("bkd,bd->bk", memory_NxD[indices_BxK1], anchor_BxD)
  return jnp.exp(dots_BxK1 / temperature)


def normalization_constant(scores_BxK1: jax.Array, num_examples: int) -> jax.Array:
  """Z = mean(scores) * N, RepDistiller's Monte-Carlo estimate of the partition function (no gradient)."""
  return jax.lax.stop_gradient(jnp.mean(scores_BxK1) * num_examples)


def nce_loss(probs_BxK1: jax.Array, num_examples: int) -> jax.Array:
  """The NCE loss of eq. 18 per anchor: [B].

  With P = probs (column 0 the positive, columns 1..K the negatives) and noise m * P_n = K / N:

      -log(P_0 / (P_0 + K/N + eps)) - sum_k log((K/N) / (P_k + K/N + eps))

  RepDistiller's `ContrastLoss` returns the batch mean of this.

  Args:
    probs_BxK1: [B, K+1] critic values h = exp(<., .>/tau) / Z.
    num_examples: N, the size of the training split.

  Returns:
    [B] the loss of each anchor.
  """
  num_negatives = probs_BxK1.shape[1] - 1
  noise = num_negatives / num_examples
  positive_B = probs_BxK1[:, 0]
  log_d1_B = jnp.log(positive_B / (positive_B + noise + _EPS))
  log_d0_BxK = jnp.log(noise / (probs_BxK1[:, 1:] + noise + _EPS))
  return -(log_d1_B + jnp.sum(log_d0_BxK, axis=1))


def crd_probabilities(student_embedding_BxD, teacher_embedding_BxD, student_memory_NxD, teacher_memory_NxD,
                      indices_BxK1, *, temperature: float, num_examples: int, z_student=None, z_teacher=None):
  """Critic values of both anchors, and the Z used (estimated from these scores where not given).

  Args:
    student_embedding_BxD, teacher_embedding_BxD: normalised embeddings g_s(s), g_t(t).
    student_memory_NxD, teacher_memory_NxD: the memory banks.
    indices_BxK1: column 0 each example's own index, then its K negatives.
    temperature: tau (nce_t).
    num_examples: N.
    z_student, z_teacher: fixed normalisation constants, or None (or <= 0) to estimate them.

  Returns:
    (student_anchor_probs [B, K+1], teacher_anchor_probs [B, K+1], z_student, z_teacher):
    the student anchor is scored against the teacher memory (RepDistiller's out_v1), the teacher
    anchor against the student memory (out_v2).
  """
  student_scores = contrast_scores(student_embedding_BxD, teacher_memory_NxD, indices_BxK1, temperature)
  teacher_scores = contrast_scores(teacher_embedding_BxD, student_memory_NxD, indices_BxK1, temperature)

  def constant(given, scores):
    estimate = normalization_constant(scores, num_examples)
    return estimate if given is None else jnp.where(given > 0, given, estimate)

  z_student, z_teacher = constant(z_student, student_scores), constant(z_teacher, teacher_scores)
  return student_scores / z_student, teacher_scores / z_teacher, z_student, z_teacher


def momentum_update(memory_NxD: jax.Array, index_B: jax.Array, embedding_BxD: jax.Array,
                    momentum: float) -> jax.Array:
  """Rows `index` become normalize(m * memory[index] + (1 - m) * embedding); the others are unchanged."""
  rows_BxD = momentum * memory_NxD[index_B] + (1.0 - momentum) * jax.lax.stop_gradient(embedding_BxD)
  return memory_NxD.at[index_B].set(_l2_normalize(rows_BxD))


class ContrastMemory(nn.Module):
  """Embeddings g_s, g_t and the two memory banks; returns the critic values of both anchors.

  Variables: params `embed_student`, `embed_teacher`; collection "memory": `student`, `teacher`
  ([N, feat_dim]), `z_student`, `z_teacher` (scalars, -1 until the first training step sets them).
  Negatives come from the "dropout" rng stream (a fixed key where none is given, e.g. at init).
  Returns the critic values of both anchors ([B, K+1]) and their NCE losses ([B], `nce_loss`).
  """

  num_examples: int
  feat_dim: int
  nce_k: int
  nce_t: float
  nce_momentum: float

  @nn.compact
  def __call__(self, student_out, teacher_out, batch, train: bool):
    (student_feature,) = student_out["features"].values()
    (teacher_feature,) = teacher_out["features"].values()
    student_feature = student_feature.reshape(student_feature.shape[0], -1)
    teacher_feature = jax.lax.stop_gradient(teacher_feature.reshape(teacher_feature.shape[0], -1))
    student_embedding = _l2_normalize(
        nn.Dense(self.feat_dim, kernel_init=_torch_linear_kernel, name="embed_student")(student_feature))
    teacher_embedding = _l2_normalize(
        nn.Dense(self.feat_dim, kernel_init=_torch_linear_kernel, name="embed_teacher")(teacher_feature))

    stdv = 1.0 / math.sqrt(self.feat_dim / 3.0)
    shape = (self.num_examples, self.feat_dim)
    uniform = lambda: jax.random.uniform(self.make_rng("params"), shape, jnp.float32, -stdv, stdv)
    student_memory = self.variable(MEMORY, "student", uniform)
    teacher_memory = self.variable(MEMORY, "teacher", uniform)
    z_student = self.variable(MEMORY, "z_student", lambda: jnp.full((), -1.0, jnp.float32))
    z_teacher = self.variable(MEMORY, "z_teacher", lambda: jnp.full((), -1.0, jnp.float32))

    index = batch["index"].astype(jnp.int32)
    rng = self.make_rng("dropout") if self.has_rng("dropout") else jax.random.key(0)
    num_negatives = min(self.nce_k, self.num_examples - 1)
    negatives = sample_negatives(rng, index, num_negatives, self.num_examples)
    indices = jnp.concatenate([index[:, None], negatives], axis=1)
    student_probs, teacher_probs, z_s, z_t = crd_probabilities(
        student_embedding, teacher_embedding, student_memory.value, teacher_memory.value, indices,
        temperature=self.nce_t, num_examples=self.num_examples, z_student=z_student.value,
        z_teacher=z_teacher.value)

    # After the scores, as in RepDistiller: this batch's positives were read before they moved.
    if train and not self.is_initializing():
      momentum = self.nce_momentum
      student_memory.value = momentum_update(student_memory.value, index, student_embedding, momentum)
      teacher_memory.value = momentum_update(teacher_memory.value, index, teacher_embedding, momentum)
      z_student.value, z_teacher.value = z_s, z_t
    # The NCE terms need N, which only the connector knows, so they are computed here.
    return {"student_anchor_probs": student_probs, "teacher_anchor_probs": teacher_probs,
            "student_anchor_nce": nce_loss(student_probs, self.num_examples),
            "teacher_anchor_nce": nce_loss(teacher_probs, self.num_examples)}


def make_connector(params, student_shapes, teacher_shapes, num_examples):
  del student_shapes, teacher_shapes  # The Dense layers infer their inputs.
  if num_examples < 2:
    raise ConfigError(f"CRD needs at least 2 training examples for negatives, the split has {num_examples}")
  return ContrastMemory(num_examples=num_examples, feat_dim=params["feat_dim"], nce_k=params["nce_k"],
                        nce_t=params["nce_t"], nce_momentum=params["nce_momentum"])


def loss(student_out, teacher_out, batch, *, student_features, teacher_features, feat_dim: int,
         nce_k: int, nce_t: float, nce_momentum: float, crd_weight: float, ce_weight: float,
         kd_weight: float, temperature: float) -> tuple[Any, dict[str, Any]]:
  """crd_weight * (NCE of the student anchor + NCE of the teacher anchor) + ce_weight * CE (+ KD)."""
  del student_features, teacher_features, feat_dim, nce_k, nce_t, nce_momentum  # The connector's.
  connector = student_out["connector"]
  crd = jnp.mean(connector["student_anchor_nce"]) + jnp.mean(connector["teacher_anchor_nce"])
  ce = common.cross_entropy(student_out["logits"], batch["label"])
  total = crd_weight * crd + ce_weight * ce
  return common.add_kd_term(total, {"crd": crd, "ce": ce}, student_out["logits"], teacher_out["logits"],
                            kd_weight=kd_weight, temperature=temperature)
