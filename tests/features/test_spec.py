"""Feature sets: the shipped one loads; bad definitions are refused with their line."""

from __future__ import annotations

import pytest

from careloop.features.spec import FeatureSet, FeatureSpecError, load_feature_set

HEAD = "name: f\ndescription: some features\nfeatures:\n"


def test_the_readmission_set_loads_and_describes_every_column():
    fs = load_feature_set("readmission")
    cols = fs.columns
    assert len(cols) == len(set(cols)) > 40
    assert {"lace", "hospital_score", "charlson_index", "sodium_last", "sodium_trend", "admissions_180d"} <= set(cols)
    rows = fs.describe()
    assert all(r["description"] for r in rows) and len(rows) == len(cols)


@pytest.mark.parametrize(
    ("body", "line", "message"),
    [
        ("- {name: x, kind: measurement, code: LOINC/1, window: stay, aggs: [median], description: xyz}\n", 4,
         "aggs"),
        ("- {name: x, kind: measurement, code: LOINC/1, window: -30d, aggs: [last], description: xyz}\n", 4,
         "use a positive duration"),
        ("- {name: x, kind: measurement, window: stay, aggs: [last], description: xyz}\n", 4, "needs 'code'"),
        ("- {name: x, kind: encounter_count, classes: [IMP], window: stay, description: xyz}\n", 4,
         "looks back a duration"),
        ("- {name: x, kind: static, prefix: GENDER/, description: xyz, colour: red}\n", 4, "unknown field 'colour'"),
        ("- {name: X-1, kind: age, description: xyz}\n", 4, "name"),
        ("- {name: a, kind: age, description: xyz}\n- {name: a, kind: age, description: xyz}\n", 2,
         "duplicate feature columns"),
    ],
)
def test_bad_feature_definitions_name_the_line(body: str, line: int, message: str):
    with pytest.raises(FeatureSpecError) as err:
        FeatureSet.from_text(HEAD + body, source="f.yaml")
    assert message in str(err.value)
    assert f"f.yaml:{line}:" in str(err.value) or message == "duplicate feature columns"
