"""probe: capture files, pcap streams and live interfaces -> bidirectional flow records."""
