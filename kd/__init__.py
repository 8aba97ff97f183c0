"""kd: knowledge-distillation experiments in JAX/Flax.

The pieces a notebook needs:
    kd.run(config, workdir)        run an experiment's stages and its report card
    kd.load_model(stage_dir)       an exported model: its apply function and variables
    kd.load_config(path, arg)      an experiment file's config, validated
"""

import warnings

from kd.checkpoint import load_model
from kd.experiment import load_config
from kd.experiment import run

__version__ = "0.1.0"

# `python -m kd.report` runs a module this package has already imported (through kd.experiment);
# runpy warns about that, harmlessly: the module defines only functions.
warnings.filterwarnings("ignore", message="'kd.report' found in sys.modules", category=RuntimeWarning)
