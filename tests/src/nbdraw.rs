//! A deliberately minimal NBD client speaking the wire protocol by hand
//! (NetworkBlockDevice/nbd doc/proto.md), so that tests can send exactly the
//! bytes a hostile or broken client would. Big endian throughout.

use std::io::{self, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::server::Addr;

pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943; // "NBDMAGIC"
pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
pub const REPLY_MAGIC_OPT: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

pub const FLAG_FIXED_NEWSTYLE: u16 = 1;
pub const FLAG_NO_ZEROES: u16 = 2;
pub const CLIENT_FIXED_NEWSTYLE: u32 = 1;
pub const CLIENT_NO_ZEROES: u32 = 2;

pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;

pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_ERR_UNSUP: u32 = 0x8000_0001;
pub const INFO_EXPORT: u16 = 0;

pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;

pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
pub const TFLAG_READ_ONLY: u16 = 1 << 1;

pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;

pub trait Stream: Read + Write + Send {
    fn set_timeout(&self, t: Option<Duration>) -> io::Result<()>;
    fn shutdown_write(&self) -> io::Result<()>;
}

impl Stream for TcpStream {
    fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(t)?;
        self.set_write_timeout(t)
    }
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}

impl Stream for UnixStream {
    fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(t)?;
        self.set_write_timeout(t)
    }
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}

/// An option reply header (+ payload).
#[derive(Debug)]
pub struct OptReply {
    pub opt: u32,
    pub typ: u32,
    pub data: Vec<u8>,
}

/// A simple reply header.
#[derive(Debug, PartialEq, Eq)]
pub struct SimpleReply {
    pub error: u32,
    pub cookie: u64,
}

pub struct RawClient {
    pub s: Box<dyn Stream>,
    pub size: u64,
    pub transmission_flags: u16,
}

/// Default I/O timeout for a raw client: a server that does not answer is
/// a test failure, not a hang.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

impl RawClient {
    /// Connect and read the greeting (checks magic and flags).
    pub fn connect(addr: &Addr) -> RawClient {
        let s: Box<dyn Stream> = match addr {
            Addr::Tcp(a) => Box::new(TcpStream::connect(a).expect("connect to server")),
            Addr::Unix(p) => Box::new(UnixStream::connect(p).expect("connect to server")),
        };
        s.set_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut c = RawClient {
            s,
            size: 0,
            transmission_flags: 0,
        };
        let magic = c.read_u64().expect("greeting: NBDMAGIC");
        assert_eq!(magic, NBDMAGIC, "greeting magic");
        let opt = c.read_u64().expect("greeting: IHAVEOPT");
        assert_eq!(opt, IHAVEOPT, "greeting: server does not speak newstyle");
        let flags = c.read_u16().expect("greeting: handshake flags");
        assert_ne!(
            flags & FLAG_FIXED_NEWSTYLE,
            0,
            "server lacks FIXED_NEWSTYLE (flags {flags:#x})"
        );
        assert_ne!(flags & FLAG_NO_ZEROES, 0, "server lacks NO_ZEROES");
        c
    }

    /// Connect, negotiate, NBD_OPT_GO `export`; panics on failure.
    pub fn connect_go(addr: &Addr, export: &str) -> RawClient {
        let mut c = RawClient::connect(addr);
        c.send_client_flags(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES);
        c.go(export)
            .unwrap_or_else(|r| panic!("NBD_OPT_GO {export:?} refused: {r:?}"));
        c
    }

    pub fn send_client_flags(&mut self, flags: u32) {
        self.s.write_all(&flags.to_be_bytes()).unwrap();
    }

