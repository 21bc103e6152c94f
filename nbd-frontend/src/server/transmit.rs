//! The transmission phase, as one task per connection: it reads requests, starts each one on the
//! device at once (many in flight, no task hand-off), collects completions in any order and
//! writes replies in batches with vectored writes. Everything it holds is bounded: requests and
//! payload bytes in flight, the input buffer, and reply data waiting for the socket (counted as
//! in flight until written).

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::consts::*;
use crate::device::{BlockDevice, DeviceError, ZeroFlags};
use crate::errno::Errno;
use crate::error::{CodecError, ServerError};
use crate::reply::{self, Extent};
use crate::request::{validate, Command, ExportRules, Request};

use super::{ServerConfig, Session, SplitStream};

const INPUT_BUFFER_BYTES: usize = 256 << 10;
/// Payload left to receive above which we read straight into the device buffer.
const DIRECT_READ_BYTES: usize = 64 << 10;
/// Read data up to this size is copied next to its header; larger goes out as its own slice.
const INLINE_DATA_BYTES: usize = 16 << 10;
const WRITE_SLICES_MAX: usize = 64;

enum Body<B> {
    Done,
    Data(B),
    Extents(Vec<Extent>),
    Error(Errno, String),
}

struct Reply<B> {
    req: Request,
    body: Body<B>,
    /// Payload bytes this request holds in `inflight_bytes` (0 for refused requests).
    counted: u64,
}

type InFlight<B> = Pin<Box<dyn Future<Output = Reply<B>> + Send>>;

enum Out<B> {
    Bytes(Vec<u8>),
    /// Read data, and the in-flight bytes to release once it is written.
    Data(B, u64),
}

struct PayloadIn<B> {
    req: Request,
    buf: B,
    filled: usize,
}

/// Serves requests until DISC, EOF or a protocol violation; every request already started is
/// finished (and answered, if the client still listens) before this returns.
pub(super) async fn serve<S: SplitStream, D: BlockDevice>(
    stream: S,
    peer: &str,
    device: Arc<D>,
    config: &ServerConfig,
    session: Session,
) -> Result<(), ServerError> {
    let (rd, wr) = stream.split_owned();
    let info = device.info();
    let rules = ExportRules {
        size_bytes: info.size_bytes,
        maximum_bytes: config.request_bytes_max,
        read_only: info.read_only,
        structured_replies: session.structured,
        block_status: session.base_allocation,
    };
    let mut conn = Conn {
        rd,
        wr,
        device,
        rules,
        structured: session.structured,
        peer: Arc::from(peer),
        requests_max: config.inflight_requests_max as usize,
        bytes_max: config.inflight_bytes_max,
        input: vec![0; INPUT_BUFFER_BYTES],
        input_start: 0,
        input_end: 0,
        payload: None,
        discard_bytes: 0,
        inflight: FuturesUnordered::new(),
        inflight_bytes: 0,
        out: VecDeque::new(),
        out_tail: Vec::with_capacity(64 << 10),
        out_head_written: 0,
        reading: true,
        result: Ok(()),
        write_failed: None,
    };
    std::future::poll_fn(|cx| conn.poll(cx)).await
}

struct Conn<R, W, D: BlockDevice> {
    rd: R,
    wr: W,
    device: Arc<D>,
    rules: ExportRules,
    structured: bool,
    peer: Arc<str>,
    requests_max: usize,
    bytes_max: u64,
    input: Vec<u8>,
    input_start: usize,
    input_end: usize,
    payload: Option<PayloadIn<D::Buf>>,
    discard_bytes: u64,
    inflight: FuturesUnordered<InFlight<D::Buf>>,
    /// Payload bytes of requests not yet answered (read data counts until written).
    inflight_bytes: u64,
    out: VecDeque<Out<D::Buf>>,
    out_tail: Vec<u8>,
    out_head_written: usize,
    reading: bool,
    result: Result<(), ServerError>,
    write_failed: Option<io::Error>,
}

impl<R, W, D> Conn<R, W, D>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    D: BlockDevice,
{
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ServerError>> {
        loop {
            let mut progress = false;
            while let Poll::Ready(Some(reply)) = self.inflight.poll_next_unpin(cx) {
                self.queue_reply(reply);
                progress = true;
            }
            progress |= self.poll_write_out(cx);
            if self.reading {
                progress |= self.poll_read_requests(cx);
            }
            if !self.reading && self.inflight.is_empty() && self.out_is_empty() {
                if self.write_failed.is_none() {
                    // Best effort: the client may be gone already.
                    let _ = Pin::new(&mut self.wr).poll_shutdown(cx);
                }
                let result = std::mem::replace(&mut self.result, Ok(()));
                return Poll::Ready(match (result, self.write_failed.take()) {
                    (Err(e), _) => Err(e),
                    (Ok(()), Some(e)) => Err(ServerError::Io(e)),
                    (Ok(()), None) => Ok(()),
                });
            }
            if !progress {
                return Poll::Pending;
            }
        }
    }

