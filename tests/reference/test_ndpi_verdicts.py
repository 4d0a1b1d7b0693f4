"""Every verdict other than ok/unknown on the reference captures, checked once by hand.

The snapshot below lists each non-ok verdict marsad gives on
../shared/captures/ndpi-dev; the note beside it says how it was checked in the
packets (tshark). A new or vanished verdict fails the test, so nothing changes
without being looked at again. The rejected SIP call must be ``failed`` and no
answered call may be ``blocked``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from api.pipeline import analyze_capture
from tests.conftest import capture_ids, need_shared, shared_captures

CAPTURES = shared_captures()

Item = tuple[str, str | None, str, tuple[str, ...]]
SNAPSHOT: dict[str, list[Item]] = {
    # PT 108 streams arrive in bursts: tshark -z rtp,streams shows mean delta 60 ms and a
    # 2.8 s maximum delta for 0x0B865519 and 0x549AA5DA; RFC 3550 jitter 46-51 ms.
    "KakaoTalk_talk.pcap": [("call", None, "degraded", ("high-jitter",))],
    # lru_ipv6_caches.pcapng has none: WhatsApp STUN from three IPv6 sources to the Meta
    # relay [32fb:...:face:b00c:0:74fd]:3478 got no reply, but the same relay address and
    # port sent 16 packets to a fourth (tshark -Y 'ipv6.src==32fb:f967:681e:e96b:face:b00c:0:74fd',
    # frames 1-21): the relay was reachable, so the call is unknown, not blocked.
    # tshark -Y 'sip.Status-Code >= 300': INVITEs answered 403 (frames 5, 53, 84), 480
    # (frame 93) and 408 Request Timeout (frames 30, 41); 401/407 challenges are retried.
    "sip.pcap": [("call", "sip", "failed", ("sip-no-answer",)),
                 ("call", "sip", "failed", ("sip-rejected",)),
                 ("call", "sip", "failed", ("sip-rejected",)),
                 ("call", "sip", "failed", ("sip-rejected",))],
    # The relayed PT 120 stream 0xDEC0B0A1 from 31.13.86.48:3478 has a 769 ms gap (tshark
    # -z rtp,streams flags it); RFC 3550 mean jitter 102 ms.
    "wa_video.pcap": [("call", "whatsapp", "degraded", ("high-jitter",))],
    # The INVITE is answered 488 Not Acceptable Here (codec): the endpoints said no.
    "sip-488-Not-Acceptable-Here-codec-null.pcapng": [("call", "sip", "failed",
                                                       ("sip-rejected",))],
}


@pytest.mark.shared
@pytest.mark.parametrize("path", CAPTURES, ids=capture_ids(CAPTURES))
def test_non_ok_verdicts_match_the_checked_snapshot(path: Path) -> None:
    need_shared()
    r = analyze_capture(path, workers=1)
    items: list[Item] = []
    for c in r.analysis.calls:
        if str(c.verdict.kind) not in ("ok", "unknown"):
            items.append(("call", c.app, str(c.verdict.kind),
                          tuple(str(x) for x in c.verdict.reasons)))
            assert c.verdict.evidence and all(e.text and e.flow_uids
                                              for e in c.verdict.evidence)
    in_calls = {u for c in r.analysis.calls for u in c.flow_uids}
    for uid, v in r.analysis.flow_verdicts.items():
        if uid not in in_calls:
            items.append(("flow", None, str(v.kind), tuple(str(x) for x in v.reasons)))
    assert sorted(items, key=repr) == sorted(SNAPSHOT.get(path.name, []), key=repr)
    # An answered SIP call is never blocked.
    for c in r.analysis.calls:
        answered = any(m.message == "200" for m in c.setup.sip)
        if c.app == "sip" and answered:
            assert str(c.verdict.kind) != "blocked"
