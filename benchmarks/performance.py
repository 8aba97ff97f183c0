r"""What a distillation step costs, next to the teacher's forward pass and the student's own step.

    python benchmarks/performance.py [--pairs=quickstart,resnet32x4_resnet8x4] [--steps=10]
        [--batch=64] [--precisions=float32,bfloat16] [--json=performance.json]

For each teacher/student pair and precision, on synthetic data, the script builds with the real
`kd.train.train_step` (jitted with NamedShardings, the state donated, the teacher's variables an
argument, as `kd.train.train_stage` does) and times:
  student_only     the student trained on labels alone (no teacher);
  teacher_forward  the teacher's forward pass alone (inference);
  online_kd        the online KD step (hinton_kd): teacher forward, student forward and backward, update;
  cached_kd        the KD step fed precomputed teacher logits in the batch (`batch["teacher_logits"]`,
                   what a teacher-output cache supplies): the teacher does not run;
  fitnets, crd     the online step with a feature method (intermediate features, trainable connectors).

For each: step time (median over interleaved rounds), examples/s (tokens/s for a language model),
the first step's time and the XLA compile time within it, FLOPs per step from XLA's cost analysis
and the FLOP/s achieved, next to this machine's measured dense matmul FLOP/s, and memory (the
device's peak where it reports one, else the compiled program's arguments + outputs + temporaries).

Targets, printed with PASS/FAIL (ratios of the median step times):
  online_kd <= 1.05 x (student_only + teacher_forward);
  cached_kd <= 1.05 x student_only;
  no compilation inside the timed loop (counted with a jax.monitoring listener);
  no host-device transfer inside the loop beyond the batch (the loop runs under
  `jax.transfer_guard("disallow")` and puts each batch explicitly);
  data wait under 5% of the step time: the student-only step with the batch put on the devices in
  the loop against the same step on batches already there (`student_only_resident`).
And checks of the optimized HLO (`kd.perf.hlo_summary`): no parameters baked into a program as
constants, no host transfers inside a program, and the KD step's extra convolutions and matmuls
(over the student-only step) no more than the teacher's forward pass has: the teacher runs once.

Timing: every variant is compiled and warmed up first, then the variants are measured in rounds, one
after another within each round in a fresh random order, so a slow spell of a shared machine hits
all of them alike; a round runs each variant for at least --min_round_ms and blocks on the result;
the step time is the median over rounds. The five variants the targets compare are timed together,
the feature methods in their own rounds after them. The same script runs unchanged on CPU, GPU or TPU (the batch is split over all devices).

Precisions: "float32" everywhere, or "bfloat16": the student computes in bfloat16 with float32
parameters (the models' `dtype` attribute) and the teacher runs inference in bfloat16 (its variables
cast once, before the loop). Logits and losses stay float32.

Pairs are registered in `PAIRS`; one whose model is not in `kd.models.MODELS` is skipped with a
message (the language-model pair, `lm`, runs once `transformer_lm` is a registered model).
"""

import dataclasses
import functools
import json
import math
import os
import sys
import time
from typing import Any, Callable

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from kd import config as config_lib
from kd import features
from kd import methods
from kd import perf
from kd import models
from kd import train

_PAIRS = flags.DEFINE_list("pairs", ["quickstart", "resnet32x4_resnet8x4"],
                           "Teacher/student pairs to measure (keys of PAIRS; `lm` when its model exists).")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed rounds; each runs every variant at least once.")
_BATCH = flags.DEFINE_integer("batch", 0, "Global batch size (0: the pair's own, 64 for the image pairs).")
_PRECISIONS = flags.DEFINE_list("precisions", ["float32", "bfloat16"], "Precisions to measure.")
_FEATURE_METHODS = flags.DEFINE_list("feature_methods", ["fitnets", "crd"],
                                     "Feature methods measured as online KD steps.")
_MIN_ROUND_MS = flags.DEFINE_float("min_round_ms", 200.0,
                                   "Each variant runs enough steps per round to take at least this long.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps of each variant after its first (compiling) one.")
_MATMUL_SIZE = flags.DEFINE_integer("matmul_size", 0,
                                    "Side of the square matmul that measures peak FLOP/s (0: 2048 on CPU, "
                                    "8192 on accelerators).")
_JSON = flags.DEFINE_string("json", "", "Also write the results to this file.")

