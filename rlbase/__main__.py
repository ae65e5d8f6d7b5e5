"""`python -m rlbase ...` is the same as the `rlbase` console script."""

from rlbase.cli import run

if __name__ == "__main__":
    run()
