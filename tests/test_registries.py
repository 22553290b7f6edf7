"""Registries carry behaviour: a new attack or defense is one registry entry, and the code that
uses it (the report's names and order, the training loss) reads the entry, not a list of its
own. Each test registers a throwaway entry and checks that it takes effect untouched."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from dmlcli import attacks, defenses
from dmlcli.attacks import FGSM, LATER, AttackEntry, attack_entry, create_attack, list_attacks
from dmlcli.errors import DmlError
from dmlcli.report.tables import attack_sort_key, attack_title
from tests.helpers import tiny_ensemble

REPORT = Path(__file__).resolve().parents[1] / "dmlcli" / "report"


def _report_order(labels: list[str]) -> list[str]:
    return sorted(labels, key=lambda label: attack_sort_key((label, None)))


def test_a_registered_attack_is_named_and_ordered_by_the_report(monkeypatch):
    labels = ["pgd-10", "zap-20", "fgsm", "unlisted", "cw-200"]
    # unknown names: shown as themselves, after the registry's ordered attacks, by name
    assert attack_entry("zap") == AttackEntry("zap", order=LATER)
    assert attack_title("zap-20", 0.1) == "zap-20 eps=0.1"
    assert _report_order(labels) == ["fgsm", "pgd-10", "cw-200", "unlisted", "zap-20"]

    monkeypatch.setitem(attacks._ENTRIES, "zap", AttackEntry("ZAP", order=1, cls=FGSM))
    assert attack_title("zap-20", 0.1) == "ZAP-20 eps=0.1"
    assert _report_order(labels) == ["fgsm", "zap-20", "pgd-10", "cw-200", "unlisted"]
    # the same entry makes it an attack create_attack builds and list_attacks names
    assert "zap" in list_attacks()
    assert isinstance(create_attack("zap", eps=0.1), FGSM)


def test_result_labels_are_shown_but_not_attacks():
    assert attack_title("cw-search-200", None) == "CW (c searched)-200"
    assert attack_entry("cw-search").order == attack_entry("cw").order + 1
    assert "cw-search" not in list_attacks() and "worst-case" not in list_attacks()
    with pytest.raises(DmlError, match="unknown attack 'cw-search'; choose one of fgsm"):
        create_attack("cw-search", eps=0.1)


def test_the_report_keeps_no_table_of_attack_names():
    """A dict in report/ keyed by two or more registry names is a second home for a fact the
    registry holds (display names, report order): read attack_entry instead."""
    names = set(attacks._ENTRIES)
    found = []
    for path in sorted(REPORT.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Dict):
                keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
                if len(keys & names) >= 2:
                    found.append(f"{path.name}:{node.lineno}")
    assert not found, f"attack names listed by hand in the report: {found}"


def test_a_registered_defense_is_what_training_calls(monkeypatch):
    seen = []

    def toy_terms(batch: defenses.TrainingBatch) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        seen.append(batch)
        logits = batch.model(batch.x)
        loss = batch.args["weight"] * logits.pow(2).mean()
        return {"total": loss, "square": loss}, logits

    toy = defenses.Defense("toy", "linear", "a test", toy_terms, {"weight": 0.5})
    monkeypatch.setitem(defenses.DEFENSES, "toy", toy)
    assert "toy" in defenses.list_defenses()
    args = defenses.resolve_defense_args("toy", {"weight": "2"})
    ens = tiny_ensemble("linear", members=2)
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    gen = torch.Generator().manual_seed(0)
    terms, logits = defenses.defense_terms("toy", args, ens, ens, x, y, 0.25, gen)
    (batch,) = seen
    assert batch.x is x and batch.y is y and batch.gen is gen and batch.ensemble is ens
    assert batch.progress == 0.25 and batch.layers == [] and batch.args == {"weight": 2.0}
    assert logits.shape == (2, 4, 10)
    assert torch.equal(terms["total"], 2.0 * logits.pow(2).mean())


def test_an_unknown_defense_is_one_line_naming_the_choices():
    ens = tiny_ensemble("linear", members=2)
    x, y = torch.rand(2, 1, 8, 8), torch.tensor([0, 1])
    with pytest.raises(DmlError) as err:
        defenses.defense_terms("fancy", {}, ens, ens, x, y, 0.0, torch.Generator())
    message = str(err.value)
    assert message == f"unknown --defense 'fancy'; choose one of {', '.join(defenses.DEFENSES)}"
    assert "\n" not in message


def test_each_report_item_says_where_the_paper_has_it():
    """A table or figure is one entry of TABLES or FIGURES, its paper reference included:
    ``dml report``'s summary reads it there (no second list of keys in the CLI)."""
    from dmlcli.report import FIGURES, TABLES, paper_ref

    for key, _, ref in [*TABLES, *FIGURES]:
        assert ref and paper_ref(key) == ref, key  # a table and a figure of one key agree
    assert paper_ref("whitebox") == "T2, T3, T10" and paper_ref("examples") == "F19-F21"
    assert paper_ref("defenses") == "not in paper" and paper_ref("no-such-item") == "-"