    fn stop_reading(&mut self, result: Result<(), ServerError>) {
        self.reading = false;
        self.result = result;
        if let Some(p) = self.payload.take() {
            self.inflight_bytes -= u64::from(p.req.length);
        }
    }

    fn buffered(&self) -> &[u8] {
        &self.input[self.input_start..self.input_end]
    }

    fn consume(&mut self, n: usize) {
        self.input_start += n;
        assert!(self.input_start <= self.input_end);
        if self.input_start == self.input_end {
            self.input_start = 0;
            self.input_end = 0;
        }
    }

    /// Reads more input into the buffer. `None` means Pending; `Some(0)` end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Option<io::Result<usize>> {
        if self.input_end == self.input.len() {
            self.input.copy_within(self.input_start..self.input_end, 0);
            self.input_end -= self.input_start;
            self.input_start = 0;
        }
        let mut rb = ReadBuf::new(&mut self.input[self.input_end..]);
        match Pin::new(&mut self.rd).poll_read(cx, &mut rb) {
            Poll::Pending => None,
            Poll::Ready(Err(e)) => Some(Err(e)),
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                self.input_end += n;
                Some(Ok(n))
            }
        }
    }

    /// Reads and starts as many requests as the limits allow; true if anything happened.
    fn poll_read_requests(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        while self.reading {
            if self.payload.is_some() {
                match self.poll_payload(cx) {
                    Some(true) => progress = true,
                    Some(false) => continue,
                    None => return progress,
                }
                continue;
            }
            if self.discard_bytes > 0 {
                let n = self.buffered().len().min(self.discard_bytes as usize);
                if n > 0 {
                    self.consume(n);
                    self.discard_bytes -= n as u64;
                    progress = true;
                    continue;
                }
            } else {
                if self.inflight.len() >= self.requests_max || self.inflight_bytes >= self.bytes_max
                {
                    return progress; // a completion will wake us
                }
                if self.buffered().len() >= REQUEST_HEADER_BYTES {
                    let mut raw = [0u8; REQUEST_HEADER_BYTES];
                    raw.copy_from_slice(&self.buffered()[..REQUEST_HEADER_BYTES]);
                    self.consume(REQUEST_HEADER_BYTES);
                    self.handle_header(&raw);
                    progress = true;
                    continue;
                }
            }
            match self.poll_fill(cx) {
                None => return progress,
                Some(Ok(0)) => {
                    let partial = self.discard_bytes > 0 || !self.buffered().is_empty();
                    if partial {
                        let e = io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "client vanished mid-request",
                        );
                        self.stop_reading(Err(e.into()));
                    } else {
                        tracing::info!(
                            peer = &*self.peer,
                            "NBD client closed the connection without NBD_CMD_DISC"
                        );
                        self.stop_reading(Ok(()));
                    }
                    return true;
                }
                Some(Ok(_)) => progress = true,
                Some(Err(e)) => {
                    self.stop_reading(Err(e.into()));
                    return true;
                }
            }
        }
        progress
    }

    /// Receives the payload of the current write. `Some(true)`: progress; `Some(false)`: the
    /// write was started; `None`: waiting for the socket.
    fn poll_payload(&mut self, cx: &mut Context<'_>) -> Option<bool> {
        let p = self.payload.as_mut().expect("payload in progress");
        let want = p.buf.as_ref().len() - p.filled;
        let have = (self.input_end - self.input_start).min(want);
        if have > 0 {
            let from = &self.input[self.input_start..self.input_start + have];
            p.buf.as_mut()[p.filled..p.filled + have].copy_from_slice(from);
            p.filled += have;
            self.consume(have);
        }
        let p = self.payload.as_mut().expect("payload in progress");
        let want = p.buf.as_ref().len() - p.filled;
        if want == 0 {
            let p = self.payload.take().expect("payload in progress");
            self.dispatch(p.req, Some(p.buf));
            return Some(false);
        }
        let read = if want >= DIRECT_READ_BYTES {
            let mut rb = ReadBuf::new(&mut p.buf.as_mut()[p.filled..]);
            match Pin::new(&mut self.rd).poll_read(cx, &mut rb) {
                Poll::Pending => None,
                Poll::Ready(Err(e)) => Some(Err(e)),
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    p.filled += n;
                    Some(Ok(n))
                }
            }
        } else {
            self.poll_fill(cx)
        };
        match read {
            None => None,
            Some(Ok(0)) => {
                let e = io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "client vanished in the middle of a write payload",
                );
                self.stop_reading(Err(e.into()));
                Some(true)
            }
            Some(Ok(_)) => Some(true),
            Some(Err(e)) => {
                self.stop_reading(Err(e.into()));
                Some(true)
            }
        }
    }

    fn handle_header(&mut self, raw: &[u8; REQUEST_HEADER_BYTES]) {
        let req = match Request::parse(raw) {
            Ok(r) => r,
            Err(e) => return self.stop_reading(Err(e.into())),
        };
        if req.command == Command::Disc {
            return self.stop_reading(Ok(()));
        }
        let verdict = validate(&req, &self.rules);
        if req.command == Command::Write && req.length > self.rules.maximum_bytes {
            // We will not buffer an oversize payload, and cannot find the next header without it.
            let e = CodecError::PayloadTooLarge(req.length, self.rules.maximum_bytes);
            return self.stop_reading(Err(e.into()));
        }
        if let Err(errno) = verdict {
            let why = refusal_reason(&req, &self.rules);
            tracing::debug!(peer = &*self.peer, ?req, "refused: {why}");
            if req.command == Command::Write {
                self.discard_bytes = u64::from(req.length);
            }
            return self.queue_reply(Reply {
                req,
                body: Body::Error(errno, why.to_owned()),
                counted: 0,
            });
        }
        match req.command {
            Command::Write => {
                self.inflight_bytes += u64::from(req.length);
                let buf = self.device.alloc(req.length as usize);
                self.payload = Some(PayloadIn {
                    req,
                    buf,
                    filled: 0,
                });
            }
            Command::Read => {
                self.inflight_bytes += u64::from(req.length);
                self.dispatch(req, None);
            }
            _ => self.dispatch(req, None),
        }
    }

    fn dispatch(&mut self, req: Request, payload: Option<D::Buf>) {
        let device = self.device.clone();
        let counted = match req.command {
            Command::Read | Command::Write => u64::from(req.length),
            _ => 0,
        };
        let peer = self.peer.clone();
        self.inflight.push(Box::pin(async move {
            let body = match execute(&*device, &req, payload).await {
                Ok(body) => body,
                Err(e) => {
                    tracing::warn!(peer = &*peer, ?req.command, req.offset, req.length, "request failed: {e}");
                    Body::Error(e.errno, e.message)
                }
            };
            Reply { req, body, counted }
        }));
    }

    fn queue_reply(&mut self, reply: Reply<D::Buf>) {
        let Reply { req, body, counted } = reply;
        if self.write_failed.is_some() {
            self.inflight_bytes -= counted;
            return;
        }
        encode_header(&mut self.out_tail, &req, &body, self.structured);
        match body {
            Body::Data(buf) if buf.as_ref().len() > INLINE_DATA_BYTES => {
                let tail = std::mem::replace(&mut self.out_tail, Vec::with_capacity(64 << 10));
                self.out.push_back(Out::Bytes(tail));
                self.out.push_back(Out::Data(buf, counted));
            }
            Body::Data(buf) => {
                self.out_tail.extend_from_slice(buf.as_ref());
                self.inflight_bytes -= counted;
            }
            _ => self.inflight_bytes -= counted,
        }
    }

    fn out_is_empty(&self) -> bool {
        self.out.is_empty() && self.out_tail.is_empty()
    }

    /// Writes queued replies; true if anything happened.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.out_tail.is_empty() {
            let tail = std::mem::replace(&mut self.out_tail, Vec::with_capacity(64 << 10));
            self.out.push_back(Out::Bytes(tail));
        }
        let mut progress = false;
        while !self.out.is_empty() && self.write_failed.is_none() {
            let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(WRITE_SLICES_MAX);
            for (i, chunk) in self.out.iter().take(WRITE_SLICES_MAX).enumerate() {
                let bytes = match chunk {
                    Out::Bytes(b) => &b[..],
                    Out::Data(b, _) => b.as_ref(),
                };
                let skip = if i == 0 { self.out_head_written } else { 0 };
                slices.push(IoSlice::new(&bytes[skip..]));
            }
            match Pin::new(&mut self.wr).poll_write_vectored(cx, &slices) {
                Poll::Pending => break,
                Poll::Ready(Ok(0)) => {
                    self.fail_writes(io::ErrorKind::WriteZero.into());
                    progress = true;
                }
                Poll::Ready(Ok(n)) => {
                    self.advance_out(n);
                    progress = true;
                }
                Poll::Ready(Err(e)) => {
                    self.fail_writes(e);
                    progress = true;
                }
            }
        }
        progress
    }

    fn advance_out(&mut self, mut n: usize) {
        while n > 0 {
            let front = self.out.front().expect("wrote bytes we had");
            let len = match front {
                Out::Bytes(b) => b.len(),
                Out::Data(b, _) => b.as_ref().len(),
            } - self.out_head_written;
            if n < len {
                self.out_head_written += n;
                return;
            }
            n -= len;
            self.out_head_written = 0;
            if let Some(Out::Data(_, release)) = self.out.pop_front() {
                self.inflight_bytes -= release;
            }
        }
    }

    fn fail_writes(&mut self, e: io::Error) {
        tracing::debug!(peer = &*self.peer, "cannot send replies: {e}");
        for chunk in self.out.drain(..) {
            if let Out::Data(_, release) = chunk {
                self.inflight_bytes -= release;
            }
        }
        self.out_head_written = 0;
        self.out_tail.clear();
        self.write_failed = Some(e);
        // Nobody will read replies: stop taking requests, finish those in flight.
        if self.reading {
            self.stop_reading(Ok(()));
        }
    }
}

