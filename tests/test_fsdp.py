"""Meshes with an FSDP axis and a sharded teacher (8 CPU devices) match one device for the same global batch."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import pytest

from conftest import REPO
from kd import config as config_lib
from kd import distributed
from kd.errors import ConfigError

SCRIPT = textwrap.dedent("""
    import json, os, shutil, sys
    import jax, numpy as np
    from kd import checkpoint, distributed, experiment, train
    from kd.config import base_config, stage_config
    from kd.methods import method_config
    assert jax.device_count() == 8, jax.devices()
    config = base_config()
    config.data.batch_size = 32
    config.data.eval_batch_size = 64
    teacher, student = {"name": "cnn", "channels": (), "hidden": 256}, {"name": "cnn", "channels": (8,), "hidden": 16}
    config.stages.teacher = stage_config(teacher, method_config("supervised"), num_steps=8)
    config.stages.student = stage_config(student, method_config("hinton_kd"), teacher="teacher", num_steps=8)
    config.stage_order = ("teacher", "student")
    config.report.baseline = "teacher"
    config.log_every_steps = 1
    config.checkpoint.every_steps = 100
    meshes = {"1x1": (1, 1, "replicated"), "2x2": (2, 2, "fsdp"), "2x4": (2, 4, "all")}
    out = {}
    for name, (data, fsdp, teacher) in meshes.items():
      config.mesh.data, config.mesh.fsdp, config.mesh.teacher = data, fsdp, teacher
      experiment.check(config, sys.argv[1], config.stage_order)
      run_dir = train.seed_dir(os.path.join(sys.argv[1], name), 0)
      if name == "1x1":
        train.train_stage(config, "teacher", run_dir, seed=0)
      else:  # The teacher stage on FSDP meshes is checked through the student's: same teacher, sharded.
        shutil.copytree(os.path.join(sys.argv[1], "1x1", "seed_0", "teacher"), os.path.join(run_dir, "teacher"))
      train.train_stage(config, "student", run_dir, seed=0)
      # Where the arrays live: the student's state on the FSDP axis, the teacher on its own choice.
      mesh = train.make_mesh(config.mesh)
      teacher = checkpoint.load_model(os.path.join(run_dir, "teacher"))
      kernel = teacher.variables["params"]["hidden"]["kernel"]  # [64, 256]
      placed = jax.device_put(kernel, distributed.teacher_shardings(kernel, mesh, config.mesh.teacher))
      out[name] = {"teacher_kernel_shard": list(placed.addressable_shards[0].data.shape),
                   "mesh": dict(mesh.shape)}
    for stage in ("student",):
      losses = {name: [row["train/loss"] for row in map(json.loads, open(os.path.join(sys.argv[1], name, "seed_0", stage, "metrics.jsonl")))
                       if "train/loss" in row] for name in meshes}
      params = {name: jax.tree.map(np.asarray, checkpoint.load_model(os.path.join(sys.argv[1], name, "seed_0", stage)).variables)
                for name in meshes}
      for name in meshes:
        out[name][stage] = {
            "loss_curve": losses[name],
            "max_loss_difference": float(np.max(np.abs(np.subtract(losses[name], losses["1x1"])))),
            "max_param_difference": max(float(np.max(np.abs(a - b))) for a, b in
                                        zip(jax.tree.leaves(params[name]), jax.tree.leaves(params["1x1"])))}
    print("RESULT " + json.dumps(out))
