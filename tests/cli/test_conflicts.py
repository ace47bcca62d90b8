"""A typed option that the other options make meaningless is refused, not silently ignored."""

from __future__ import annotations

import pytest

from lpsd_search.cli.conflicts import RULES, given_flags
from lpsd_search.cli.main import main

SEARCH = ["search", "--budget", "0.5"]
COMPRESS = ["compress", "--budget", "0.5"]


@pytest.mark.parametrize(("argv", "flag"), [
    ([*SEARCH, "--strategy", "flat", "--global-share", "0.3"], "--global-share"),
    ([*SEARCH, "--no-warm-start", "--warm-starts", "alds"], "--warm-starts"),
    ([*SEARCH, "--promote-steps", "0", "--promote-margin", "0.01"], "--promote-margin"),
    ([*SEARCH, "--promote-margin", "0.01"], "--promote-margin"),  # the ladder's is per rung
    ([*SEARCH, "--strategy", "flat", "--promote-top", "3"], "--promote-top"),
    ([*SEARCH, "--global-share", "0.3"], "--global-share"),  # the ladder has no global stage
    ([*SEARCH, "--distill-temperature", "2"], "--distill-temperature"),
    ([*SEARCH, "--max-concurrent", "4"], "--max-concurrent"),
    ([*SEARCH, "--gpus-per-trial=0.5"], "--gpus-per-trial"),
    (["demo", "--strategy", "flat", "--global-share", "0.3"], "--global-share"),
    ([*COMPRESS, "--method", "lowrank", "--sparse-share", "0.2"], "--sparse-share"),
    ([*COMPRESS, "--method", "lpsd", "--local-passes", "2"], "--local-passes"),
])
def test_an_ignored_option_is_one_line_exit_2(argv, flag, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"lpsd-search: error: {flag} has no effect"), err
    assert "valid:" in err[0] and not list(tmp_path.iterdir())  # nothing ran, nothing written


@pytest.mark.parametrize(("strategy", "meaningless"), [
    ("global-local", {"--promote-top"}),
    ("ladder", {"--global-share", "--promote-margin"}),
])
def test_the_same_options_are_accepted_where_they_matter(strategy, meaningless):
    args = type("Args", (), {"strategy": strategy, "no_warm_start": False,
                             "promote_steps": None, "distill": 0.5, "checkpoint": None,
                             "backend": "ray", "method": "alpsd", "command": "search"})()
    ignored = {rule.flag for rule in RULES if rule.ignored(args)}  # type: ignore[arg-type]
    assert ignored == meaningless


def test_given_flags_reads_both_spellings():
    assert given_flags(["search", "--budget", "0.5", "--seed=3", "-q"]) == {"--budget", "--seed"}
