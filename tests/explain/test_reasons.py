"""reasons() and global_importance(): the right columns, in the right order, with each row's own values."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest

from careloop.explain import ColumnInfo, Reason, column_infos, global_importance, phrase, reasons

K = 12


@pytest.fixture(scope="module")
def infos() -> list[ColumnInfo]:
    rows = [{"column": f"admissions_{i}d", "feature": f"admissions_{i}d", "kind": "encounter_count",
             "window": f"{i}d", "aggregation": None, "code": None, "description": "admissions"} for i in range(1, 7)]
    rows += [{"column": f"sodium_{a}", "feature": "sodium", "kind": "measurement", "window": "stay", "aggregation": a,
              "code": "LOINC/2951-2", "description": "Sodium"} for a in ("last", "min", "max", "mean", "first")]
    rows.append({"column": "discharge_disposition", "feature": "discharge_disposition", "kind": "latest_code",
                 "window": "stay", "aggregation": None, "code": "DISCHARGE/", "description": "Where to"})
    return column_infos(rows)


@pytest.fixture(scope="module")
def frame(infos) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    n = 300
    data = {i.column: rng.integers(0, 6, n).astype(float) for i in infos[:6]}
    data |= {i.column: np.round(rng.normal(138, 5, n)) for i in infos[6:11]}
    data["discharge_disposition"] = rng.choice(["home", "snf", "rehab"], n)
    df = pd.DataFrame(data)
    df.loc[rng.random(n) < 0.2, "sodium_min"] = np.nan
    return df


@pytest.fixture(scope="module")
def contrib(frame) -> np.ndarray:
    rng = np.random.default_rng(4)
    c = rng.normal(0, 1, (len(frame), K + 1))
    c[rng.random(c.shape) < 0.15] = 0.0  # exact zeros raise nothing
    return c


def naive(c: np.ndarray, top: int, direction: str, min_contribution: float) -> list[list[int]]:
    out = []
    for row in c[:, :K]:
        score = row if direction == "raises" else -row if direction == "lowers" else np.abs(row)
        cand = sorted((-s, j) for j, s in enumerate(score) if s > 0 and s >= min_contribution)
        out.append([j for _, j in cand[:top]])
    return out


@pytest.mark.parametrize("direction", ["raises", "lowers", "both"])
@pytest.mark.parametrize("top", [1, 3, 5, K, K + 4])
@pytest.mark.parametrize("min_contribution", [0.0, 0.8])
def test_matches_a_naive_sort(frame, contrib, infos, direction, top, min_contribution):
    got = reasons(contrib, frame, infos, top=top, direction=direction, min_contribution=min_contribution,
                  distinct=False)
    want = naive(contrib, top, direction, min_contribution)
    assert [[infos.index(next(i for i in infos if i.column == r.column)) for r in rs] for rs in got] == want
    for i, rs in enumerate(got):
        for r in rs:
            j = [x.column for x in infos].index(r.column)
            assert r.contribution == contrib[i, j]
            if direction == "raises":
                assert r.contribution > 0
            elif direction == "lowers":
                assert r.contribution < 0
            assert abs(r.contribution) >= min_contribution


def test_phrase_uses_the_rows_own_value(frame, contrib, infos):
    got = reasons(contrib, frame, infos, top=K)
    by = {i.column: i for i in infos}
    seen = 0
    for i, rs in enumerate(got):
        for r in rs:
            value = frame[r.column].iloc[i]
            assert r.phrase == phrase(by[r.column], value)
            assert (r.value is None and pd.isna(value)) or r.value == value
            seen += 1
    assert seen > len(frame)
    # a hand-checked row
    c = np.zeros((1, K))
    c[0, 1] = 2.0  # admissions_2d
    c[0, 7] = 1.0  # sodium_min
    c[0, 11] = 0.5  # discharge_disposition
    row = {"admissions_2d": 3.0, "sodium_min": 127.0, "discharge_disposition": "snf"}
    [rs] = reasons(c, [row], infos, top=3)
    assert [r.phrase for r in rs] == ["3 admissions in the past 2 days", "lowest sodium 127 mmol/L during the stay",
                                      "discharged to a skilled nursing facility"]


def test_rows_as_mappings_array_and_frame_agree(frame, contrib, infos):
    a = reasons(contrib, frame, infos)
    b = reasons(contrib, frame.to_dict("records"), infos)
    c = reasons(contrib[:, :K], frame, infos)  # without the bias column
    assert a == b == c
    num = frame.drop(columns="discharge_disposition")
    d = reasons(contrib[:, :11], num.to_numpy(), infos[:11])
    e = reasons(contrib[:, :11], num, infos[:11])
    assert d == e


def test_columns_align_infos_by_name(frame, contrib, infos):
    order = [i.column for i in infos][::-1]  # the model's own column order
    flipped = np.concatenate([contrib[:, :K][:, ::-1], contrib[:, K:]], axis=1)
    assert reasons(flipped, frame, infos, columns=order) == reasons(contrib, frame, infos)
    gi = global_importance(flipped, infos, columns=order)
    assert gi == global_importance(contrib, infos)


def test_missing_values_and_nan_contributions(infos):
    c = np.array([[np.nan, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0, 0.0, 0.0, 0.0, 0.0]])
    [rs] = reasons(c, [{"sodium_min": float("nan")}], infos, top=3)
    assert [(r.column, r.value, r.phrase) for r in rs] == [("sodium_min", None, "no sodium measured during the stay")]
    [rs] = reasons(c, [{}], infos, direction="both")
    assert [r.column for r in rs] == ["sodium_min"]


def test_to_dict_is_json_ready(frame, contrib, infos):
    got = reasons(contrib, frame, infos)
    r = got[0][0]
    assert isinstance(r, Reason)
    d = r.to_dict()
    assert set(d) == {"column", "value", "contribution", "phrase"}
    json.dumps([[x.to_dict() for x in rs] for rs in got], allow_nan=False)
    assert Reason("x", np.float64(2.5), np.float32(0.5), "p").to_dict() == {"column": "x", "value": 2.5,
                                                                           "contribution": 0.5, "phrase": "p"}
    assert Reason("x", np.nan, 1.0, "p").to_dict()["value"] is None


def test_edges_and_errors(frame, contrib, infos):
    assert reasons(contrib, frame, infos, top=0) == [[] for _ in range(len(frame))]
    assert reasons(np.zeros((0, K + 1)), [], infos) == []
    with pytest.raises(ValueError):
        reasons(contrib[:, :5], frame, infos)
    with pytest.raises(ValueError):
        reasons(contrib, frame.head(3), infos)
    with pytest.raises(ValueError):
        reasons(contrib, frame, infos, direction="up")  # type: ignore[arg-type]


def test_ended_per_row_words_the_last_value(frame, contrib, infos):
    """`ended`, one for all rows or one per row: a stay still open has no value "at discharge"."""
    c = np.zeros((4, K + 1))
    c[:, 6] = 1.0  # sodium_last is each row's only reason
    rows = frame.head(4).copy()
    value = [f"{v:.0f}" for v in rows["sodium_last"]]
    by_default = reasons(c, rows, infos)
    assert [r[0].phrase for r in by_default] == [f"sodium {v} mmol/L at discharge" for v in value]
    assert [r[0].phrase for r in reasons(c, rows, infos, ended=False)] == [f"latest sodium {v} mmol/L" for v in value]
    mixed = reasons(c, rows, infos, ended=[False, True, False, True])
    assert [r[0].phrase.startswith("latest") for r in mixed] == [True, False, True, False]
    rows.loc[:, "sodium_last"] = 140.0  # the same value: the phrase cache keeps the two wordings apart
    same = reasons(c, rows, infos, ended=np.array([True, False, True, False]))
    assert [r[0].phrase for r in same] == ["sodium 140 mmol/L at discharge", "latest sodium 140 mmol/L"] * 2
    with pytest.raises(ValueError, match="ended"):
        reasons(c, rows, infos, ended=[True, False])


def test_global_importance(frame, contrib, infos):
    gi = global_importance(contrib, infos)
    means = np.abs(contrib[:, :K]).mean(axis=0)
    assert [g["column"] for g in gi] == [infos[j].column for j in np.argsort(-means, kind="stable")]
    for g in gi:
        j = [i.column for i in infos].index(g["column"])
        assert g["mean_abs_contribution"] == pytest.approx(means[j])
        assert set(g) == {"column", "label", "mean_abs_contribution"}
    labels = {g["column"]: g["label"] for g in gi}
    assert labels["sodium_min"] == "lowest sodium"
    assert labels["sodium_last"] == "sodium at discharge"
    assert labels["admissions_2d"] == "admissions (past 2 days)"
    assert labels["discharge_disposition"] == "discharge disposition"
    assert global_importance(np.zeros((0, K)), infos)[0]["mean_abs_contribution"] == 0.0


def test_fast_on_many_rows():
    k, n = 40, 100_000
    rng = np.random.default_rng(0)
    infos = [ColumnInfo(f"count_{j}", f"count_{j}", "encounter_count", "180d", label="visits") for j in range(k)]
    values = rng.integers(0, 4, (n, k)).astype(float)
    c = rng.normal(size=(n, k + 1))
    t = time.perf_counter()
    got = reasons(c, values, infos, top=3, distinct=False)
    elapsed = time.perf_counter() - t
    assert len(got) == n and all(len(rs) == 3 for rs in got[:100])
    assert elapsed < 10, f"{elapsed:.1f}s for {n:,} rows"


def test_distinct_names_each_measure_once():
    infos = [ColumnInfo("adm_180d", "adm_180d", "encounter_count", "180d", label="admissions"),
             ColumnInfo("adm_365d", "adm_365d", "encounter_count", "365d", label="admissions"),
             ColumnInfo("sodium_last", "sodium", "measurement", "stay", "last", label="sodium"),
             ColumnInfo("sodium_min", "sodium", "measurement", "stay", "min", label="sodium"),
             ColumnInfo("age", "age", "age", label="age")]
    rows = [{"adm_180d": 3.0, "adm_365d": 5.0, "sodium_last": 128.0, "sodium_min": 126.0, "age": 80.0}]
    c = np.array([[0.9, 0.8, 0.7, 0.6, 0.1]])
    got = reasons(c, rows, infos, top=3)
    assert [r.column for r in got[0]] == ["adm_180d", "sodium_last", "age"]
    assert [r.column for r in reasons(c, rows, infos, top=3, distinct=False)[0]] == ["adm_180d", "adm_365d",
                                                                                    "sodium_last"]
