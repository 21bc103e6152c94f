//! `urbdadm up`: start the resource's daemon detached and wait until it answers.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{log_tail, AdmError, Globals};
use crate::control::{self, Client};

/// How long `up` waits for the daemon to answer `status`.
const UP_TIMEOUT: Duration = Duration::from_secs(10);
/// Log lines shown when `up` fails.
const LOG_TAIL_LINES: usize = 20;

/// The daemon binary: `$URBD_BIN`, else `urbd` next to this executable, else `urbd` in PATH.
pub fn daemon_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("URBD_BIN").filter(|b| !b.is_empty()) {
        return PathBuf::from(bin);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("urbd")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("urbd"))
}

pub(super) fn up(g: &Globals, resource: &str) -> Result<(), AdmError> {
    let cfg = g.load(resource)?;
    for warning in cfg.warnings() {
        eprintln!("urbdadm: warning: {warning}");
    }
    cfg.local_and_peer(&g.node)?;
    if let Ok(mut c) = Client::connect(&g.run_dir, resource) {
        if c.status().is_ok() {
            eprintln!("urbdadm: {resource} is already up");
            return Ok(());
        }
    }
    std::fs::create_dir_all(&g.run_dir).map_err(|e| {
        AdmError::failed(format!(
            "cannot create --run-dir {}: {e}; create it or pass another --run-dir",
            g.run_dir.display()
        ))
    })?;
    let log_path = control::log_path(&g.run_dir, resource);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| {
            AdmError::failed(format!("cannot open the log {}: {e}", log_path.display()))
        })?;
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    let log_err = log
        .try_clone()
        .map_err(|e| AdmError::failed(format!("cannot open the log: {e}")))?;
    let bin = daemon_binary();
    let mut cmd = Command::new(&bin);
    cmd.arg("run")
        .arg("--config-dir")
        .arg(&g.config_dir)
        .arg("--node")
        .arg(&g.node)
        .arg("--run-dir")
        .arg(&g.run_dir)
        .arg(resource)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err));
    // SAFETY: the closure runs in the child between fork and exec and only calls setsid(2),
    // which is async-signal-safe; it touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| {
        AdmError::failed(format!(
            "cannot start the daemon {}: {e}; install urbd next to urbdadm or set URBD_BIN",
            bin.display()
        ))
    })?;
    let failure = |message: String| AdmError {
        code: super::EXIT_FAILED,
        message,
        detail: log_tail(&log_path, log_start, LOG_TAIL_LINES),
    };
    let deadline = Instant::now() + UP_TIMEOUT;
    loop {
        if let Ok(Some(exit)) = child.try_wait() {
            return Err(failure(format!(
                "the urbd daemon of {resource} exited ({exit}) during start-up; see {}",
                log_path.display()
            )));
        }
        if let Ok(mut c) = Client::connect(&g.run_dir, resource) {
            c.set_timeout(Duration::from_secs(2));
            if c.status().is_ok() {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            return Err(failure(format!(
                "the urbd daemon of {resource} (pid {}) did not answer on {} within {} s; see {}",
                child.id(),
                control::socket_path(&g.run_dir, resource).display(),
                UP_TIMEOUT.as_secs(),
                log_path.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
