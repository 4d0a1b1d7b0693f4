"""ITU-T G.107 E-model: transmission rating R and estimated MOS for one call leg.

https://www.itu.int/rec/T-REC-G.107 (06/2015), with impairment factors from
G.113 Appendix I. The rating is

    R = Ro − Is − Id − Ie,eff + A

* ``Ro`` and ``Is`` use G.107's default parameters throughout (SLR 8, RLR 2,
  STMR 15, LSTR 18, Ds 3, Dr 3, TELR 65, WEPL 110, Ps 35, Pr 35, Nc −70,
  Nfor −64, qdu 1): Ro = 94.77 (No = −61.18 dBm0p), Is = 1.43. With every
  parameter at its default and no delay R = 93.2.
* ``Id = Idte + Idle + Idd`` is computed from the mouth-to-ear delay Ta, with
  the default echo path T = Ta and round-trip Tr = 2·Ta (§7.4).
* ``Ie,eff = Ie + (95 − Ie) · Ppl / (Ppl / BurstR + Bpl)`` (§7.5), Ppl in percent.
* MOS from R per G.107 Annex B, clamped to 1..4.5.

Passive capture cannot see mouth-to-ear delay, so it is estimated as
``network delay + jitter-buffer allowance + codec delay`` where the allowance is
``max(JITTER_BUFFER_MIN_MS, JITTER_BUFFER_FACTOR × RFC 3550 jitter)`` and the
codec delay is one packet of audio plus the codec's look-ahead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from policy.errors import QualityError

__all__ = [
    "CODECS",
    "DEFAULT_IS",
    "DEFAULT_RO",
    "Codec",
    "CodecImpairment",
    "EModelScore",
    "codec_for_payload_type",
    "delay_impairment",
    "effective_equipment_impairment",
    "mos_from_r",
    "mouth_to_ear_delay_ms",
    "r_factor",
    "score",
]

DEFAULT_RO = 94.77
"""Basic signal-to-noise ratio Ro with G.107's default parameters."""
DEFAULT_IS = 1.43
"""Simultaneous impairment factor Is with G.107's default parameters."""
DEFAULT_NO_DBM0P = -61.18
"""Total noise power No with default parameters (enters Idte through Roe)."""
DEFAULT_TELR_DB = 65.0
"""Talker echo loudness rating (default)."""
DEFAULT_WEPL_DB = 110.0
"""Weighted echo path loss (default)."""
DEFAULT_STMR_DB = 15.0
"""Sidetone masking rating (default); below 9 dB TELR would be corrected, not needed here."""

JITTER_BUFFER_MIN_MS = 20.0
"""Smallest de-jitter buffer assumed in the receiving client."""
JITTER_BUFFER_FACTOR = 3.0
"""De-jitter buffer assumed as a multiple of the RFC 3550 jitter (a mean deviation)."""


class Codec(IntEnum):
    """Speech codecs with an equipment-impairment entry."""

    G711_PLC = 1
    """G.711 (PCMU/PCMA) with packet-loss concealment (G.711 Appendix I)."""
    G711 = 2
    """G.711 without concealment."""
    G729A = 3
    """G.729 Annex A (with VAD)."""
    G722 = 4
    """G.722 wideband, rated on the narrowband scale."""
    OPUS = 5
    """Opus/SILK as used by OTT apps, rated on the narrowband scale."""


@dataclass(frozen=True, slots=True)
class CodecImpairment:
    """E-model inputs for one codec."""

    ie: float
    """Equipment impairment factor Ie at zero loss."""
    bpl: float
    """Packet-loss robustness factor Bpl."""
    frame_ms: float
    """Audio per packet assumed (packetisation delay)."""
    lookahead_ms: float
    """Algorithmic look-ahead of the encoder."""
    approximate: bool
    """True where G.113 gives no value and the figures are our approximation."""


