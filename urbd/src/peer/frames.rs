//! Framed I/O shared by the handshake and the link: a bounded read buffer driven by the
//! two-phase decoder (PROTOCOL.md §2.4) with per-socket seq checking (§2.5), and socket setup.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use urbd_protocol::{
    DecodeLimits, Error as WireError, Frame, Header, Message, MessageType, HEADER_LEN_BYTES,
};

/// Smallest read: enough for a batch of small frames.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Why reading a frame failed. Everything but `Io`/`Eof` is the peer's fault.
#[derive(Debug)]
pub(crate) enum ReadError {
    Io(io::Error),
    Eof,
    /// crc32c mismatch; `seq` is the (unverified) seq from the corrupted header.
    Crc {
        seq: u64,
    },
    Protocol(WireError),
    SeqGap {
        expected: u64,
        got: u64,
    },
    /// A message not allowed here (e.g. non-handshake before authentication).
    Unexpected(MessageType),
}

impl ReadError {
    /// A reason text naming the socket.
    pub(crate) fn describe(&self, socket: &str) -> String {
        match self {
            ReadError::Io(e) => format!("read error on {socket} socket: {e}"),
            ReadError::Eof => format!("peer closed the {socket} socket"),
            ReadError::Crc { seq } => format!("crc mismatch on {socket} frame seq {seq}"),
            ReadError::Protocol(e) => format!("protocol error on {socket} socket: {e}"),
            ReadError::SeqGap { expected, got } => {
                format!("protocol error on {socket} socket: frame seq {got}, expected {expected}")
            }
            ReadError::Unexpected(t) => {
                format!("protocol error on {socket} socket: unexpected {t}")
            }
        }
    }

    pub(crate) fn is_protocol(&self) -> bool {
        !matches!(self, ReadError::Io(_) | ReadError::Eof)
    }
}

/// The receiving half of a socket's framing: read buffer and expected seq.
#[derive(Debug)]
pub(crate) struct FrameReader {
    buf: BytesMut,
    next_seq: u64,
    limits: DecodeLimits,
}

impl FrameReader {
    pub(crate) fn new(limits: DecodeLimits) -> Self {
        FrameReader {
            buf: BytesMut::with_capacity(4096),
            next_seq: 0,
            limits,
        }
    }

    /// Reads the next frame. With `handshake_only`, a header naming a non-handshake message is
    /// refused as soon as its 24 bytes are in, before any payload is buffered (§3.2: nothing
    /// else is allowed before authentication, and no unauthenticated peer gets to make us
    /// buffer a large frame). The buffer never holds more than one frame plus one read.
    pub(crate) async fn read<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        handshake_only: bool,
    ) -> Result<(Header, Message), ReadError> {
        loop {
            if handshake_only {
                if let Some(head) = self.buf.first_chunk::<HEADER_LEN_BYTES>() {
                    let header = Header::decode(head).map_err(ReadError::Protocol)?;
                    if !header.message_type.is_handshake() {
                        return Err(ReadError::Unexpected(header.message_type));
                    }
                }
            }
            match Frame::check(&self.buf, &self.limits) {
                Ok(len) => return self.take(len),
                Err(WireError::Incomplete) => {
                    // After a successful header check the frame length is known and within
                    // `limits`: reserve for the whole frame at once.
                    let want = match self.buf.first_chunk::<HEADER_LEN_BYTES>() {
                        Some(head) => Header::decode(head)
                            .map(|h| {
                                usize::try_from(h.frame_len_bytes())
                                    .unwrap_or(READ_CHUNK_BYTES)
                                    .saturating_sub(self.buf.len())
                            })
                            .unwrap_or(READ_CHUNK_BYTES),
                        None => READ_CHUNK_BYTES,
                    };
                    self.buf.reserve(want.max(READ_CHUNK_BYTES));
                    let n = r.read_buf(&mut self.buf).await.map_err(ReadError::Io)?;
                    if n == 0 {
                        return Err(ReadError::Eof);
                    }
                }
                Err(e) => return Err(ReadError::Protocol(e)),
            }
        }
    }

    fn take(&mut self, len: usize) -> Result<(Header, Message), ReadError> {
        let frame = self.buf.split_to(len).freeze();
        let seq = frame
            .get(16..24)
            .and_then(|s| <[u8; 8]>::try_from(s).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        let (header, message) = Frame::parse_bytes(frame).map_err(|e| match e {
            WireError::CrcMismatch { .. } => ReadError::Crc { seq },
            e => ReadError::Protocol(e),
        })?;
        if header.seq != self.next_seq {
            return Err(ReadError::SeqGap {
                expected: self.next_seq,
                got: header.seq,
            });
        }
        self.next_seq += 1;
        Ok((header, message))
    }
}

/// One socket during the handshake: stream, read framing and send seq.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) stream: TcpStream,
    pub(crate) addr: SocketAddr,
    pub(crate) reader: FrameReader,
    pub(crate) send_seq: u64,
}

impl Conn {
    pub(crate) fn new(stream: TcpStream, addr: SocketAddr, limits: DecodeLimits) -> Self {
        Conn {
            stream,
            addr,
            reader: FrameReader::new(limits),
            send_seq: 0,
        }
    }

    /// Encodes and writes messages (one write), numbering them.
    pub(crate) async fn send(&mut self, msgs: &[Message]) -> io::Result<()> {
        let mut out = BytesMut::new();
        for m in msgs {
            m.encode(self.send_seq, &mut out);
            self.send_seq += 1;
        }
        self.stream.write_all(&out).await
    }

    pub(crate) async fn recv(&mut self, handshake_only: bool) -> Result<Message, ReadError> {
        let (_, m) = self.reader.read(&mut self.stream, handshake_only).await?;
        Ok(m)
    }

    /// Closes without losing what we last sent: FIN, then drain whatever the peer still
    /// sends for a moment (closing with unread data would send RST, which can destroy our
    /// last frame — e.g. an `AuthResult denied` — in the peer's receive buffer). Detached and
    /// bounded.
    pub(crate) fn linger_close(self) {
        let mut stream = self.stream;
        tokio::spawn(async move {
            let _ = stream.shutdown().await;
            let mut sink = [0u8; 4096];
            let drain = async {
                let mut total = 0usize;
                while total < 1 << 20 {
                    match stream.read(&mut sink).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => total += n,
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
        });
    }
}

/// TCP_NODELAY (§1.2, MUST) and SO_KEEPALIVE (SHOULD).
pub(crate) fn set_socket_options(stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    set_keepalive(stream);
    Ok(())
}

fn set_keepalive(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: the fd belongs to `stream`, which is alive for the whole call; the option value
    // points to a live c_int and the length passed is its size.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_KEEPALIVE,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::debug!(
            "cannot enable TCP keepalive: {}",
            io::Error::last_os_error()
        );
    }
}
