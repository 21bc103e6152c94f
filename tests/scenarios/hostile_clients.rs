//! Hostile and broken clients speaking raw NBD bytes. After each, the server
//! must still be up, a client connected before the hostile one must still
//! be served, and a fresh well-behaved client (qemu-io) must work.

use std::io::Write;
use std::time::Duration;

use urbd_tests::clients::qemu_io;
use urbd_tests::nbdraw::{
    RawClient, CLIENT_FIXED_NEWSTYLE, CLIENT_NO_ZEROES, CMD_BLOCK_STATUS, CMD_DISC, CMD_FLUSH,
    CMD_READ, CMD_TRIM, CMD_WRITE, EINVAL, ENOSPC, OPT_ABORT, OPT_EXPORT_NAME, OPT_GO, OPT_INFO,
    OPT_LIST, OPT_STARTTLS, REP_ACK, REP_ERR_UNSUP, REP_INFO, REP_SERVER, TFLAG_HAS_FLAGS,
};
use urbd_tests::{make_sparse_disk, require_tool, Prng, Server, TempDir, MIB};

const DISK_MIB: u64 = 64;
const SIZE: u64 = DISK_MIB * MIB;
const MAX_LEN: u32 = 32 << 20;
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

struct Fixture {
    _dir: TempDir,
    server: Server,
    /// Connected (NBD_OPT_GO done) before the hostile client shows up.
    pre: RawClient,
    /// Connected, greeting read, then silent for the whole test.
    idle: RawClient,
    rng: Prng,
    round: u64,
}

impl Fixture {
    fn new(t: &str, extra: &[&str]) -> Fixture {
        let dir = TempDir::new(t);
        let disk = dir.join("disk.img");
        make_sparse_disk(&disk, DISK_MIB);
        let server = Server::start(&disk, extra);
        let pre = RawClient::connect_go(server.addr(), server.export());
        assert_eq!(pre.size, SIZE, "NBD_INFO_EXPORT size");
        let idle = RawClient::connect(server.addr());
        let mut f = Fixture {
            _dir: dir,
            server,
            pre,
            idle,
            rng: Prng::new(t.len() as u64),
            round: 0,
        };
        f.check_healthy("before the hostile client");
        f
    }

    fn hostile(&self) -> RawClient {
        RawClient::connect(self.server.addr())
    }

    /// Server alive; the pre-connected client is served; a fresh qemu-io
    /// client can write and read; a fresh raw client too.
    #[track_caller]
    fn check_healthy(&mut self, when: &str) {
        self.round += 1;
        self.server.assert_alive();
        let off = self.round * MIB + 4096;
        let data = self.rng.bytes(8192);
        self.pre.roundtrip(self.round * 100, off, &data);

        if which_qemu_io() {
            let p = 0x10 + (self.round as u8 & 0x7f);
            let off = 40 * MIB + self.round * 65536;
            qemu_io(
                self.server.uri(),
                &[
                    &format!("write -P {p:#x} {off} 64k"),
                    &format!("read -P {p:#x} {off} 64k"),
                ],
            );
            // ... and the earlier client sees the other client's write.
            let seen = self
                .pre
                .read(self.round * 100 + 7, off, 65536)
                .unwrap_or_else(|e| panic!("{when}: pre-connected client read failed: errno {e}"));
            assert!(
                seen.iter().all(|&x| x == p),
                "{when}: qemu-io's write not visible"
            );
        }
        let mut fresh = RawClient::connect_go(self.server.addr(), self.server.export());
        let back = fresh.read(1, off, 8192).expect("fresh client read");
        urbd_tests::util::assert_same_bytes(when, &back, &data);
        fresh.disconnect();
        self.server.assert_alive();
    }

    /// Final health check and stop; returns the temp dir (keeps the disk).
    fn finish(mut self) -> TempDir {
        self.check_healthy("after the hostile client");
        // The idle client never finished its handshake; the server may
        // have timed it out or not, but must not have crashed.
        let _ = &self.idle;
        self.server.assert_alive();
        self.server.stop();
        self._dir
    }
}

fn which_qemu_io() -> bool {
    std::path::Path::new("/usr/bin/qemu-io").exists()
        || std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .any(|d| d.join("qemu-io").is_file())
}

