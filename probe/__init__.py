"""probe: capture files, pcap streams and live interfaces -> bidirectional flow records.

The names below are the probe's public surface; :mod:`probe.addresses`,
:mod:`probe.flowkey`, :mod:`probe.extract`, :mod:`probe.linklayer`, :mod:`probe.pcapstream`,
:mod:`probe.records`, :mod:`probe.ring`, :mod:`probe.run`, :mod:`probe.sources` and :mod:`probe.tee`
are public modules too. The decoder,
the batch preparation and the flow table (:mod:`probe.decode`,
:mod:`probe.prepare`, :mod:`probe.meter`) are the probe's own: the service
(``api``) may not import them (an import-linter contract).
"""

from probe.addresses import (
    LOCAL_CLASSES,
    AddressClass,
    address_class,
    ends,
    is_local_class,
    local_host,
    local_is_orig,
    orig_is_local,
)
from probe.errors import (
    CaptureError,
    Malformed,
    NotACapture,
    ParseError,
    ProbeError,
    Truncated,
    UnsupportedLinkType,
)
from probe.extract import CutPacket, capture_bytes, cut_packets, packet_addresses
from probe.flowkey import PROTO_NAMES, PROTO_NUMBERS, pack_addr, record_key
from probe.linklayer import LINK_ADDRESSES, LinkAddresses, link_address_offsets
from probe.meter import FlowMeter, MeterConfig, MeterStats
from probe.pcapstream import PcapStream
from probe.records import (
    ORIG,
    RESP,
    FlowRecord,
    IcmpNotice,
    PayloadSample,
    RtpSeries,
    RtpStream,
    TcpFlag,
    Weird,
    conn_state,
)
from probe.ring import CaptureRing, RingConfig, RingFile
from probe.run import CaptureRun, FlowReader, Watermark, default_workers, read_capture
from probe.sources import MAX_DECOMPRESSED, ReadStatus, open_source
from probe.tee import TeeProcess, TeeState

__all__ = [
    "LINK_ADDRESSES",
    "LOCAL_CLASSES",
    "MAX_DECOMPRESSED",
    "ORIG",
    "PROTO_NAMES",
    "PROTO_NUMBERS",
    "RESP",
    "AddressClass",
    "CaptureError",
    "CaptureRing",
    "CaptureRun",
    "CutPacket",
    "FlowMeter",
    "FlowReader",
    "FlowRecord",
    "IcmpNotice",
    "LinkAddresses",
    "Malformed",
    "MeterConfig",
    "MeterStats",
    "NotACapture",
    "ParseError",
    "PayloadSample",
    "PcapStream",
    "ProbeError",
    "ReadStatus",
    "RingConfig",
    "RingFile",
    "RtpSeries",
    "RtpStream",
    "TcpFlag",
    "TeeProcess",
    "TeeState",
    "Truncated",
    "UnsupportedLinkType",
    "Watermark",
    "Weird",
    "address_class",
    "capture_bytes",
    "conn_state",
    "cut_packets",
    "default_workers",
    "ends",
    "is_local_class",
    "link_address_offsets",
    "local_host",
    "local_is_orig",
    "open_source",
    "orig_is_local",
    "pack_addr",
    "packet_addresses",
    "read_capture",
    "record_key",
]
