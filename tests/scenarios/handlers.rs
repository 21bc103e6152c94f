//! `[handlers]` (PROTOCOL.md §7.4, OPERATIONS.md): the split-brain handler runs on BOTH nodes
//! when a split brain is detected, and the before/after-resync-target handlers run on the
//! victim around its resync, each with the resource in its environment.

use std::path::Path;
use std::time::Duration;

use urbd_tests::nbdraw::RawClient;
use urbd_tests::pair::{peer_of, Alpha, Beta, Node, Pair, RES};

fn wait_for_line(file: &Path, needle: &str, what: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if text.lines().any(|l| l == needle) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: no line {needle:?} in {} within 20 s; it has:\n{text}",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn write_block(pair: &Pair, node: Node, offset: u64, byte: u8) {
    let mut c = RawClient::connect_go(&pair.nbd_addr(node), RES);
    c.write(1, offset, &vec![byte; 4096])
        .unwrap_or_else(|e| panic!("NBD write on {node}: error {e}"));
    c.disconnect();
}

#[test]
fn split_brain_and_resync_handlers_run_with_their_environment() {
    let mut pair = Pair::new("C", 16);
    let log = pair.dir().join("handlers.log");
    let line = format!(
        "echo \"$URBD_HANDLER $URBD_RESOURCE $URBD_NODE $URBD_PEER\" >> {}",
        log.display()
    );
    pair.set_extra_config(&format!(
        "[handlers]\nsplit-brain = '{line}'\nbefore-resync-target = '{line}'\nafter-resync-target = '{line}'\n"
    ));
    pair.initial_sync();
    // The initial sync made beta a SyncTarget: both resync-target handlers ran there.
    wait_for_line(
        &log,
        &format!("before-resync-target {RES} beta alpha"),
        "initial sync",
    );
    wait_for_line(
        &log,
        &format!("after-resync-target {RES} beta alpha"),
        "initial sync",
    );

    // A split brain: both promoted while apart, both write.
    pair.adm_ok(Alpha, &["disconnect", RES]);
    pair.adm_ok(Beta, &["disconnect", RES]);
    pair.adm_ok(Beta, &["primary", RES]);
    write_block(&pair, Alpha, 0, 0xaa);
    write_block(&pair, Beta, 8192, 0xbb);
    pair.adm_ok(Alpha, &["connect", RES]);
    pair.adm_ok(Beta, &["connect", RES]);
    for node in Node::BOTH {
        pair.wait_status(node, "split brain", Duration::from_secs(20), |s| {
            peer_of(s).bool_at("split-brain")
        });
    }
    wait_for_line(
        &log,
        &format!("split-brain {RES} alpha beta"),
        "split brain on alpha",
    );
    wait_for_line(
        &log,
        &format!("split-brain {RES} beta alpha"),
        "split brain on beta",
    );

    // Recovery: beta discards its data, resyncs, and its resync-target handlers run again.
    pair.secondary(Beta);
    pair.adm_ok(Beta, &["connect", "--discard-my-data", RES]);
    pair.adm_ok(Alpha, &["connect", RES]);
    pair.wait_connect(Alpha, 30);
    pair.wait_sync(Beta, 60);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let after = text
        .lines()
        .filter(|l| *l == format!("after-resync-target {RES} beta alpha"))
        .count();
    assert!(after >= 1, "after-resync-target ran on beta:\n{text}");
    assert!(
        !text.contains(&format!("resync-target {RES} alpha")),
        "alpha was never a SyncTarget:\n{text}"
    );
    pair.down_both();
    pair.assert_data_identical();
}
