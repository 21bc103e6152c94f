//! urbd replication wire format (see docs/PROTOCOL.md). Pure: bytes in, typed messages out.
