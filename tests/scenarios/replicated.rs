//! Replicated pairs: two `urbd run` daemons (alpha and beta) on this machine,
//! driven through the real `urbdadm` and real NBD clients (nbdcopy, qemu-io,
//! nbdinfo, fio) plus hand-made raw NBD clients. Every test asserts on data:
//! the backing files' data regions byte for byte, or what a client reads.
//!
//! Run: `cargo build --release -p urbd && cargo test --release -p urbd-tests
//! --test replicated -- --test-threads=1`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use urbd_tests::clients::{b, qemu_io};
use urbd_tests::nbdraw::{RawClient, CMD_WRITE, OPT_GO};
use urbd_tests::pair::{peer_of, Alpha, Beta, Node, Pair, RES};
use urbd_tests::server::Addr;
use urbd_tests::util::{assert_same_bytes, write_at, write_random_file};
use urbd_tests::{require_tool, Cmd, Json, Prng, MIB};

/// Size of each backing image.
const IMAGE_MIB: u64 = 64;

/// NBD_CMD_FLAG_FUA.
const FLAG_FUA: u16 = 1;

// ---------------------------------------------------------------------------
// Shared checks
// ---------------------------------------------------------------------------

/// `status --json` of `node` says: connected, in sync, both UpToDate, with the
/// given roles, and every documented field has the documented shape.
#[track_caller]
fn assert_in_sync_status(pair: &Pair, node: Node, role: &str, peer_role: &str) -> Json {
    let s = pair.status(node);
    let ctx = format!("{node} status: {s}");
    assert_eq!(s.str_at("resource"), RES, "{ctx}");
    assert_eq!(s.str_at("node"), node.name(), "{ctx}");
    assert_eq!(s.str_at("role"), role, "{ctx}");
    assert_eq!(s.str_at("disk-state"), "UpToDate", "{ctx}");
    assert_eq!(s.u64_at("size-bytes"), pair.data_size(), "{ctx}");
    assert_eq!(s.str_at("protocol"), pair.protocol(), "{ctx}");
    let g = s.get("generation");
    for key in ["current", "bitmap"] {
        let u = g.str_at(key);
        assert!(
            u.len() == 18 && u.starts_with("0x") && u[2..].bytes().all(|c| c.is_ascii_hexdigit()),
            "generation.{key} {u:?} is not 0x + 16 hex digits; {ctx}"
        );
    }
    assert_ne!(
        g.str_at("current"),
        "0x0000000000000000",
        "current UUID of an UpToDate disk is zero; {ctx}"
    );
    assert_eq!(
        g.str_at("bitmap"),
        "0x0000000000000000",
        "connected and in sync: no bitmap UUID expected; {ctx}"
    );
    assert!(
        matches!(g.get("history"), Json::Arr(_)),
        "generation.history is not an array; {ctx}"
    );
    let nbd = s.get("nbd");
    if role == "Primary" {
        assert_eq!(
            nbd.get("address").as_str(),
            Some(pair.nbd_address(node).as_str()),
            "Primary serves its NBD export; {ctx}"
        );
    }
    assert_eq!(nbd.u64_at("clients"), 0, "{ctx}");
    let p = peer_of(&s);
    assert_eq!(p.str_at("node"), node.peer().name(), "{ctx}");
    assert_eq!(p.str_at("connection-state"), "Connected", "{ctx}");
    assert_eq!(p.str_at("peer-role"), peer_role, "{ctx}");
    assert_eq!(p.str_at("peer-disk-state"), "UpToDate", "{ctx}");
    assert_eq!(p.str_at("replication-state"), "Established", "{ctx}");
    assert_eq!(p.u64_at("out-of-sync-bytes"), 0, "{ctx}");
    assert_eq!(p.get("percent-in-sync").as_f64(), Some(100.0), "{ctx}");
    assert_eq!(p.get("resync"), &Json::Null, "{ctx}");
    assert!(!p.bool_at("split-brain"), "{ctx}");
    s
}

/// After a sync both nodes carry the same current UUID, ignoring bit 0
/// (DRBD's UUID_PRIMARY flag, set on the Primary's copy).
#[track_caller]
fn assert_same_generation(a: &Json, b: &Json) {
    let uuid = |s: &Json| {
        let t = s.get("generation").str_at("current");
        u64::from_str_radix(t.trim_start_matches("0x"), 16).unwrap_or(0) & !1
    };
    assert_eq!(
        uuid(a),
        uuid(b),
        "after the sync both nodes carry the same current UUID (bit 0 aside)\n{a}\n{b}"
    );
}

