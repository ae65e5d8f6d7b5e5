"""Every `--help` of the command line prints and exits 0 (argparse formats help lazily: a stray `%`
in a help text only fails when that page is shown)."""

from __future__ import annotations

import pytest

from rlbase.cli import COMPRESS_COMMANDS, main

PAGES = [[], ["train"], ["train", "dqn"], ["train", "ppo"], ["sweep"], ["sweep", "a2c"], ["pretrain"], ["plot"],
         ["report"], ["eval"], *([name] for name in COMPRESS_COMMANDS)]


@pytest.mark.parametrize("words", PAGES, ids=lambda words: " ".join(words) or "rlbase")
def test_help_pages(capsys, words):
    with pytest.raises(SystemExit) as stop:
        main([*words, "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: rlbase") and len(out.splitlines()) > 3
