//! Transmission phase requests: the 28-byte header and the rules each command must obey.

use bytes::Buf;

use crate::consts::*;
use crate::errno::Errno;
use crate::error::CodecError;

/// A command type off the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Read,
    Write,
    Disc,
    Flush,
    Trim,
    Cache,
    WriteZeroes,
    BlockStatus,
    Unknown(u16),
}

impl From<u16> for Command {
    fn from(raw: u16) -> Command {
        match raw {
            0 => Command::Read,
            1 => Command::Write,
            2 => Command::Disc,
            3 => Command::Flush,
            4 => Command::Trim,
            5 => Command::Cache,
            6 => Command::WriteZeroes,
            7 => Command::BlockStatus,
            t => Command::Unknown(t),
        }
    }
}

/// A request header as sent by the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub command: Command,
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

impl Request {
    /// Parses a request header. A wrong magic is fatal: we cannot find the next request.
    pub fn parse(raw: &[u8; REQUEST_HEADER_BYTES]) -> Result<Request, CodecError> {
        let mut b = &raw[..];
        let magic = b.get_u32();
        if magic != REQUEST_MAGIC {
            return Err(CodecError::BadRequestMagic(magic));
        }
        Ok(Request {
            flags: b.get_u16(),
            command: Command::from(b.get_u16()),
            cookie: b.get_u64(),
            offset: b.get_u64(),
            length: b.get_u32(),
        })
    }

