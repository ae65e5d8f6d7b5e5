"""`python -m rlbase ...` is the same as the `rlbase` console script."""

from rlbase.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
