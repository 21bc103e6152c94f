//! The transmission phase: a reader that parses requests and dispatches them concurrently, and a
//! writer task that sends replies in completion order (out of order, batched).

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::consts::*;
use crate::device::{BlockDevice, DeviceError, ZeroFlags};
use crate::errno::Errno;
use crate::error::{CodecError, ServerError};
use crate::reply::{self, Extent};
use crate::request::{validate, Command, ExportRules, Request};

use super::{ServerConfig, Session, SplitStream};

const READ_BUFFER_BYTES: usize = 256 << 10;
/// Replies written with one syscall at most (payloads above `INLINE_DATA_BYTES` go on their own).
const BATCH_REPLIES_MAX: usize = 64;
const INLINE_DATA_BYTES: usize = 16 << 10;

enum Body<B> {
    Done,
    Data(B),
    Extents(Vec<Extent>),
    Error(Errno, String),
}

struct Reply<B> {
    cookie: u64,
    offset: u64,
    body: Body<B>,
    /// Released when the reply is on the wire: bounds requests and bytes in flight.
    _permits: (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>),
}

/// Serves requests until DISC, EOF or a protocol violation; waits for every request in flight to
/// finish (and its reply to be sent) before returning.
pub(super) async fn serve<S: SplitStream, D: BlockDevice>(
    stream: S,
    peer: &str,
    device: Arc<D>,
    config: &ServerConfig,
    session: Session,
) -> Result<(), ServerError> {
    let (rd, wr) = stream.split_owned();
    let (tx, rx) = mpsc::channel(config.inflight_requests_max as usize);
    let writer = tokio::spawn(write_replies(wr, rx, session.structured, peer.to_owned()));
    let result = read_requests(rd, &tx, peer, device, config, session).await;
    drop(tx);
    // The writer ends once every dispatched request has replied and dropped its sender.
    let written = writer.await.expect("reply writer never panics");
    result?;
    written.map_err(ServerError::Io)
}

async fn read_requests<R: AsyncRead + Unpin, D: BlockDevice>(
    rd: R,
    tx: &mpsc::Sender<Reply<D::Buf>>,
    peer: &str,
    device: Arc<D>,
    config: &ServerConfig,
    session: Session,
) -> Result<(), ServerError> {
    let mut rd = BufReader::with_capacity(READ_BUFFER_BYTES, rd);
    let request_slots = Arc::new(Semaphore::new(config.inflight_requests_max as usize));
    let byte_slots = Arc::new(Semaphore::new(config.inflight_bytes_max as usize));
    let info = device.info();
    let rules = ExportRules {
        size_bytes: info.size_bytes,
        maximum_bytes: config.request_bytes_max,
        read_only: info.read_only,
        structured_replies: session.structured,
        block_status: session.base_allocation,
    };
    loop {
        let mut raw = [0u8; REQUEST_HEADER_BYTES];
        match rd.read_exact(&mut raw).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                tracing::info!(peer, "NBD client closed the connection without NBD_CMD_DISC");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
        let req = Request::parse(&raw)?;
        if req.command == Command::Disc {
            return Ok(());
        }
        let verdict = validate(&req, &rules);
        if req.command == Command::Write && req.length > config.request_bytes_max {
            // We will not buffer an oversize payload; without reading it we cannot go on.
            return Err(CodecError::PayloadTooLarge(req.length, config.request_bytes_max).into());
        }
        let data_bytes = match req.command {
            Command::Read | Command::Write if verdict.is_ok() => req.length,
            _ => 0,
        };
        let request_permit = request_slots.clone().acquire_owned().await.expect("never closed");
        let byte_permit = if data_bytes > 0 {
            Some(byte_slots.clone().acquire_many_owned(data_bytes).await.expect("never closed"))
        } else {
            None
        };
        let permits = (request_permit, byte_permit);
        let payload = if req.command == Command::Write {
            if let Err(errno) = verdict {
                let mut skip = (&mut rd).take(u64::from(req.length));
                let skipped = tokio::io::copy(&mut skip, &mut tokio::io::sink()).await?;
                if skipped != u64::from(req.length) {
                    return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
                }
                send_error(tx, &req, errno, "request refused", permits).await;
                continue;
            }
            let mut buf = device.alloc(req.length as usize);
            rd.read_exact(buf.as_mut()).await?;
            Some(buf)
        } else {
            None
        };
        if let Err(errno) = verdict {
            let why = refusal_reason(&req, &rules);
            tracing::debug!(peer, ?req, "refused: {why}");
            send_error(tx, &req, errno, why, permits).await;
            continue;
        }
        let device = device.clone();
        let tx = tx.clone();
        let peer = peer.to_owned();
        tokio::spawn(async move {
            let body = match execute(&*device, &req, payload).await {
                Ok(body) => body,
                Err(e) => {
                    tracing::warn!(peer, ?req.command, req.offset, req.length, "request failed: {e}");
                    Body::Error(e.errno, e.message)
                }
            };
            let reply = Reply {
                cookie: req.cookie,
                offset: req.offset,
                body,
                _permits: permits,
            };
            // The writer outlives every sender; a send error only means it already failed.
            let _ = tx.send(reply).await;
        });
    }
}

