"""RTP static payload types (RFC 3551 §6, tables 4 and 5): the one table.

The probe needs each static type's timestamp clock to measure jitter and
transit from the first packet of a stream (:mod:`probe.rtpstate`); the
classifier needs the media kind of a type to tell audio from video. Both read
this table. Types 96-127 are dynamic: their meaning comes from SDP
``a=rtpmap``, and the probe estimates their clock from the packets.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

import numpy as np
import numpy.typing as npt

__all__ = ["COMFORT_NOISE", "RTP_CLOCKS", "STATIC_PAYLOAD_TYPES", "Media", "PayloadTypeInfo",
           "static_clock"]

I64 = npt.NDArray[np.int64]


class Media(StrEnum):
    """Media kind of a payload type."""

    AUDIO = "audio"
    VIDEO = "video"
    AUDIO_VIDEO = "audio/video"


@dataclass(frozen=True, slots=True)
class PayloadTypeInfo:
    """One row of the RFC 3551 static payload-type tables."""

    name: str
    """Encoding name as registered (e.g. "PCMU")."""
    media: Media
    """Audio, video or both (MP2T)."""
    clock_rate: int
    """RTP timestamp clock rate in Hz."""
    channels: int | None
    """Audio channels; None for video."""


RTP_CLOCKS: Mapping[int, Media] = MappingProxyType({
    8000: Media.AUDIO, 16000: Media.AUDIO, 24000: Media.AUDIO, 32000: Media.AUDIO,
    44100: Media.AUDIO, 48000: Media.AUDIO, 90000: Media.VIDEO})
"""The RTP timestamp clocks calls' streams run at, and the media each names: the static
types' 8, 16 and 44.1 kHz and video's 90 kHz (tables 4 and 5 below); Opus's 48 kHz (RFC
7587 §4.1); the 24 and 32 kHz of wideband codecs carried on dynamic types (G.722.1
Annex C at 32 kHz, RFC 5577). 90 kHz also clocks MPEG audio (type 14),
which no call app sends: it names video. The probe estimates a dynamic type's clock as
the nearest of these (:mod:`probe.rtpstate`); the policy names a stream known only from
its sender's reports by them (:func:`policy.legs.reported_streams`)."""

COMFORT_NOISE = 13
"""CN, the one static type assigned to comfort noise (RFC 3551 table 4, format RFC 3389)."""

_A, _V = Media.AUDIO, Media.VIDEO
STATIC_PAYLOAD_TYPES: Mapping[int, PayloadTypeInfo] = MappingProxyType({
    0: PayloadTypeInfo("PCMU", _A, 8000, 1),
    3: PayloadTypeInfo("GSM", _A, 8000, 1),
    4: PayloadTypeInfo("G723", _A, 8000, 1),
    5: PayloadTypeInfo("DVI4", _A, 8000, 1),
    6: PayloadTypeInfo("DVI4", _A, 16000, 1),
    7: PayloadTypeInfo("LPC", _A, 8000, 1),
    8: PayloadTypeInfo("PCMA", _A, 8000, 1),
    9: PayloadTypeInfo("G722", _A, 8000, 1),  # clock rate 8000 by historical error, §4.5.2
    10: PayloadTypeInfo("L16", _A, 44100, 2),
    11: PayloadTypeInfo("L16", _A, 44100, 1),
    12: PayloadTypeInfo("QCELP", _A, 8000, 1),
    COMFORT_NOISE: PayloadTypeInfo("CN", _A, 8000, 1),
    14: PayloadTypeInfo("MPA", _A, 90000, None),
    15: PayloadTypeInfo("G728", _A, 8000, 1),
    16: PayloadTypeInfo("DVI4", _A, 11025, 1),
    17: PayloadTypeInfo("DVI4", _A, 22050, 1),
    18: PayloadTypeInfo("G729", _A, 8000, 1),
    25: PayloadTypeInfo("CelB", _V, 90000, None),
    26: PayloadTypeInfo("JPEG", _V, 90000, None),
    28: PayloadTypeInfo("nv", _V, 90000, None),
    31: PayloadTypeInfo("H261", _V, 90000, None),
    32: PayloadTypeInfo("MPV", _V, 90000, None),
    33: PayloadTypeInfo("MP2T", Media.AUDIO_VIDEO, 90000, None),
    34: PayloadTypeInfo("H263", _V, 90000, None),
})
"""RFC 3551 tables 4 and 5, by payload type number."""

_CLOCK = np.zeros(128, dtype=np.int64)
for _pt, _info in STATIC_PAYLOAD_TYPES.items():
    _CLOCK[_pt] = _info.clock_rate
_CLOCK.setflags(write=False)


def static_clock(pt: npt.ArrayLike) -> I64:
    """Clock rate of each payload type (low 7 bits) when it is static, else 0."""
    out: I64 = _CLOCK[np.asarray(pt, dtype=np.int64) & 0x7F]
    return out