fn start(t: &str) -> Option<Fixture> {
    start_with(t, &[])
}

fn start_with(t: &str, extra: &[&str]) -> Option<Fixture> {
    if !require_tool(t, "qemu-io") {
        return None;
    }
    Some(Fixture::new(t, extra))
}

#[test]
fn garbage_instead_of_client_flags() {
    let Some(f) = start("garbage_instead_of_client_flags") else {
        return;
    };
    let mut c = f.hostile();
    let mut junk = vec![0xde, 0xad, 0xbe, 0xef];
    junk.extend(Prng::new(9).bytes(200));
    let _ = c.s.write_all(&junk);
    assert!(
        c.closed_by_server_within(CLOSE_TIMEOUT),
        "server kept a connection with unknown client flags open"
    );
    f.finish();
}

#[test]
fn bad_option_magic() {
    let Some(f) = start("bad_option_magic") else {
        return;
    };
    let mut c = f.hostile();
    c.send_client_flags(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES);
    let _ = c.send_option_with_magic(0x1122_3344_5566_7788, OPT_GO, &[0, 0, 0, 0, 0, 0]);
    assert!(
        c.closed_by_server_within(CLOSE_TIMEOUT),
        "server kept a connection with a bad option magic open"
    );
    f.finish();
}

#[test]
fn unknown_option_then_go() {
    let Some(f) = start("unknown_option_then_go") else {
        return;
    };
    let mut c = f.hostile();
    c.send_client_flags(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES);
    c.send_option(0x0000_4242, b"some option data");
    let r = c.read_opt_reply().expect("reply to an unknown option");
    assert_eq!(r.opt, 0x4242, "reply names the option");
    assert_eq!(
        r.typ, REP_ERR_UNSUP,
        "unknown option: want NBD_REP_ERR_UNSUP, got {:#x}",
        r.typ
    );
    // A second unknown option, without data.
    c.send_option(0x7fff_fff0, &[]);
    let r = c.read_opt_reply().expect("reply to an unknown option");
    assert_eq!((r.opt, r.typ), (0x7fff_fff0, REP_ERR_UNSUP));
    // An export that does not exist is refused with an error reply ...
    let err = c
        .go("no-such-export")
        .expect_err("GO for a missing export succeeded");
    assert_ne!(err.typ & 0x8000_0000, 0);
    // ... and the session goes on: GO works.
    c.go(f.server.export()).expect("NBD_OPT_GO after errors");
    assert_eq!(c.size, SIZE);
    c.roundtrip(1, 7 * MIB, &[0x5f; 4096]);
    c.disconnect();
    f.finish();
}

#[test]
fn unknown_command_gets_einval() {
    let Some(f) = start("unknown_command_gets_einval") else {
        return;
    };
    let mut c = RawClient::connect_go(f.server.addr(), f.server.export());
    for (cookie, typ) in [(0x1111u64, 0x55u16), (0x2222, 0x7fff), (0x3333, 0xffff)] {
        c.send_request(0, typ, cookie, 0, 0, &[]).unwrap();
        let r = c.read_simple_reply().expect("reply to an unknown command");
        assert_eq!(r.cookie, cookie, "cookie echoed");
        assert_eq!(r.error, EINVAL, "unknown command type {typ:#x}: errno");
    }
    // The connection continues.
    c.roundtrip(10, 3 * MIB, &Prng::new(3).bytes(4096));
    c.send_request(0, CMD_FLUSH, 12, 0, 0, &[]).unwrap();
    assert_eq!(c.read_simple_reply().unwrap().error, 0, "flush");
    c.disconnect();
    f.finish();
}

