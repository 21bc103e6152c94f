//! urbd serve driven by third-party NBD clients: nbdinfo, qemu-io, qemu-img,
//! nbdcopy.

use std::time::Duration;

use urbd_tests::clients::{b, qemu_io, qemu_io_fails, qemu_io_opts};
use urbd_tests::nbdraw::{RawClient, CMD_TRIM, CMD_WRITE_ZEROES, EPERM};
use urbd_tests::util::{assert_file_filled, assert_same_bytes, write_at, write_random_file};
use urbd_tests::{
    make_sparse_disk, read_at, require_tool, Cmd, Json, Listen, Server, TempDir, MIB,
};

const M: u64 = MIB;
const K: u64 = 1024;

/// The URI of the server with the export name replaced by `name`.
fn uri_with_export(server: &Server, name: &str) -> String {
    let uri = server.uri();
    if let Some(rest) = uri.strip_prefix("nbd+unix:///") {
        let (_, q) = rest.split_once('?').unwrap();
        format!("nbd+unix:///{name}?{q}")
    } else {
        let (base, _) = uri.rsplit_once('/').unwrap();
        format!("{base}/{name}")
    }
}

fn nbdinfo_json(uri: &str) -> Json {
    let o = Cmd::new("nbdinfo")
        .args(["--json", uri])
        .timeout(Duration::from_secs(30))
        .ok();
    Json::parse_or_panic("nbdinfo --json", &o.stdout)
}

#[track_caller]
fn assert_export_info(server: &Server, info: &Json, size: u64, read_only: bool) {
    let exports = info.get("exports").as_array();
    assert_eq!(exports.len(), 1, "nbdinfo exports: {info}");
    let e = &exports[0];
    assert_eq!(e.u64_at("export-size"), size, "export size: {e}");
    assert_eq!(e.bool_at("is_read_only"), read_only, "is_read_only: {e}");
    for flag in [
        "can_flush",
        "can_fua",
        "can_trim",
        "can_zero",
        "can_fast_zero",
        "can_multi_conn",
        "can_cache",
    ] {
        // nbdinfo reports these for read-only exports too (the server
        // advertises them regardless; writes are refused with EPERM).
        if read_only && matches!(flag, "can_trim" | "can_zero" | "can_fast_zero") {
            continue;
        }
        assert!(e.bool_at(flag), "{flag} is false: {e}");
    }
    assert!(
        info.bool_at("structured"),
        "structured replies not negotiated: {info}"
    );
    if server.is_urbd() {
        assert!(e.bool_at("can_df"), "can_df is false: {e}");
        assert_eq!(e.u64_at("block_size_minimum"), 512, "min block size: {e}");
        assert_eq!(
            e.u64_at("block_size_preferred"),
            4096,
            "preferred block size: {e}"
        );
        assert_eq!(
            e.u64_at("block_size_maximum"),
            33_554_432,
            "max block size: {e}"
        );
    }
    let contexts: Vec<&str> = e
        .get("contexts")
        .as_array()
        .iter()
        .filter_map(|c| c.as_str())
        .collect();
    assert!(
        contexts.contains(&"base:allocation"),
        "base:allocation not listed: {e}"
    );
}

