"""The figures the docs quote between <!-- gen:NAME --> markers (docs/cli.md, docs/tutorial.md,
docs/language.md §10's sizes: generate.PAGES) are what
the code gives now (docs/generate.py): sizes and words exactly, errors within a factor of
generate.ERROR_FACTOR. On a failure, run `python docs/generate.py` and review the diff (and the
prose around each figure) by hand.

Only the quick figures run here (seconds each); `python docs/generate.py --check` runs all.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("raspicl_docs_generate",
                                               ROOT / "docs" / "generate.py")
generate = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = generate
_spec.loader.exec_module(generate)

SHOWN = {name: (page, figure) for page in generate.PAGES
         for name, figure in generate.marked(page.read_text()).items()}


def test_every_marked_figure_is_known_and_every_known_one_is_shown():
    assert set(SHOWN) == set(generate.FIGURES)


@pytest.mark.filterwarnings("ignore::raspicl.errors.ContractWarning")
@pytest.mark.parametrize("name", sorted(n for n, f in generate.FIGURES.items() if f.quick))
def test_quick_figure_matches_the_code(name):
    page, shown = SHOWN[name]
    measured = generate.FIGURES[name].make()
    why = generate.mismatch(shown, measured)
    assert why is None, (f"{page.name}, gen:{name}: {why}; run `python docs/generate.py`\n"
                         f"--- shown ---\n{shown}\n--- measured ---\n{measured}")


@pytest.mark.parametrize("shown, measured, ok", [
    ("params=5455 err 7.1e-12", "params=5455 err 3.0e-11", True),   # a factor 4
    ("params=5455 err 7.1e-12", "params=5455 err 7.1e-10", False),  # a factor 100
    ("params=5455 err 7.1e-12", "params=5456 err 7.1e-12", False),  # sizes exactly
    ("accepted 100.0% PASS", "accepted  100.0%   PASS", True),     # whitespace aside
    ("accepted 100.0% PASS", "accepted 99.0% PASS", False),
    ("0.0e+00", "0.0e+00", True),
    ("0.0e+00", "1.0e-16", False),
    ("a b", "a b c", False),
])
def test_mismatch(shown, measured, ok):
    assert (generate.mismatch(shown, measured) is None) == ok


def test_rewrite_replaces_inline_and_block_figures():
    text = ("about <!-- gen:a -->1e-11<!-- /gen --> here\n<!-- gen:b -->\n```text\nold\n```\n"
            "<!-- /gen -->\n<!-- gen:c -->kept<!-- /gen -->")
    new = generate.rewrite(text, {"a": "3e-09", "b": "```text\nnew\n```"})
    assert new == ("about <!-- gen:a -->3e-09<!-- /gen --> here\n<!-- gen:b -->\n```text\nnew\n"
                   "```\n<!-- /gen -->\n<!-- gen:c -->kept<!-- /gen -->")
    assert generate.marked(new) == {"a": "3e-09", "b": "```text\nnew\n```", "c": "kept"}