ONLINE_KD_LIMIT = 1.05  # x (student_only + teacher_forward)
CACHED_KD_LIMIT = 1.05  # x student_only
DATA_WAIT_LIMIT = 0.05  # fraction of the step time


@dataclasses.dataclass(frozen=True)
class Pair:
  """A teacher/student pair and the synthetic data it trains on.

  Attributes:
    teacher, student: model configs (`{"name": ..., **attributes}`).
    input_key, input_shape, input_dtype: the model's input in the batch, per example.
    num_classes: classes (the vocabulary for a language model).
    label_shape: the label's shape per example: () for a class, (length,) for next tokens.
    num_examples: size of the training split (CRD's memory bank holds one row per example).
    batch_size: the default global batch.
    feature_methods: method name -> its config for this pair (which features it pairs up).
    unit, units_per_example: what throughput counts: "examples", or "tokens" per sequence.
  """

  teacher: dict[str, Any]
  student: dict[str, Any]
  input_key: str
  input_shape: tuple[int, ...]
  input_dtype: str
  num_classes: int
  num_examples: int
  batch_size: int = 64
  label_shape: tuple[int, ...] = ()
  feature_methods: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
  unit: str = "examples"
  units_per_example: int = 1


def _quickstart_pair() -> Pair:
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "experiments"))
  import quickstart  # pylint: disable=g-import-not-at-top
  return Pair(
      teacher=models.model_config(**quickstart.TEACHER), student=models.model_config(**quickstart.STUDENT),
      input_key="image", input_shape=(8, 8, 1), input_dtype="uint8", num_classes=10, num_examples=1438,
      feature_methods={
          "fitnets": methods.method_config("fitnets", student_features=("conv0",), teacher_features=("conv1",)),
          "crd": methods.method_config("crd", student_features=("hidden",), teacher_features=("hidden",)),
      })


def _resnet_pair() -> Pair:
  # The CRD benchmark's resnet32x4 -> resnet8x4 on CIFAR-100-sized inputs. FitNets' hint is the
  # second stage's output (RepDistiller's hint_layer=2), CRD contrasts the pooled embeddings.
  return Pair(
      teacher=models.zoo_model_config("resnet32x4"), student=models.zoo_model_config("resnet8x4"),
      input_key="image", input_shape=(32, 32, 3), input_dtype="uint8", num_classes=100, num_examples=50000,
      feature_methods={
          "fitnets": methods.method_config("fitnets", student_features=("layer2_0",),
                                           teacher_features=("layer2_4",)),
          "crd": methods.method_config("crd", student_features=("pool",), teacher_features=("pool",)),
      })


class PairUnavailable(Exception):
  """The pair's models are not in this version of kd.models."""


def _lm_pair() -> Pair:
  # A causal language model pair, measured in tokens/s. Its sizes are the model's defaults (teacher)
  # and a quarter-width, half-depth student until the model defines named sizes.
  if "transformer_lm" not in models.MODELS:
    raise PairUnavailable("kd.models has no 'transformer_lm' model yet; the pair runs once it is registered")
  teacher = models.model_config("transformer_lm")
  return Pair(teacher=teacher, student=teacher, input_key="tokens", input_shape=(128,), input_dtype="int32",
              num_classes=256, num_examples=10000, batch_size=16, label_shape=(128,),
              feature_methods={}, unit="tokens", units_per_example=128)


# Name -> a function returning the Pair (raising PairUnavailable when its models do not exist).
PAIRS: dict[str, Callable[[], Pair]] = {
    "quickstart": _quickstart_pair,
    "resnet32x4_resnet8x4": _resnet_pair,
    "lm": _lm_pair,
}

# Precision -> (student compute dtype, teacher compute dtype). Parameters stay float32.
PRECISIONS = {"float32": ("float32", "float32"), "bfloat16": ("bfloat16", "bfloat16")}


def _synthetic_batches(pair: Pair, batch_size: int, count: int) -> list[dict[str, np.ndarray]]:
  """`count` different host batches of random inputs, labels and example indices."""
  rng = np.random.default_rng(0)
  batches = []
  for _ in range(count):
    shape = (batch_size,) + pair.input_shape
    if pair.input_dtype == "uint8":
      inputs = rng.integers(0, 256, shape, dtype=np.uint8)
    elif np.issubdtype(np.dtype(pair.input_dtype), np.integer):
      inputs = rng.integers(0, pair.num_classes, shape).astype(pair.input_dtype)
    else:
      inputs = rng.normal(size=shape).astype(pair.input_dtype)
    batches.append({
        pair.input_key: inputs,
        "label": rng.integers(0, pair.num_classes, (batch_size,) + pair.label_shape).astype(np.int32),
        "index": rng.choice(pair.num_examples, batch_size, replace=False).astype(np.int32),
    })
  return batches