#[test]
fn out_of_range_requests() {
    let Some(mut f) = start("out_of_range_requests") else {
        return;
    };
    let mut c = RawClient::connect_go(f.server.addr(), f.server.export());
    // Reads past the end: EINVAL.
    for (off, len) in [
        (SIZE - 512, 4096u32),
        (SIZE, 512),
        (SIZE + (1 << 30), 512),
        (u64::MAX - 511, 512),
    ] {
        assert_eq!(
            c.read(off, off, len),
            Err(EINVAL),
            "read {len} bytes at {off} (export size {SIZE})"
        );
    }
    // Writes past the end (payload sent): ENOSPC, connection continues.
    for (off, len) in [(SIZE - 512, 4096usize), (SIZE, 512), (u64::MAX - 511, 512)] {
        let r = c.write(off, off, &vec![0xee; len]);
        if f.server.is_urbd() {
            assert_eq!(
                r,
                Err(ENOSPC),
                "write {len} bytes at {off} (export size {SIZE})"
            );
        } else {
            assert!(r.is_err(), "write {len} bytes at {off} succeeded");
        }
    }
    // Reads longer than 32 MiB: EINVAL (even though within the export).
    assert_eq!(
        c.read(1, 0, MAX_LEN + 512),
        Err(EINVAL),
        "read of 32 MiB + 512"
    );
    // Exactly 32 MiB is fine.
    let big = c.read(2, 0, MAX_LEN).expect("read of exactly 32 MiB");
    assert_eq!(big.len(), MAX_LEN as usize);
    // The last sector is writable.
    c.roundtrip(3, SIZE - 512, &[0x4c; 512]);
    c.disconnect();

    f.server.assert_alive();
    let disk = f.server.disk().to_path_buf();
    f.check_healthy("after out-of-range requests");
    let _dir = f.finish();
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), SIZE, "disk grew");
    urbd_tests::util::assert_file_filled(&disk, SIZE - 512, 512, 0x4c);
    urbd_tests::util::assert_file_filled(&disk, SIZE - 4096, 4096 - 512, 0);
}

#[test]
fn oversize_write_is_refused() {
    let Some(f) = start("oversize_write_is_refused") else {
        return;
    };
    let mut c = RawClient::connect_go(f.server.addr(), f.server.export());
    let len = MAX_LEN + 4096;
    let payload = vec![0xa5; len as usize];
    let sent = c.send_request(0, CMD_WRITE, 77, 0, len, &payload);
    // Either an EINVAL reply (payload discarded) or the connection closed
    // (possibly right after the reply).
    match (sent, c.read_simple_reply()) {
        (_, Ok(r)) => {
            assert_eq!(r.cookie, 77);
            assert_eq!(r.error, EINVAL, "oversize write: errno");
            // If the connection stays open, it must still be in sync.
            let data = [0x3c; 4096];
            if c.send_request(0, CMD_WRITE, 78, 9 * MIB, 4096, &data)
                .is_ok()
            {
                match c.read_simple_reply() {
                    Ok(r) => {
                        assert_eq!((r.cookie, r.error), (78, 0), "write after oversize write");
                        let back = c
                            .read(79, 9 * MIB, 4096)
                            .expect("read after oversize write");
                        assert!(back == data, "data after oversize write");
                    }
                    Err(e) => eprintln!("oversize write: connection closed after the reply ({e})"),
                }
            }
        }
        (_, Err(e)) => eprintln!("oversize write: connection closed ({e}), allowed"),
    }
    // Nothing of the oversize payload reached the disk.
    let mut fresh = RawClient::connect_go(f.server.addr(), f.server.export());
    let head = fresh
        .read(1, 0, 1 << 20)
        .expect("read after oversize write");
    assert!(
        head.iter().all(|&x| x == 0),
        "oversize write was (partly) applied"
    );
    fresh.disconnect();
    f.finish();
}

#[test]
fn bad_request_magic_closes_connection() {
    let Some(f) = start("bad_request_magic_closes_connection") else {
        return;
    };
    let mut c = RawClient::connect_go(f.server.addr(), f.server.export());
    c.roundtrip(1, 0, &[1; 512]);
    let _ = c.send_request_with_magic(0x1234_5678, 0, CMD_READ, 2, 0, 512, &[]);
    assert!(
        c.closed_by_server_within(CLOSE_TIMEOUT),
        "connection not closed after a bad request magic"
    );
    f.finish();
}

