"""The synthetic hospital: FHIR R4 Bundles and a Bulk Data export with a documented ground truth.

>>> from careloop.synth import make_config
>>> make_config(patients=10, seed=1, out="/tmp/careloop-doctest-hospital", overwrite=True).patients
10
"""

from careloop.synth.config import SynthConfig, make_config
from careloop.synth.writer import SynthResult, generate

__all__ = ["SynthConfig", "SynthResult", "generate", "make_config"]
