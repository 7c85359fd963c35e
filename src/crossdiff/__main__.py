"""``python -m crossdiff`` (and ``torchrun ... -m crossdiff train ...``) runs the CLI."""

from crossdiff.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