/// Compare `got` with `want` except in the `skip` ranges (offset, len).
#[track_caller]
fn assert_same_except(what: &str, got: &[u8], want: &[u8], skip: &[(u64, u64)]) {
    let mut g = got.to_vec();
    let mut w = want.to_vec();
    for &(off, len) in skip {
        let (s, e) = (off as usize, (off + len) as usize);
        g[s..e].fill(0);
        w[s..e].fill(0);
    }
    assert_same_bytes(what, &g, &w);
}

fn has_nbd_fio(t: &str) -> bool {
    if !require_tool(t, "fio") {
        return false;
    }
    let o = Cmd::new("fio").arg("--enghelp=nbd").output();
    if !o.status.success() || !o.stdout.contains("uri") {
        println!("SKIPPED: {t}: this fio has no nbd ioengine");
        return false;
    }
    true
}

// ---------------------------------------------------------------------------
// 1. Initial sync
// ---------------------------------------------------------------------------

/// alpha's data region holds a pattern before the resource ever runs, beta's
/// other garbage; after `primary --force` on alpha and the initial sync both
/// data regions are alpha's pattern, byte for byte.
#[test]
fn initial_sync_makes_data_identical() {
    let mut pair = Pair::new("C", IMAGE_MIB);
    let size = pair.create_md_both() as usize;
    let pattern = Prng::new(0xA1FA).bytes(size);
    write_at(pair.disk(Alpha), 0, &pattern);
    write_at(pair.disk(Beta), 0, &Prng::new(0xBE7A).bytes(size));
    // The metadata at the end survived our writes (they stop at size-bytes).
    pair.adm_ok(Alpha, &["dump-md", RES]);

    pair.start_and_sync();
    assert_in_sync_status(&pair, Alpha, "Primary", "Secondary");
    assert_in_sync_status(&pair, Beta, "Secondary", "Primary");
    let a = pair.status(Alpha);
    let bs = pair.status(Beta);
    assert_same_generation(&a, &bs);
    // In sync means the data is there, even while running.
    assert_same_bytes("alpha while up", &pair.data_region(Alpha), &pattern);
    assert_same_bytes("beta while up", &pair.data_region(Beta), &pattern);

    pair.down_both();
    let got = pair.assert_data_identical();
    assert_same_bytes("alpha after down", &got, &pattern);
}

// ---------------------------------------------------------------------------
// 2. and 8. Writes through NBD reach both disks (protocols C, A, B)
// ---------------------------------------------------------------------------

enum Op {
    Pattern(u8),
    PatternFua(u8),
    Zero,
    Discard,
}

