"""Language-model distillation: sampling with a KV cache, token-level evaluation, batch preparation.

The language model is an ordinary `kd` model (`transformer_lm` in `kd.models.MODELS`) trained by the
ordinary train step; this package holds what only language models need:

    sampling     generation inside `jit` (prefill, then `lax.scan` over a KV cache): temperature,
                 top-k, top-p; and the full-prefix recomputation it is checked and timed against
    tokens       next-token targets and weights of a batch of windows
    evaluation   perplexity, next-token accuracy and agreement, decode tokens/s
    report       the report card of a language-model experiment
"""

from kd.lm.tokens import is_language_model
from kd.lm.tokens import check_stages
