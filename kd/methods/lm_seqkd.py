"""Sequence-level knowledge distillation (Kim & Rush 2016): train on the teacher's own sequences.

Each training batch is rewritten, inside the compiled step, before the student sees it: the first
`prompt_length` tokens of every window are kept as a prompt and the teacher generates the rest with
its KV cache (`kd.lm.sampling.generate`). The student is then trained with cross-entropy on the
generated tokens (the prompt does not count), optionally plus token-level KD on them
(`kd_weight > 0`: the paper's "Seq-KD + Word-KD").

    loss = ce_weight * NLL(student, y_teacher) + kd_weight * T^2 D(p_teacher, q_student) on y_teacher

Departure from the paper: the teacher decodes greedily (`sample_temperature=0`), i.e. beam search with
a beam of 1, where the paper uses a beam of 5; `sample_temperature > 0` samples instead (top-k, top-p).

Reference: Y. Kim, A. M. Rush, "Sequence-Level Knowledge Distillation", EMNLP 2016, arXiv:1606.07947,
Section 3.2, eq. 5-6.
"""

from typing import Any

import jax.numpy as jnp

from kd.lm import sampling
from kd.methods import lm_common

LANGUAGE_MODEL = True  # Reads next-token targets of a token dataset (kd.lm.check_stages).
NEEDS_TEACHER = True
DEFAULTS: dict[str, Any] = {**lm_common.DIVERGENCE_DEFAULTS, "kd_weight": 0.0, "ce_weight": 1.0,
                            "prompt_length": 16, "sample_temperature": 0.0, "top_k": 0, "top_p": 1.0}
_SAMPLER = ("prompt_length", "sample_temperature", "top_k", "top_p")


def check(params: dict[str, Any], where: str) -> None:
  lm_common.check_divergence(params, where)
  lm_common.check_prompt(params, where)


def continue_prompts(module, variables, batch, rng, *, prompt_length: int, sample_temperature: float,
                     top_k: int, top_p: float):
  """The batch with each window's tokens after `prompt_length` replaced by `module`'s continuation.

  `loss_mask` leaves the prompt out of the loss; the generated tokens are all real (`mask`).
  """
  tokens_BxL = batch["tokens"]
  length = tokens_BxL.shape[1]
  generated_BxL = sampling.generate(module, variables, tokens_BxL[:, :prompt_length],
                                    num_new_tokens=length - prompt_length, rng=rng,
                                    temperature=sample_temperature, top_k=top_k, top_p=top_p)
  after_prompt_L = jnp.arange(length) >= prompt_length
  mask_BxL = batch["mask"] | after_prompt_L[None] if "mask" in batch else jnp.ones_like(tokens_BxL, bool)
  return {**batch, "tokens": generated_BxL.astype(tokens_BxL.dtype), "mask": mask_BxL,
          "loss_mask": jnp.broadcast_to(after_prompt_L, tokens_BxL.shape)}


def make_prepare_batch(params: dict[str, Any], student_module, teacher_module):
  """`prepare(student_variables, teacher_variables, batch, rng) -> batch`: the teacher writes the data."""
  del student_module
  sampler = {key: params[key] for key in _SAMPLER}

  def prepare(student_variables, teacher_variables, batch, rng):
    del student_variables
    return continue_prompts(teacher_module, teacher_variables, batch, rng, **sampler)

  return prepare


def loss(student_out, teacher_out, batch, *, prompt_length, sample_temperature, top_k, top_p,
         **params) -> tuple[Any, dict[str, Any]]:
  del prompt_length, sample_temperature, top_k, top_p  # Used by make_prepare_batch.
  return lm_common.distillation_loss(student_out, teacher_out, batch, **params)
