"""Feature sets: the shipped one loads; bad definitions are refused with their line."""

from __future__ import annotations

from typing import get_args

import pytest

from careloop.features.spec import _KINDS, Feature, FeatureSet, FeatureSpecError, load_feature_set

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
        # non-regression: a key given twice kept the last value silently
        ("- name: x\n  kind: measurement\n  code: LOINC/1\n  window: 30d\n  window: 7d\n  aggs: [last]\n"
         "  description: xyz\n", 8, "duplicate key 'window', first given on line 7"),
        # non-regression: a huge window raised OverflowError with no file or line
        ("- name: x\n  kind: encounter_count\n  classes: [IMP]\n  window: 1000000000d\n  description: xyz\n", 7,
         "longer than 200 years"),
        ("- name: x\n  kind: measurement\n  code: LOINC/1\n  window: 1000000000000d\n  aggs: [last]\n"
         "  description: xyz\n", 7, "longer than 200 years"),
        # non-regression: a field the kind ignores was accepted (a comorbidity read the whole record anyway)
        ("- name: x\n  kind: comorbidity\n  index: charlson\n  window: 30d\n  description: xyz\n", 7,
         "a comorbidity feature does not use 'window': it reads the whole record"),
        ("- name: x\n  kind: static\n  prefix: GENDER/\n  window: stay\n  description: xyz\n", 7,
         "a static feature does not use 'window': it reads the whole record"),
        ("- name: x\n  kind: days_since_discharge\n  classes: [IMP]\n  window: 365d\n  description: xyz\n", 7,
         "a days_since_discharge feature does not use 'window': it reads the whole record"),
        ("- name: x\n  kind: comorbidity\n  index: charlson\n  prefix: ICD10CM/I50\n  description: xyz\n", 7,
         "does not use 'prefix'"),
        ("- name: x\n  kind: age\n  aggs: [last]\n  description: xyz\n", 6, "an age feature does not use 'aggs'"),
        ("- name: x\n  kind: measurement\n  code: LOINC/1\n  prefix: LOINC/\n  window: stay\n  aggs: [last]\n"
         "  description: xyz\n", 7, "a measurement feature does not use 'prefix'"),
        ("- name: x\n  kind: score\n  score: lace\n  window: 30d\n  description: xyz\n", 7,
         "a score feature does not use 'window'"),
        # non-regression: a quote in a prefix reached the SQL and failed at extract with a DuckDB ParserException
        ("- name: x\n  kind: distinct_codes\n  prefix: \"O'B/\"\n  window: all\n  description: xyz\n", 6,
         "is not a code prefix"),
        ("- name: x\n  kind: measurement\n  code: \"LOINC/2951-2'\"\n  window: stay\n  aggs: [last]\n"
         "  description: xyz\n", 6, "is not a code"),
        ("- name: x\n  kind: latest_text\n  code: 'LOINC/1\\'\n  window: all\n  description: xyz\n", 6,
         "is not a code"),
        ("- name: x\n  kind: measurement\n  code: LOINC/\n  window: stay\n  aggs: [last]\n  description: xyz\n", 6,
         "is not a code"),
    ],
)
def test_bad_feature_definitions_name_the_line(body: str, line: int, message: str):
    with pytest.raises(FeatureSpecError) as err:
        FeatureSet.from_text(HEAD + body, source="f.yaml")
    assert message in str(err.value)
    assert f"f.yaml:{line}:" in str(err.value) or message == "duplicate feature columns"


def test_every_kind_says_which_fields_it_reads():
    assert set(_KINDS) == set(get_args(Feature.model_fields["kind"].annotation))


@pytest.mark.parametrize("kind", sorted(_KINDS))
def test_each_kind_accepts_exactly_the_fields_it_reads(kind: str):
    value = {"window": "30d", "prefix": "ICD10CM/", "code": "LOINC/2951-2", "source": "Condition",
             "classes": ["IMP"], "aggs": ["last"], "index": "charlson", "score": "lace"}
    used = {f: value[f] for f in _KINDS[kind][0]}
    fs = FeatureSet.model_validate({"name": "f", "description": "d", "features": [
        {"name": "x", "kind": kind, "description": "xyz", **used}]})
    assert FeatureSet.model_validate(fs.model_dump()) == fs  # unset fields dump as None or [] and load again
    for field in set(value) - set(used):
        with pytest.raises(ValueError, match=f"does not use '{field}'"):
            Feature.model_validate({"name": "x", "kind": kind, "description": "xyz", **used, field: value[field]})


@pytest.mark.parametrize("prefix", ["ICD", "ICD10CM/", "ICD10CM/I50", "LOINC/85", "DISCHARGE/home", "ENCOUNTER/IMP",
                                    "LOCAL/some code"])
def test_real_prefixes_are_accepted(prefix: str):
    f = Feature(name="x", kind="distinct_codes", prefix=prefix, window="all", description="xyz")
    assert f.prefix == prefix