fn write_and_compare(t: &str, protocol: &str) {
    for tool in ["nbdcopy", "qemu-io"] {
        if !require_tool(t, tool) {
            return;
        }
    }
    let mut pair = Pair::new(protocol, IMAGE_MIB);
    pair.initial_sync();
    let size = pair.data_size();
    let uri = pair.nbd_uri(Alpha);
    // After the initial sync of two fresh sparse images everything is zero.
    let mut model = vec![0u8; size as usize];
    assert_same_bytes("alpha before the writes", &pair.data_region(Alpha), &model);

    // 16 MiB of random data at offset 0 with nbdcopy.
    let src = pair.dir().join("src.bin");
    let data = write_random_file(
        &src,
        16 * MIB as usize,
        0x5EED ^ protocol.as_bytes()[0] as u64,
    );
    Cmd::new("nbdcopy")
        .arg("--flush")
        .arg(&src)
        .arg(&uri)
        .timeout(Duration::from_secs(120))
        .ok();
    model[..data.len()].copy_from_slice(&data);

    // Scattered writes (unaligned, FUA, the last block), zeroes and a discard.
    let ops: Vec<(Op, u64, u64)> = vec![
        (Op::Pattern(0xa5), 20 * MIB + 512, 70_000),
        (Op::PatternFua(0x3c), 30 * MIB, MIB),
        (Op::Pattern(0x5a), 16 * MIB - 4096, 8192), // straddles nbdcopy's end
        (Op::Zero, 8 * MIB, MIB),
        (Op::Zero, 30 * MIB + 4096, 4096),
        (Op::Discard, 4 * MIB, 256 * 1024),
        (Op::Pattern(0x77), size - 4096, 4096),
        (Op::Pattern(0x11), 40 * MIB + 1, 3),
        (Op::PatternFua(0xee), 12 * MIB + 100, 200_000),
    ];
    let mut cmds = Vec::new();
    let mut discarded = Vec::new();
    for (op, off, len) in &ops {
        let (s, e) = (*off as usize, (*off + *len) as usize);
        match op {
            Op::Pattern(v) => {
                cmds.push(format!("write -P {v} {} {}", b(*off), b(*len)));
                model[s..e].fill(*v);
            }
            Op::PatternFua(v) => {
                cmds.push(format!("write -f -P {v} {} {}", b(*off), b(*len)));
                model[s..e].fill(*v);
            }
            Op::Zero => {
                cmds.push(format!("write -z {} {}", b(*off), b(*len)));
                model[s..e].fill(0);
            }
            Op::Discard => {
                // Reads after a trim are unspecified by NBD: the model does
                // not constrain them, but both nodes must still agree.
                cmds.push(format!("discard {} {}", b(*off), b(*len)));
                discarded.push((*off, *len));
            }
        }
    }
    cmds.push("flush".to_string());
    let refs: Vec<&str> = cmds.iter().map(String::as_str).collect();
    qemu_io(&uri, &refs);

    // What the Primary's export reads back.
    let back = pair.dir().join("back.bin");
    Cmd::new("nbdcopy")
        .arg(&uri)
        .arg(&back)
        .timeout(Duration::from_secs(120))
        .ok();
    let exported = std::fs::read(&back).unwrap();
    assert_same_except(
        &format!("protocol {protocol}: read back through the Primary's export"),
        &exported,
        &model,
        &discarded,
    );

    pair.wait_sync(Alpha, 60);
    pair.down_both();
    let got = pair.assert_data_identical();
    assert_same_except(
        &format!("protocol {protocol}: backing files after down"),
        &got,
        &model,
        &discarded,
    );
}

#[test]
fn writes_through_nbd_land_on_both_disks() {
    write_and_compare("writes_through_nbd_land_on_both_disks", "C");
}

#[test]
fn protocols_a_and_b() {
    write_and_compare("protocols_a_and_b", "A");
    write_and_compare("protocols_a_and_b", "B");
}

// ---------------------------------------------------------------------------
// 3. status --json and events
// ---------------------------------------------------------------------------

fn is_connection_line(l: &str) -> bool {
    [
        "change connection",
        "destroy connection",
        "create connection",
    ]
    .iter()
    .any(|p| l.starts_with(p))
}

