"""`python -m kd.convert <src> <dst> --arch=<name>` (see kd.convert)."""

from kd.convert import main

if __name__ == "__main__":
  main()
