"""Which task `careloop predict --store` scores: the bundle's own, never another one named on the command line."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from careloop.errors import CareloopError
from careloop.tasks.spec import load_task
from careloop.workflows.predict import scoring_task

from .conftest import REPO

READMISSION = REPO / "tasks" / "readmission-30d.yaml"


def _bundle(folder: Path, task_text: str | None) -> SimpleNamespace:
    """The two things scoring_task reads of a bundle: its files and its folder."""
    files = {"features.yaml": "x"}
    if task_text is not None:
        (folder / "task.yaml").write_text(task_text)
        files["task.yaml"] = "x"
    return SimpleNamespace(path=folder, files=files)


def test_the_bundle_task_is_scored_without_task(tmp_path):
    assert scoring_task(_bundle(tmp_path, READMISSION.read_text()), None) == load_task(READMISSION)


def test_a_task_defining_other_stays_is_refused(tmp_path):
    with pytest.raises(CareloopError, match=r"--task inhospital-mortality-24h is not the task this bundle was "
                                            r"trained for \(readmission-30d.*index, exclude, label differ"):
        scoring_task(_bundle(tmp_path, READMISSION.read_text()), "inhospital-mortality-24h")


def test_the_same_definition_passes_under_another_name_or_split(tmp_path):
    text = READMISSION.read_text()
    assert "name: readmission-30d" in text and "by: patient" in text
    other = tmp_path / "renamed.yaml"
    other.write_text(text.replace("name: readmission-30d", "name: my-readmission")
                     .replace("by: patient", "by: time\n  test_from: 2022-07-01"))
    (tmp_path / "b").mkdir()
    assert scoring_task(_bundle(tmp_path / "b", text), str(other)).name == "readmission-30d"


def test_a_bundle_without_task_yaml_needs_task(tmp_path):
    with pytest.raises(CareloopError, match=r"no task\.yaml: give --task"):
        scoring_task(_bundle(tmp_path, None), None)
    assert scoring_task(_bundle(tmp_path, None), "readmission-30d").name == "readmission-30d"