fn refusal_reason(req: &Request, rules: &ExportRules) -> &'static str {
    let end = req.offset.checked_add(u64::from(req.length));
    if matches!(req.command, Command::Unknown(_)) {
        "unknown command"
    } else if rules.read_only && matches!(req.command, Command::Write | Command::Trim | Command::WriteZeroes) {
        "export is read-only"
    } else if end.is_none_or(|end| end > rules.size_bytes) {
        "request goes past the end of the export"
    } else if req.length > rules.maximum_bytes {
        "request longer than the maximum block size"
    } else {
        "flags not valid for this command or not negotiated"
    }
}

async fn send_error<B>(
    tx: &mpsc::Sender<Reply<B>>,
    req: &Request,
    errno: Errno,
    why: &str,
    permits: (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>),
) {
    let reply = Reply {
        cookie: req.cookie,
        offset: req.offset,
        body: Body::Error(errno, why.to_owned()),
        _permits: permits,
    };
    let _ = tx.send(reply).await;
}

async fn execute<D: BlockDevice>(
    device: &D,
    req: &Request,
    payload: Option<D::Buf>,
) -> Result<Body<D::Buf>, DeviceError> {
    let fua = req.fua();
    match req.command {
        Command::Read => {
            let buf = device.read(req.offset, device.alloc(req.length as usize)).await?;
            Ok(Body::Data(buf))
        }
        Command::Write => {
            let buf = payload.expect("write payload was read");
            device.write(req.offset, buf, fua).await?;
            Ok(Body::Done)
        }
        Command::Flush => device.flush().await.map(|()| Body::Done),
        Command::Trim => device.trim(req.offset, req.length, fua).await.map(|()| Body::Done),
        Command::WriteZeroes => {
            let flags = ZeroFlags {
                may_trim: req.flags & CMD_FLAG_NO_HOLE == 0,
                fast_only: req.flags & CMD_FLAG_FAST_ZERO != 0,
                fua,
            };
            device.write_zeroes(req.offset, req.length, flags).await?;
            Ok(Body::Done)
        }
        // Advisory; our reads go around the page cache, so there is nothing to warm.
        Command::Cache => Ok(Body::Done),
        Command::BlockStatus => {
            let mut extents = device.block_status(req.offset, req.length).await?;
            clamp_extents(&mut extents, req.length, req.flags & CMD_FLAG_REQ_ONE != 0);
            Ok(Body::Extents(extents))
        }
        Command::Disc | Command::Unknown(_) => unreachable!("filtered before dispatch"),
    }
}

