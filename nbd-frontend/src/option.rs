//! Handshake phase codec: greeting, client flags, option requests and option replies.
//! Pure: bytes in, typed values out (`doc/proto.md` "Fixed newstyle negotiation").

use bytes::{Buf, BufMut};

use crate::consts::*;
use crate::error::CodecError;

/// The 18-byte fixed-newstyle greeting the server sends first.
pub fn greeting() -> [u8; 18] {
    let mut out = [0u8; 18];
    out[..8].copy_from_slice(&NBD_MAGIC.to_be_bytes());
    out[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    out[16..].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    out
}

/// What the client said in its 32-bit flags word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientFlags {
    pub no_zeroes: bool,
}

/// Parses the client flags; unknown or unoffered bits are an error (the spec says to drop the
/// connection), and so is a client that does not speak fixed newstyle.
pub fn parse_client_flags(raw: [u8; 4]) -> Result<ClientFlags, CodecError> {
    let flags = u32::from_be_bytes(raw);
    let known = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES;
    if flags & !known != 0 {
        return Err(CodecError::UnknownClientFlags(flags));
    }
    if flags & FLAG_C_FIXED_NEWSTYLE == 0 {
        return Err(CodecError::NotFixedNewstyle);
    }
    Ok(ClientFlags {
        no_zeroes: flags & FLAG_C_NO_ZEROES != 0,
    })
}

/// The fixed part of an option request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub option: u32,
    pub data_bytes: u32,
}

impl OptionHeader {
    /// Parses the 16-byte option header; a wrong magic is fatal for the connection.
    pub fn parse(raw: &[u8; OPTION_HEADER_BYTES]) -> Result<OptionHeader, CodecError> {
        let mut b = &raw[..];
        let magic = b.get_u64();
        if magic != IHAVEOPT {
            return Err(CodecError::BadOptionMagic(magic));
        }
        Ok(OptionHeader {
            option: b.get_u32(),
            data_bytes: b.get_u32(),
        })
    }
}

/// An INFO or GO request: the export name and the NBD_INFO_* items asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    pub name: String,
    pub requests: Vec<u16>,
}

/// A LIST_META_CONTEXT / SET_META_CONTEXT request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaRequest {
    pub export: String,
    pub queries: Vec<String>,
}

/// A parsed option request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOption {
    ExportName(String),
    Abort,
    List,
    StartTls,
    Info(InfoRequest),
    Go(InfoRequest),
    StructuredReply,
    ListMetaContext(MetaRequest),
    SetMetaContext(MetaRequest),
    /// An option we do not implement: answered with NBD_REP_ERR_UNSUP, the session goes on.
    Unsupported(u32),
    /// A known option whose data is malformed: answered with NBD_REP_ERR_INVALID.
    Invalid {
        option: u32,
        reason: &'static str,
    },
}

impl ClientOption {
    /// Parses an option's data. Never fails: malformed data becomes `Invalid`.
    pub fn parse(option: u32, data: &[u8]) -> ClientOption {
        let invalid = |reason| ClientOption::Invalid { option, reason };
        match option {
            OPT_EXPORT_NAME => match std::str::from_utf8(data) {
                Ok(name) => ClientOption::ExportName(name.to_owned()),
                Err(_) => invalid("export name is not UTF-8"),
            },
            OPT_ABORT => ClientOption::Abort,
            OPT_LIST if data.is_empty() => ClientOption::List,
            OPT_LIST => invalid("NBD_OPT_LIST carries no data"),
            OPT_STARTTLS => ClientOption::StartTls,
            OPT_STRUCTURED_REPLY if data.is_empty() => ClientOption::StructuredReply,
            OPT_STRUCTURED_REPLY => invalid("NBD_OPT_STRUCTURED_REPLY carries no data"),
            OPT_INFO | OPT_GO => match parse_info(data) {
                Ok(req) if option == OPT_INFO => ClientOption::Info(req),
                Ok(req) => ClientOption::Go(req),
                Err(reason) => invalid(reason),
            },
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => match parse_meta(data) {
                Ok(req) if option == OPT_LIST_META_CONTEXT => ClientOption::ListMetaContext(req),
                Ok(req) => ClientOption::SetMetaContext(req),
                Err(reason) => invalid(reason),
            },
            other => ClientOption::Unsupported(other),
        }
    }
}