#[test]
fn status_json_and_events() {
    let mut pair = Pair::new("C", IMAGE_MIB);
    pair.initial_sync();
    let a = assert_in_sync_status(&pair, Alpha, "Primary", "Secondary");
    let bs = assert_in_sync_status(&pair, Beta, "Secondary", "Primary");
    assert_same_generation(&a, &bs);

    let t = Duration::from_secs(20);
    let ev_a = pair.events(Alpha);
    let ev_b = pair.events(Beta);
    let end_a = ev_a.wait_line("`exists -`", 0, t, |l| l.trim() == "exists -");
    let end_b = ev_b.wait_line("`exists -`", 0, t, |l| l.trim() == "exists -");
    // The initial dump describes the current state.
    let dump_a = ev_a.lines()[..end_a].join("\n");
    assert!(
        dump_a.contains(&format!("exists resource name:{RES} role:Primary")),
        "alpha's initial events lack its role:\n{dump_a}"
    );
    assert!(
        ev_a.lines()[..end_a]
            .iter()
            .any(|l| l.starts_with("exists connection")
                && l.contains("peer-node:beta")
                && l.contains("connection:Connected")),
        "alpha's initial events lack the connection:\n{dump_a}"
    );
    let dump_b = ev_b.lines()[..end_b].join("\n");
    assert!(
        dump_b.contains(&format!("exists resource name:{RES} role:Secondary")),
        "beta's initial events lack its role:\n{dump_b}"
    );

    // disconnect: alpha StandAlone, beta no longer connected.
    let mark_a = ev_a.lines().len();
    let mark_b = ev_b.lines().len();
    pair.adm_ok(Alpha, &["disconnect", RES]);
    ev_a.wait_line("about the connection going away", mark_a, t, |l| {
        is_connection_line(l) && l.contains("peer-node:beta") && !l.contains("connection:Connected")
    });
    ev_b.wait_line("about the connection going away", mark_b, t, |l| {
        is_connection_line(l)
            && l.contains("peer-node:alpha")
            && !l.contains("connection:Connected")
    });
    let p = pair.wait_status(Alpha, "StandAlone", t, |s| {
        peer_of(s).str_at("connection-state") == "StandAlone"
    });
    assert_eq!(
        peer_of(&p).str_at("peer-role"),
        "Unknown",
        "alpha status {p}"
    );
    assert_eq!(
        p.str_at("role"),
        "Primary",
        "disconnect keeps the role: {p}"
    );
    pair.wait_status(Beta, "not connected", t, |s| {
        peer_of(s).str_at("connection-state") != "Connected"
    });

    // connect: both Connected again.
    let mark_a = ev_a.lines().len();
    let mark_b = ev_b.lines().len();
    pair.adm_ok(Alpha, &["connect", RES]);
    ev_a.wait_line("connection:Connected", mark_a, t, |l| {
        is_connection_line(l) && l.contains("connection:Connected")
    });
    ev_b.wait_line("connection:Connected", mark_b, t, |l| {
        is_connection_line(l) && l.contains("connection:Connected")
    });
    pair.wait_connect(Alpha, 20);
    pair.wait_sync(Alpha, 30);
    assert_in_sync_status(&pair, Alpha, "Primary", "Secondary");
    assert_in_sync_status(&pair, Beta, "Secondary", "Primary");

    // secondary / primary: alpha's role, and beta sees the peer's role.
    let mark_a = ev_a.lines().len();
    let mark_b = ev_b.lines().len();
    pair.secondary(Alpha);
    ev_a.wait_line("role:Secondary", mark_a, t, |l| {
        l.starts_with(&format!("change resource name:{RES}")) && l.contains("role:Secondary")
    });
    ev_b.wait_line("peer-role:Secondary", mark_b, t, |l| {
        l.starts_with("change connection") && l.contains("peer-role:Secondary")
    });
    assert_in_sync_status(&pair, Alpha, "Secondary", "Secondary");
    assert_in_sync_status(&pair, Beta, "Secondary", "Secondary");

    let mark_a = ev_a.lines().len();
    let mark_b = ev_b.lines().len();
    pair.adm_ok(Alpha, &["primary", RES]);
    ev_a.wait_line("role:Primary", mark_a, t, |l| {
        l.starts_with(&format!("change resource name:{RES}")) && l.contains("role:Primary")
    });
    ev_b.wait_line("peer-role:Primary", mark_b, t, |l| {
        l.starts_with("change connection") && l.contains("peer-role:Primary")
    });
    assert_in_sync_status(&pair, Alpha, "Primary", "Secondary");
    assert_in_sync_status(&pair, Beta, "Secondary", "Primary");
    drop(ev_a);
    drop(ev_b);
    // Checked last so that the checks above run whatever its outcome.
    // control/status.rs: nbd.address is "`null` when not serving (Secondary)".
    assert_eq!(
        bs.get("nbd").get("address"),
        &Json::Null,
        "beta is Secondary and does not serve: nbd.address must be null (status.rs contract); \
         beta status: {bs}"
    );
}

// ---------------------------------------------------------------------------
// 4. Refusals
// ---------------------------------------------------------------------------

/// The one-line stderr of a refused urbdadm command.
#[track_caller]
fn refusal_line(o: &urbd_tests::tools::Output) -> String {
    let lines: Vec<&str> = o.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "a refusal is one line on stderr\n{}",
        o.describe()
    );
    lines[0].to_string()
}