/// Extents must be non-empty, cover no more than the request and (with REQ_ONE) be one.
fn clamp_extents(extents: &mut Vec<Extent>, length: u32, req_one: bool) {
    extents.retain(|e| e.length > 0);
    let mut left = length;
    extents.retain_mut(|e| {
        if left == 0 {
            return false;
        }
        e.length = e.length.min(left);
        left -= e.length;
        true
    });
    if extents.is_empty() {
        extents.push(Extent {
            length: length.max(1),
            flags: 0,
        });
    }
    if req_one {
        extents.truncate(1);
    }
}

async fn write_replies<W: AsyncWrite + Unpin, B: AsRef<[u8]>>(
    mut wr: W,
    mut rx: mpsc::Receiver<Reply<B>>,
    structured: bool,
    peer: String,
) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(64 << 10);
    let mut failed = None;
    let mut batch = Vec::with_capacity(BATCH_REPLIES_MAX);
    while rx.recv_many(&mut batch, BATCH_REPLIES_MAX).await > 0 {
        if failed.is_none() {
            if let Err(e) = write_batch(&mut wr, &mut out, &batch, structured).await {
                tracing::debug!(peer, "cannot send replies: {e}");
                failed = Some(e);
            }
        }
        // Dropping the replies releases their permits even when the client is gone.
        batch.clear();
    }
    match failed {
        Some(e) => Err(e),
        None => {
            let _ = wr.shutdown().await;
            Ok(())
        }
    }
}

async fn write_batch<W: AsyncWrite + Unpin, B: AsRef<[u8]>>(
    wr: &mut W,
    out: &mut Vec<u8>,
    batch: &[Reply<B>],
    structured: bool,
) -> std::io::Result<()> {
    out.clear();
    for r in batch {
        encode_header(out, r, structured);
        if let Body::Data(buf) = &r.body {
            let data = buf.as_ref();
            if data.len() <= INLINE_DATA_BYTES {
                out.extend_from_slice(data);
            } else {
                wr.write_all(out).await?;
                out.clear();
                wr.write_all(data).await?;
            }
        }
    }
    if !out.is_empty() {
        wr.write_all(out).await?;
    }
    Ok(())
}

fn encode_header<B: AsRef<[u8]>>(out: &mut Vec<u8>, r: &Reply<B>, structured: bool) {
    match (&r.body, structured) {
        (Body::Error(errno, msg), true) => reply::put_structured_error(out, r.cookie, *errno, msg),
        (Body::Error(errno, _), false) => reply::put_simple(out, r.cookie, Some(*errno)),
        (Body::Data(buf), true) => {
            let len = u32::try_from(buf.as_ref().len()).expect("bounded by the maximum block size");
            reply::put_offset_data_header(out, r.cookie, r.offset, len);
        }
        (Body::Extents(extents), true) => {
            reply::put_block_status(out, r.cookie, BASE_ALLOCATION_ID, extents)
        }
        (Body::Extents(_), false) => unreachable!("BLOCK_STATUS needs structured replies"),
        (Body::Done | Body::Data(_), false) => reply::put_simple(out, r.cookie, None),
        (Body::Done, true) => reply::put_simple(out, r.cookie, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extents_are_clamped_to_the_request() {
        let mut e = vec![
            Extent { length: 0, flags: 3 },
            Extent { length: 4096, flags: 0 },
            Extent { length: 8192, flags: 3 },
        ];
        clamp_extents(&mut e, 6000, false);
        assert_eq!(
            e,
            vec![Extent { length: 4096, flags: 0 }, Extent { length: 1904, flags: 3 }]
        );
        clamp_extents(&mut e, 6000, true);
        assert_eq!(e.len(), 1);
        let mut none = Vec::new();
        clamp_extents(&mut none, 512, false);
        assert_eq!(none, vec![Extent { length: 512, flags: 0 }]);
    }
}
