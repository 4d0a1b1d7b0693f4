"""The installed marsad's version, as every part of the service states it.

The CLI's ``--version``, the web application's OpenAPI document, ``/health``, the
Prometheus build-info metric, evidence bundles and reports, and the archive's
manifest (which skips a capture already analysed by the same version) all read it
here, so that they name one version and agree when the package is not installed.
"""

from __future__ import annotations

__all__ = ["UNKNOWN", "marsad_version"]

UNKNOWN = "0+unknown"
"""The version of a source tree that was never installed: a PEP 440 local version, so
that tools that parse versions accept it, and lower than any release."""


def marsad_version() -> str:
    """The installed package's version, :data:`UNKNOWN` when run from a source tree.
    (``importlib.metadata`` is imported here: the CLI starts reading a capture before it
    needs the version.)"""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("marsad")
    except PackageNotFoundError:
        return UNKNOWN
