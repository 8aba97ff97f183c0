"""Supervised token-level distillation of a language model on the fixed dataset.

At every real position the student's next-token distribution is pulled toward the teacher's with
the chosen divergence (forward KL = word-level KD of Kim & Rush 2016, reverse KL, generalized JSD(beta)
of GKD, total variation, skew forward / reverse KL of DistiLLM), plus optionally cross-entropy on the
data (see `kd.methods.lm_common` for the formula and the normalisation by real tokens).

`chunk_size > 0` computes the same loss from the models' hidden states and heads, that many tokens
at a time, without either model's [B, L, V] logits (`kd.lm.chunked`; not with the teacher cache,
which holds logits only).

With a top-k teacher cache (`teacher_cache.top_k = k > 0`), `top_k_cache="sparse"` computes the
divergence on the cache's k + 1 buckets (the k cached tokens and the rest), so that no float [B, L, V]
teacher array exists; the default "dense" rebuilds the teacher's [B, L, V] log-probabilities from the cache
(`kd.methods.lm_common` gives the rule and its bound).

References: Hinton, Vinyals & Dean, arXiv:1503.02531; Kim & Rush, EMNLP 2016, arXiv:1606.07947, eq. 3;
Agarwal et al., ICLR 2024, arXiv:2306.13649; Ko et al., ICML 2024, arXiv:2402.03898.
"""

from typing import Any

from kd.methods import lm_common

LANGUAGE_MODEL = True  # Reads next-token targets of a token dataset (kd.lm.check_stages).
NEEDS_TEACHER = True
# Needs only the teacher's logits on the dataset's windows, so they can be read from kd.teacher_cache.
CACHEABLE = True
DEFAULTS: dict[str, Any] = {**lm_common.DIVERGENCE_DEFAULTS, "chunk_size": 0, "top_k_cache": "dense"}
feature_patterns = lm_common.feature_patterns
check_features = lm_common.check_features


def check(params: dict[str, Any], where: str) -> None:
  lm_common.check_divergence(params, where)
  lm_common.check_chunk_size(params, where)
  lm_common.check_top_k_cache(params, where)


def loss(student_out, teacher_out, batch, **params) -> tuple[Any, dict[str, Any]]:
  return lm_common.distillation_loss(student_out, teacher_out, batch, **params)
