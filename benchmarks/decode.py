r"""Decoding speed of the transformer LM with the KV cache against full-prefix recomputation, and the
time split of an on-policy GKD step.

    python benchmarks/decode.py [--length=256] [--repeats=3] [--json=out.json]

Models are the teacher and student architectures of `experiments/lm_stdlib.py` (4 x 128 and 2 x 64,
rotary positions, byte vocabulary), freshly initialised: speed does not depend on the weights.

1. Greedy decoding of `length` tokens in total (a 16-token prompt, then `length - 16` new tokens), at
   batch 1 and 32: tokens/s of `kd.lm.sampling.generate` (prefill, then one token per `lax.scan` step
   over the KV cache) and of `generate_recompute` (each step reruns the model on the whole fixed-size
   buffer), and their ratio. Both are single compiled programs.
2. One GKD training step on a batch of 128-byte windows with lambda = 1 (always on-policy), and its
   parts compiled alone: the student's generation (`prepare_batch`), the teacher's scoring forward
   pass, and the rest (student forward, backward, optimizer update) as the difference.
"""

import functools
import json
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from kd import config as config_lib
from kd import methods
from kd import models
from kd import train
from kd.lm import configs
from kd.lm import evaluation as lm_evaluation

_LENGTH = flags.DEFINE_integer("length", 256, "Total decoded length (prompt of 16 included).")
_BATCH = flags.DEFINE_integer("gkd_batch_size", 16, "Batch of the GKD step.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per measurement (median).")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1", "32"], "Decoding batch sizes.")
_SMALL = flags.DEFINE_bool("small", False, "Tiny models (to check that the script runs).")
_JSON = flags.DEFINE_string("json", "", "Also write the results to this file.")

PROMPT = 16


def _median_seconds(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # Compile.
  times = []
  for _ in range(repeats):
    tic = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - tic)
  return float(np.median(times))


def _module(model, max_len):
  return models.build_model(models.model_config(**{**model, "max_len": max_len}), 256)


def decode_figures(teacher_model, length: int, repeats: int, batch_sizes) -> dict:
  module = _module(teacher_model, length)
  variables = models.init_variables(module, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
  figures = {}
  for batch_size in batch_sizes:
    cached, recomputed = (lm_evaluation.decode_tokens_per_second(
        module, variables, batch_size=batch_size, prompt_length=PROMPT, num_new_tokens=length - PROMPT,
        recompute=recompute, repeats=repeats) for recompute in (False, True))
    figures[f"b{batch_size}"] = {"kv_cache_tokens_per_s": cached, "recompute_tokens_per_s": recomputed,
                                 "speedup": cached / recomputed}
  return figures


def gkd_step_figures(teacher_model, student_model, batch_size: int, repeats: int) -> dict:
  teacher, student = _module(teacher_model, 128), _module(student_model, 128)
  method = methods.method_config("lm_gkd", student_data_fraction=1.0, prompt_length=PROMPT)
  tokens = np.random.default_rng(0).integers(32, 127, (batch_size, 128)).astype(np.uint8)
  batch = {"tokens": tokens, "mask": np.ones_like(tokens, bool), "index": np.arange(batch_size, dtype=np.int32)}
  teacher_variables = models.init_variables(teacher, jax.random.key(1), jnp.zeros((1, 8), jnp.int32))
  optimizer, schedule = train.make_optimizer(config_lib.optimizer_config(), 1000)
  state = train.init_train_state(jax.random.key(0), batch, module=student, optimizer=optimizer,
                                 input_key="tokens")
  student_apply, teacher_apply = models.make_apply(student, "tokens"), models.make_apply(teacher, "tokens")
  prepare = methods.build_prepare_batch(method, student, teacher)
  step = jax.jit(functools.partial(train.train_step, student_apply=student_apply, teacher_apply=teacher_apply,
                                   loss_fn=methods.build_loss(method), optimizer=optimizer,
                                   learning_rate=schedule, prepare_batch=prepare))
  student_variables = train.student_variables(state)
  generation = _median_seconds(jax.jit(prepare), student_variables, teacher_variables, batch,
                               jax.random.key(0), repeats=repeats)
  scoring = _median_seconds(jax.jit(lambda v, b: teacher_apply(v, b, train=False)["logits"]),
                            teacher_variables, batch, repeats=repeats)
  whole = _median_seconds(step, state, teacher_variables, batch, repeats=repeats)
  return {"batch_size": batch_size, "step_ms": whole * 1e3, "generation_ms": generation * 1e3,
          "teacher_scoring_ms": scoring * 1e3, "update_ms": (whole - generation - scoring) * 1e3}


def main(argv):
  del argv
  teacher, student = ((configs.SMOKE_TEACHER, configs.SMOKE_STUDENT) if _SMALL.value
                      else (configs.TEACHER, configs.STUDENT))
  figures = {"device": jax.devices()[0].device_kind, "length": _LENGTH.value,
             "decode": decode_figures(teacher, _LENGTH.value, _REPEATS.value,
                                           [int(b) for b in _BATCH_SIZES.value]),
             "gkd_step": gkd_step_figures(teacher, student, _BATCH.value, _REPEATS.value)}
  print(f"Greedy decoding of {_LENGTH.value} tokens ({PROMPT}-token prompt), teacher architecture, "
        f"{figures['device']}:")
  print("| batch | KV cache (tokens/s) | full-prefix recompute (tokens/s) | speedup |")
  print("|---:|---:|---:|---:|")
  for batch_size in [int(b) for b in _BATCH_SIZES.value]:
    row = figures["decode"][f"b{batch_size}"]
    print(f"| {batch_size} | {row['kv_cache_tokens_per_s']:,.0f} | {row['recompute_tokens_per_s']:,.0f} | "
          f"{row['speedup']:.1f}x |")
  gkd = figures["gkd_step"]
  print(f"\nOn-policy GKD step (lambda = 1, batch {gkd['batch_size']} x 128 bytes): {gkd['step_ms']:.1f} ms = "
        f"generation {gkd['generation_ms']:.1f} ms + teacher scoring {gkd['teacher_scoring_ms']:.1f} ms + "
        f"update {gkd['update_ms']:.1f} ms")
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(figures, f, indent=2)


if __name__ == "__main__":
  app.run(main)
