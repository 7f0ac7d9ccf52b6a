"""Task files: strict, with every problem reported against its line."""

from __future__ import annotations

from pathlib import Path

import pytest

from careloop.tasks.spec import Task, TaskSpecError, load_task

GOOD = """name: t
description: a task
index:
  event: discharge
label:
  kind: next_admission
  within: 30d
"""


def test_shipped_tasks_load_by_name_and_by_path():
    r = load_task("readmission-30d")
    assert r.label.within.days == 30 and r.min_age == 18 and "transfer_out" in r.exclusions
    m = load_task(Path(__file__).resolve().parents[2] / "tasks" / "inhospital-mortality-24h.yaml")
    assert m.index.event == "admission" and m.index.offset.total_seconds() == 86400
    assert Task.from_text(GOOD).name == "t"


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (GOOD + "colour: blue\n", 8, "unknown field 'colour'"),
        (GOOD.replace("within: 30d", "within: -30d"), 7, "the horizon must be positive"),
        (GOOD.replace("within: 30d", "within: 0d"), 7, "can never be true"),
        (GOOD.replace("within: 30d", "within: soon"), 7, "is not a duration"),
        (GOOD + "exclude:\n  - transfer_ot\n", 8, "did you mean 'transfer_out'"),
        (GOOD.replace("  within: 30d\n", "  within: 30d\n  exclude_priority: [EL, EM, UR, A, R, S]\n"), 5,
         "every priority is excluded: the label can never be true"),
        (GOOD.replace("  within: 30d\n", "  within: 30d\n  encounter_class: []\n"), 8, "can never be true"),
        (GOOD.replace("event: discharge", "event: lunch"), 4, "index.event"),
        (GOOD.replace("kind: next_admission\n  within: 30d", "kind: next_admission"), 5, "needs a horizon"),
        (GOOD + "split:\n  fractions: {train: 0.5, test: 0.2}\n", 8, "must sum to 1"),
        ("name: t\n  description: [unclosed\n", 2, "not valid YAML"),
    ],
)
def test_bad_task_files_name_the_line(text: str, line: int, message: str):
    with pytest.raises(TaskSpecError) as err:
        Task.from_text(text, source="task.yaml")
    assert f"task.yaml:{line}:" in str(err.value)
    assert message in str(err.value)


def test_all_problems_are_reported_together():
    text = GOOD.replace("within: 30d", "within: -1d") + "colour: blue\n"
    with pytest.raises(TaskSpecError) as err:
        Task.from_text(text, source="t.yaml")
    assert len(str(err.value).splitlines()) == 2


def test_unknown_task_name_lists_the_known_ones():
    with pytest.raises(TaskSpecError, match=r"known: .*readmission-30d"):
        load_task("readmision-30d")
