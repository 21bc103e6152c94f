//! Harness for multi-process tests.
//!
//! The scenario tests (see `tests/scenarios/`) start the real `urbd serve`
//! binary ([`server::Server`]) and drive it with NBD clients that nobody on
//! the project wrote (qemu-io, qemu-img, nbdinfo, nbdcopy, fio, nbdfuse +
//! the kernel's ext4), plus a hand-rolled hostile client ([`nbdraw`]).
//! Replicated pairs (`urbd run` × 2, driven by `urbdadm`) are set up by
//! [`pair::Pair`] and exercised in `scenarios/replicated.rs`.
//!
//! Set `URBD_TEST_SERVER=qemu-nbd` to run the same scenarios against
//! `qemu-nbd` instead; that is how the tests themselves are validated
//! (urbd-specific assertions are then skipped, see [`server::Server::is_urbd`]).
//!
//! Running:
//!
//! ```text
//! cargo build --release -p urbd
//! cargo test -p urbd-tests                      # all scenarios
//! cargo test -p urbd-tests --test hostile_clients
//! URBD_TEST_SERVER=qemu-nbd cargo test -p urbd-tests   # validate the tests
//! ```
//!
//! Environment: `URBD_BIN` (server binary; default `target/release/urbd`,
//! then `target/debug/urbd`), `URBD_TEST_TMPDIR` (where scratch dirs go;
//! default the system temp dir, must support O_DIRECT), `URBD_TEST_KEEP=1`
//! (keep scratch dirs; they are always kept when a test fails), `RUST_LOG`
//! (passed to the server; its stderr is printed when a test fails).
//! Missing tools make a test print `SKIPPED: ...` and pass; the filesystem
//! scenario needs root, /dev/fuse and loop devices.

pub mod checker;
pub mod clients;
pub mod json;
pub mod nbdraw;
pub mod pair;
pub mod proxy;
pub mod report;
pub mod server;
pub mod tools;
pub mod util;

pub use json::Json;
pub use server::{Listen, Server};
pub use tools::{require_root, require_tool, run_ok, run_output, Cmd};
pub use util::{make_sparse_disk, read_at, Prng, TempDir, MIB};
