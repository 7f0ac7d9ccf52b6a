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
        # non-regression: a key given twice kept the last value silently (within 30d then 7d gave 7 days)
        (GOOD.replace("within: 30d", "within: 30d\n  within: 7d"), 8, "duplicate key 'within', first given on line 7"),
        (GOOD + "name: u\n", 8, "duplicate key 'name', first given on line 1"),
        # non-regression: huge or non-finite durations raised OverflowError with no file or line
        (GOOD.replace("within: 30d", "within: 1000000000000d"), 7, "longer than 200 years"),
        (GOOD.replace("within: 30d", "within: 73051d"), 7, "longer than 200 years"),
        (GOOD.replace("within: 30d", "within: 1.0e+12"), 7, "longer than 200 years"),
        (GOOD.replace("within: 30d", "within: .inf"), 7, "not a finite duration"),
        (GOOD.replace("event: discharge", "event: discharge\n  offset: .nan"), 5, "not a finite duration"),
        (GOOD.replace("event: discharge", "event: discharge\n  offset: 10000000w"), 5, "longer than 200 years"),
        # non-regression: an empty list of index classes was accepted and gave an empty cohort
        (GOOD.replace("event: discharge", "event: discharge\n  encounter_class: []"), 5,
         "no stay can be an index stay"),
    ],
)
def test_bad_task_files_name_the_line(text: str, line: int, message: str):
    with pytest.raises(TaskSpecError) as err:
        Task.from_text(text, source="task.yaml")
    assert f"task.yaml:{line}:" in str(err.value)
    assert message in str(err.value)


def test_the_longest_duration_is_200_years():
    assert Task.from_text(GOOD.replace("within: 30d", "within: 73050d")).label.within.days == 73050
    assert Task.from_text(GOOD.replace("within: 30d", "within: 10435w")).label.within.days == 73045


def test_anchors_and_merge_keys_are_not_duplicates():
    text = GOOD.replace("label:\n  kind: next_admission\n  within: 30d\n",
                        "label:\n  <<: &l {kind: next_admission, within: 7d}\n  within: 30d\n")
    assert Task.from_text(text).label.within.days == 30


def test_all_problems_are_reported_together():
    text = GOOD.replace("within: 30d", "within: -1d") + "colour: blue\n"
    with pytest.raises(TaskSpecError) as err:
        Task.from_text(text, source="t.yaml")
    assert len(str(err.value).splitlines()) == 2


def test_unknown_task_name_lists_the_known_ones():
    with pytest.raises(TaskSpecError, match=r"known: .*readmission-30d"):
        load_task("readmision-30d")