def _feature_paths(method_config, student, teacher, example) -> tuple[list[str], list[str], dict, dict]:
  """Resolves a method's feature patterns and checks their shapes, as kd.train does."""
  s_patterns, t_patterns = methods.feature_patterns(method_config)
  s_taps = features.tap_points(student, example) if s_patterns else {}
  t_taps = features.tap_points(teacher, example) if t_patterns else {}
  s_paths = features.select(s_patterns, list(s_taps), "student_features") if s_patterns else []
  t_paths = features.select(t_patterns, list(t_taps), "teacher_features") if t_patterns else []
  s_shapes, t_shapes = {p: s_taps[p] for p in s_paths}, {p: t_taps[p] for p in t_paths}
  methods.check_feature_shapes(method_config, s_shapes, t_shapes, "method")
  return s_paths, t_paths, s_shapes, t_shapes


@dataclasses.dataclass
class Variant:
  """One measured program: a train step (carrying its donated state) or the teacher's forward pass."""

  name: str
  fn: Any  # The jitted function.
  teacher_variables: Any
  host_batches: list[dict[str, np.ndarray]]
  state: Any = None  # None: a forward pass.
  figures: dict[str, Any] = dataclasses.field(default_factory=dict)
  times: list[float] = dataclasses.field(default_factory=list)
  put_fractions: list[float] = dataclasses.field(default_factory=list)
  steps_per_round: int = 1
  loop_compiles: int = 0
  resident_batches: bool = False  # True: the batches are put on the devices once, before the loop.

  def args(self, batch):
    if self.state is None:
      return (self.teacher_variables, batch)
    return (self.state, self.teacher_variables, batch)

  def run(self, batch):
    """Dispatches one step; returns what to block on."""
    if self.state is None:
      return self.fn(self.teacher_variables, batch)
    self.state, _ = self.fn(self.state, self.teacher_variables, batch)
    return self.state


def _with_dtype(model_config: dict[str, Any], dtype: str) -> dict[str, Any]:
  """The model config computing in `dtype`; PairUnavailable if the model has no `dtype` attribute."""
  if dtype == "float32":
    return model_config
  if "dtype" not in models.model_config(model_config["name"]):
    raise PairUnavailable(f"model {model_config['name']!r} has no dtype attribute, so it cannot compute in {dtype}")
  return {**model_config, "dtype": dtype}


