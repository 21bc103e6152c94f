//! Liveness defaults (PROTOCOL.md §6). The clock lives in the connection layer; these are
//! only the numbers both sides agree on by default (DRBD's defaults).

/// Send a `Ping` on the meta socket after this long without receiving anything on it.
pub const PING_INTERVAL_MS_DEFAULT: u64 = 10_000;
/// A `PingAck` must arrive this soon after a `Ping`, else the link is declared dead.
pub const PING_TIMEOUT_MS_DEFAULT: u64 = 500;
/// An expected ack (RecvAck/WriteAck/BarrierAck/FlushAck) that is this late counts one "ko".
pub const ACK_TIMEOUT_MS_DEFAULT: u64 = 6_000;
/// After this many consecutive ack timeouts the peer is dropped.
pub const KO_COUNT_DEFAULT: u32 = 7;