#[test]
fn half_written_write_then_vanish() {
    let Some(f) = start("half_written_write_then_vanish") else {
        return;
    };
    {
        let mut c = RawClient::connect_go(f.server.addr(), f.server.export());
        let _ = c.send_request(0, CMD_WRITE, 1, 2 * MIB, 1 << 20, &vec![0xaa; 512 << 10]);
        // dropped here: the socket closes mid-payload
    }
    {
        // Same, with just a partial header.
        let mut c = RawClient::connect_go(f.server.addr(), f.server.export());
        let _ = c.s.write_all(&[0x25, 0x60, 0x95, 0x13, 0, 0, 0, 1, 0]);
    }
    {
        // A huge read whose reply is never consumed: the server's writes
        // hit a closed socket (EPIPE must not kill it).
        let mut c = RawClient::connect_go(f.server.addr(), f.server.export());
        let _ = c.send_request(0, CMD_READ, 3, 0, MAX_LEN, &[]);
        let _ = c.send_request(0, CMD_READ, 4, MAX_LEN as u64, MAX_LEN, &[]);
    }
    {
        // An option header announcing 2 GiB of data, then gone.
        let mut c = f.hostile();
        c.send_client_flags(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES);
        let _ = c.s.write_all(&[
            0x49, 0x48, 0x41, 0x56, 0x45, 0x4f, 0x50, 0x54, 0, 0, 0, 7, 0x7f, 0xff, 0xff, 0xff,
        ]);
        let _ = c.s.write_all(&[0u8; 1000]);
    }
    std::thread::sleep(Duration::from_millis(300));
    f.finish();
}

#[test]
fn many_clients_at_once() {
    let Some(f) = start("many_clients_at_once") else {
        return;
    };
    let mut clients: Vec<RawClient> = (0..32)
        .map(|_| RawClient::connect_go(f.server.addr(), f.server.export()))
        .collect();
    for (i, c) in clients.iter_mut().enumerate() {
        let data = Prng::new(i as u64).bytes(4096);
        c.write(1, 20 * MIB + i as u64 * 4096, &data)
            .expect("write");
    }
    for (i, c) in clients.iter_mut().enumerate() {
        // read what the *next* client wrote: multi-conn consistency
        let j = (i + 1) % 32;
        let want = Prng::new(j as u64).bytes(4096);
        let got = c.read(2, 20 * MIB + j as u64 * 4096, 4096).expect("read");
        urbd_tests::util::assert_same_bytes("cross-connection read", &got, &want);
    }
    for c in clients {
        c.disconnect();
    }
    f.finish();
}

/// NBD_OPT_EXPORT_NAME: reply is size, flags and (unless NO_ZEROES was
/// negotiated) 124 zero bytes; then transmission works.
fn export_name_session(f: &Fixture, client_flags: u32) {
    let mut c = f.hostile();
    c.send_client_flags(client_flags);
    c.send_option(OPT_EXPORT_NAME, f.server.export().as_bytes());
    let size = c.read_u64().expect("EXPORT_NAME reply: size");
    assert_eq!(size, SIZE, "EXPORT_NAME reply size");
    let flags = c.read_u16().expect("EXPORT_NAME reply: flags");
    assert_ne!(flags & TFLAG_HAS_FLAGS, 0, "HAS_FLAGS missing: {flags:#x}");
    if client_flags & CLIENT_NO_ZEROES == 0 {
        let mut pad = [0xffu8; 124];
        std::io::Read::read_exact(&mut c.s, &mut pad).expect("124 bytes of padding");
        assert!(pad.iter().all(|&b| b == 0), "padding not zero");
    }
    c.size = size;
    let off = 11 * MIB + client_flags as u64 * 4096;
    c.roundtrip(5, off, &Prng::new(client_flags as u64).bytes(4096));
    c.disconnect();
}

#[test]
fn export_name_option_with_and_without_no_zeroes() {
    let Some(f) = start("export_name_option_with_and_without_no_zeroes") else {
        return;
    };
    export_name_session(&f, CLIENT_FIXED_NEWSTYLE);
    export_name_session(&f, CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES);
    f.finish();
}