    pub fn send_option_with_magic(&mut self, magic: u64, opt: u32, data: &[u8]) -> io::Result<()> {
        let mut b = Vec::with_capacity(16 + data.len());
        b.extend_from_slice(&magic.to_be_bytes());
        b.extend_from_slice(&opt.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        self.s.write_all(&b)
    }

    pub fn send_option(&mut self, opt: u32, data: &[u8]) {
        self.send_option_with_magic(IHAVEOPT, opt, data)
            .expect("send option");
    }

    pub fn read_opt_reply(&mut self) -> io::Result<OptReply> {
        let magic = self.read_u64()?;
        if magic != REPLY_MAGIC_OPT {
            return Err(io::Error::new(
                ErrorKind::InvalidData,
                format!("bad option reply magic {magic:#x}"),
            ));
        }
        let opt = self.read_u32()?;
        let typ = self.read_u32()?;
        let len = self.read_u32()?;
        assert!(len < 1 << 20, "absurd option reply length {len}");
        let mut data = vec![0u8; len as usize];
        self.s.read_exact(&mut data)?;
        Ok(OptReply { opt, typ, data })
    }

    /// NBD_OPT_GO; Ok(()) after NBD_REP_ACK (size and flags recorded from
    /// NBD_INFO_EXPORT), Err(the error reply) otherwise.
    pub fn go(&mut self, export: &str) -> Result<(), OptReply> {
        let mut d = Vec::new();
        d.extend_from_slice(&(export.len() as u32).to_be_bytes());
        d.extend_from_slice(export.as_bytes());
        d.extend_from_slice(&0u16.to_be_bytes());
        self.send_option(OPT_GO, &d);
        let mut got_export_info = false;
        loop {
            let r = self.read_opt_reply().expect("NBD_OPT_GO reply");
            assert_eq!(r.opt, OPT_GO, "reply to the wrong option: {r:?}");
            match r.typ {
                REP_INFO => {
                    let info = u16::from_be_bytes([r.data[0], r.data[1]]);
                    if info == INFO_EXPORT {
                        assert_eq!(r.data.len(), 12, "NBD_INFO_EXPORT length");
                        self.size = u64::from_be_bytes(r.data[2..10].try_into().unwrap());
                        self.transmission_flags = u16::from_be_bytes([r.data[10], r.data[11]]);
                        got_export_info = true;
                    }
                }
                REP_ACK => {
                    assert!(got_export_info, "NBD_REP_ACK without NBD_INFO_EXPORT");
                    return Ok(());
                }
                t if t & 0x8000_0000 != 0 => return Err(r),
                t => panic!("unexpected NBD_OPT_GO reply type {t:#x}: {r:?}"),
            }
        }
    }

    /// Send a request header (and payload, if any).
    pub fn send_request(
        &mut self,
        flags: u16,
        typ: u16,
        cookie: u64,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) -> io::Result<()> {
        self.send_request_with_magic(REQUEST_MAGIC, flags, typ, cookie, offset, len, payload)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn send_request_with_magic(
        &mut self,
        magic: u32,
        flags: u16,
        typ: u16,
        cookie: u64,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) -> io::Result<()> {
        let mut b = Vec::with_capacity(28 + payload.len());
        b.extend_from_slice(&magic.to_be_bytes());
        b.extend_from_slice(&flags.to_be_bytes());
        b.extend_from_slice(&typ.to_be_bytes());
        b.extend_from_slice(&cookie.to_be_bytes());
        b.extend_from_slice(&offset.to_be_bytes());
        b.extend_from_slice(&len.to_be_bytes());
        b.extend_from_slice(payload);
        self.s.write_all(&b)
    }

    pub fn read_simple_reply(&mut self) -> io::Result<SimpleReply> {
        let magic = self.read_u32()?;
        if magic != SIMPLE_REPLY_MAGIC {
            return Err(io::Error::new(
                ErrorKind::InvalidData,
                format!("bad reply magic {magic:#x} (structured reply without negotiation?)"),
            ));
        }
        let error = self.read_u32()?;
        let cookie = self.read_u64()?;
        Ok(SimpleReply { error, cookie })
    }

    /// READ; Ok(data) or Err(errno from the reply).
    pub fn read(&mut self, cookie: u64, offset: u64, len: u32) -> Result<Vec<u8>, u32> {
        self.send_request(0, CMD_READ, cookie, offset, len, &[])
            .expect("send READ");
        let r = self.read_simple_reply().expect("READ reply");
        assert_eq!(r.cookie, cookie, "READ reply cookie");
        if r.error != 0 {
            return Err(r.error);
        }
        let mut buf = vec![0u8; len as usize];
        self.s.read_exact(&mut buf).expect("READ payload");
        Ok(buf)
    }

    /// WRITE; Ok(()) or Err(errno from the reply).
    pub fn write(&mut self, cookie: u64, offset: u64, data: &[u8]) -> Result<(), u32> {
        self.send_request(0, CMD_WRITE, cookie, offset, data.len() as u32, data)
            .expect("send WRITE");
        let r = self.read_simple_reply().expect("WRITE reply");
        assert_eq!(r.cookie, cookie, "WRITE reply cookie");
        if r.error != 0 {
            return Err(r.error);
        }
        Ok(())
    }

    /// Write `data` at `offset`, read it back and compare.
    #[track_caller]
    pub fn roundtrip(&mut self, cookie: u64, offset: u64, data: &[u8]) {
        self.write(cookie, offset, data)
            .unwrap_or_else(|e| panic!("WRITE at {offset} failed with errno {e}"));
        let back = self
            .read(cookie + 1, offset, data.len() as u32)
            .unwrap_or_else(|e| panic!("READ at {offset} failed with errno {e}"));
        crate::util::assert_same_bytes("raw client read-back", &back, data);
    }

    /// NBD_CMD_DISC then close.
    pub fn disconnect(mut self) {
        let _ = self.send_request(0, CMD_DISC, 0, 0, 0, &[]);
        let _ = self.s.shutdown_write();
    }

    /// True if the server closes the connection (EOF or reset) within
    /// `timeout`, discarding anything it sends first. False on timeout.
    pub fn closed_by_server_within(&mut self, timeout: Duration) -> bool {
        self.s.set_timeout(Some(timeout)).unwrap();
        let mut buf = [0u8; 4096];
        let deadline = std::time::Instant::now() + timeout;
        loop {
            match self.s.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {
                    if std::time::Instant::now() > deadline {
                        return false;
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return false
                }
                Err(_) => return true,
            }
        }
    }

    pub fn read_u16(&mut self) -> io::Result<u16> {
        let mut b = [0u8; 2];
        self.s.read_exact(&mut b)?;
        Ok(u16::from_be_bytes(b))
    }

    pub fn read_u32(&mut self) -> io::Result<u32> {
        let mut b = [0u8; 4];
        self.s.read_exact(&mut b)?;
        Ok(u32::from_be_bytes(b))
    }

    pub fn read_u64(&mut self) -> io::Result<u64> {
        let mut b = [0u8; 8];
        self.s.read_exact(&mut b)?;
        Ok(u64::from_be_bytes(b))
    }
}
