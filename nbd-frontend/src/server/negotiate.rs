//! The handshake: greeting, client flags, then options until the client picks the export.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::consts::*;
use crate::device::BlockDevice;
use crate::error::ServerError;
use crate::option::{self, BlockSizes, ClientOption, InfoRequest, MetaRequest};

use super::{ServerConfig, SplitStream};

/// What was agreed in the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    pub structured: bool,
    /// `base:allocation` was selected with SET_META_CONTEXT (BLOCK_STATUS allowed).
    pub base_allocation: bool,
    pub transmission_flags: u16,
}

struct Negotiation<'a, D> {
    device: &'a D,
    config: &'a ServerConfig,
    structured: bool,
    base_allocation: bool,
}

/// Runs the handshake. `Ok(None)` when the client aborted cleanly.
pub(super) async fn negotiate<S: SplitStream, D: BlockDevice>(
    stream: &mut S,
    device: &D,
    config: &ServerConfig,
) -> Result<Option<Session>, ServerError> {
    stream.write_all(&option::greeting()).await?;
    let mut raw_flags = [0u8; 4];
    stream.read_exact(&mut raw_flags).await?;
    let client = option::parse_client_flags(raw_flags)?;
    let mut n = Negotiation {
        device,
        config,
        structured: false,
        base_allocation: false,
    };
    for _ in 0..config.handshake_options_max {
        let mut raw = [0u8; OPTION_HEADER_BYTES];
        stream.read_exact(&mut raw).await?;
        let header = option::OptionHeader::parse(&raw)?;
        let mut out = Vec::new();
        if header.data_bytes > config.option_bytes_max {
            discard_option_data(stream, header.data_bytes, config.option_bytes_max).await?;
            let msg = format!("option data over {} bytes", config.option_bytes_max);
            option::put_option_error(&mut out, header.option, REP_ERR_TOO_BIG, &msg);
            stream.write_all(&out).await?;
            continue;
        }
        let mut data = vec![0u8; header.data_bytes as usize];
        stream.read_exact(&mut data).await?;
        let parsed = ClientOption::parse(header.option, &data);
        let done = match parsed {
            ClientOption::ExportName(name) => {
                if !n.name_matches(&name) {
                    return Err(ServerError::NoSuchExport(name));
                }
                if let Err(why) = device.attach_client().await {
                    // NBD_OPT_EXPORT_NAME has no error path: a hard disconnect is all we can do.
                    tracing::warn!("refusing NBD client: {why}");
                    return Err(ServerError::Aborted);
                }
                let flags = n.transmission_flags();
                option::put_export_name_reply(&mut out, n.size(), flags, client.no_zeroes);
                Some(n.session())
            }
            ClientOption::Abort => {
                option::put_option_reply(&mut out, OPT_ABORT, REP_ACK, &[]);
                // The client may already have closed: ignore write errors.
                let _ = stream.write_all(&out).await;
                return Ok(None);
            }
            ClientOption::List => {
                let c = n.config;
                option::put_rep_server(&mut out, OPT_LIST, &c.export_name, &c.description);
                option::put_option_reply(&mut out, OPT_LIST, REP_ACK, &[]);
                None
            }
            ClientOption::StartTls => {
                let msg = "TLS is not configured on this server; connect without TLS";
                option::put_option_error(&mut out, OPT_STARTTLS, REP_ERR_POLICY, msg);
                None
            }
            ClientOption::Info(req) => {
                n.info(&mut out, OPT_INFO, &req);
                None
            }
            ClientOption::Go(req) => n.go(&mut out, &req).await,
            ClientOption::StructuredReply => {
                n.structured = true;
                option::put_option_reply(&mut out, OPT_STRUCTURED_REPLY, REP_ACK, &[]);
                None
            }
            ClientOption::ListMetaContext(req) => {
                n.meta_context(&mut out, OPT_LIST_META_CONTEXT, &req);
                None
            }
            ClientOption::SetMetaContext(req) => {
                n.meta_context(&mut out, OPT_SET_META_CONTEXT, &req);
                None
            }
            ClientOption::Unsupported(opt) => {
                let msg = format!("option {opt} is not supported by this server");
                option::put_option_error(&mut out, opt, REP_ERR_UNSUP, &msg);
                None
            }
            ClientOption::Invalid { option, reason } => {
                option::put_option_error(&mut out, option, REP_ERR_INVALID, reason);
                None
            }
        };
        let written = stream.write_all(&out).await;
        if let Some(session) = done {
            if let Err(e) = written {
                device.detach_client();
                return Err(e.into());
            }
            return Ok(Some(session));
        }
        written?;
    }
    Err(ServerError::TooManyOptions(config.handshake_options_max))
}