#[test]
fn info_list_starttls_abort_options() {
    let Some(f) = start("info_list_starttls_abort_options") else {
        return;
    };
    let export = f.server.export().to_string();
    let mut c = f.hostile();
    c.send_client_flags(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES);

    // NBD_OPT_LIST: one NBD_REP_SERVER naming the export, then ACK.
    c.send_option(OPT_LIST, &[]);
    let mut names = Vec::new();
    loop {
        let r = c.read_opt_reply().expect("NBD_OPT_LIST reply");
        assert_eq!(r.opt, OPT_LIST);
        match r.typ {
            REP_SERVER => {
                let n = u32::from_be_bytes(r.data[0..4].try_into().unwrap()) as usize;
                names.push(String::from_utf8_lossy(&r.data[4..4 + n]).into_owned());
            }
            REP_ACK => break,
            t => panic!("unexpected NBD_OPT_LIST reply type {t:#x}"),
        }
    }
    assert!(names.contains(&export), "NBD_OPT_LIST: {names:?}");

    // NBD_OPT_INFO: like GO (INFO_EXPORT + ACK) but stays in negotiation.
    let mut d = (export.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(export.as_bytes());
    d.extend_from_slice(&0u16.to_be_bytes());
    c.send_option(OPT_INFO, &d);
    let mut size = None;
    loop {
        let r = c.read_opt_reply().expect("NBD_OPT_INFO reply");
        assert_eq!(r.opt, OPT_INFO);
        match r.typ {
            REP_INFO if r.data[..2] == [0, 0] => {
                size = Some(u64::from_be_bytes(r.data[2..10].try_into().unwrap()));
            }
            REP_INFO => {}
            REP_ACK => break,
            t => panic!("unexpected NBD_OPT_INFO reply type {t:#x}: {r:?}"),
        }
    }
    assert_eq!(size, Some(SIZE), "NBD_OPT_INFO size");

    // NBD_OPT_STARTTLS without TLS configured: an error, session goes on.
    c.send_option(OPT_STARTTLS, &[]);
    let r = c.read_opt_reply().expect("NBD_OPT_STARTTLS reply");
    assert_eq!(r.opt, OPT_STARTTLS);
    assert_ne!(
        r.typ & 0x8000_0000,
        0,
        "STARTTLS accepted without TLS: {r:?}"
    );

    // Malformed NBD_OPT_GO (name length beyond the data): an error reply.
    c.send_option(OPT_GO, &[0, 0, 0, 200, b'x']);
    let r = c.read_opt_reply().expect("malformed NBD_OPT_GO reply");
    assert_eq!(r.opt, OPT_GO);
    assert_ne!(r.typ & 0x8000_0000, 0, "malformed GO accepted: {r:?}");

    // NBD_OPT_ABORT: the server (optionally ACKs and) closes.
    c.send_option(OPT_ABORT, &[]);
    assert!(
        c.closed_by_server_within(CLOSE_TIMEOUT),
        "connection still open after NBD_OPT_ABORT"
    );
    f.finish();
}

#[test]
fn disconnect_waits_for_writes_in_flight() {
    let Some(f) = start("disconnect_waits_for_writes_in_flight") else {
        return;
    };
    let mut c = RawClient::connect_go(f.server.addr(), f.server.export());
    let data = Prng::new(77).bytes(8 << 20);
    let mut wire = Vec::new();
    for (i, chunk) in data.chunks(64 << 10).enumerate() {
        let off = 24 * MIB + (i as u64) * (64 << 10);
        wire.extend_from_slice(&urbd_tests::nbdraw::REQUEST_MAGIC.to_be_bytes());
        wire.extend_from_slice(&0u16.to_be_bytes());
        wire.extend_from_slice(&CMD_WRITE.to_be_bytes());
        wire.extend_from_slice(&(i as u64).to_be_bytes());
        wire.extend_from_slice(&off.to_be_bytes());
        wire.extend_from_slice(&(chunk.len() as u32).to_be_bytes());
        wire.extend_from_slice(chunk);
    }
    // All the writes, then NBD_CMD_DISC, without reading a single reply.
    c.s.write_all(&wire).expect("send writes");
    c.send_request(0, CMD_DISC, 999, 0, 0, &[])
        .expect("send DISC");
    let _ = c.s.shutdown_write();
    // The server answers the writes, then closes.
    let mut replies = 0;
    while let Ok(r) = c.read_simple_reply() {
        assert_eq!(r.error, 0, "write {} failed", r.cookie);
        replies += 1;
    }
    assert_eq!(replies, 128, "replies before the server closed");
    let mut fresh = RawClient::connect_go(f.server.addr(), f.server.export());
    let back = fresh.read(1, 24 * MIB, 8 << 20).expect("read back");
    urbd_tests::util::assert_same_bytes("writes sent before NBD_CMD_DISC", &back, &data);
    fresh.disconnect();
    f.finish();
}

/// Requests a well-behaved client never sends (below the minimum block
/// size, zero length, unknown flags, BLOCK_STATUS without a negotiated meta
/// context, max-size write). The server may refuse or serve them, but
/// must answer each one with a correct reply and stay in sync.
#[test]
fn odd_requests_do_not_desync() {
    odd_requests("odd_requests_do_not_desync", &[]);
}

#[test]
fn odd_requests_do_not_desync_rmw_align_4096() {
    odd_requests(
        "odd_requests_do_not_desync_rmw_align_4096",
        &["--io-align-bytes", "4096"],
    );
}

fn odd_requests(t: &str, extra: &[&str]) {
    let Some(f) = start_with(t, extra) else {
        return;
    };
    let mut c = RawClient::connect_go(f.server.addr(), f.server.export());
    let base = 30 * MIB;
    let block = Prng::new(30).bytes(4096);
    c.roundtrip(1, base, &block);

    // Unaligned read: an error or the right bytes.
    c.send_request(0, CMD_READ, 10, base + 7, 100, &[]).unwrap();
    let r = c.read_simple_reply().expect("reply to unaligned read");
    assert_eq!(r.cookie, 10);
    if r.error == 0 {
        let mut got = vec![0u8; 100];
        std::io::Read::read_exact(&mut c.s, &mut got).unwrap();
        assert_eq!(got, block[7..107], "unaligned read data");
    }
    // Unaligned write: an error (nothing changes) or applied exactly.
    let patch = [0xc7u8; 100];
    let mut want = block.clone();
    match c.write(11, base + 7, &patch) {
        Ok(()) => want[7..107].copy_from_slice(&patch),
        Err(e) => assert_ne!(e, 0),
    }
    let got = c.read(12, base, 4096).expect("read after unaligned write");
    urbd_tests::util::assert_same_bytes("block after unaligned write", &got, &want);

    // Zero-length read, write, trim: error or empty success.
    for (cookie, cmd) in [(20u64, CMD_READ), (21, CMD_WRITE), (22, CMD_TRIM)] {
        c.send_request(0, cmd, cookie, base, 0, &[]).unwrap();
        let r = c.read_simple_reply().expect("reply to zero-length request");
        assert_eq!(r.cookie, cookie, "zero-length command {cmd}");
    }
    // Unknown request flag bits on a read.
    c.send_request(0x4000, CMD_READ, 30, base, 4096, &[])
        .unwrap();
    let r = c
        .read_simple_reply()
        .expect("reply to read with unknown flags");
    assert_eq!(r.cookie, 30);
    if r.error == 0 {
        let mut got = vec![0u8; 4096];
        std::io::Read::read_exact(&mut c.s, &mut got).unwrap();
        assert_eq!(got, want, "read with unknown flags");
    }
    // BLOCK_STATUS without SET_META_CONTEXT: must not be answered with a
    // structured reply on this simple-reply connection.
    c.send_request(0, CMD_BLOCK_STATUS, 40, base, 4096, &[])
        .unwrap();
    let r = c.read_simple_reply().expect("simple reply to BLOCK_STATUS");
    assert_eq!(r.cookie, 40);
    assert_ne!(r.error, 0, "BLOCK_STATUS without a meta context succeeded");

    // A write of exactly the maximum size works.
    let big = Prng::new(31).bytes(MAX_LEN as usize);
    c.write(50, 0, &big).expect("32 MiB write");
    let back = c.read(51, 0, MAX_LEN).expect("32 MiB read");
    urbd_tests::util::assert_same_bytes("32 MiB write", &back, &big);

    // Still in sync.
    c.roundtrip(60, base + 8192, &Prng::new(32).bytes(8192));
    c.disconnect();
    f.finish();
}
