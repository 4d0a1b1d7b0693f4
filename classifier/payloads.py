"""What the classifier asks the probe to keep of payloads and where RTP sits.

The probe knows no application (:mod:`probe.plugins`); the inspectors here do. This
module assembles their declarations into the one :class:`~probe.plugins.PayloadPolicy`
every entry point hands the meter, so that the payloads the inspectors read are the
ones the probe kept:

- SIP messages (:data:`classifier.dpi.sip.KEEP_WHOLE`), RTCP sender/receiver reports
  (:data:`classifier.dpi.rtp.KEEP_WHOLE`) and STUN messages other than media indications
  (:data:`classifier.dpi.stun.KEEP_WHOLE`) are kept whole whatever their rank in a flow;
- RTP is measured plain, inside TURN ChannelData (:data:`classifier.dpi.stun.TURN_CHANNEL_RTP`),
  inside Microsoft's Multiplexed TURN messages
  (:data:`classifier.dpi.stun.MS_TURN_MULTIPLEXED_RTP`) and behind Zoom's media
  encapsulation (:data:`classifier.dpi.framings.ZOOM_SFU_RTP`).
"""

from __future__ import annotations

from typing import Any

from classifier.dpi import framings, rtp, sip, stun
from probe.meter import MeterConfig
from probe.plugins import PLAIN_RTP, PayloadPolicy

__all__ = ["PAYLOAD_POLICY", "meter_config"]

PAYLOAD_POLICY = PayloadPolicy(
    keep_whole=sip.KEEP_WHOLE + rtp.KEEP_WHOLE + stun.KEEP_WHOLE,
    rtp_framings=(PLAIN_RTP, stun.TURN_CHANNEL_RTP, stun.MS_TURN_MULTIPLEXED_RTP,
                  *framings.ZOOM_SFU_RTP),
)
"""The payload policy of every entry point that classifies."""


def meter_config(**settings: Any) -> MeterConfig:
    """A :class:`~probe.meter.MeterConfig` with the classifier's payload policy and
    ``settings`` for the rest."""
    return MeterConfig(payloads=PAYLOAD_POLICY, **settings)
