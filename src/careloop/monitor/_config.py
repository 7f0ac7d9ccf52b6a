"""The monitor's thresholds: a small YAML file, every field optional, validated strictly (errors name the line).

    alpha: 0.05                 # family-wise false-alarm rate of one report (Bonferroni over every test in it)
    reference_months: 12        # the training split's most recent months form the reference (0: all of it)
    min_rows: 100               # stays a period needs before its inputs and output are tested for drift
    psi: {watch: 0.10, act: 0.25}
    ...

See `MonitorConfig` for every field and its default, and `careloop.monitor` for the rules that use them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from careloop.errors import ConfigError
from careloop.specfile import parse_spec, read_spec

PERIODS = ("week", "month", "quarter", "year")


class MonitorConfigError(ConfigError):
    """A monitoring config file is invalid; the message lists every problem with its line."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PSIThresholds(_Strict):
    watch: Annotated[float, Field(gt=0)] = 0.10
    act: Annotated[float, Field(gt=0)] = 0.25

    @model_validator(mode="after")
    def _order(self) -> PSIThresholds:
        if self.act < self.watch:
            raise ValueError(f"psi.act ({self.act}) must not be below psi.watch ({self.watch})")
        return self


class FairnessConfig(_Strict):
    min_group_size: Annotated[int, Field(ge=10)] = 100
    min_events: Annotated[int, Field(ge=10)] = 30  # readmissions a group needs before its gap can raise an alert
    # the validation report's defaults (careloop.evaluation.DEFAULT_TOLERANCES); add tpr, ppv... to watch them too
    tolerances: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: {"auroc": 0.10, "observed_expected": 0.15})

    @field_validator("tolerances")
    @classmethod
    def _known_metrics(cls, value: dict[str, float]) -> dict[str, float]:
        """An unknown name (a typo) would make every period's fairness check fail, i.e. switch fairness off."""
        from careloop.evaluation._fairness import FAIRNESS_METRICS  # lazy: the evaluation module is heavy

        unknown = [k for k in value if k not in FAIRNESS_METRICS]
        if unknown:
            raise ValueError(f"unknown metric {unknown[0]!r}; known: {', '.join(FAIRNESS_METRICS)}")
        return value


class BurdenConfig(_Strict):
    # alerts per 100 discharges above which the burden alert fires; default 1.5x the operating point's budget
    max_alerts_per_100: Annotated[float, Field(gt=0, le=100)] | None = None
    budget_factor: Annotated[float, Field(ge=1)] = 1.5
    max_override_rate: Annotated[float, Field(gt=0, lt=1)] = 0.5
    max_repeat_share: Annotated[float, Field(gt=0, lt=1)] = 0.25
    alert_ppv_drop: Annotated[float, Field(gt=0, lt=1)] = 0.10  # PPV of the cards shown, below the validated PPV
    min_alerts: Annotated[int, Field(ge=1)] = 20  # alerts (or feedback items) a period needs before it is judged
    repeat_window_days: Annotated[float, Field(gt=0)] = 7.0  # an alert to a patient alerted this recently repeats
    # a card links to a stay it was shown during, or (no admission time known) to a discharge this soon after it
    link_window_hours: Annotated[float, Field(gt=0)] = 48.0


class MonitorConfig(_Strict):
    """Thresholds and sample-size rules of `careloop monitor` (all optional; the defaults are stated here)."""

    alpha: Annotated[float, Field(gt=0, lt=0.5)] = 0.05
    reference_months: Annotated[int, Field(ge=0)] = 12
    bins: Annotated[int, Field(ge=2, le=50)] = 10
    max_categories: Annotated[int, Field(ge=2, le=100)] = 20
    min_rows: Annotated[int, Field(ge=10)] = 100
    min_labelled: Annotated[int, Field(ge=10)] = 200
    min_events: Annotated[int, Field(ge=1)] = 30  # of each outcome: bootstrap intervals on fewer are too narrow
    n_boot: Annotated[int, Field(ge=100)] = 500
    seed: Annotated[int, Field(ge=0)] = 0
    psi: PSIThresholds = Field(default_factory=PSIThresholds)
    missingness_delta: Annotated[float, Field(gt=0, le=1)] = 0.05  # and a missing/recorded PSI >= psi.watch
    auroc_drop: Annotated[float, Field(gt=0, lt=0.5)] = 0.05
    ppv_drop: Annotated[float, Field(gt=0, lt=1)] = 0.10
    calibration_intercept: Annotated[float, Field(gt=0)] = 0.3
    fairness: FairnessConfig = Field(default_factory=FairnessConfig)
    burden: BurdenConfig = Field(default_factory=BurdenConfig)
    top_features: Annotated[int, Field(ge=1, le=100)] = 12  # rows of the report's PSI heatmap

    @classmethod
    def from_yaml(cls, path: str | Path) -> MonitorConfig:
        return cls.from_text(*read_spec(path, MonitorConfigError, "monitoring config"))

    @classmethod
    def from_text(cls, text: str, source: str = "<monitor config>") -> MonitorConfig:
        if not text.strip():
            return cls()
        return parse_spec(cls, text, source, MonitorConfigError)


def load_config(config: MonitorConfig | dict | str | Path | None) -> MonitorConfig:
    """A MonitorConfig from itself, a dict, a YAML file, or None (the defaults)."""
    if config is None:
        return MonitorConfig()
    if isinstance(config, MonitorConfig):
        return config
    if isinstance(config, dict):
        from pydantic import ValidationError

        try:
            return MonitorConfig.model_validate(config)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "config"
            raise MonitorConfigError(f"config: {where}: {err['msg'].removeprefix('Value error, ')}") from None
    return MonitorConfig.from_yaml(config)