#[test]
fn nbdinfo_reports_export() {
    let t = "nbdinfo_reports_export";
    if !require_tool(t, "nbdinfo") {
        return;
    }
    let dir = TempDir::new(t);
    let disk = dir.join("disk.img");
    make_sparse_disk(&disk, 24);
    let server = Server::start(&disk, &[]);
    assert!(
        server.uri().starts_with("nbd://127.0.0.1:"),
        "{}",
        server.uri()
    );
    assert!(server.uri().ends_with("/urbd"), "{}", server.uri());

    let info = nbdinfo_json(server.uri());
    assert_export_info(&server, &info, 24 * M, false);
    let e = &info.get("exports").as_array()[0];
    assert_eq!(e.str_at("export-name"), "urbd", "{e}");

    // --list shows the export.
    let list = Cmd::new("nbdinfo")
        .args(["--list", "--json", &uri_with_export(&server, "")])
        .timeout(Duration::from_secs(30))
        .ok();
    let list = Json::parse_or_panic("nbdinfo --list --json", &list.stdout);
    let names: Vec<&str> = list
        .get("exports")
        .as_array()
        .iter()
        .map(|e| e.str_at("export-name"))
        .collect();
    assert!(names.contains(&"urbd"), "export not listed: {list}");

    // The empty export name gets the default export (urbd only: qemu-nbd
    // serves exactly the name given with -x).
    if server.is_urbd() {
        let info = nbdinfo_json(&uri_with_export(&server, ""));
        assert_export_info(&server, &info, 24 * M, false);
    }
}

#[test]
fn nbdinfo_custom_export_name_over_unix_socket() {
    let t = "nbdinfo_custom_export_name_over_unix_socket";
    if !require_tool(t, "nbdinfo") || !require_tool(t, "qemu-io") {
        return;
    }
    let dir = TempDir::new(t);
    let disk = dir.join("disk.img");
    make_sparse_disk(&disk, 8);
    let server = Server::start_with(&disk, Listen::Unix, &["--export", "vol7"]);
    assert!(
        server.uri().starts_with("nbd+unix:///vol7?socket="),
        "{}",
        server.uri()
    );
    let info = nbdinfo_json(server.uri());
    assert_export_info(&server, &info, 8 * M, false);
    assert_eq!(
        info.get("exports").as_array()[0].str_at("export-name"),
        "vol7"
    );

    // A name that is not exported is refused.
    let o = Cmd::new("nbdinfo")
        .args(["--json", &uri_with_export(&server, "no-such-export")])
        .timeout(Duration::from_secs(30))
        .fails();
    assert!(
        o.stdout.is_empty() || !o.stdout.contains("export-size"),
        "{}",
        o.describe()
    );

    qemu_io(
        server.uri(),
        &[
            "write -P 0x5c 4096 8192",
            "read -P 0x5c 4096 8192",
            "read -P 0 0 4096",
        ],
    );
}

#[test]
fn read_only_export_rejects_writes() {
    let t = "read_only_export_rejects_writes";
    if !require_tool(t, "nbdinfo") || !require_tool(t, "qemu-io") {
        return;
    }
    let dir = TempDir::new(t);
    let disk = dir.join("disk.img");
    make_sparse_disk(&disk, 8);
    write_at(&disk, 64 * K, &[0x3e; 4096]);
    let mut server = Server::start(&disk, &["--read-only"]);

    let info = nbdinfo_json(server.uri());
    assert_export_info(&server, &info, 8 * M, true);

    // Reads work and see the file's contents.
    qemu_io_opts(
        server.uri(),
        &["-r"],
        &[
            "read -P 0x3e 64k 4k",
            "read -P 0 0 64k",
            "read -P 0 68k 60k",
        ],
    );
    // qemu-io refuses or fails the write (either at open or at the write).
    qemu_io_fails(server.uri(), &["write -P 0x77 0 4k"]);

    // A client that ignores the READ_ONLY flag gets EPERM.
    let mut c = RawClient::connect_go(server.addr(), server.export());
    assert_ne!(
        c.transmission_flags & urbd_tests::nbdraw::TFLAG_READ_ONLY,
        0,
        "READ_ONLY transmission flag not set"
    );
    let err = c
        .write(1, 0, &[0x77; 4096])
        .expect_err("write on a read-only export succeeded");
    if server.is_urbd() {
        assert_eq!(err, EPERM, "write on --read-only export: errno");
    }
    // Trim and write-zeroes are refused too.
    for (cookie, cmd) in [(3u64, CMD_TRIM), (4, CMD_WRITE_ZEROES)] {
        c.send_request(0, cmd, cookie, 64 * K, 4096, &[]).unwrap();
        let r = c.read_simple_reply().expect("reply");
        assert_eq!(r.cookie, cookie);
        assert_ne!(r.error, 0, "command {cmd} on a read-only export succeeded");
        if server.is_urbd() {
            assert_eq!(r.error, EPERM, "command {cmd} on --read-only export: errno");
        }
    }
    // The connection is still usable.
    let data = c.read(2, 64 * K, 4096).expect("read after refused write");
    assert!(data.iter().all(|&x| x == 0x3e));
    c.disconnect();

    server.stop();
    assert_file_filled(&disk, 0, 64 * K as usize, 0);
    assert_file_filled(&disk, 64 * K, 4096, 0x3e);
}