CODECS: dict[Codec, CodecImpairment] = {
    # G.113 Appendix I, table I.3: G.711 with PLC, random loss.
    Codec.G711_PLC: CodecImpairment(ie=0.0, bpl=25.1, frame_ms=20.0, lookahead_ms=0.0,
                                    approximate=False),
    # G.113 Appendix I: G.711 without PLC.
    Codec.G711: CodecImpairment(ie=0.0, bpl=4.3, frame_ms=20.0, lookahead_ms=0.0,
                                approximate=False),
    # G.113 Appendix I: G.729A + VAD; 10 ms frames, 5 ms look-ahead, two frames per packet.
    Codec.G729A: CodecImpairment(ie=11.0, bpl=19.0, frame_ms=20.0, lookahead_ms=5.0,
                                 approximate=False),
    # G.113 rates G.722 on the wideband scale (G.107.1). On this narrowband scale it is
    # taken as at least as good as G.711 with PLC: Ie 0, Bpl 25.1. An approximation.
    Codec.G722: CodecImpairment(ie=0.0, bpl=25.1, frame_ms=20.0, lookahead_ms=1.5,
                                approximate=True),
    # G.113 does not list Opus. Approximation: Ie 6 (between G.711 and G.729A, typical of
    # a 16-24 kbit/s SILK/hybrid mode judged on the narrowband scale) and Bpl 20 (its
    # built-in concealment, without in-band FEC); 20 ms frames, 6.5 ms look-ahead.
    Codec.OPUS: CodecImpairment(ie=6.0, bpl=20.0, frame_ms=20.0, lookahead_ms=6.5,
                                approximate=True),
}
"""Equipment impairment, loss robustness and delay of each codec."""

_PT_CODEC = {0: Codec.G711_PLC, 8: Codec.G711_PLC, 9: Codec.G722, 18: Codec.G729A}


def codec_for_payload_type(pt: int) -> Codec | None:
    """Codec of an RFC 3551 static payload type, assuming G.711 receivers conceal loss.

    Dynamic types (96-127) need the session description or the app: ``None``.
    """
    return _PT_CODEC.get(pt)


@dataclass(frozen=True, slots=True)
class EModelScore:
    """The E-model's result for one call leg, with its inputs."""

    codec: Codec
    """Codec the impairments were taken from."""
    mouth_to_ear_ms: float
    """Ta used for the delay impairment."""
    loss_ratio: float
    """Packet loss used (0..1)."""
    burst_ratio: float
    """BurstR used (1 for random loss)."""
    id: float
    """Delay impairment Id = Idte + Idle + Idd."""
    ie_eff: float
    """Effective equipment impairment Ie,eff."""
    r: float
    """Transmission rating R."""
    mos: float
    """Estimated mean opinion score, 1..4.5."""

    def to_dict(self) -> dict[str, Any]:
        return {"codec": self.codec.name, "mouth_to_ear_ms": self.mouth_to_ear_ms,
                "loss_ratio": self.loss_ratio, "burst_ratio": self.burst_ratio, "id": self.id,
                "ie_eff": self.ie_eff, "r": self.r, "mos": self.mos}


def mouth_to_ear_delay_ms(network_delay_ms: float, jitter_s: float, codec: Codec) -> float:
    """Ta = one-way network delay + de-jitter buffer allowance + codec delay (module doc)."""
    c = CODECS[codec]
    buffer_ms = max(JITTER_BUFFER_MIN_MS, JITTER_BUFFER_FACTOR * jitter_s * 1000.0)
    return network_delay_ms + buffer_ms + c.frame_ms + c.lookahead_ms


def _idd(ta_ms: float) -> float:
    # G.107 §7.4 eq. 7-28: pure delay impairment, zero up to 100 ms (mT = 100, sT = 1).
    if ta_ms <= 100.0:
        return 0.0
    x = math.log10(ta_ms / 100.0) / math.log10(2.0)
    return 25.0 * (math.pow(1.0 + x**6, 1 / 6) - 3.0 * math.pow(1.0 + (x / 3.0) ** 6, 1 / 6) + 2.0)


