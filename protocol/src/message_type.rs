//! Message type numbers (PROTOCOL.md §2.7) and per-type header rules: payload bounds, defined
//! flags, and which socket carries the message.

use crate::messages::write::WriteFlags;
use crate::wire_enum::wire_enum;
use crate::ConnectionKind;

wire_enum! {
    /// The header's message type field. Numbers are grouped by purpose (PROTOCOL.md §2.7).
    pub enum MessageType: u16, kind = "message type" {
        /// §4.2
        Hello = 0x0001 => "Hello",
        /// §4.3
        AuthChallenge = 0x0002 => "AuthChallenge",
        /// §4.4
        AuthResponse = 0x0003 => "AuthResponse",
        /// §4.5
        AuthResult = 0x0004 => "AuthResult",
        /// §4.6
        Params = 0x0005 => "Params",
        /// §4.7
        State = 0x0006 => "State",
        /// §4.8
        Data = 0x0010 => "Data",
        /// §4.9
        RecvAck = 0x0011 => "RecvAck",
        /// §4.9
        WriteAck = 0x0012 => "WriteAck",
        /// §4.10
        NegAck = 0x0013 => "NegAck",
        /// §4.11
        Barrier = 0x0014 => "Barrier",
        /// §4.12
        BarrierAck = 0x0015 => "BarrierAck",
        /// §4.13
        FlushReq = 0x0016 => "FlushReq",
        /// §4.13
        FlushAck = 0x0017 => "FlushAck",
        /// §4.14
        Trim = 0x0018 => "Trim",
        /// §4.14
        WriteZeroes = 0x0019 => "WriteZeroes",
        /// §4.15
        Ping = 0x0020 => "Ping",
        /// §4.15
        PingAck = 0x0021 => "PingAck",
        /// §4.16
        BitmapChunk = 0x0030 => "BitmapChunk",
        /// §4.17
        SyncUuid = 0x0031 => "SyncUuid",
        /// §4.18
        ResyncRequest = 0x0032 => "ResyncRequest",
        /// §4.19
        ResyncData = 0x0033 => "ResyncData",
        /// §4.20
        CsumRequest = 0x0034 => "CsumRequest",
        /// §4.21
        InSync = 0x0035 => "InSync",
        /// §4.22
        VerifyRequest = 0x0036 => "VerifyRequest",
        /// §4.22
        VerifyReply = 0x0037 => "VerifyReply",
        /// §4.23
        ResyncDone = 0x0038 => "ResyncDone",
        /// §4.27
        ResyncStart = 0x0039 => "ResyncStart",
        /// §4.28
        SyncPause = 0x003a => "SyncPause",
        /// §4.29
        VerifyStart = 0x003b => "VerifyStart",
        /// §4.30
        ReadRequest = 0x003c => "ReadRequest",
        /// §4.30
        ReadReply = 0x003d => "ReadReply",
        /// §4.30
        ReadFailed = 0x003e => "ReadFailed",
        /// §4.24
        StateChange = 0x0040 => "StateChange",
        /// §4.25
        StateChangeReply = 0x0041 => "StateChangeReply",
        /// §4.26
        Disconnect = 0x0042 => "Disconnect",
    }
}

/// Which of the two TCP connections carries a message (PROTOCOL.md §1.1, §2.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Socket {
    /// Bulk: writes, resync, bitmap, state.
    Data,
    /// Small and urgent: acks, pings, state-change replies.
    Meta,
    /// Handshake messages, sent on each socket.
    Both,
}

const OPEN: u32 = u32::MAX;