/// The qemu-io workload shared by the aligned and --io-align-bytes 4096
/// variants; afterwards the backing file is checked directly.
fn qemu_io_workload(t: &str, extra: &[&str]) {
    if !require_tool(t, "qemu-io") {
        return;
    }
    let dir = TempDir::new(t);
    let disk = dir.join("disk.img");
    make_sparse_disk(&disk, 16);
    let mut server = Server::start(&disk, extra);
    let uri = server.uri().to_string();

    // Odd (512-aligned, not 4096-aligned) regions around 5 MiB.
    let a = (5 * M + 512, 1536u64); // inside one 4k block
    let bb = (5 * M + 3584, 1024u64); // straddles a 4k boundary
    let c = (5 * M + 8704, 9216u64); // unaligned head and tail
    let cz = (5 * M + 9216, 1024u64); // write-zeroes inside c
    let f = (6 * M + 512, 512u64); // FUA, single sector

    let w = |p: u8, r: (u64, u64)| format!("write -P {p:#x} {} {}", b(r.0), b(r.1));
    let rd = |p: u8, r: (u64, u64)| format!("read -P {p:#x} {} {}", b(r.0), b(r.1));

    // Phase 1: writes, each followed by a read on the same connection.
    let cmds: Vec<String> = vec![
        "write -P 0xab 0 64k".into(),
        "read -P 0xab 0 64k".into(),
        "write -f -P 0xcd 64k 64k".into(),
        "read -P 0xcd 64k 64k".into(),
        // write zeroes (no unmap) over data
        "write -P 0xee 1M 256k".into(),
        "write -z 1M 128k".into(),
        "read -P 0 1M 128k".into(),
        "read -P 0xee 1152k 128k".into(),
        // write zeroes with unmap over data
        "write -P 0xef 2M 256k".into(),
        "write -z -u 2M 128k".into(),
        "read -P 0 2M 128k".into(),
        "read -P 0xef 2176k 128k".into(),
        // discard half of a written region; the other half must survive
        "write -P 0x77 3M 128k".into(),
        "discard 3M 64k".into(),
        "read -P 0x77 3136k 64k".into(),
        "flush".into(),
        // aio
        "aio_write -P 0x11 4M 64k".into(),
        "aio_write -P 0x12 4160k 64k".into(),
        "aio_write -f -P 0x13 4224k 4k".into(),
        "aio_flush".into(),
        "read -P 0x11 4M 64k".into(),
        "read -P 0x12 4160k 64k".into(),
        "read -P 0x13 4224k 4k".into(),
        // 512-aligned odd offsets
        w(0xa1, a),
        rd(0xa1, a),
        w(0xb2, bb),
        rd(0xb2, bb),
        w(0xc3, c),
        format!("write -z {} {}", b(cz.0), b(cz.1)),
        rd(0, cz),
        format!("write -f -P 0xf4 {} {}", b(f.0), b(f.1)),
        rd(0xf4, f),
        // unaligned discard: its neighbours in the same 4k block survive
        format!("write -P 0x66 {} 16k", b(6 * M + 64 * K)),
        format!("discard {} 1024", b(6 * M + 64 * K + 512)),
        format!("read -P 0x66 {} 512", b(6 * M + 64 * K)),
        format!(
            "read -P 0x66 {} {}",
            b(6 * M + 64 * K + 1536),
            b(16 * K - 1536)
        ),
        "flush".into(),
    ];
    let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
    qemu_io(&uri, &cmds);

    // Phase 2: a new connection reads everything back, including the
    // untouched neighbours of the odd regions.
    let checks: Vec<String> = vec![
        "read -P 0xab 0 64k".into(),
        "read -P 0xcd 64k 64k".into(),
        "read -P 0 128k 896k".into(),
        "read -P 0 1M 128k".into(),
        "read -P 0xee 1152k 128k".into(),
        "read -P 0 2M 128k".into(),
        "read -P 0xef 2176k 128k".into(),
        "read -P 0x77 3136k 64k".into(),
        "read -P 0x11 4M 64k".into(),
        "read -P 0x12 4160k 64k".into(),
        "read -P 0x13 4224k 4k".into(),
        format!("read -P 0 {} 512", b(5 * M)),
        rd(0xa1, a),
        format!("read -P 0 {} 1536", b(5 * M + 2048)),
        rd(0xb2, bb),
        format!("read -P 0 {} 4096", b(5 * M + 4608)),
        format!("read -P 0xc3 {} 512", b(c.0)),
        rd(0, cz),
        format!(
            "read -P 0xc3 {} {}",
            b(cz.0 + cz.1),
            b(c.0 + c.1 - cz.0 - cz.1)
        ),
        format!("read -P 0 {} 512", b(c.0 + c.1)),
        format!("read -P 0 {} 512", b(6 * M)),
        rd(0xf4, f),
        format!("read -P 0 {} 3k", b(6 * M + 1024)),
        format!("read -P 0x66 {} 512", b(6 * M + 64 * K)),
        format!(
            "read -P 0x66 {} {}",
            b(6 * M + 64 * K + 1536),
            b(16 * K - 1536)
        ),
        "read -P 0 7M 9M".into(),
    ];
    let checks: Vec<&str> = checks.iter().map(String::as_str).collect();
    qemu_io(&uri, &checks);

    // A wrong pattern is detected (the checks above can fail).
    qemu_io_fails(&uri, &["read -P 0xac 0 4k"]);

    // Phase 3: the backing file itself, with the server stopped.
    server.stop();
    let expect: &[(u64, u64, u8)] = &[
        (0, 64 * K, 0xab),
        (64 * K, 64 * K, 0xcd),
        (128 * K, 896 * K, 0),
        (M, 128 * K, 0),
        (M + 128 * K, 128 * K, 0xee),
        (2 * M, 128 * K, 0),
        (2 * M + 128 * K, 128 * K, 0xef),
        (3 * M + 64 * K, 64 * K, 0x77),
        (4 * M, 64 * K, 0x11),
        (4 * M + 64 * K, 64 * K, 0x12),
        (4 * M + 128 * K, 4 * K, 0x13),
        (5 * M, 512, 0),
        (a.0, a.1, 0xa1),
        (5 * M + 2048, 1536, 0),
        (bb.0, bb.1, 0xb2),
        (5 * M + 4608, 4096, 0),
        (c.0, cz.0 - c.0, 0xc3),
        (cz.0, cz.1, 0),
        (cz.0 + cz.1, c.0 + c.1 - cz.0 - cz.1, 0xc3),
        (c.0 + c.1, 512, 0),
        (6 * M, 512, 0),
        (f.0, f.1, 0xf4),
        (f.0 + f.1, 3 * K, 0),
        (6 * M + 64 * K, 512, 0x66),
        (6 * M + 64 * K + 1536, 16 * K - 1536, 0x66),
        (7 * M, 9 * M, 0),
    ];
    for &(off, len, byte) in expect {
        assert_file_filled(&disk, off, len as usize, byte);
    }
    assert_eq!(
        std::fs::metadata(&disk).unwrap().len(),
        16 * M,
        "disk size changed"
    );
}