#[test]
fn refusals() {
    let t = "refusals";
    let mut pair = Pair::new("C", IMAGE_MIB);
    pair.initial_sync();
    let tw = Duration::from_secs(15);

    // primary on beta while alpha is Primary.
    let o = pair.adm_exit(Beta, &["primary", RES], 1);
    let line = refusal_line(&o);
    assert!(
        line.contains("Primary"),
        "refusal should say the peer is Primary: {line}"
    );
    assert_eq!(pair.status(Beta).str_at("role"), "Secondary");

    // secondary on alpha while an NBD client is attached.
    let mut client = RawClient::connect_go(&pair.nbd_addr(Alpha), RES);
    assert_eq!(client.size, pair.data_size(), "export size");
    pair.wait_status(Alpha, "1 NBD client", tw, |s| {
        s.get("nbd").u64_at("clients") == 1
    });
    let o = pair.adm_exit(Alpha, &["secondary", RES], 1);
    let line = refusal_line(&o);
    assert!(
        line.to_lowercase().contains("client"),
        "refusal should mention the NBD client(s): {line}"
    );
    assert_eq!(pair.status(Alpha).str_at("role"), "Primary");
    // The client was not disturbed by the refused demotion.
    let data = Prng::new(44).bytes(64 * 1024);
    client.roundtrip(1, 3 * MIB, &data);
    client.disconnect();
    pair.wait_status(Alpha, "0 NBD clients", tw, |s| {
        s.get("nbd").u64_at("clients") == 0
    });
    pair.secondary(Alpha);
    pair.wait_status(Beta, "peer Secondary", tw, |s| {
        peer_of(s).str_at("peer-role") == "Secondary"
    });
    pair.adm_ok(Alpha, &["primary", RES]);
    pair.wait_status(Beta, "peer Primary", tw, |s| {
        peer_of(s).str_at("peer-role") == "Primary"
    });

    // An NBD client of the Secondary's export gets an error naming the role.
    let mut raw = RawClient::connect(&pair.nbd_addr(Beta));
    raw.send_client_flags(
        urbd_tests::nbdraw::CLIENT_FIXED_NEWSTYLE | urbd_tests::nbdraw::CLIENT_NO_ZEROES,
    );
    match raw.go(RES) {
        Ok(()) => panic!("the Secondary (beta) accepted NBD_OPT_GO"),
        Err(r) => {
            assert_eq!(r.opt, OPT_GO);
            assert_ne!(r.typ & 0x8000_0000, 0, "not an error reply: {r:?}");
            let msg = String::from_utf8_lossy(&r.data).into_owned();
            assert!(
                msg.contains("Secondary"),
                "the refusal message should say the node is Secondary: {msg:?}"
            );
        }
    }
    if require_tool(t, "nbdinfo") {
        let o = Cmd::new("nbdinfo")
            .arg(pair.nbd_uri(Beta))
            .env("LIBNBD_DEBUG", "1")
            .timeout(Duration::from_secs(30))
            .fails();
        assert!(
            o.stderr.contains("Secondary"),
            "nbdinfo's error (with LIBNBD_DEBUG) should carry the server's message naming the \
             Secondary\n{}",
            o.describe()
        );
    }
    // The data written by the raw client is on beta too.
    pair.wait_sync(Alpha, 30);
    pair.down_both();
    let got = pair.assert_data_identical();
    assert_same_bytes(
        "raw client's write",
        &got[3 * MIB as usize..3 * MIB as usize + data.len()],
        &data,
    );

    // A fresh pair: both Inconsistent; primary without --force is refused.
    let mut fresh = Pair::new("C", IMAGE_MIB);
    fresh.create_md_both();
    fresh.up_both();
    fresh.wait_connect(Alpha, 30);
    let s = fresh.status(Alpha);
    assert_eq!(
        s.str_at("disk-state"),
        "Inconsistent",
        "fresh metadata: {s}"
    );
    let o = fresh.adm_exit(Alpha, &["primary", RES], 1);
    let line = refusal_line(&o);
    assert!(
        line.contains("Inconsistent") || line.contains("--force"),
        "refusal should say why (Inconsistent) or what to do (--force): {line}"
    );
    let s = fresh.status(Alpha);
    assert_eq!(s.str_at("role"), "Secondary", "{s}");
    assert_eq!(s.str_at("disk-state"), "Inconsistent", "{s}");
    // Alone (peer down) too.
    fresh.down(Beta);
    let o = fresh.adm_exit(Alpha, &["primary", RES], 1);
    refusal_line(&o);
    assert_eq!(fresh.status(Alpha).str_at("role"), "Secondary");
}

