//! Process lifecycle of `urbd serve`: ready line, port 0, signals with
//! clients attached, refusing a bad disk, data surviving a restart.

use std::time::Duration;

use urbd_tests::clients::qemu_io;
use urbd_tests::nbdraw::RawClient;
use urbd_tests::server::{urbd_bin, Addr};
use urbd_tests::util::{assert_file_filled, assert_same_bytes};
use urbd_tests::{make_sparse_disk, require_tool, Cmd, Listen, Prng, Server, TempDir, MIB};

fn reference_mode() -> bool {
    std::env::var("URBD_TEST_SERVER").is_ok_and(|v| v == "qemu-nbd")
}

/// SIGTERM / SIGINT stop the server even with clients attached (one in
/// transmission with I/O done, one stuck in the handshake), and the data
/// written and acknowledged before is in the file.
fn stop_with_clients(t: &str, signal: i32) {
    let dir = TempDir::new(t);
    let disk = dir.join("disk.img");
    make_sparse_disk(&disk, 8);
    let mut server = Server::start(&disk, &[]);
    let mut c = RawClient::connect_go(server.addr(), server.export());
    let data = Prng::new(5).bytes(64 * 1024);
    c.roundtrip(1, 2 * MIB, &data);
    // flush: durable before the signal
    c.send_request(0, urbd_tests::nbdraw::CMD_FLUSH, 9, 0, 0, &[])
        .unwrap();
    assert_eq!(c.read_simple_reply().unwrap().error, 0, "flush");
    let _stuck = RawClient::connect(server.addr());
    server.stop_with(signal);
    assert!(
        server.extra_stdout().is_empty(),
        "urbd printed more than the ready line: {:?}",
        server.extra_stdout()
    );
    // The attached client sees its connection end.
    assert!(
        c.closed_by_server_within(Duration::from_secs(5)),
        "client connection still open after the server exited"
    );
    assert_same_bytes(
        "data after stop",
        &urbd_tests::read_at(&disk, 2 * MIB, 64 * 1024),
        &data,
    );
    assert_file_filled(&disk, 0, 2 * MIB as usize, 0);
}

#[test]
fn sigterm_with_clients_attached() {
    stop_with_clients("sigterm_with_clients_attached", libc::SIGTERM);
}

#[test]
fn sigint_with_clients_attached() {
    stop_with_clients("sigint_with_clients_attached", libc::SIGINT);
}

#[test]
fn port_zero_gives_distinct_ports_and_restart_keeps_data() {
    let t = "port_zero_gives_distinct_ports_and_restart_keeps_data";
    if !require_tool(t, "qemu-io") {
        return;
    }
    let dir = TempDir::new(t);
    let d1 = dir.join("one.img");
    let d2 = dir.join("two.img");
    make_sparse_disk(&d1, 4);
    make_sparse_disk(&d2, 4);
    let mut s1 = Server::start(&d1, &[]);
    let mut s2 = Server::start(&d2, &[]);
    let (Addr::Tcp(a1), Addr::Tcp(a2)) = (s1.addr().clone(), s2.addr().clone()) else {
        panic!("expected TCP addresses")
    };
    assert_ne!(a1.port(), a2.port(), "two servers on the same port");
    // Each serves its own disk.
    qemu_io(s1.uri(), &["write -P 0x01 0 64k"]);
    qemu_io(s2.uri(), &["write -P 0x02 0 64k"]);
    qemu_io(s1.uri(), &["read -P 0x01 0 64k"]);
    qemu_io(s2.uri(), &["read -P 0x02 0 64k"]);
    s1.stop();
    s2.stop();
    // Restart on the same disk: data is there, over a unix socket too.
    let mut s1 = Server::start_with(&d1, Listen::Unix, &[]);
    qemu_io(s1.uri(), &["read -P 0x01 0 64k", "read -P 0 64k 64k"]);
    s1.stop();
}

#[test]
fn refuses_missing_disk_and_bad_arguments() {
    let t = "refuses_missing_disk_and_bad_arguments";
    if reference_mode() {
        println!("SKIPPED: {t}: urbd-only (reference mode)");
        return;
    }
    let dir = TempDir::new(t);
    let bin = urbd_bin();
    let bin = bin.to_str().unwrap();
    let missing = dir.join("no-such.img");
    let o = Cmd::new(bin)
        .args([
            "serve",
            "--disk",
            missing.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .timeout(Duration::from_secs(20))
        .fails();
    assert!(
        !o.stdout.contains("serving"),
        "printed a ready line:\n{}",
        o.describe()
    );
    assert!(!o.stderr.is_empty(), "no error message:\n{}", o.describe());

    let disk = dir.join("disk.img");
    make_sparse_disk(&disk, 1);
    let disk = disk.to_str().unwrap();
    for bad in [
        &["--listen", "not-an-address"][..],
        &["--listen", "127.0.0.1:0", "--io-align-bytes", "1000"],
    ] {
        let o = Cmd::new(bin)
            .args(["serve", "--disk", disk])
            .args(bad)
            .timeout(Duration::from_secs(20))
            .fails();
        assert!(
            !o.stdout.contains("serving"),
            "printed a ready line:\n{}",
            o.describe()
        );
    }
}
