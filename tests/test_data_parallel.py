"""Data parallelism over a mesh of 4 (CPU) devices matches one device for the same global batch."""

import json
import os
import subprocess
import sys
import textwrap

from conftest import REPO

SCRIPT = textwrap.dedent("""
    import json, os, sys
    import jax, numpy as np
    from kd import checkpoint, experiment, train
    assert jax.device_count() == 4, jax.devices()
    config = experiment.load_config("experiments/quickstart.py", "smoke")
    for stage in config.stages.values():
      stage.num_steps = 15
    differences = {}
    results = {}
    for devices in (1, 4):
      config.mesh.data = devices
      run_dir = os.path.join(sys.argv[1], f"devices_{devices}")
      for stage in ("teacher", "student"):
        results[(devices, stage)] = train.train_stage(config, stage, run_dir, seed=0)
    for stage in ("teacher", "student"):
      one, four = (jax.tree.map(np.asarray, checkpoint.load_model(
          os.path.join(sys.argv[1], f"devices_{d}", stage)).variables) for d in (1, 4))
      differences[stage] = max(float(np.max(np.abs(a - b))) for a, b in
                               zip(jax.tree.leaves(one), jax.tree.leaves(four)))
      differences[stage + "_accuracy"] = abs(results[(1, stage)]["test/accuracy"] -
                                             results[(4, stage)]["test/accuracy"])
    print("RESULT " + json.dumps(differences))
""")


def test_four_devices_match_one_device(tmp_path):
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-4000:]
  line = next(l for l in result.stdout.splitlines() if l.startswith("RESULT "))
  differences = json.loads(line[len("RESULT "):])
  # Same global batch, same math; only the order of floating-point reductions differs.
  assert differences["teacher"] < 1e-4, differences
  assert differences["student"] < 1e-4, differences
  assert differences["teacher_accuracy"] <= 1 / 359 and differences["student_accuracy"] <= 1 / 359