#[test]
fn qemu_io_patterns() {
    qemu_io_workload("qemu_io_patterns", &[]);
}

#[test]
fn qemu_io_patterns_rmw_align_4096() {
    qemu_io_workload(
        "qemu_io_patterns_rmw_align_4096",
        &["--io-align-bytes", "4096"],
    );
}

#[test]
fn qemu_io_patterns_threads_engine() {
    qemu_io_workload(
        "qemu_io_patterns_threads_engine",
        &["--disk-engine", "threads"],
    );
}

#[test]
fn qemu_io_patterns_rmw_align_4096_threads_engine() {
    qemu_io_workload(
        "qemu_io_patterns_rmw_align_4096_threads_engine",
        &["--io-align-bytes", "4096", "--disk-engine", "threads"],
    );
}

#[test]
fn qemu_io_over_unix_socket() {
    let t = "qemu_io_over_unix_socket";
    if !require_tool(t, "qemu-io") {
        return;
    }
    let dir = TempDir::new(t);
    let disk = dir.join("disk.img");
    make_sparse_disk(&disk, 4);
    let mut server = Server::start_with(&disk, Listen::Unix, &[]);
    qemu_io(
        server.uri(),
        &[
            "write -P 0x42 1M 1M",
            "read -P 0x42 1M 1M",
            "read -P 0 0 1M",
            "flush",
        ],
    );
    server.stop();
    assert_file_filled(&disk, M, M as usize, 0x42);
    assert_file_filled(&disk, 0, M as usize, 0);
}