fn refusal_reason(req: &Request, rules: &ExportRules) -> &'static str {
    let end = req.offset.checked_add(u64::from(req.length));
    let writes = matches!(
        req.command,
        Command::Write | Command::Trim | Command::WriteZeroes
    );
    if matches!(req.command, Command::Unknown(_)) {
        "unknown command"
    } else if rules.read_only && writes {
        "export is read-only"
    } else if req.command == Command::BlockStatus && !rules.block_status {
        "BLOCK_STATUS needs the base:allocation meta context"
    } else if end.is_none_or(|end| end > rules.size_bytes) {
        "request goes past the end of the export"
    } else if req.length > rules.maximum_bytes {
        "request longer than the maximum block size"
    } else {
        "flags not valid for this command or not negotiated"
    }
}

async fn execute<D: BlockDevice>(
    device: &D,
    req: &Request,
    payload: Option<D::Buf>,
) -> Result<Body<D::Buf>, DeviceError> {
    let fua = req.fua();
    match req.command {
        Command::Read => {
            let buf = device
                .read(req.offset, device.alloc(req.length as usize))
                .await?;
            Ok(Body::Data(buf))
        }
        Command::Write => {
            let buf = payload.expect("write payload was read");
            device.write(req.offset, buf, fua).await?;
            Ok(Body::Done)
        }
        Command::Flush => device.flush().await.map(|()| Body::Done),
        Command::Trim => device
            .trim(req.offset, req.length, fua)
            .await
            .map(|()| Body::Done),
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
    let mut left = length;
    extents.retain_mut(|e| {
        if left == 0 || e.length == 0 {
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

fn encode_header<B: AsRef<[u8]>>(
    out: &mut Vec<u8>,
    req: &Request,
    body: &Body<B>,
    structured: bool,
) {
    let cookie = req.cookie;
    match (body, structured) {
        (Body::Error(errno, msg), true) => reply::put_structured_error(out, cookie, *errno, msg),
        (Body::Error(errno, _), false) => reply::put_simple(out, cookie, Some(*errno)),
        (Body::Data(buf), true) => {
            let len = u32::try_from(buf.as_ref().len()).expect("bounded by the maximum block size");
            reply::put_offset_data_header(out, cookie, req.offset, len);
        }
        (Body::Extents(extents), true) => {
            reply::put_block_status(out, cookie, BASE_ALLOCATION_ID, extents)
        }
        (Body::Extents(_), false) => unreachable!("BLOCK_STATUS needs structured replies"),
        (Body::Done | Body::Data(_), _) => reply::put_simple(out, cookie, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extents_are_clamped_to_the_request() {
        let mut e = vec![
            Extent {
                length: 0,
                flags: 3,
            },
            Extent {
                length: 4096,
                flags: 0,
            },
            Extent {
                length: 8192,
                flags: 3,
            },
        ];
        clamp_extents(&mut e, 6000, false);
        assert_eq!(
            e,
            vec![
                Extent {
                    length: 4096,
                    flags: 0
                },
                Extent {
                    length: 1904,
                    flags: 3
                }
            ]
        );
        clamp_extents(&mut e, 6000, true);
        assert_eq!(e.len(), 1);
        let mut none = Vec::new();
        clamp_extents(&mut none, 512, false);
        assert_eq!(
            none,
            vec![Extent {
                length: 512,
                flags: 0
            }]
        );
    }
}
