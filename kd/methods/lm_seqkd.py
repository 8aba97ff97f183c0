"""Sequence-level knowledge distillation (Kim & Rush 2016): train on the teacher's own sequences.

Each training batch is rewritten, inside the compiled step, before the student sees it: the first
`prompt_length` tokens of every window are kept as a prompt and the teacher continues it with its KV
cache (`kd.lm.sampling`). The student is then trained with cross-entropy on the generated tokens (the
prompt does not count), optionally plus token-level KD on them (`kd_weight > 0`: the paper's
"Seq-KD + Word-KD").

    loss = ce_weight * NLL(student, y_teacher) + kd_weight * T^2 D(p_teacher, q_student) on y_teacher

How the teacher decodes (`decoding`):
  "sample"  the default, as TRL's GKD trainer decodes for `seq_kd=True` (its GKDConfig: temperature
            0.9, `do_sample=True`, top_k 0): `sample_temperature` (0.9), `top_k` (0: off), `top_p`
            (1: off); these draws are fresh at every step;
  "greedy"  the most likely token at each step (beam search with a beam of 1);
  "beam"    the paper's approximation of the teacher's mode: beam search with `beam_size` beams (5,
            the paper's), the best hypothesis by log P / length ** `length_penalty`.
With `eos_token >= 0`, a continuation ends at its first EOS: the EOS is a target, the tokens after it
(EOS filler) count neither as targets nor as real tokens. A batch with `prompt_length` per example
(prompt/completion or chat data, kd.data.text_files) keeps each example's own prompt and continues it
to the window's end (sampling and greedy; beam search uses the fixed `prompt_length`).

Reference: Y. Kim, A. M. Rush, "Sequence-Level Knowledge Distillation", EMNLP 2016, arXiv:1606.07947,
Section 3.2, eq. 5-6; its experiments decode the teacher with a beam of 5.
"""

from typing import Any

import jax.numpy as jnp

from kd.lm import sampling
from kd.methods import lm_common

LANGUAGE_MODEL = True  # Reads next-token targets of a token dataset (kd.lm.check_stages).
NEEDS_TEACHER = True
DEFAULTS: dict[str, Any] = {**lm_common.DIVERGENCE_DEFAULTS, "kd_weight": 0.0, "ce_weight": 1.0,
                            "prompt_length": 16, "decoding": "sample", "sample_temperature": 0.9,
                            "top_k": 0, "top_p": 1.0, "beam_size": 5, "length_penalty": 1.0,
                            "eos_token": -1}
DECODER_KEYS = ("prompt_length", "decoding", "sample_temperature", "top_k", "top_p", "beam_size",
                "length_penalty", "eos_token")


def check(params: dict[str, Any], where: str) -> None:
  lm_common.check_divergence(params, where)
  lm_common.check_prompt(params, where)
  lm_common.check_decoding(params, where)


def continue_prompts(module, variables, batch, rng, *, prompt_length: int, decoding: str = "sample",
                     sample_temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, beam_size: int = 5,
                     length_penalty: float = 1.0, eos_token: int = -1):
  """The batch with each window's tokens after `prompt_length` replaced by `module`'s continuation.

  `loss_mask` leaves out the prompt and whatever follows a continuation's first EOS; the generated
  tokens up to that EOS are real (`mask`).
  """
  tokens_BxL = batch["tokens"]
  length = tokens_BxL.shape[1]
  if "prompt_length" in batch and decoding != "beam":  # Each example's own prompt (prompt/completion data).
    return _continue_own_prompts(module, variables, batch, rng, decoding=decoding,
                                 sample_temperature=sample_temperature, top_k=top_k, top_p=top_p,
                                 eos_token=eos_token)
  prompt_BxP = tokens_BxL[:, :prompt_length]
  num_new_tokens = length - prompt_length
  if decoding == "beam":
    beams_BxKxL, _ = sampling.beam_search(module, variables, prompt_BxP, num_new_tokens=num_new_tokens,
                                          beam_size=beam_size, length_penalty=length_penalty,
                                          eos_token=eos_token)
    generated_BxL = beams_BxKxL[:, 0]
  else:
    temperature = 0.0 if decoding == "greedy" else sample_temperature
    generated_BxL = sampling.generate(module, variables, prompt_BxP, num_new_tokens=num_new_tokens,
                                      rng=rng, temperature=temperature, top_k=top_k, top_p=top_p,
                                      eos_token=eos_token)
  generated_mask_BxL = sampling.generated_mask(generated_BxL, prompt_length, eos_token)
  after_prompt_L = jnp.arange(length) >= prompt_length
  prompt_mask_BxL = batch["mask"] if "mask" in batch else jnp.ones_like(tokens_BxL, bool)
  return {**batch, "tokens": generated_BxL.astype(tokens_BxL.dtype),
          "mask": jnp.where(after_prompt_L[None], generated_mask_BxL, prompt_mask_BxL),
          "loss_mask": generated_mask_BxL}


def _continue_own_prompts(module, variables, batch, rng, *, decoding, sample_temperature, top_k, top_p, eos_token):
  """`continue_prompts` when the batch says where each example's prompt ends (`prompt_length` [B], as
  kd.data.text_files gives for prompt/completion and chat data): each row keeps its own prompt."""
  prompt_lengths_B = batch["prompt_length"]
  temperature = 0.0 if decoding == "greedy" else sample_temperature
  generated_BxL = sampling.generate_after_prompts(module, variables, batch["tokens"], prompt_lengths_B, rng=rng,
                                                  temperature=temperature, top_k=top_k, top_p=top_p,
                                                  eos_token=eos_token)
  generated_mask_BxL = sampling.generated_mask(generated_BxL, prompt_lengths_B, eos_token)
  in_prompt_BxL = jnp.arange(generated_BxL.shape[1])[None] < prompt_lengths_B[:, None]
  return {**batch, "tokens": generated_BxL.astype(batch["tokens"].dtype),
          "mask": in_prompt_BxL | generated_mask_BxL, "loss_mask": generated_mask_BxL}


def make_prepare_batch(params: dict[str, Any], student_module, teacher_module):
  """`prepare(student_variables, teacher_variables, batch, rng) -> batch`: the teacher writes the data."""
  del student_module
  decoder = {key: params[key] for key in DECODER_KEYS}

  def prepare(student_variables, teacher_variables, batch, rng):
    del student_variables
    return continue_prompts(teacher_module, teacher_variables, batch, rng, **decoder)

  return prepare


def loss(student_out, teacher_out, batch, **params) -> tuple[Any, dict[str, Any]]:
  divergence_params = {key: value for key, value in params.items() if key not in DECODER_KEYS}
  return lm_common.distillation_loss(student_out, teacher_out, batch, **divergence_params)
