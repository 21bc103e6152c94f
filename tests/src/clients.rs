//! Wrappers around the third-party NBD clients used by several scenarios.

use std::time::Duration;

use crate::tools::{Cmd, Output};

/// `qemu-io -f raw URI -c CMD...`, asserting that every command succeeded
/// (exit status 0 and no "failed"/"error" in the output).
#[track_caller]
pub fn qemu_io(uri: &str, cmds: &[&str]) -> Output {
    qemu_io_opts(uri, &[], cmds)
}

/// [`qemu_io`] with extra qemu-io options (e.g. `-r` for read-only).
#[track_caller]
pub fn qemu_io_opts(uri: &str, opts: &[&str], cmds: &[&str]) -> Output {
    let mut c = Cmd::new("qemu-io").args(opts).args(["-f", "raw", uri]);
    for cmd in cmds {
        c = c.arg("-c").arg(cmd);
    }
    let o = c.timeout(Duration::from_secs(60)).output();
    let all = format!("{}{}", o.stdout, o.stderr).to_lowercase();
    assert!(
        o.status.success() && !all.contains("failed") && !all.contains("error"),
        "qemu-io reported a failure\n{}",
        o.describe()
    );
    o
}

/// Like [`qemu_io`] but the commands are expected to fail (non-zero exit).
#[track_caller]
pub fn qemu_io_fails(uri: &str, cmds: &[&str]) -> Output {
    let mut c = Cmd::new("qemu-io").args(["-f", "raw", uri]);
    for cmd in cmds {
        c = c.arg("-c").arg(cmd);
    }
    c.timeout(Duration::from_secs(60)).fails()
}

/// qemu-io cannot express sizes like "5M+512"; format a byte count.
pub fn b(n: u64) -> String {
    n.to_string()
}