async fn discard_option_data<S: SplitStream>(
    stream: &mut S,
    data_bytes: u32,
    option_bytes_max: u32,
) -> Result<(), ServerError> {
    // Skipping a huge option would let a client keep us busy forever: past 16× the limit, close.
    let discard_max = u64::from(option_bytes_max) * 16;
    if u64::from(data_bytes) > discard_max {
        return Err(crate::error::CodecError::OptionTooLarge(data_bytes, option_bytes_max).into());
    }
    let copied = tokio::io::copy(
        &mut (&mut *stream).take(u64::from(data_bytes)),
        &mut tokio::io::sink(),
    )
    .await?;
    if copied != u64::from(data_bytes) {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
    }
    Ok(())
}

impl<D: BlockDevice> Negotiation<'_, D> {
    fn name_matches(&self, name: &str) -> bool {
        name.is_empty() || name == self.config.export_name
    }

    fn size(&self) -> u64 {
        self.device.info().size_bytes
    }

    fn transmission_flags(&self) -> u16 {
        let info = self.device.info();
        let mut flags = TF_HAS_FLAGS
            | TF_SEND_FLUSH
            | TF_SEND_FUA
            | TF_SEND_WRITE_ZEROES
            | TF_CAN_MULTI_CONN
            | TF_SEND_CACHE;
        if info.read_only {
            flags |= TF_READ_ONLY;
        }
        if info.can_trim {
            flags |= TF_SEND_TRIM;
        }
        if info.can_fast_zero {
            flags |= TF_SEND_FAST_ZERO;
        }
        if self.structured {
            // Reads are always answered in one chunk, so DF costs nothing.
            flags |= TF_SEND_DF;
        }
        flags
    }

    fn block_sizes(&self) -> BlockSizes {
        let info = self.device.info();
        let minimum_bytes = if info.size_bytes % 512 == 0 { 512 } else { 1 };
        BlockSizes {
            minimum_bytes,
            preferred_bytes: info.block_bytes_min.max(4096),
            maximum_bytes: self.config.request_bytes_max,
        }
    }

    fn session(&self) -> Session {
        Session {
            structured: self.structured,
            base_allocation: self.base_allocation,
            transmission_flags: self.transmission_flags(),
        }
    }

    /// Answers INFO or GO; returns false (after an error reply) when the export is unknown.
    fn info(&self, out: &mut Vec<u8>, opt: u32, req: &InfoRequest) -> bool {
        if !self.name_matches(&req.name) {
            let msg = format!(
                "no export named {:?}; try {:?}",
                req.name, self.config.export_name
            );
            option::put_option_error(out, opt, REP_ERR_UNKNOWN, &msg);
            return false;
        }
        option::put_info_export(out, opt, self.size(), self.transmission_flags());
        for &item in &req.requests {
            match item {
                INFO_NAME => option::put_info_string(out, opt, INFO_NAME, &self.config.export_name),
                INFO_DESCRIPTION => {
                    option::put_info_string(out, opt, INFO_DESCRIPTION, &self.config.description)
                }
                _ => {}
            }
        }
        // Sent even when not asked for: clients then know the limits (allowed by the spec).
        option::put_info_block_size(out, opt, self.block_sizes());
        option::put_option_reply(out, opt, REP_ACK, &[]);
        true
    }

    async fn go(&mut self, out: &mut Vec<u8>, req: &InfoRequest) -> Option<Session> {
        if !self.name_matches(&req.name) {
            return self.info(out, OPT_GO, req).then(|| self.session());
        }
        if let Err(why) = self.device.attach_client().await {
            tracing::warn!("refusing NBD client: {why}");
            option::put_option_error(out, OPT_GO, REP_ERR_POLICY, &why);
            return None;
        }
        self.info(out, OPT_GO, req).then(|| self.session())
    }

    fn meta_context(&mut self, out: &mut Vec<u8>, opt: u32, req: &MetaRequest) {
        if !self.structured {
            let msg = "negotiate NBD_OPT_STRUCTURED_REPLY before meta contexts";
            option::put_option_error(out, opt, REP_ERR_INVALID, msg);
            return;
        }
        if !self.name_matches(&req.export) {
            let msg = format!("no export named {:?}", req.export);
            option::put_option_error(out, opt, REP_ERR_UNKNOWN, &msg);
            return;
        }
        let set = opt == OPT_SET_META_CONTEXT;
        let wanted = if set {
            req.queries.iter().any(|q| q == BASE_ALLOCATION)
        } else {
            req.queries.is_empty()
                || req
                    .queries
                    .iter()
                    .any(|q| q == "base:" || q == BASE_ALLOCATION)
        };
        if set {
            self.base_allocation = wanted;
        }
        if wanted {
            let id = if set { BASE_ALLOCATION_ID } else { 0 };
            option::put_meta_context(out, opt, id, BASE_ALLOCATION);
        }
        option::put_option_reply(out, opt, REP_ACK, &[]);
    }
}