fn take_string(b: &mut &[u8], what: &'static str) -> Result<String, &'static str> {
    if b.remaining() < 4 {
        return Err(what);
    }
    let len = b.get_u32() as usize;
    if b.remaining() < len {
        return Err(what);
    }
    let (s, rest) = b.split_at(len);
    *b = rest;
    std::str::from_utf8(s).map(str::to_owned).map_err(|_| what)
}

fn parse_info(data: &[u8]) -> Result<InfoRequest, &'static str> {
    let mut b = data;
    let name = take_string(&mut b, "bad export name in NBD_OPT_INFO/GO")?;
    if b.remaining() < 2 {
        return Err("missing information request count in NBD_OPT_INFO/GO");
    }
    let count = b.get_u16() as usize;
    if b.remaining() != count * 2 {
        return Err("information request count does not match the option length");
    }
    let requests = (0..count).map(|_| b.get_u16()).collect();
    Ok(InfoRequest { name, requests })
}

fn parse_meta(data: &[u8]) -> Result<MetaRequest, &'static str> {
    let mut b = data;
    let export = take_string(&mut b, "bad export name in meta context option")?;
    if b.remaining() < 4 {
        return Err("missing query count in meta context option");
    }
    let count = b.get_u32() as usize;
    // Each query needs at least 4 bytes: a hostile count cannot make us allocate much.
    if count > b.remaining() / 4 {
        return Err("query count larger than the option data");
    }
    let mut queries = Vec::with_capacity(count);
    for _ in 0..count {
        queries.push(take_string(&mut b, "bad query in meta context option")?);
    }
    if b.has_remaining() {
        return Err("trailing bytes after meta context queries");
    }
    Ok(MetaRequest { export, queries })
}

/// Appends an option reply (header + data).
pub fn put_option_reply(out: &mut Vec<u8>, option: u32, reply_type: u32, data: &[u8]) {
    out.put_u64(OPT_REPLY_MAGIC);
    out.put_u32(option);
    out.put_u32(reply_type);
    out.put_u32(u32::try_from(data.len()).expect("option reply data is small"));
    out.put_slice(data);
}

/// Appends an error reply with a human-readable message.
pub fn put_option_error(out: &mut Vec<u8>, option: u32, reply_type: u32, message: &str) {
    debug_assert!(reply_type & (1 << 31) != 0);
    put_option_reply(out, option, reply_type, message.as_bytes());
}

/// NBD_REP_SERVER for NBD_OPT_LIST: name length, name, then a description.
pub fn put_rep_server(out: &mut Vec<u8>, option: u32, name: &str, description: &str) {
    let mut data = Vec::with_capacity(4 + name.len() + description.len());
    data.put_u32(u32::try_from(name.len()).expect("export name is small"));
    data.put_slice(name.as_bytes());
    data.put_slice(description.as_bytes());
    put_option_reply(out, option, REP_SERVER, &data);
}

/// NBD_REP_INFO / NBD_INFO_EXPORT: size and transmission flags.
pub fn put_info_export(out: &mut Vec<u8>, option: u32, size_bytes: u64, flags: u16) {
    let mut data = Vec::with_capacity(12);
    data.put_u16(INFO_EXPORT);
    data.put_u64(size_bytes);
    data.put_u16(flags);
    put_option_reply(out, option, REP_INFO, &data);
}

/// NBD_REP_INFO carrying a string (NBD_INFO_NAME or NBD_INFO_DESCRIPTION).
pub fn put_info_string(out: &mut Vec<u8>, option: u32, info: u16, text: &str) {
    let mut data = Vec::with_capacity(2 + text.len());
    data.put_u16(info);
    data.put_slice(text.as_bytes());
    put_option_reply(out, option, REP_INFO, &data);
}

/// Block size constraints advertised to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSizes {
    pub minimum_bytes: u32,
    pub preferred_bytes: u32,
    pub maximum_bytes: u32,
}

