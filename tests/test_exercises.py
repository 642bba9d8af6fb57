"""Every exercise of every chapter has a check and a worked solution, and the solution passes it.

A chapter's exercises are the numbered items of its "Exercises" section (a markdown cell whose
heading ends in "Exercises"). For chapter NN (the notebook's number), `notebooks/exercises/chNN.py`
defines `exercise_K(answer)` for each item K (it raises AssertionError on a wrong answer) and
`notebooks/solutions/chNN.py` defines `exercise_K`, the answer, and `MISTAKES`, a plausible wrong
answer for each K, which the check must reject (a check that accepts anything checks nothing).
The chapter itself must import its checks (`from exercises import chNN as check`), which
tests/test_notebooks.py then executes.
"""

import importlib
import re
import sys
from pathlib import Path

import nbformat
import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
HEADING = re.compile(r"^#+ .*Exercises\s*$", re.MULTILINE)
ITEM = re.compile(r"^(\d+)\. ", re.MULTILINE)  # a top-level numbered item


@pytest.fixture(scope="module", autouse=True)
def notebook_path():
    """The checks and solutions are imported as the chapters import them: from the notebooks folder."""
    sys.path.insert(0, str(NOTEBOOK_DIR))
    yield
    sys.path.remove(str(NOTEBOOK_DIR))


def exercise_numbers(path: Path) -> list[int]:
    cells = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "markdown"]
    sections = [c.source for c in cells if HEADING.search(c.source)]
    assert len(sections) == 1, f"{path.name}: expected one Exercises section, found {len(sections)}"
    numbers = [int(n) for n in ITEM.findall(sections[0][HEADING.search(sections[0]).end() :])]
    assert numbers == list(range(1, len(numbers) + 1)) and numbers, f"{path.name}: exercises numbered {numbers}"
    return numbers


def test_exercise_numbers_reads_the_rule(tmp_path):
    path = tmp_path / "99_x.ipynb"
    text = "## 9.9 Exercises\n\n1. One.\n   Still one; 3. is not an item here.\n2. Two:\n   1. a sub-item\n"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(text)]), path)
    assert exercise_numbers(path) == [1, 2]


def chapter(path: Path) -> str:
    return "ch" + path.name[:2]


CASES = [(path, k) for path in NOTEBOOKS for k in exercise_numbers(path)]
IDS = [f"{chapter(path)}-exercise{k}" for path, k in CASES]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_chapter_imports_its_checks(path):
    code = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
    assert f"from exercises import {chapter(path)} as check" in code, f"{path.name} never imports its checks"


@pytest.mark.parametrize(("path", "k"), CASES, ids=IDS)
def test_solution_passes_its_check(path, k):
    checks = importlib.import_module(f"exercises.{chapter(path)}")
    solutions = importlib.import_module(f"solutions.{chapter(path)}")
    check = getattr(checks, f"exercise_{k}", None)
    assert callable(check), f"notebooks/exercises/{chapter(path)}.py has no exercise_{k}"
    assert hasattr(solutions, f"exercise_{k}"), f"notebooks/solutions/{chapter(path)}.py has no exercise_{k}"
    check(getattr(solutions, f"exercise_{k}"))


@pytest.mark.parametrize(("path", "k"), CASES, ids=IDS)
def test_check_rejects_the_mistake(path, k):
    checks = importlib.import_module(f"exercises.{chapter(path)}")
    solutions = importlib.import_module(f"solutions.{chapter(path)}")
    assert k in solutions.MISTAKES, f"notebooks/solutions/{chapter(path)}.py: MISTAKES has no entry for {k}"
    with pytest.raises(AssertionError):
        getattr(checks, f"exercise_{k}")(solutions.MISTAKES[k])
