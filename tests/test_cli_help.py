"""``--help`` reads as a user expects: commands in pipeline order, flags shown as flags, no
internal names."""

from __future__ import annotations

import re

import pytest

ORDER = ["train", "attack", "transfer", "clever", "certify", "geometry", "detect", "check",
         "report", "run", "ls", "merge"]  # fmt: skip


def test_commands_are_listed_in_pipeline_order(cli):
    res = cli("--help")
    assert res.code == 0
    listed = re.findall(r"^│ (\w+) ", res.out, flags=re.M)
    assert [c for c in listed if c in ORDER] == ORDER


@pytest.mark.parametrize("command", ORDER)
def test_help_shows_flags_as_flags_and_no_internal_names(cli, command):
    res = cli(command, "--help")
    assert res.code == 0, res.err
    assert "<bool>" not in res.out
    for internal in ("eval_indices", "setting_key", "run_spec", "Parts"):
        assert internal not in res.out
