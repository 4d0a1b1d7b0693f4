"""G.107 E-model: worked numbers, monotonicity and the MOS mapping."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest

from policy.emodel import (
    CODECS,
    Codec,
    codec_for_payload_type,
    delay_impairment,
    effective_equipment_impairment,
    mos_from_r,
    mouth_to_ear_delay_ms,
    r_factor,
    score,
)
from policy.errors import QualityError


def test_all_defaults_give_r_93_2_and_mos_4_41() -> None:
    # Ro 94.77 − Is 1.43 − Id(0) 0.149 (listener echo with WEPL 110) = 93.19.
    assert delay_impairment(0.0) == pytest.approx(0.149, abs=0.001)
    r = r_factor(Codec.G711_PLC, loss_ratio=0.0, mouth_to_ear_ms=0.0)
    assert r == pytest.approx(93.2, abs=0.01)
    # 1 + 0.035·93.2 + 7e-6·93.2·33.2·6.8 = 4.4093
    assert mos_from_r(93.2) == pytest.approx(4.4093, abs=1e-4)


def test_mos_mapping_worked_values_and_clamps() -> None:
    assert mos_from_r(50.0) == pytest.approx(1 + 1.75 - 7e-6 * 50 * 10 * 50)  # 2.575
    assert mos_from_r(80.0) == pytest.approx(1 + 2.8 + 7e-6 * 80 * 20 * 20)  # 4.024
    assert mos_from_r(-3.0) == 1.0
    assert mos_from_r(5.0) == 1.0  # the polynomial dips below 1 there (0.992)
    assert mos_from_r(100.0) == 4.5 and mos_from_r(130.0) == 4.5


def test_pure_delay_impairment_worked_value() -> None:
    # At Ta = 400 ms, X = log2(4) = 2 and Idd = 25·(65^(1/6) − 3·(1 + (2/3)^6)^(1/6) + 2).
    idd = 25 * (65 ** (1 / 6) - 3 * (1 + (2 / 3) ** 6) ** (1 / 6) + 2)
    assert idd == pytest.approx(24.07, abs=0.01)
    # Idte and Idle at T = 400 ms, Tr = 800 ms, default TELR 65, WEPL 110, No −61.18 dBm0p.
    terv = 65 - 40 * math.log10((1 + 40) / (1 + 400 / 150))
    re = 80 + 2.5 * (terv - 14)
    roe = -1.5 * (-61.18 - 2)
    idte = (roe - re) / 2 + math.sqrt((roe - re) ** 2 / 4 + 100) - 1
    rle = 10.5 * 117 * 801 ** -0.25
    idle = (94.77 - rle) / 2 + math.sqrt((94.77 - rle) ** 2 / 4 + 169)
    assert delay_impairment(400.0) == pytest.approx(idd + idte + idle, rel=1e-9)
    assert delay_impairment(400.0) == pytest.approx(31.11, abs=0.01)


def test_effective_equipment_impairment_worked_values() -> None:
    # G.729A at 2 % random loss: 11 + 84·2/(2 + 19) = 19.
    assert effective_equipment_impairment(11, 19, 2.0) == pytest.approx(19.0)
    # G.711 with PLC at 2 %: 95·2/27.1; without PLC 95·2/6.3.
    assert effective_equipment_impairment(0, 25.1, 2.0) == pytest.approx(7.0111, abs=1e-4)
    assert effective_equipment_impairment(0, 4.3, 2.0) == pytest.approx(30.1587, abs=1e-4)
    # Bursty loss (BurstR 2) hurts more than random loss at the same rate.
    assert effective_equipment_impairment(0, 25.1, 5.0, 2.0) > effective_equipment_impairment(
        0, 25.1, 5.0, 1.0)
    with pytest.raises(QualityError):
        effective_equipment_impairment(0, 25.1, -1.0)
    with pytest.raises(QualityError):
        effective_equipment_impairment(0, 25.1, 1.0, 0.0)
    with pytest.raises(QualityError):
        delay_impairment(-1.0)


@pytest.mark.parametrize("codec", list(Codec))
def test_r_falls_with_loss_and_delay(codec: Codec) -> None:
    by_loss = [r_factor(codec, loss_ratio=p / 100, mouth_to_ear_ms=100.0) for p in range(0, 31)]
    assert all(a > b for a, b in pairwise(by_loss))
    by_delay = [r_factor(codec, loss_ratio=0.01, mouth_to_ear_ms=float(d))
                for d in range(0, 801, 20)]
    assert all(a > b for a, b in pairwise(by_delay))
    moss = [mos_from_r(r) for r in by_loss]
    assert all(a >= b for a, b in pairwise(moss))


def test_codec_ordering_at_equal_conditions() -> None:
    rs = {c: r_factor(c, loss_ratio=0.03, mouth_to_ear_ms=150.0) for c in Codec}
    assert rs[Codec.G711_PLC] > rs[Codec.G729A]
    assert rs[Codec.G711_PLC] > rs[Codec.G711]  # concealment matters at 3 % loss
    assert CODECS[Codec.OPUS].approximate and not CODECS[Codec.G729A].approximate


def test_score_estimates_mouth_to_ear_delay() -> None:
    # 60 ms network + max(20, 3 × 12 ms) jitter buffer + 20 ms packet + 5 ms look-ahead.
    assert mouth_to_ear_delay_ms(60.0, 0.012, Codec.G729A) == pytest.approx(121.0)
    assert mouth_to_ear_delay_ms(60.0, 0.001, Codec.G711_PLC) == pytest.approx(100.0)
    s = score(Codec.G711_PLC, loss_ratio=0.02, jitter_s=0.004, network_delay_ms=80.0)
    assert s.mouth_to_ear_ms == pytest.approx(120.0)
    assert s.ie_eff == pytest.approx(7.0111, abs=1e-4)
    assert s.r == pytest.approx(94.77 - 1.43 - delay_impairment(120.0) - s.ie_eff)
    assert s.mos == pytest.approx(mos_from_r(s.r))
    assert 3.9 < s.mos < 4.3
    assert s.to_dict()["codec"] == "G711_PLC"


def test_codec_for_static_payload_types() -> None:
    assert codec_for_payload_type(0) is Codec.G711_PLC
    assert codec_for_payload_type(8) is Codec.G711_PLC
    assert codec_for_payload_type(18) is Codec.G729A
    assert codec_for_payload_type(9) is Codec.G722
    assert codec_for_payload_type(111) is None
