"""What `careloop synth` is asked to make, validated in full before any work or output starts."""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from careloop.errors import ConfigError

SCENARIOS = ("drift", "bias")
BIAS_GROUPS = ("race:black", "ethnicity:hispanic", "language:es", "payer:medicaid", "sex:female")


class SynthConfig(BaseModel):
    """Configuration of one synthetic hospital. Identical configs give byte-identical output."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    patients: Annotated[int, Field(ge=1)] = 5000
    seed: Annotated[int, Field(ge=0)] = 0
    out: Path = Path("hospital")
    workers: Annotated[int, Field(ge=1, le=256)] = 1
    start: dt.date = dt.date(2019, 1, 1)
    end: dt.date = dt.date(2025, 1, 1)
    scenarios: tuple[Literal["drift", "bias"], ...] = ()
    drift_date: dt.date | None = None
    bias_group: Literal["race:black", "ethnicity:hispanic", "language:es", "payer:medicaid", "sex:female"] = (
        "race:black"
    )
    bias_rate: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    shard_size: Annotated[int, Field(ge=1, le=100_000)] = 250
    bundle_format: Literal["json", "json.gz"] = "json.gz"
    overwrite: bool = False
    updates: bool = False  # also write two nightly `_since` exports after the Bulk export (synth/updates.py)

    @model_validator(mode="after")
    def _check_window(self) -> SynthConfig:
        if self.end <= self.start:
            raise ValueError(f"end date {self.end} must be after start date {self.start}")
        if (self.end - self.start).days < 60:
            raise ValueError("the date window must span at least 60 days (30-day outcomes need room)")
        if self.drift_date is not None and not (self.start < self.drift_date < self.end):
            raise ValueError(f"drift date {self.drift_date} must lie inside the window {self.start}..{self.end}")
        return self

    @property
    def drift(self) -> bool:
        return "drift" in self.scenarios

    @property
    def bias(self) -> bool:
        return "bias" in self.scenarios

    @property
    def effective_drift_date(self) -> dt.date:
        """The drift date given, or two thirds into the window."""
        if self.drift_date is not None:
            return self.drift_date
        return self.start + (self.end - self.start) * 2 // 3


def make_config(**values: object) -> SynthConfig:
    """Build a config, turning every problem into one clear line (a `ConfigError`)."""
    scen = values.get("scenarios") or ()
    unknown = [s for s in scen if s not in SCENARIOS]  # type: ignore[union-attr]
    if unknown:
        raise ConfigError(f"unknown scenario {unknown[0]!r} (choose from: {', '.join(SCENARIOS)})")
    bg = values.get("bias_group")
    if bg is not None and bg not in BIAS_GROUPS:
        raise ConfigError(f"unknown bias group {bg!r} (choose from: {', '.join(BIAS_GROUPS)})")
    if values.get("drift_date") is not None and "drift" not in scen:  # type: ignore[operator]
        raise ConfigError("--drift-date needs --drift (or --scenario drift): without it there is no drift")
    if bg is not None and "bias" not in scen:  # type: ignore[operator]
        raise ConfigError("--bias-group needs --bias (or --scenario bias): without it no group is under-recorded")
    try:
        cfg = SynthConfig(**{k: v for k, v in values.items() if v is not None})  # type: ignore[arg-type]
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "config"
        msg = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        detail = msg if loc == "config" else f"--{loc.replace('_', '-')}: {msg}"
        if err["loc"] and got is not None and not isinstance(got, dict):
            detail += f" (got {got!r})"
        raise ConfigError(detail) from None
    check_output_dir(cfg.out, overwrite=cfg.overwrite)
    return cfg


def check_output_dir(out: Path, *, overwrite: bool) -> None:
    """Fail before any work if the output directory cannot be written or would be clobbered."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out: {out} exists and is not a directory")
    probe = out.absolute()
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"--out: {out} cannot be created ({probe} is not a directory)")
    try:  # a real write, since permission bits say nothing for root or read-only mounts
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise ConfigError(f"--out: {out} is not writable ({exc.strerror or exc} in {probe})") from None
    if out.exists() and not overwrite:
        taken = [p for p in ("ndjson", "bundles", "truth") if (out / p).exists()]
        if taken:
            raise ConfigError(
                f"--out: {out} already holds a synthetic hospital ({', '.join(taken)}); "
                "pass --overwrite to replace it"
            )