// ---------------------------------------------------------------------------
// 5. Wrong secret
// ---------------------------------------------------------------------------

#[test]
fn wrong_secret_is_refused() {
    let mut pair = Pair::new("C", IMAGE_MIB);
    let good = pair.secret(Alpha).to_string();
    pair.set_secret(Beta, "not-the-same-secret-at-all");
    assert_ne!(pair.config_dir(Alpha), pair.config_dir(Beta));
    pair.create_md_both();
    pair.up_both();
    let o = pair
        .adm_cmd(Beta, &["wait-connect", RES, "--timeout-s", "6"])
        .timeout(Duration::from_secs(40))
        .output();
    assert_eq!(
        o.status.code(),
        Some(3),
        "wait-connect with a wrong secret must time out (exit 3)\n{}\n{}",
        o.describe(),
        pair.logs_tail(30)
    );
    let o = pair
        .adm_cmd(Alpha, &["wait-connect", RES, "--timeout-s", "2"])
        .timeout(Duration::from_secs(40))
        .output();
    assert_eq!(
        o.status.code(),
        Some(3),
        "alpha's wait-connect must time out too\n{}",
        o.describe()
    );
    for node in Node::BOTH {
        let p = pair.peer_status(node);
        assert_ne!(p.str_at("connection-state"), "Connected", "{node}: {p}");
    }
    let logs = format!("{}\n{}", pair.log(Alpha), pair.log(Beta));
    assert!(
        logs.to_lowercase().contains("authentication"),
        "neither log mentions the failed authentication\n{}",
        pair.logs_tail(40)
    );
    for secret in [good.as_str(), pair.secret(Beta)] {
        assert!(
            !logs.contains(secret),
            "a log contains the shared secret {secret:?}"
        );
    }

    // With the right secret beta connects.
    pair.down(Beta);
    pair.set_secret(Beta, &good);
    pair.up(Beta);
    pair.wait_connect(Beta, 30);
    pair.wait_connect(Alpha, 30);
    for node in Node::BOTH {
        assert_eq!(
            pair.peer_status(node).str_at("connection-state"),
            "Connected"
        );
    }
}

// ---------------------------------------------------------------------------
// 6. SIGKILL the Secondary during writes
// ---------------------------------------------------------------------------

#[test]
fn secondary_kill9_during_writes() {
    let t = "secondary_kill9_during_writes";
    if !has_nbd_fio(t) {
        return;
    }
    let mut pair = Pair::new("C", IMAGE_MIB);
    pair.initial_sync();
    let size = 24 * MIB;
    // ~8 s of writes at 3 MiB/s, then fio reads everything back and checks.
    let fio = Cmd::new("fio")
        .args([
            "--name=kill9",
            "--ioengine=nbd",
            &format!("--uri={}", pair.nbd_uri(Alpha)),
            "--rw=randwrite",
            "--bsrange=4k-64k",
            "--blockalign=4k",
            "--iodepth=8",
            &format!("--size={size}"),
            "--rate=3m",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            "--randrepeat=1",
            "--randseed=77",
            "--runtime=120",
            "--verify_state_save=0",
            "--output-format=json",
        ])
        .current_dir(pair.dir())
        .timeout(Duration::from_secs(200));
    let started = Instant::now();
    let fio_thread = thread::spawn(move || fio.output());
    thread::sleep(Duration::from_millis(3000));
    pair.kill9(Beta);
    let killed_at = started.elapsed();
    let o = fio_thread.join().expect("fio thread");
    assert!(
        o.status.success(),
        "fio failed\n{}\n{}",
        o.describe(),
        pair.logs_tail(30)
    );
    let json_start = o
        .stdout
        .find('{')
        .unwrap_or_else(|| panic!("no JSON from fio\n{}", o.describe()));
    let j = Json::parse_or_panic("fio json", &o.stdout[json_start..]);
    let job = &j.get("jobs").as_array()[0];
    assert_eq!(job.u64_at("error"), 0, "fio error\n{}", o.describe());
    assert_eq!(job.get("write").u64_at("io_bytes"), size, "fio write bytes");
    assert_eq!(job.get("read").u64_at("io_bytes"), size, "fio verify bytes");
    assert!(
        started.elapsed() > killed_at + Duration::from_secs(1),
        "fio finished right after the kill; the kill was not during the writes"
    );

    let s = pair.status(Alpha);
    let p = peer_of(&s);
    assert_ne!(
        p.str_at("connection-state"),
        "Connected",
        "alpha still thinks the killed beta is connected: {s}"
    );
    assert!(
        p.u64_at("out-of-sync-bytes") > 0,
        "writes after the kill must be marked out of sync for beta: {s}"
    );
    // Only what beta missed is out of sync: fio writes inside its first
    // `size` bytes (4K-aligned blocks, 4K bitmap bits), nothing beyond.
    assert!(
        p.u64_at("out-of-sync-bytes") <= size,
        "more out of sync than fio could have written ({size} bytes): {s}"
    );
    assert_eq!(s.str_at("role"), "Primary");
    assert_eq!(s.str_at("disk-state"), "UpToDate");

    pair.up(Beta);
    pair.wait_connect(Alpha, 30);
    pair.wait_sync(Alpha, 60);
    pair.wait_sync(Beta, 30);
    assert_in_sync_status(&pair, Alpha, "Primary", "Secondary");
    assert_in_sync_status(&pair, Beta, "Secondary", "Primary");
    pair.down_both();
    pair.assert_data_identical();
}