    /// Encodes a request (used by tests and tools).
    pub fn encode(&self) -> [u8; REQUEST_HEADER_BYTES] {
        let raw_type = match self.command {
            Command::Read => 0,
            Command::Write => 1,
            Command::Disc => 2,
            Command::Flush => 3,
            Command::Trim => 4,
            Command::Cache => 5,
            Command::WriteZeroes => 6,
            Command::BlockStatus => 7,
            Command::Unknown(t) => t,
        };
        let mut out = [0u8; REQUEST_HEADER_BYTES];
        out[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        out[4..6].copy_from_slice(&self.flags.to_be_bytes());
        out[6..8].copy_from_slice(&u16::to_be_bytes(raw_type));
        out[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        out[16..24].copy_from_slice(&self.offset.to_be_bytes());
        out[24..28].copy_from_slice(&self.length.to_be_bytes());
        out
    }

    /// Bytes of payload that follow this header on the wire.
    pub fn payload_bytes(&self) -> u32 {
        if self.command == Command::Write {
            self.length
        } else {
            0
        }
    }

    pub fn fua(&self) -> bool {
        self.flags & CMD_FLAG_FUA != 0
    }
}

/// What the export allows; the context `validate` checks requests against.
#[derive(Debug, Clone, Copy)]
pub struct ExportRules {
    pub size_bytes: u64,
    pub maximum_bytes: u32,
    pub read_only: bool,
    pub structured_replies: bool,
    pub block_status: bool,
}

/// Checks a request against the protocol's rules and the export. `Err` is the error the client
/// gets; the connection goes on (`doc/proto.md` "Request types" and "Error values").
pub fn validate(req: &Request, rules: &ExportRules) -> Result<(), Errno> {
    let allowed_flags = match req.command {
        Command::Read => {
            CMD_FLAG_FUA
                | if rules.structured_replies {
                    CMD_FLAG_DF
                } else {
                    0
                }
        }
        Command::Write | Command::Trim | Command::Flush | Command::Cache => CMD_FLAG_FUA,
        Command::WriteZeroes => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
        Command::BlockStatus => CMD_FLAG_REQ_ONE,
        Command::Disc => 0,
        Command::Unknown(_) => return Err(Errno::Inval),
    };
    if req.flags & !allowed_flags != 0 {
        return Err(Errno::Inval);
    }
    let writes = matches!(
        req.command,
        Command::Write | Command::Trim | Command::WriteZeroes
    );
    if writes && rules.read_only {
        return Err(Errno::Perm);
    }
    if req.command == Command::BlockStatus && !rules.block_status {
        return Err(Errno::Inval);
    }
    if matches!(req.command, Command::Flush | Command::Disc) {
        // Offset and length are reserved (zero) for these; tolerate what clients send.
        return Ok(());
    }
    let end = req.offset.checked_add(u64::from(req.length));
    let in_range = end.is_some_and(|end| end <= rules.size_bytes);
    if !in_range {
        return Err(if writes { Errno::NoSpc } else { Errno::Inval });
    }
    let length_limited = matches!(req.command, Command::Read | Command::Write | Command::Cache);
    if length_limited && req.length > rules.maximum_bytes {
        // EOVERFLOW is reserved for DF reads; an over-long request is EINVAL.
        return Err(Errno::Inval);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const RULES: ExportRules = ExportRules {
        size_bytes: 1 << 20,
        maximum_bytes: 32 << 20,
        read_only: false,
        structured_replies: true,
        block_status: true,
    };

    fn req(command: Command, flags: u16, offset: u64, length: u32) -> Request {
        Request {
            flags,
            command,
            cookie: 7,
            offset,
            length,
        }
    }

    #[test]
    fn header_round_trips_and_bad_magic_is_fatal() {
        let r = req(Command::Write, CMD_FLAG_FUA, 4096, 512);
        assert_eq!(Request::parse(&r.encode()), Ok(r));
        let mut raw = r.encode();
        raw[0] ^= 0xff;
        assert!(matches!(
            Request::parse(&raw),
            Err(CodecError::BadRequestMagic(_))
        ));
    }

    #[test]
    fn range_errors_follow_the_spec() {
        assert_eq!(
            validate(&req(Command::Read, 0, 1 << 20, 1), &RULES),
            Err(Errno::Inval)
        );
        assert_eq!(
            validate(&req(Command::Write, 0, (1 << 20) - 1, 2), &RULES),
            Err(Errno::NoSpc)
        );
        assert_eq!(
            validate(&req(Command::WriteZeroes, 0, u64::MAX, 2), &RULES),
            Err(Errno::NoSpc)
        );
        assert_eq!(validate(&req(Command::Trim, 0, 0, 1 << 20), &RULES), Ok(()));
        assert_eq!(validate(&req(Command::Read, 0, 0, 1 << 20), &RULES), Ok(()));
    }

    #[test]
    fn oversize_and_bad_flags_are_einval() {
        let big = ExportRules {
            size_bytes: 1 << 40,
            ..RULES
        };
        assert_eq!(
            validate(&req(Command::Read, 0, 0, (32 << 20) + 1), &big),
            Err(Errno::Inval)
        );
        assert_eq!(
            validate(&req(Command::Read, CMD_FLAG_NO_HOLE, 0, 1), &RULES),
            Err(Errno::Inval)
        );
        assert_eq!(
            validate(&req(Command::Unknown(99), 0, 0, 0), &RULES),
            Err(Errno::Inval)
        );
        assert_eq!(
            validate(
                &req(
                    Command::WriteZeroes,
                    CMD_FLAG_FAST_ZERO | CMD_FLAG_NO_HOLE,
                    0,
                    1
                ),
                &RULES
            ),
            Ok(())
        );
    }

    #[test]
    fn read_only_export_refuses_writes_with_eperm() {
        let ro = ExportRules {
            read_only: true,
            ..RULES
        };
        for c in [Command::Write, Command::Trim, Command::WriteZeroes] {
            assert_eq!(validate(&req(c, 0, 0, 1), &ro), Err(Errno::Perm));
        }
        assert_eq!(validate(&req(Command::Read, 0, 0, 1), &ro), Ok(()));
    }

    proptest! {
        #[test]
        fn parse_never_panics(raw in proptest::array::uniform28(any::<u8>())) {
            if let Ok(r) = Request::parse(&raw) {
                let _ = validate(&r, &RULES);
                prop_assert_eq!(r.encode(), raw);
            }
        }

        #[test]
        fn accepted_requests_stay_inside_the_export(t in 0u16..9, flags in any::<u16>(), offset in any::<u64>(), length in any::<u32>()) {
            let r = req(Command::from(t), flags, offset, length);
            if validate(&r, &RULES).is_ok() && !matches!(r.command, Command::Flush | Command::Disc) {
                prop_assert!(offset + u64::from(length) <= RULES.size_bytes);
            }
        }
    }
}
