//! The crate's error type.

use std::io;

/// Why a connection ended abnormally or a message could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("client flags {0:#x} carry bits this server did not offer")]
    UnknownClientFlags(u32),
    #[error(
        "client does not speak fixed newstyle negotiation (oldstyle clients are not supported)"
    )]
    NotFixedNewstyle,
    #[error("bad option magic {0:#018x} (expected IHAVEOPT)")]
    BadOptionMagic(u64),
    #[error("option data of {0} bytes exceeds the {1}-byte limit")]
    OptionTooLarge(u32, u32),
    #[error("bad request magic {0:#010x} (expected 0x25609513)")]
    BadRequestMagic(u32),
    #[error("write payload of {0} bytes exceeds the {1}-byte limit")]
    PayloadTooLarge(u32, u32),
}

/// Errors of the server loop.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("protocol violation: {0}")]
    Codec(#[from] CodecError),
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
    #[error("client aborted the handshake")]
    Aborted,
    #[error("client asked for export {0:?}, which does not exist")]
    NoSuchExport(String),
    #[error("handshake took more than {0} options")]
    TooManyOptions(u32),
    #[error("handshake not finished within {0} ms")]
    HandshakeTimeout(u64),
}