/// NBD_REP_INFO / NBD_INFO_BLOCK_SIZE.
pub fn put_info_block_size(out: &mut Vec<u8>, option: u32, sizes: BlockSizes) {
    let mut data = Vec::with_capacity(14);
    data.put_u16(INFO_BLOCK_SIZE);
    data.put_u32(sizes.minimum_bytes);
    data.put_u32(sizes.preferred_bytes);
    data.put_u32(sizes.maximum_bytes);
    put_option_reply(out, option, REP_INFO, &data);
}

/// NBD_REP_META_CONTEXT: context id and name.
pub fn put_meta_context(out: &mut Vec<u8>, option: u32, id: u32, name: &str) {
    let mut data = Vec::with_capacity(4 + name.len());
    data.put_u32(id);
    data.put_slice(name.as_bytes());
    put_option_reply(out, option, REP_META_CONTEXT, &data);
}

/// The reply to NBD_OPT_EXPORT_NAME: size, flags and (without NO_ZEROES) 124 zero bytes.
pub fn put_export_name_reply(out: &mut Vec<u8>, size_bytes: u64, flags: u16, no_zeroes: bool) {
    out.put_u64(size_bytes);
    out.put_u16(flags);
    if !no_zeroes {
        out.put_bytes(0, 124);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn info_data(name: &str, infos: &[u16]) -> Vec<u8> {
        let mut d = Vec::new();
        d.put_u32(name.len() as u32);
        d.put_slice(name.as_bytes());
        d.put_u16(infos.len() as u16);
        for i in infos {
            d.put_u16(*i);
        }
        d
    }

    #[test]
    fn greeting_is_fixed_newstyle_with_no_zeroes() {
        let g = greeting();
        assert_eq!(&g[..8], b"NBDMAGIC");
        assert_eq!(&g[8..16], b"IHAVEOPT");
        assert_eq!(&g[16..], &[0, 3]);
    }

    #[test]
    fn client_flags_reject_unknown_bits_and_oldstyle() {
        assert_eq!(
            parse_client_flags([0, 0, 0, 3]),
            Ok(ClientFlags { no_zeroes: true })
        );
        assert!(parse_client_flags([0, 0, 0, 0]).is_err());
        assert!(parse_client_flags([0, 0, 0, 5]).is_err());
        assert!(parse_client_flags(*b"GARB").is_err());
    }

    #[test]
    fn go_request_parses_name_and_infos() {
        let opt = ClientOption::parse(OPT_GO, &info_data("disk", &[INFO_BLOCK_SIZE]));
        assert_eq!(
            opt,
            ClientOption::Go(InfoRequest {
                name: "disk".into(),
                requests: vec![INFO_BLOCK_SIZE]
            })
        );
    }

    #[test]
    fn malformed_go_is_invalid_not_fatal() {
        let mut d = info_data("disk", &[1, 2]);
        d.pop();
        assert!(matches!(
            ClientOption::parse(OPT_GO, &d),
            ClientOption::Invalid { option: OPT_GO, .. }
        ));
    }

    #[test]
    fn unknown_options_are_unsupported() {
        assert_eq!(ClientOption::parse(11, &[]), ClientOption::Unsupported(11));
        assert_eq!(
            ClientOption::parse(0xdead, &[1, 2]),
            ClientOption::Unsupported(0xdead)
        );
    }

    #[test]
    fn meta_request_parses_queries() {
        let mut d = Vec::new();
        d.put_u32(0);
        d.put_u32(2);
        for q in ["base:allocation", "qemu:dirty-bitmap:x"] {
            d.put_u32(q.len() as u32);
            d.put_slice(q.as_bytes());
        }
        assert_eq!(
            ClientOption::parse(OPT_SET_META_CONTEXT, &d),
            ClientOption::SetMetaContext(MetaRequest {
                export: String::new(),
                queries: vec!["base:allocation".into(), "qemu:dirty-bitmap:x".into()],
            })
        );
    }

    proptest! {
        #[test]
        fn option_parse_never_panics(option in 0u32..16, data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = ClientOption::parse(option, &data);
        }

        #[test]
        fn info_round_trips(name in "[a-z0-9]{0,20}", infos in proptest::collection::vec(0u16..4, 0..5)) {
            let parsed = ClientOption::parse(OPT_INFO, &info_data(&name, &infos));
            prop_assert_eq!(parsed, ClientOption::Info(InfoRequest { name, requests: infos }));
        }
    }
}
