//! External tools: presence checks and bounded-time execution.

use std::ffi::OsStr;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Default bound for one external command.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

fn which(tool: &str) -> bool {
    if tool.contains('/') {
        return Path::new(tool).exists();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].iter().map(Into::into))
        .any(|d| d.join(tool).is_file())
}

/// Debian package that provides `tool` (for the skip message).
fn package_of(tool: &str) -> &'static str {
    match tool {
        "qemu-io" | "qemu-img" | "qemu-nbd" => "qemu-utils",
        "nbdinfo" | "nbdcopy" | "nbdfuse" => "libnbd-bin",
        "nbdkit" => "nbdkit",
        "fio" => "fio",
        "mkfs.ext4" | "fsck.ext4" => "e2fsprogs",
        "losetup" | "mount" | "umount" => "mount",
        "fusermount3" => "fuse3",
        "/usr/bin/python3" => "python3-libnbd",
        _ => "?",
    }
}

/// Whether `tool` is installed; if not, print a SKIPPED line (the caller
/// returns early).
pub fn require_tool(test: &str, tool: &str) -> bool {
    if which(tool) {
        return true;
    }
    println!(
        "SKIPPED: {test}: {tool} not installed (apt-get install {})",
        package_of(tool)
    );
    false
}

/// Whether we may do root-only things (loop devices, mounts, FUSE).
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        println!("SKIPPED: {test}: needs root (loop devices and mount)");
        return false;
    }
    if !Path::new("/dev/fuse").exists() {
        println!("SKIPPED: {test}: /dev/fuse is missing (modprobe fuse)");
        return false;
    }
    if !Path::new("/dev/loop-control").exists() {
        println!("SKIPPED: {test}: /dev/loop-control is missing (modprobe loop)");
        return false;
    }
    true
}

/// Result of a finished command.
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub cmdline: String,
}

impl Output {
    pub fn describe(&self) -> String {
        format!(
            "command: {}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmdline,
            self.status,
            tail(&self.stdout, 8000),
            tail(&self.stderr, 8000)
        )
    }
}

fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// A command line with a time limit.
pub struct Cmd {
    cmd: Command,
    cmdline: String,
    timeout: Duration,
}

impl Cmd {
    pub fn new(prog: &str) -> Cmd {
        let mut cmd = Command::new(prog);
        cmd.stdin(Stdio::null());
        Cmd {
            cmd,
            cmdline: prog.to_string(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    pub fn arg<S: AsRef<OsStr>>(mut self, a: S) -> Cmd {
        let a = a.as_ref();
        self.cmdline.push(' ');
        let s = a.to_string_lossy();
        if s.is_empty() || s.contains([' ', '\'', '"', '?', '*']) {
            self.cmdline.push_str(&format!("'{s}'"));
        } else {
            self.cmdline.push_str(&s);
        }
        self.cmd.arg(a);
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        for a in args {
            self = self.arg(a);
        }
        self
    }

    pub fn timeout(mut self, t: Duration) -> Cmd {
        self.timeout = t;
        self
    }

    pub fn current_dir(mut self, dir: &Path) -> Cmd {
        self.cmd.current_dir(dir);
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Cmd {
        self.cmd.env(k, v);
        self
    }

    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    /// Run to completion (or kill it at the time limit and panic).
    pub fn output(mut self) -> Output {
        self.cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = self
            .cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn `{}`: {e}", self.cmdline));
        let out = drain(child.stdout.take());
        let err = drain(child.stderr.take());
        let status = wait_timeout(&mut child, self.timeout);
        let Some(status) = status else {
            let _ = child.kill();
            let _ = child.wait();
            let stdout = out.join().unwrap_or_default();
            let stderr = err.join().unwrap_or_default();
            panic!(
                "command timed out after {:?}: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                self.timeout,
                self.cmdline,
                tail(&stdout, 8000),
                tail(&stderr, 8000)
            );
        };
        Output {
            status,
            stdout: out.join().unwrap_or_default(),
            stderr: err.join().unwrap_or_default(),
            cmdline: self.cmdline,
        }
    }

    /// Run and assert exit status 0; the panic message carries the output.
    #[track_caller]
    pub fn ok(self) -> Output {
        let o = self.output();
        assert!(o.status.success(), "command failed\n{}", o.describe());
        o
    }

    /// Run and assert a non-zero exit status.
    #[track_caller]
    pub fn fails(self) -> Output {
        let o = self.output();
        assert!(
            !o.status.success(),
            "command unexpectedly succeeded\n{}",
            o.describe()
        );
        o
    }

    /// Start in the background (stdout/stderr to the given file).
    pub fn spawn_logged(mut self, log: &Path) -> Child {
        let f = std::fs::File::create(log).unwrap();
        let f2 = f.try_clone().unwrap();
        self.cmd.stdout(f).stderr(f2);
        self.cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn `{}`: {e}", self.cmdline))
    }
}

fn drain<R: Read + Send + 'static>(r: Option<R>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut s = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut s);
        }
        String::from_utf8_lossy(&s).into_owned()
    })
}

/// Wait for `child` up to `timeout`; None if it is still running.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) => {}
            Err(e) => panic!("wait: {e}"),
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Shorthand: run `prog args...` and assert success.
#[track_caller]
pub fn run_ok(prog: &str, args: &[&str]) -> Output {
    Cmd::new(prog).args(args).ok()
}

/// Shorthand: run `prog args...` and return its output whatever the status.
pub fn run_output(prog: &str, args: &[&str]) -> Output {
    Cmd::new(prog).args(args).output()
}

/// Poll `cond` until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(25));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn require_tool_and_cmd() {
        assert!(require_tool("self-test", "sh"));
        assert!(!require_tool("self-test", "no-such-tool-xyz"));
        let o = Cmd::new("sh").args(["-c", "echo out; echo err >&2"]).ok();
        assert_eq!((o.stdout.as_str(), o.stderr.as_str()), ("out\n", "err\n"));
        Cmd::new("false").fails();
        let r = std::panic::catch_unwind(|| {
            Cmd::new("sleep")
                .arg("5")
                .timeout(Duration::from_millis(200))
                .output()
        });
        assert!(r.is_err(), "timeout did not fire");
    }
}