// ---------------------------------------------------------------------------
// 7. SIGKILL the Primary: every acknowledged write is on the survivor
// ---------------------------------------------------------------------------

const BLOCK: usize = 4096;
const WRITERS: u64 = 4;
const BLOCKS_PER_WRITER: u64 = 256;
const MAGIC: &[u8; 8] = b"URBDCHK1";

fn fnv64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// 4 KiB: magic, block index, sequence number, writer, seeded filler,
/// checksum of everything before it in the last 8 bytes.
fn tagged_block(block: u64, seq: u64, writer: u64) -> Vec<u8> {
    let mut v = Prng::new(block.wrapping_mul(1_000_003) ^ seq).bytes(BLOCK);
    v[0..8].copy_from_slice(MAGIC);
    v[8..16].copy_from_slice(&block.to_le_bytes());
    v[16..24].copy_from_slice(&seq.to_le_bytes());
    v[24..32].copy_from_slice(&writer.to_le_bytes());
    let sum = fnv64(&v[..BLOCK - 8]);
    v[BLOCK - 8..].copy_from_slice(&sum.to_le_bytes());
    v
}

/// Ok(None) for an all-zero block, Ok(Some(seq)) for a valid tagged block.
fn parse_block(block: u64, v: &[u8]) -> Result<Option<u64>, String> {
    if v.iter().all(|&b| b == 0) {
        return Ok(None);
    }
    if &v[0..8] != MAGIC {
        return Err("neither zero nor tagged (bad magic)".into());
    }
    let sum = u64::from_le_bytes(v[BLOCK - 8..].try_into().unwrap());
    if sum != fnv64(&v[..BLOCK - 8]) {
        return Err("torn or corrupt (checksum mismatch)".into());
    }
    let b = u64::from_le_bytes(v[8..16].try_into().unwrap());
    if b != block {
        return Err(format!("holds block {b}'s data (misplaced write)"));
    }
    Ok(Some(u64::from_le_bytes(v[16..24].try_into().unwrap())))
}

#[derive(Default)]
struct WriterLog {
    /// block → last acknowledged sequence number.
    acked: HashMap<u64, u64>,
    /// The write sent but not acknowledged when the connection ended.
    inflight: Option<(u64, u64)>,
    end: String,
}

fn writer(addr: Addr, id: u64, acked_total: Arc<AtomicU64>, stop: Arc<AtomicBool>) -> WriterLog {
    let mut log = WriterLog::default();
    let mut c = RawClient::connect_go(&addr, RES);
    let mut rng = Prng::new(0xF00D + id);
    let first = id * BLOCKS_PER_WRITER;
    let deadline = Instant::now() + Duration::from_secs(60);
    // Sequence numbers are unique across writers (id in the low bits).
    for n in 1..=200_000u64 {
        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
            log.end = "stopped".into();
            return log;
        }
        let block = first + rng.next_u64() % BLOCKS_PER_WRITER;
        let seq = n * WRITERS + id;
        let data = tagged_block(block, seq, id);
        log.inflight = Some((block, seq));
        if let Err(e) = c.send_request(
            FLAG_FUA,
            CMD_WRITE,
            seq,
            block * BLOCK as u64,
            BLOCK as u32,
            &data,
        ) {
            log.end = format!("send: {e}");
            return log;
        }
        match c.read_simple_reply() {
            Ok(r) if r.error == 0 && r.cookie == seq => {
                log.acked.insert(block, seq);
                log.inflight = None;
                acked_total.fetch_add(1, Ordering::Relaxed);
            }
            Ok(r) => {
                log.end = format!("reply {r:?} to write seq {seq}");
                return log;
            }
            Err(e) => {
                log.end = format!("reply: {e}");
                return log;
            }
        }
    }
    log.end = "op limit".into();
    log
}

