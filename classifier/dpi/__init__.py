"""One cursor parser per protocol (dns, tls, quic, dtls, stun, rtp, sip, framings,
telephony): each module is public and exports its own records and parse functions;
the package re-exports none of them."""

__all__: list[str] = []