/// One extent of `qemu-img map --output=json`.
struct Extent {
    start: u64,
    length: u64,
    data: bool,
    zero: bool,
}

fn qemu_img_map(uri: &str) -> Vec<Extent> {
    let o = Cmd::new("qemu-img")
        .args(["map", "--output=json", "-f", "raw", uri])
        .timeout(Duration::from_secs(60))
        .ok();
    let j = Json::parse_or_panic("qemu-img map", &o.stdout);
    let ext: Vec<Extent> = j
        .as_array()
        .iter()
        .map(|e| Extent {
            start: e.u64_at("start"),
            length: e.u64_at("length"),
            data: e.bool_at("data"),
            zero: e.bool_at("zero"),
        })
        .collect();
    // The map must tile the export exactly.
    let mut pos = 0;
    for e in &ext {
        assert_eq!(
            e.start, pos,
            "qemu-img map has a gap/overlap:\n{}",
            o.stdout
        );
        pos += e.length;
    }
    ext
}

/// Every extent overlapping [off, off+len) satisfies `pred`.
#[track_caller]
fn assert_map(map: &[Extent], off: u64, len: u64, what: &str, pred: impl Fn(&Extent) -> bool) {
    let mut covered = 0;
    for e in map {
        let (s, end) = (e.start.max(off), (e.start + e.length).min(off + len));
        if s >= end {
            continue;
        }
        covered += end - s;
        assert!(
            pred(e),
            "qemu-img map: [{off}, +{len}) should be {what}, but extent [{}, +{}) has data={} zero={}",
            e.start,
            e.length,
            e.data,
            e.zero
        );
    }
    assert_eq!(covered, len, "map does not cover [{off}, +{len})");
}

