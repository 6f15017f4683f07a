"""A site's `carbon_intensity_g_per_kwh` (a number, or a day's series of steps in UTC) and an
instance group's `power_w` (idle and busy W): accepted as written, and every mistake refused with
its file, line and field, once, without pydantic's union tags."""

from __future__ import annotations

from datetime import time

import pytest

from jellybean.spec import SpecError
from jellybean.spec.loader import load_text
from jellybean.spec.topology import TopologySpec

TOPOLOGY = """\
apiVersion: jellybean.io/v1alpha1
kind: Topology
metadata: {name: t}
spec:
  sites:
    - name: cloud
      tier: cloud
      carbon_intensity_g_per_kwh: INTENSITY
      instances:
        - name: vm
          hardware: cpu
          price_per_hour: 1
          max_count: 2
          power_w: POWER
"""


def _load(intensity: str, power: str = "{idle: 10, busy: 70}") -> TopologySpec:
    return load_text(TOPOLOGY.replace("INTENSITY", intensity).replace("POWER", power), "t.yaml")[0].model.spec


def _refused(intensity: str, power: str = "{idle: 10, busy: 70}") -> list[str]:
    with pytest.raises(SpecError) as info:
        _load(intensity, power)
    return [str(issue) for issue in info.value.issues]


def test_a_number_and_a_series_are_both_accepted() -> None:
    assert _load("412.5").sites[0].carbon_intensity() == 412.5
    series = "\n        - {from: '00:00', g_per_kwh: 100}\n        - {from: 06:30, g_per_kwh: 400}"
    site = _load(series).sites[0]
    assert [step.from_ for step in site.carbon_intensity_g_per_kwh] == ["00:00", "06:30"]
    assert site.carbon_intensity(time(7, 0)) == 400 and site.carbon_intensity(time(6, 29)) == 100
    assert site.carbon_intensity() == pytest.approx((100 * 390 + 400 * 1050) / 1440)
    power = _load("412.5").sites[0].instances[0].power_w
    assert (power.idle, power.busy) == (10, 70)


def test_an_unquoted_afternoon_time_is_read_as_the_time_written() -> None:
    # YAML 1.1 reads 12:30 as the base-60 integer 750 (minutes after midnight): taken back as 12:30.
    site = _load("[{from: 12:30, g_per_kwh: 5}, {from: 23:59, g_per_kwh: 7}]").sites[0]
    assert [step.from_ for step in site.carbon_intensity_g_per_kwh] == ["12:30", "23:59"]


@pytest.mark.parametrize("intensity, line, where, message", [
    ("abc", 8, "spec.sites[0].carbon_intensity_g_per_kwh", "Input should be a valid number"),
    ("-3", 8, "spec.sites[0].carbon_intensity_g_per_kwh", "greater than or equal to 0"),
    ("[]", 8, "spec.sites[0].carbon_intensity_g_per_kwh", "an empty series"),
    ("\n        - {from: '06:00', g_per_kwh: 5}\n        - {from: '25:00', g_per_kwh: 5}", 10,
     "spec.sites[0].carbon_intensity_g_per_kwh[1].from", "'25:00' is not a time of day"),
    ("\n        - {from: '06:00', g_per_kwh: 5}\n        - {from: '06:00', g_per_kwh: 9}", 10,
     "spec.sites[0].carbon_intensity_g_per_kwh[1].from", "step 06:00 does not come after the step before it"),
    ("\n        - from: '06:00'\n          g_per_kwh: -1", 10,
     "spec.sites[0].carbon_intensity_g_per_kwh[0].g_per_kwh", "greater than or equal to 0"),
    ("[{at: '06:00', g_per_kwh: 1}]", 8, "spec.sites[0].carbon_intensity_g_per_kwh[0]", ""),
])
def test_a_bad_intensity_is_located(intensity: str, line: int, where: str, message: str) -> None:
    issues = _refused(intensity)
    assert issues and all("constrained-float" not in i and "list[" not in i for i in issues)
    assert any(i.startswith(f"t.yaml:{line}: {where}") and message in i for i in issues), issues


@pytest.mark.parametrize("power, where, message", [
    ("{idle: 80, busy: 70}", "power_w.busy", "busy power 70 W is below idle power 80 W"),
    ("{idle: 10}", "power_w.busy", "Field required"),
    ("{idle: -1, busy: 70}", "power_w.idle", "greater than or equal to 0"),
    ("{idle: 1, busy: 70, peak: 90}", "power_w.peak", "Extra inputs are not permitted"),
    ("70", "power_w", "valid dictionary"),
])
def test_a_bad_power_is_located(power: str, where: str, message: str) -> None:
    issues = _refused("100", power)
    assert any(i.startswith(f"t.yaml:14: spec.sites[0].instances[0].{where}:") and message in i for i in issues), issues