impl MessageType {
    /// Inclusive bounds on the payload length for this type (PROTOCOL.md §4). Open-ended
    /// types (`Data`, `ResyncData`, `BitmapChunk`) are further bounded by `DecodeLimits`.
    pub const fn payload_len_bounds_bytes(self) -> (u32, u32) {
        use MessageType::*;
        match self {
            // versions 4 + kind 1 + two names of 1 + 1..=64 bytes
            Hello => (9, 135),
            AuthChallenge => (64, 64),
            AuthResponse => (32, 32),
            AuthResult => (1, 1),
            // size 8 + protocol 1 + granularity 4 + max frame 4
            Params => (17, 17),
            // role 1 + disk 1 + uuids 32 + flags 4 + dirty bits 8
            State => (46, 46),
            // offset 8 + at least one data byte
            Data | ResyncData => (9, OPEN),
            // request id 8 + at least one data byte
            ReadReply => (9, OPEN),
            ReadFailed => (8, 8),
            RecvAck | WriteAck | Barrier | FlushReq | FlushAck | SyncUuid => (8, 8),
            NegAck => (10, 10),
            BarrierAck => (12, 12),
            Trim | WriteZeroes => (16, 16),
            Ping | PingAck | ResyncDone => (0, 0),
            // first bit 8 + bit count 4 + at least one byte
            BitmapChunk => (13, OPEN),
            ResyncRequest | InSync | ReadRequest => (12, 12),
            // offset 8 + length 4 + algorithm 1 + digest 4 (crc32c) ..= 32 (sha256)
            CsumRequest | VerifyRequest => (17, 45),
            // offset 8 + length 4 + in-sync 1
            VerifyReply => (13, 13),
            // full 1 + sender-is-target 1
            ResyncStart => (2, 2),
            // paused 1
            SyncPause => (1, 1),
            // start 8 + stop 8
            VerifyStart => (16, 16),
            StateChange => (3, 3),
            StateChangeReply => (10, 10),
            Disconnect => (2, 2),
        }
    }

    /// Header flag bits this type defines; any other bit set is an error.
    pub const fn defined_flags(self) -> u16 {
        match self {
            MessageType::Data | MessageType::Trim | MessageType::WriteZeroes => {
                WriteFlags::ALL_BITS
            }
            _ => 0,
        }
    }

    /// The socket this message travels on.
    pub const fn socket(self) -> Socket {
        use MessageType::*;
        match self {
            Hello | AuthChallenge | AuthResponse | AuthResult => Socket::Both,
            RecvAck | WriteAck | NegAck | BarrierAck | FlushAck | Ping | PingAck | InSync
            | VerifyReply | StateChangeReply | ReadFailed => Socket::Meta,
            Params | State | Data | Barrier | FlushReq | Trim | WriteZeroes | BitmapChunk
            | SyncUuid | ResyncRequest | ResyncData | CsumRequest | VerifyRequest | ResyncDone
            | ResyncStart | SyncPause | VerifyStart | StateChange | Disconnect | ReadRequest
            | ReadReply => Socket::Data,
        }
    }

    /// True if this message may arrive on a connection of the given kind.
    pub const fn allowed_on(self, kind: ConnectionKind) -> bool {
        matches!(
            (self.socket(), kind),
            (Socket::Both, _)
                | (Socket::Data, ConnectionKind::Data)
                | (Socket::Meta, ConnectionKind::Meta)
        )
    }

    /// True for the messages allowed before both sides are authenticated (PROTOCOL.md §3).
    pub const fn is_handshake(self) -> bool {
        matches!(self.socket(), Socket::Both)
    }

    /// Checks a payload length against [`Self::payload_len_bounds_bytes`].
    pub(crate) fn check_payload_len(self, payload_bytes: u32) -> Result<(), crate::Error> {
        let (min_bytes, max_bytes) = self.payload_len_bounds_bytes();
        if (min_bytes..=max_bytes).contains(&payload_bytes) {
            Ok(())
        } else {
            Err(crate::Error::PayloadLength {
                message_type: self,
                payload_bytes,
                min_bytes,
                max_bytes,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // PROTOCOL.md §2.7: the type numbers are part of the wire format.
    #[test]
    fn type_numbers_round_trip_and_unknown_is_an_error() {
        for &t in MessageType::ALL {
            assert_eq!(MessageType::try_from(t.to_wire()), Ok(t));
        }
        assert_eq!(MessageType::Hello.to_wire(), 0x0001);
        assert_eq!(MessageType::Data.to_wire(), 0x0010);
        assert_eq!(MessageType::Ping.to_wire(), 0x0020);
        assert_eq!(MessageType::Disconnect.to_wire(), 0x0042);
        assert!(MessageType::try_from(0).is_err());
        assert!(MessageType::try_from(0xffff).is_err());
    }

    // PROTOCOL.md §1.1 / §2.7: acks and pings on the meta socket, bulk on the data socket.
    #[test]
    fn sockets() {
        assert!(MessageType::Data.allowed_on(ConnectionKind::Data));
        assert!(!MessageType::Data.allowed_on(ConnectionKind::Meta));
        assert!(MessageType::WriteAck.allowed_on(ConnectionKind::Meta));
        assert!(!MessageType::Ping.allowed_on(ConnectionKind::Data));
        assert!(MessageType::Hello.allowed_on(ConnectionKind::Meta));
        assert!(MessageType::AuthResult.is_handshake());
        assert!(!MessageType::State.is_handshake());
    }
}