#[test]
fn qemu_img_map_and_compare() {
    let t = "qemu_img_map_and_compare";
    if !require_tool(t, "qemu-img") || !require_tool(t, "qemu-io") {
        return;
    }
    let dir = TempDir::new(t);
    let disk = dir.join("disk.img");
    make_sparse_disk(&disk, 16);
    let mut server = Server::start(&disk, &[]);
    let uri = server.uri().to_string();

    qemu_io(
        &uri,
        &[
            "write -P 0x5a 0 1M",
            "write -P 0x5b 4M 1M",
            "write -P 0x5c 6M 1M",
            "write -z -u 6M 1M",
            "write -P 0x5d 8M 1M",
            "write -z 8M 512k",
            "write -P 0x5e 10M 1M",
            "discard 10M 1M",
            "flush",
        ],
    );
    let map = qemu_img_map(&uri);
    let data = |e: &Extent| e.data && !e.zero;
    let zero = |e: &Extent| e.zero;
    assert_map(&map, 0, M, "data", data);
    assert_map(&map, 4 * M, M, "data", data);
    assert_map(&map, 8 * M + 512 * K, 512 * K, "data", data);
    // never written: holes that read as zero
    assert_map(&map, M, 3 * M, "zero", zero);
    assert_map(&map, 5 * M, M, "zero", zero);
    assert_map(&map, 7 * M, M, "zero", zero);
    assert_map(&map, 11 * M, 5 * M, "zero", zero);
    // zeroed with unmap allowed
    assert_map(&map, 6 * M, M, "zero", zero);

    // Whatever the map claims is zero must read as zero (a false "zero"
    // would make qemu-img convert / nbdcopy skip real data).
    let copy = dir.join("copy.img");
    make_sparse_disk(&copy, 16);
    Cmd::new("qemu-img")
        .args(["convert", "-n", "-f", "raw", "-O", "raw", &uri])
        .arg(&copy)
        .timeout(Duration::from_secs(60))
        .ok();
    for e in map.iter().filter(|e| e.zero) {
        assert_file_filled(&copy, e.start, e.length as usize, 0);
    }
    assert_file_filled(&copy, 0, M as usize, 0x5a);
    assert_file_filled(&copy, 4 * M, M as usize, 0x5b);
    assert_file_filled(&copy, 6 * M, M as usize, 0);
    assert_file_filled(&copy, 8 * M, 512 * K as usize, 0);
    assert_file_filled(&copy, 8 * M + 512 * K, 512 * K as usize, 0x5d);

    // qemu-img compare: local image with random data and holes, written
    // over the whole export with qemu-img convert -n.
    let local = dir.join("local.img");
    make_sparse_disk(&local, 16);
    let mut rng = urbd_tests::Prng::new(0x6d61_7021);
    for &(off, len) in &[
        (0, M),
        (3 * M + 4 * K, 200 * K),
        (9 * M + 512, 77 * K),
        (15 * M, M),
    ] {
        write_at(&local, off, &rng.bytes(len as usize));
    }
    Cmd::new("qemu-img")
        .args(["convert", "-n", "-f", "raw", "-O", "raw"])
        .arg(&local)
        .arg(&uri)
        .timeout(Duration::from_secs(60))
        .ok();
    let cmp = |expect_same: bool| {
        let o = Cmd::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(&local)
            .arg(&uri)
            .timeout(Duration::from_secs(60))
            .output();
        assert_eq!(
            o.status.code(),
            Some(if expect_same { 0 } else { 1 }),
            "qemu-img compare (expect identical: {expect_same})\n{}",
            o.describe()
        );
    };
    cmp(true);
    let map = qemu_img_map(&uri);
    assert_map(&map, 3 * M + 4 * K, 200 * K, "data", |e| e.data);
    assert_map(&map, 15 * M, M, "data", |e| e.data);
    // One changed sector is noticed.
    qemu_io(&uri, &["write -P 0x99 12M 512"]);
    cmp(false);
    qemu_io(&uri, &["write -z 12M 512"]);
    cmp(true);

    server.stop();
    let want = std::fs::read(&local).unwrap();
    let got = std::fs::read(&disk).unwrap();
    assert_same_bytes("backing file vs local image", &got, &want);
}