#[test]
fn primary_kill9_failover_keeps_acked_writes() {
    let mut pair = Pair::new("C", IMAGE_MIB);
    pair.initial_sync();
    let acked_total = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..WRITERS)
        .map(|id| {
            let addr = pair.nbd_addr(Alpha);
            let (a, s) = (acked_total.clone(), stop.clone());
            thread::spawn(move || writer(addr, id, a, s))
        })
        .collect();
    // Let them get going (1500 acknowledged FUA writes, about a second).
    let going = urbd_tests::tools::wait_until(Duration::from_secs(30), || {
        acked_total.load(Ordering::Relaxed) >= 1500
    });
    let before_kill = acked_total.load(Ordering::Relaxed);
    if !going {
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            let _ = h.join();
        }
        panic!(
            "only {before_kill} writes acknowledged in 30 s\n{}",
            pair.logs_tail(30)
        );
    }
    pair.kill9(Alpha);
    let logs: Vec<WriterLog> = handles
        .into_iter()
        .map(|h| h.join().expect("writer thread"))
        .collect();
    let total: usize = logs.iter().map(|l| l.acked.len()).sum();
    let acked = acked_total.load(Ordering::Relaxed);
    println!(
        "acked writes: {acked} ({total} distinct blocks); writer ends: {:?}",
        logs.iter().map(|l| l.end.as_str()).collect::<Vec<_>>()
    );
    for l in &logs {
        assert!(
            l.end.starts_with("send") || l.end.starts_with("reply:"),
            "a writer ended otherwise than by the connection going away: {}",
            l.end
        );
    }

    // beta notices, keeps UpToDate data and becomes Primary without --force.
    let s = pair.wait_status(Beta, "the peer gone", Duration::from_secs(30), |s| {
        peer_of(s).str_at("connection-state") != "Connected"
    });
    assert_eq!(
        s.str_at("disk-state"),
        "UpToDate",
        "beta after alpha died: {s}"
    );
    assert_eq!(s.str_at("role"), "Secondary", "{s}");
    pair.adm_ok(Beta, &["primary", RES]);
    let s = pair.status(Beta);
    assert_eq!(s.str_at("role"), "Primary", "{s}");

    // Every acknowledged write is there, block by block.
    let mut c = RawClient::connect_go(&pair.nbd_addr(Beta), RES);
    let mut failures = Vec::new();
    let mut checked = 0;
    for (id, log) in logs.iter().enumerate() {
        let first = id as u64 * BLOCKS_PER_WRITER;
        for block in first..first + BLOCKS_PER_WRITER {
            let v = c
                .read(block + 1, block * BLOCK as u64, BLOCK as u32)
                .unwrap_or_else(|e| panic!("read block {block} from beta: errno {e}"));
            let got = parse_block(block, &v);
            let want = log.acked.get(&block).copied();
            let inflight = log.inflight.filter(|(b, _)| *b == block).map(|(_, s)| s);
            let ok = match &got {
                Err(_) => false,
                Ok(g) => *g == want || (g.is_some() && *g == inflight),
            };
            checked += 1;
            if !ok {
                failures.push(format!(
                    "block {block}: got {got:?}, want last acked seq {want:?} (or in-flight {inflight:?})"
                ));
            }
        }
    }
    c.disconnect();
    assert!(
        failures.is_empty(),
        "{} of {checked} blocks lost acknowledged writes on the survivor:\n{}",
        failures.len(),
        failures
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(total > 0);
    // The survivor, now Primary with no client, goes down cleanly.
    pair.down(Beta);
}