def _idte(t_ms: float) -> float:
    # G.107 §7.4 eqs. 7-22..7-24: talker echo, default TELR, STMR >= 9 so no correction.
    roe = -1.5 * (DEFAULT_NO_DBM0P - 2.0)
    terv = (DEFAULT_TELR_DB - 40.0 * math.log10((1.0 + t_ms / 10.0) / (1.0 + t_ms / 150.0))
            + 6.0 * math.exp(-0.3 * t_ms**2))
    re = 80.0 + 2.5 * (terv - 14.0)
    return ((roe - re) / 2.0 + math.sqrt((roe - re) ** 2 / 4.0 + 100.0) - 1.0) * (
        1.0 - math.exp(-t_ms))


def _idle(tr_ms: float) -> float:
    # G.107 §7.4 eqs. 7-26, 7-27: listener echo with the default WEPL.
    rle = 10.5 * (DEFAULT_WEPL_DB + 7.0) * math.pow(tr_ms + 1.0, -0.25)
    return (DEFAULT_RO - rle) / 2.0 + math.sqrt((DEFAULT_RO - rle) ** 2 / 4.0 + 169.0)


def delay_impairment(ta_ms: float) -> float:
    """Id for a mouth-to-ear delay Ta, echo path T = Ta, round trip Tr = 2·Ta."""
    if ta_ms < 0:
        raise QualityError(f"negative delay {ta_ms} ms")
    return _idte(ta_ms) + _idle(2.0 * ta_ms) + _idd(ta_ms)


def effective_equipment_impairment(ie: float, bpl: float, ppl_percent: float,
                                   burst_r: float = 1.0) -> float:
    """Ie,eff = Ie + (95 − Ie)·Ppl/(Ppl/BurstR + Bpl) (G.107 eq. 7-29)."""
    if not 0.0 <= ppl_percent <= 100.0:
        raise QualityError(f"packet loss {ppl_percent}% outside 0..100")
    if burst_r <= 0:
        raise QualityError(f"BurstR {burst_r} must be positive")
    return ie + (95.0 - ie) * ppl_percent / (ppl_percent / burst_r + bpl)


def r_factor(codec: Codec, *, loss_ratio: float, mouth_to_ear_ms: float,
             burst_ratio: float = 1.0, advantage: float = 0.0) -> float:
    """R = Ro − Is − Id − Ie,eff + A with default Ro and Is."""
    c = CODECS[codec]
    ie_eff = effective_equipment_impairment(c.ie, c.bpl, loss_ratio * 100.0, burst_ratio)
    return DEFAULT_RO - DEFAULT_IS - delay_impairment(mouth_to_ear_ms) - ie_eff + advantage


def mos_from_r(r: float) -> float:
    """G.107 Annex B: MOS = 1 + 0.035R + 7·10⁻⁶·R(R − 60)(100 − R), clamped to 1..4.5."""
    if r <= 0.0:
        return 1.0
    if r >= 100.0:
        return 4.5
    mos = 1.0 + 0.035 * r + 7e-6 * r * (r - 60.0) * (100.0 - r)
    return min(4.5, max(1.0, mos))


def score(codec: Codec, *, loss_ratio: float, jitter_s: float, network_delay_ms: float,
          burst_ratio: float = 1.0, advantage: float = 0.0) -> EModelScore:
    """R and MOS from measured loss and jitter and an assumed one-way network delay."""
    ta = mouth_to_ear_delay_ms(network_delay_ms, jitter_s, codec)
    c = CODECS[codec]
    ie_eff = effective_equipment_impairment(c.ie, c.bpl, loss_ratio * 100.0, burst_ratio)
    idv = delay_impairment(ta)
    r = DEFAULT_RO - DEFAULT_IS - idv - ie_eff + advantage
    return EModelScore(codec=codec, mouth_to_ear_ms=ta, loss_ratio=loss_ratio,
                       burst_ratio=burst_ratio, id=idv, ie_eff=ie_eff, r=r, mos=mos_from_r(r))