def _build_variants(pair: Pair, precision: str, batch_size: int, mesh, feature_methods,
                    counter: perf.CompileCounter) -> list[Variant]:
  student_dtype, teacher_dtype = PRECISIONS[precision]
  replicated = jax.NamedSharding(mesh, jax.P())
  batch_sharding = jax.NamedSharding(mesh, jax.P("data"))
  student = models.build_model(_with_dtype(pair.student, student_dtype), pair.num_classes)
  teacher = models.build_model(_with_dtype(pair.teacher, teacher_dtype), pair.num_classes)
  example = jax.ShapeDtypeStruct((2,) + pair.input_shape, jnp.float32)
  example_batch = {k: jnp.zeros((2,) + v.shape[1:], v.dtype) for k, v in
                   _synthetic_batches(pair, 2, 1)[0].items()}
  teacher_variables = models.init_variables(teacher, jax.random.PRNGKey(1), example_batch[pair.input_key])
  if teacher_dtype != "float32":  # Cast once: the teacher reads half the bytes every step.
    teacher_variables = jax.tree.map(
        lambda x: x.astype(teacher_dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, teacher_variables)
  teacher_variables = jax.device_put(teacher_variables, replicated)
  optimizer, schedule = train.make_optimizer(config_lib.optimizer_config(), 10000)
  host_batches = _synthetic_batches(pair, batch_size, 2)

  def train_variant(name, method_config, teacher_kind):
    s_paths, t_paths, s_shapes, t_shapes = _feature_paths(method_config, student, teacher, example)
    connector = methods.build_connector(method_config, s_shapes, t_shapes, pair.num_examples)
    student_apply = models.make_apply(student, pair.input_key, s_paths)
    variables, batches, init_batch = teacher_variables, host_batches, example_batch
    if teacher_kind == "online":
      teacher_apply = models.make_apply(teacher, pair.input_key, t_paths)
    elif teacher_kind == "cached":
      teacher_apply, variables = perf.cached_teacher_apply, {}
      batches = [{**b, perf.TEACHER_LOGITS: cached_logits[i]} for i, b in enumerate(host_batches)]
      init_batch = {**example_batch, perf.TEACHER_LOGITS: jnp.zeros((2,) + cached_logits[0].shape[1:], jnp.float32)}
    else:
      teacher_apply, variables = None, {}
    init = functools.partial(train.init_train_state, module=student, optimizer=optimizer,
                             input_key=pair.input_key, connector=connector, student_apply=student_apply,
                             teacher_apply=teacher_apply)
    abstract_state = jax.eval_shape(init, jax.random.PRNGKey(0), init_batch, variables)
    state_sharding = jax.tree.map(lambda _: replicated, abstract_state)
    state = jax.jit(init, out_shardings=state_sharding)(jax.random.PRNGKey(0), init_batch, variables)
    step = jax.jit(
        functools.partial(train.train_step, student_apply=student_apply, teacher_apply=teacher_apply,
                          loss_fn=methods.build_loss(method_config), optimizer=optimizer,
                          learning_rate=schedule, connector=connector),
        in_shardings=(state_sharding, jax.tree.map(lambda _: replicated, variables), batch_sharding),
        out_shardings=(state_sharding, replicated),
        donate_argnums=0)
    return Variant(name, step, variables, batches, state=state)

  teacher_apply = models.make_apply(teacher, pair.input_key)
  teacher_forward = jax.jit(lambda variables, batch: teacher_apply(variables, batch, train=False)["logits"],
                            in_shardings=(jax.tree.map(lambda _: replicated, teacher_variables), batch_sharding),
                            out_shardings=batch_sharding)
  forward = Variant("teacher_forward", teacher_forward, teacher_variables, host_batches)
  _first_step(forward, counter, batch_sharding)
  # What a teacher-output cache holds: the teacher's logits for each batch, computed beforehand.
  cached_logits = [np.asarray(teacher_forward(teacher_variables, jax.device_put(b, batch_sharding)),
                              np.float32) for b in host_batches]
  student_only = train_variant("student_only", methods.method_config("supervised"), None)
  # The same step on batches already on the devices: the difference is what the data path costs.
  student_resident = Variant("student_only_resident", student_only.fn, student_only.teacher_variables,
                             host_batches, state=jax.tree.map(jnp.copy, student_only.state),
                             resident_batches=True)
  variants = [
      student_only,
      student_resident,
      forward,
      train_variant("online_kd", methods.method_config("hinton_kd"), "online"),
      train_variant("cached_kd", methods.method_config("hinton_kd"), "cached"),
  ]
  for name in feature_methods:
    if name in pair.feature_methods:
      variants.append(train_variant(name, pair.feature_methods[name], "online"))
  return variants


def _first_step(variant: Variant, counter: perf.CompileCounter, batch_sharding) -> None:
  """Runs the variant's first step (it compiles): its time, and the compile time within it."""
  batch = jax.device_put(variant.host_batches[0], batch_sharding)
  count, seconds = counter.count, counter.seconds
  tic = time.perf_counter()
  jax.block_until_ready(variant.run(batch))
  variant.figures["first_step_seconds"] = time.perf_counter() - tic
  variant.figures["compile_seconds"] = counter.seconds - seconds
  variant.figures["compiles_first_step"] = counter.count - count


def _first_steps(variants: list[Variant], counter: perf.CompileCounter, batch_sharding) -> None:
  """Compiles each variant with its first step (timed), warms it up, and measures its cost."""
  for variant in variants:
    batch = jax.device_put(variant.host_batches[0], batch_sharding)
    if "first_step_seconds" not in variant.figures:
      _first_step(variant, counter, batch_sharding)
    cost = perf.compiled_cost(variant.fn, *variant.args(batch))
    variant.figures["flops_per_step"] = cost["flops"]
    variant.figures["program_bytes"] = cost["program_bytes"]
    variant.figures["hlo"] = perf.hlo_summary(variant.fn, *variant.args(batch))
    tic = time.perf_counter()
    for i in range(max(_WARMUP.value, 1)):
      out = variant.run(jax.device_put(variant.host_batches[i % len(variant.host_batches)], batch_sharding))
    jax.block_until_ready(out)
    per_step = (time.perf_counter() - tic) / max(_WARMUP.value, 1)
    variant.steps_per_round = max(1, math.ceil(_MIN_ROUND_MS.value / 1e3 / max(per_step, 1e-6)))


def _timed_rounds(variants: list[Variant], counter: perf.CompileCounter, batch_sharding, rounds: int) -> str:
  """Interleaved timing under the transfer guard; returns "" or the guard's error."""
  guard_error = ""
  shuffle = np.random.default_rng(0)
  for _ in range(rounds):
    # A fresh order each round: a variant that runs after a heavy one (CRD's memory bank) would
    # otherwise always inherit what that one leaves behind (caches, allocator, clock).
    order = [variants[i] for i in shuffle.permutation(len(variants))]
    for variant in order:
      count = counter.count
      steps = variant.steps_per_round
      put_seconds = 0.0
      resident = ([jax.device_put(b, batch_sharding) for b in variant.host_batches]
                  if variant.resident_batches else None)
      try:
        # Only the batch crosses to the devices, explicitly; anything else (a Python scalar, a NumPy
        # array turned into a constant, a value read back) raises here.
        with jax.transfer_guard("disallow"):
          tic = time.perf_counter()
          for i in range(steps):
            put_tic = time.perf_counter()
            if resident:
              batch = resident[i % len(resident)]
            else:
              batch = jax.device_put(variant.host_batches[i % len(variant.host_batches)], batch_sharding)
            put_seconds += time.perf_counter() - put_tic
            out = variant.run(batch)
          jax.block_until_ready(out)
          elapsed = time.perf_counter() - tic
      except Exception as e:  # pylint: disable=broad-except
        if "transfer" not in str(e).lower():
          raise
        guard_error = guard_error or f"{variant.name}: {str(e).splitlines()[0]}"
        return guard_error
      variant.times.append(elapsed / steps)
      variant.put_fractions.append(put_seconds / elapsed)
      variant.loop_compiles += counter.count - count
  return guard_error


def run_pair(name: str, pair: Pair, precision: str, batch_size: int, mesh, counter: perf.CompileCounter,
             matmul_flops: dict[str, float]) -> dict[str, Any]:
  batch_sharding = jax.NamedSharding(mesh, jax.P("data"))
  variants = _build_variants(pair, precision, batch_size, mesh, _FEATURE_METHODS.value, counter)
  _first_steps(variants, counter, batch_sharding)
  # The variants the targets compare are timed together; the feature methods (heavier, and only
  # informative) in their own rounds afterwards.
  compared = [v for v in variants if v.name not in _FEATURE_METHODS.value]
  guard_error = _timed_rounds(compared, counter, batch_sharding, _STEPS.value)
  guard_error = guard_error or _timed_rounds([v for v in variants if v.name in _FEATURE_METHODS.value],
                                             counter, batch_sharding, _STEPS.value)
  peak_matmul = matmul_flops[PRECISIONS[precision][0]]
  units = batch_size * pair.units_per_example
  figures = {}
  for variant in variants:
    step_seconds = float(np.median(variant.times)) if variant.times else float("nan")
    flops = variant.figures["flops_per_step"]
    figures[variant.name] = {
        **variant.figures,
        "step_ms": step_seconds * 1e3,
        f"{pair.unit}_per_second": units / step_seconds,
        "flops_per_second": flops / step_seconds,
        "fraction_of_matmul_peak": flops / step_seconds / peak_matmul,
        # Host time spent putting batches on the devices, whether or not the devices waited for it.
        "batch_put_fraction": float(np.median(variant.put_fractions)) if variant.put_fractions else None,
        "compiles_in_loop": variant.loop_compiles,
        "steps_per_round": variant.steps_per_round,
        "round_ms": [t * 1e3 for t in variant.times],
        "rounds": len(variant.times),
    }
  # Ratios of the medians: the rounds interleave the variants, so a busy spell of a shared machine
  # touches them alike, and the median drops the rounds it hit hardest.
  ms = {k: v["step_ms"] for k, v in figures.items()}
  online_ratio = ms["online_kd"] / (ms["student_only"] + ms["teacher_forward"])
  cached_ratio = ms["cached_kd"] / ms["student_only"]
  loop_compiles = sum(v.loop_compiles for v in variants)
  # Data wait: how much slower the smallest training step runs when each batch is put on the devices
  # in the loop than on batches already there (the other steps are longer, so their share is smaller).
  data_wait = max(0.0, 1.0 - ms["student_only_resident"] / ms["student_only"])
  targets = {
      "online_kd_over_student_plus_teacher": {"value": online_ratio, "limit": ONLINE_KD_LIMIT,
                                              "pass": online_ratio <= ONLINE_KD_LIMIT},
      "cached_kd_over_student_only": {"value": cached_ratio, "limit": CACHED_KD_LIMIT,
                                      "pass": cached_ratio <= CACHED_KD_LIMIT},
      "compiles_in_loop": {"value": loop_compiles, "limit": 0, "pass": loop_compiles == 0},
      "transfers_beyond_batch": {"value": guard_error or "none", "limit": "none", "pass": not guard_error},
      "data_wait_fraction": {"value": data_wait, "limit": DATA_WAIT_LIMIT, "pass": data_wait < DATA_WAIT_LIMIT},
  }
  # How the programs were compiled (optimized HLO): no parameters baked in as constants, no host
  # round-trips, and the teacher's convolutions and matmuls inside the KD step once, not twice.
  hlo = {k: v["hlo"] for k, v in figures.items()}
  constants = sum(h["large_constants"] for h in hlo.values())
  host_ops = sum(h["host_transfers"] for h in hlo.values())
  teacher_ops = {op: hlo["online_kd"][op] - hlo["student_only"][op] for op in ("convolutions", "dots")}
  single_pass = all(teacher_ops[op] <= hlo["teacher_forward"][op] for op in teacher_ops)
  checks = {
      "constants_in_programs": {"value": constants, "limit": 0, "pass": constants == 0},
      "host_transfers_in_programs": {"value": host_ops, "limit": 0, "pass": host_ops == 0},
      "teacher_ops_in_online_kd": {"value": teacher_ops, "limit": {op: hlo["teacher_forward"][op] for op in teacher_ops},
                                   "pass": single_pass},
  }
  # Informative, not targets: a feature method's step next to what the teacher and student cost.
  for method in _FEATURE_METHODS.value:
    if method in figures:
      figures[method]["over_student_plus_teacher"] = ms[method] / (ms["student_only"] + ms["teacher_forward"])
  return {"pair": name, "precision": precision, "batch_size": batch_size, "unit": pair.unit,
          "teacher": pair.teacher, "student": pair.student, "device_peak_bytes": perf.device_peak_bytes(),
          "matmul_flops_per_second": peak_matmul, "variants": figures, "targets": targets,
          "hlo_checks": checks}


def print_result(result: dict[str, Any]) -> None:
  unit = result["unit"]
  print(f"\n{result['pair']}  precision={result['precision']}  batch={result['batch_size']}  "
        f"(dense matmul {result['matmul_flops_per_second'] / 1e9:.0f} GFLOP/s)")
  header = (f"{'variant':<22}{'step ms':>10}{unit + '/s':>13}{'1st step s':>12}{'compile s':>11}"
            f"{'GFLOP/step':>12}{'GFLOP/s':>10}{'% matmul':>10}{'program MB':>12}")
  print(header)
  print("-" * len(header))
  for name, v in result["variants"].items():
    program = f"{v['program_bytes'] / 1e6:.1f}" if v["program_bytes"] is not None else "n/a"
    print(f"{name:<22}{v['step_ms']:>10.2f}{v[unit + '_per_second']:>13.0f}{v['first_step_seconds']:>12.2f}"
          f"{v['compile_seconds']:>11.2f}{v['flops_per_step'] / 1e9:>12.3f}{v['flops_per_second'] / 1e9:>10.1f}"
          f"{100 * v['fraction_of_matmul_peak']:>9.1f}%{program:>12}")
  if result["device_peak_bytes"] is not None:
    print(f"device peak memory so far: {result['device_peak_bytes'] / 1e6:.1f} MB")
  t = result["targets"]
  verdict = lambda ok: "PASS" if ok else "FAIL"
  print(f"online_kd / (student_only + teacher_forward) = {t['online_kd_over_student_plus_teacher']['value']:.3f}"
        f"  (<= {ONLINE_KD_LIMIT})  {verdict(t['online_kd_over_student_plus_teacher']['pass'])}")
  print(f"cached_kd / student_only                     = {t['cached_kd_over_student_only']['value']:.3f}"
        f"  (<= {CACHED_KD_LIMIT})  {verdict(t['cached_kd_over_student_only']['pass'])}")
  print(f"compilations inside the timed loop           = {t['compiles_in_loop']['value']}"
        f"  (0)  {verdict(t['compiles_in_loop']['pass'])}")
  print(f"transfers beyond the batch (transfer guard)  = {t['transfers_beyond_batch']['value']}"
        f"  {verdict(t['transfers_beyond_batch']['pass'])}")
  print(f"data wait / step time (max over variants)    = {100 * t['data_wait_fraction']['value']:.2f}%"
        f"  (< {100 * DATA_WAIT_LIMIT:.0f}%)  {verdict(t['data_wait_fraction']['pass'])}")
  c = result["hlo_checks"]
  print(f"large constants in the programs (params baked in) = {c['constants_in_programs']['value']}"
        f"  (0)  {verdict(c['constants_in_programs']['pass'])}")
  print(f"host transfers inside the programs             = {c['host_transfers_in_programs']['value']}"
        f"  (0)  {verdict(c['host_transfers_in_programs']['pass'])}")
  print(f"teacher ops in online_kd (online_kd - student_only) = {c['teacher_ops_in_online_kd']['value']}"
        f"  (<= teacher_forward's {c['teacher_ops_in_online_kd']['limit']})  "
        f"{verdict(c['teacher_ops_in_online_kd']['pass'])}")
  for name, v in result["variants"].items():
    if "over_student_plus_teacher" in v:
      print(f"{name} / (student_only + teacher_forward) = {v['over_student_plus_teacher']:.3f}  (not a target)")


def main(argv):
  del argv
  for precision in _PRECISIONS.value:
    if precision not in PRECISIONS:
      raise app.UsageError(f"--precisions: {precision!r} is not one of {sorted(PRECISIONS)}")
  for name in _PAIRS.value:
    if name not in PAIRS:
      raise app.UsageError(f"--pairs: {name!r} is not one of {sorted(PAIRS)}")
  counter = perf.CompileCounter()
  num_devices = jax.device_count()
  mesh = jax.make_mesh((num_devices,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  size = _MATMUL_SIZE.value or (2048 if jax.default_backend() == "cpu" else 8192)
  matmul_flops = {dtype: perf.matmul_flops_per_second(dtype, size)
                  for dtype in sorted({PRECISIONS[p][0] for p in _PRECISIONS.value})}
  output = {"backend": jax.default_backend(), "device": jax.devices()[0].device_kind, "num_devices": num_devices,
            "host": perf.host_description(), "jax_version": jax.__version__, "matmul_size": size,
            "matmul_flops_per_second": matmul_flops, "steps": _STEPS.value, "results": [], "skipped": {}}
  print(f"{output['device']} x{num_devices} ({output['backend']}), host {output['host']['cpu_model']} "
        f"with {output['host']['cpu_count']} cores, jax {jax.__version__}")
  print("dense matmul " + ", ".join(f"{k}: {v / 1e9:.0f} GFLOP/s" for k, v in matmul_flops.items()))
  for name in _PAIRS.value:
    try:
      pair = PAIRS[name]()
    except PairUnavailable as e:
      print(f"\n{name}: skipped ({e})")
      output["skipped"][name] = str(e)
      continue
    batch_size = _BATCH.value or pair.batch_size
    if batch_size % num_devices:
      raise app.UsageError(f"--batch={batch_size} does not divide over {num_devices} devices")
    for precision in _PRECISIONS.value:
      try:
        result = run_pair(name, pair, precision, batch_size, mesh, counter, matmul_flops)
      except PairUnavailable as e:
        print(f"\n{name} {precision}: skipped ({e})")
        output["skipped"][f"{name}/{precision}"] = str(e)
        continue
      print_result(result)
      output["results"].append(result)
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(output, f, indent=2)
  print(json.dumps(output))


if __name__ == "__main__":
  app.run(main)