#[test]
fn nbdcopy_round_trip_multi_conn() {
    let t = "nbdcopy_round_trip_multi_conn";
    if !require_tool(t, "nbdcopy") {
        return;
    }
    let dir = TempDir::new(t);
    let disk = dir.join("disk.img");
    make_sparse_disk(&disk, 64);
    let mut server = Server::start(&disk, &[]);
    let uri = server.uri().to_string();
    let size = (64 * M) as usize;

    let nbdcopy = |src: &str, dst: &str| {
        Cmd::new("nbdcopy")
            .args(["--connections=4", "--requests=16", "--flush", src, dst])
            .timeout(Duration::from_secs(120))
            .ok();
    };

    // Round 1: fully random data.
    let src1 = dir.join("src1.img");
    let data1 = write_random_file(&src1, size, 1);
    nbdcopy(src1.to_str().unwrap(), &uri);
    let out1 = dir.join("out1.img");
    make_sparse_disk(&out1, 64);
    nbdcopy(&uri, out1.to_str().unwrap());
    assert_same_bytes(
        "round 1: export -> file",
        &std::fs::read(&out1).unwrap(),
        &data1,
    );

    // Round 2: random data with zero runs (nbdcopy sends those as
    // zeroing requests), over the data of round 1.
    let src2 = dir.join("src2.img");
    let mut data2 = urbd_tests::Prng::new(2).bytes(size);
    for &(off, len) in &[
        (0usize, 4096usize),
        (5 << 20, 3 << 20),
        (20 << 20, 512 << 10),
        (63 << 20, 1 << 20),
    ] {
        data2[off..off + len].fill(0);
    }
    std::fs::write(&src2, &data2).unwrap();
    // make the zero runs real holes in the source file too
    Cmd::new("fallocate")
        .args(["--dig-holes"])
        .arg(&src2)
        .output();
    assert_eq!(
        std::fs::read(&src2).unwrap(),
        data2,
        "fallocate --dig-holes changed data"
    );
    nbdcopy(src2.to_str().unwrap(), &uri);
    let out2 = dir.join("out2.img");
    make_sparse_disk(&out2, 64);
    nbdcopy(&uri, out2.to_str().unwrap());
    assert_same_bytes(
        "round 2: export -> file",
        &std::fs::read(&out2).unwrap(),
        &data2,
    );

    server.stop();
    assert_same_bytes(
        "round 2: backing file",
        &std::fs::read(&disk).unwrap(),
        &data2,
    );
    assert_eq!(read_at(&disk, 5 << 20, 16), vec![0; 16]);
}

#[test]
fn libnbd_python_commands() {
    let t = "libnbd_python_commands";
    let py = "/usr/bin/python3";
    if !require_tool(t, py) {
        return;
    }
    let probe = Cmd::new(py).args(["-c", "import nbd"]).output();
    if !probe.status.success() {
        println!("SKIPPED: {t}: python3 module nbd missing (apt-get install python3-libnbd)");
        return;
    }
    let dir = TempDir::new(t);
    let disk = dir.join("disk.img");
    make_sparse_disk(&disk, 48);
    let mut server = Server::start(&disk, &[]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/libnbd_commands.py");
    let o = Cmd::new(py)
        .args([script, server.uri(), &(48 * M).to_string()])
        .arg(if server.is_urbd() { "1" } else { "0" })
        .timeout(Duration::from_secs(60))
        .ok();
    assert_eq!(o.stdout.trim(), "OK", "{}", o.describe());
    server.stop();
    // What the script left behind, checked in the backing file.
    let a: Vec<u8> = (0..256 * 1024u64)
        .map(|i| (((i * 131 + 1) >> 3) & 0xff) as u8)
        .collect();
    assert_file_filled(&disk, M, 192 * 1024, 0);
    assert_same_bytes(
        "pattern a tail",
        &read_at(&disk, M + 192 * 1024, 64 * 1024),
        &a[192 * 1024..],
    );
    let bpat: Vec<u8> = (0..64 * 1024u64)
        .map(|i| (((i * 131 + 2) >> 3) & 0xff) as u8)
        .collect();
    assert_same_bytes(
        "pattern b tail",
        &read_at(&disk, 4 * M + 32 * 1024, 32 * 1024),
        &bpat[32 * 1024..],
    );
    assert_file_filled(&disk, 48 * M - 512, 512, 0);
}
