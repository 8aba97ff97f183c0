"""`python -m kd.convert <src> <dst> --arch=<name>` (see kd.convert); with `--to=hf`, a kd export of a
decoder becomes a Hugging Face checkpoint folder (see kd.convert.hf)."""

import sys

from kd.convert import main

if __name__ == "__main__":
  if any(arg == "--to" or arg.startswith("--to=") for arg in sys.argv[1:]):
    from kd.convert import hf  # pylint: disable=g-import-not-at-top
    hf.main(sys.argv[1:])
  else:
    main()
