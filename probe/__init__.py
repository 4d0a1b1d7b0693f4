"""probe: capture files, pcap streams and live interfaces -> bidirectional flow records."""

from probe.errors import (
    CaptureError,
    Malformed,
    NotACapture,
    ParseError,
    ProbeError,
    Truncated,
    UnsupportedLinkType,
)
from probe.meter import FlowMeter, MeterConfig, MeterStats
from probe.records import ORIG, RESP, FlowRecord, IcmpNotice, PayloadSample, RtpSeries, Weird
from probe.run import CaptureRun, FlowReader, read_capture
from probe.sources import ReadStatus, open_source

__all__ = [
    "ORIG",
    "RESP",
    "CaptureError",
    "CaptureRun",
    "FlowMeter",
    "FlowReader",
    "FlowRecord",
    "IcmpNotice",
    "Malformed",
    "MeterConfig",
    "MeterStats",
    "NotACapture",
    "ParseError",
    "PayloadSample",
    "ProbeError",
    "ReadStatus",
    "RtpSeries",
    "Truncated",
    "UnsupportedLinkType",
    "Weird",
    "open_source",
    "read_capture",
]