""")


def test_shard_spec_picks_the_largest_divisible_dimension():
  assert distributed.shard_spec((3, 3, 1, 32), 4, "fsdp") == jax.P(None, None, None, "fsdp")
  assert distributed.shard_spec((1024, 256), 8, ("data", "fsdp")) == jax.P(("data", "fsdp"), None)
  assert distributed.shard_spec((64, 64), 2, "fsdp") == jax.P("fsdp", None)  # Ties: the first.
  assert distributed.shard_spec((10,), 4, "fsdp") == jax.P()  # Nothing divides: replicated.
  assert distributed.shard_spec((), 4, "fsdp") == jax.P()
  assert distributed.shard_spec((32, 16), 1, "fsdp") == jax.P()


def test_mesh_config_errors():
  config = config_lib.base_config()
  config.mesh.fsdp = 3
  with pytest.raises(ConfigError, match=r"mesh.fsdp=3 does not divide the 8 devices"):
    distributed.check_mesh(config, 8)
  config.mesh.fsdp, config.mesh.data = 4, 4
  with pytest.raises(ConfigError, match=r"needs 16 devices but 8 are available"):
    distributed.check_mesh(config, 8)
  config.mesh.fsdp, config.mesh.data, config.data.batch_size = 4, 2, 36
  with pytest.raises(ConfigError, match=r"data.batch_size=36 does not divide over the 2x4 mesh"):
    distributed.check_mesh(config, 8)
  config.data.batch_size, config.mesh.teacher = 32, "sharded"
  with pytest.raises(ConfigError, match=r"mesh.teacher='sharded': choose one of"):
    distributed.check_mesh(config, 8)


def test_fsdp_and_sharded_teacher_match_one_device(tmp_path):
  # Without LLVM's optimisations: compiling the steps for three meshes is most of this test's time.
  env = {**os.environ,
         "XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"}
  result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-4000:]
  out = json.loads(next(l for l in result.stdout.splitlines() if l.startswith("RESULT "))[len("RESULT "):])
  assert out["2x4"]["mesh"] == {"data": 2, "fsdp": 4}
  # The teacher's [64, 256] hidden kernel: whole when replicated, 1/2 per device over fsdp=2, 1/8 over all 8.
  assert out["1x1"]["teacher_kernel_shard"] == [64, 256]
  assert out["2x2"]["teacher_kernel_shard"] == [64, 128]
  assert out["2x4"]["teacher_kernel_shard"] == [64, 32]
  for name in ("2x2", "2x4"):
    for stage in ("student",):
      got = out[name][stage]
      assert len(got["loss_curve"]) == 8
      # Same global batch, same math: only the order of floating-point sums differs.
      assert got["max_loss_difference"] < 1e-4, (name, stage, got)
      assert got["max_param_difference"] < 1e-4, (name, stage, got)


LOAD_SHARDED = textwrap.dedent("""
    import sys
    import jax, numpy as np
    from kd import distributed, external
    from kd.config import base_config, stage_config
    from kd.convert import hf
    from kd.data import DatasetSpec
    from kd.methods import method_config
    assert jax.device_count() == 4, jax.devices()
    folder = sys.argv[1]
    config = base_config()
    config.stages.student = stage_config({"name": "cnn"}, method_config("lm_kd"), teacher_checkpoint=folder)
    spec = DatasetSpec("tokens", "tokens", (8,), "int32", 96, {})
    config.mesh.data, config.mesh.fsdp = 1, 4
    mesh = distributed.make_mesh(config.mesh)
    place = lambda shape: distributed.teacher_shardings(jax.ShapeDtypeStruct(shape, np.float32), mesh, "fsdp")
    teacher = external.load_teacher(config, "student", "", spec, placement=place)
    on_host = hf.load(folder)[1]
    leaves = jax.tree_util.tree_leaves_with_path(teacher.variables)
    sharded = 0
    for (path, leaf), host in zip(leaves, jax.tree.leaves(on_host)):
      assert leaf.sharding == place(leaf.shape), (path, leaf.sharding)
      np.testing.assert_array_equal(np.asarray(leaf), host)
      sharded += any(axis is not None for axis in leaf.sharding.spec)
    print("sharded", sharded, "of", len(leaves))
""")


def test_a_hugging_face_teacher_loads_straight_into_its_shardings(tmp_path):
  result = subprocess.run([sys.executable, "-c", LOAD_SHARDED, os.path.join(REPO, "tests", "fixtures", "hf", "qwen3")],
                          capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
  assert result.returncode == 0, result.stderr[-3000:]
  sharded, total = (int(word) for word in result.stdout.split()[1::2])
  assert sharded > 0 and total > sharded / 2  # Its matrices split over the 4 devices; its vectors too if divisible.
