r"""DistilBERT's recipe (Sanh et al. 2019) transposed to a causal byte-level LM.

V. Sanh, L. Debut, J. Chaumond, T. Wolf, "DistilBERT, a distilled version of BERT: smaller, faster,
cheaper and lighter", NeurIPS 2019 EMC^2 workshop, arXiv:1910.01108. As in the paper, the student keeps
the teacher's width and halves its depth (here 4 -> 2 layers of 128), starts from teacher layers spread
from the first to the last (here 0 and 3; HF's extraction script takes 0, 2, 4, 7, 9, 11 of BERT's 12),
and trains with 5 x soft-target KL at T = 2 + 2 x the LM loss (next-token instead of masked) + 1 x
cosine between the last hidden states. Stages:
  teacher, baseline (2 layers of 128, LM loss only, random init), distilbert (the recipe).
`init=false` drops the initialisation from the teacher, `cosine=0` the cosine term (the paper's
ablation, Table 4: both hurt); `layers=0-2` picks the teacher layers to start from (`-` between them;
0-2 is one layer out of two, dropping the last).

    python -m kd.main --config=experiments/sanh2019_distilbert.py --workdir=runs/sanh2019

About 15 minutes on 2 CPU cores; `:smoke` in seconds.
"""

import ml_collections

from kd.lm import configs
from kd.methods import method_config

# The paper's headline figures (BERT-base -> DistilBERT, GLUE dev): 97% of the score retained with 40%
# fewer parameters and 60% faster inference.
REPORTED = {"glue_retention": 0.97, "parameter_reduction": 0.40, "speedup": 1.60}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  values = configs.parse_arg(arg, {"init": "true", "cosine": 1.0, "layers": ""},
                             "experiments/sanh2019_distilbert.py")
  teacher = configs.SMOKE_TEACHER if values["smoke"] else configs.TEACHER
  student = {**teacher, "num_layers": teacher["num_layers"] // 2}
  layer_map = tuple(int(layer) for layer in values["layers"].split("-")) if values["layers"] else ()
  method = method_config("lm_distilbert", init_from_teacher=values["init"] == "true",
                         cosine_weight=values["cosine"], layer_map=layer_map)
  return configs.lm_config({"distilbert": method}, smoke=values["smoke"], teacher=teacher, student=student)


def sweep(add) -> None:
  """The recipe, its two ablations, and the every-other-layer initialisation."""
  add("")
  add("init=false")
  add("cosine=0")
  add("layers=0-2")
