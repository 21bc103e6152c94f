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
            // The daemon's own error says what is wrong and what to do (e.g. no metadata:
            // run create-md): put it on urbdadm's first line, not only in the log.
            let reason = std::fs::read(&log_path)
                .ok()
                .and_then(|bytes| {
                    let start = usize::try_from(log_start).unwrap_or(0).min(bytes.len());
                    startup_error(&String::from_utf8_lossy(&bytes[start..]), resource)
                })
                .map(|r| format!(": {r}"))
                .unwrap_or_default();
            return Err(failure(format!(
                "the urbd daemon of {resource} exited ({exit}) during start-up{reason}; see {}",
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

/// The reason a daemon gave for exiting during start-up, from its log output: the last
/// `Error: ...` report (the top-level error and its causes on one line), else the last
/// `ERROR` log line's message. `<res>` in a hint becomes the resource name.
fn startup_error(log: &str, resource: &str) -> Option<String> {
    let lines: Vec<&str> = log.lines().collect();
    let reason = if let Some(at) = lines.iter().rposition(|l| l.starts_with("Error: ")) {
        let mut parts = vec![lines[at].trim_start_matches("Error: ").trim().to_string()];
        let mut rest = lines[at + 1..].iter().map(|l| l.trim());
        if rest.by_ref().find(|l| !l.is_empty()) == Some("Caused by:") {
            for cause in rest.take_while(|l| !l.is_empty()) {
                // anyhow numbers the causes ("0: ...") when there is more than one.
                let cause = match cause.split_once(": ") {
                    Some((n, text)) if n.parse::<u32>().is_ok() => text,
                    _ => cause,
                };
                parts.push(cause.to_string());
            }
        }
        parts.retain(|p| !p.is_empty());
        parts.join(": ")
    } else {
        let line = lines.iter().rev().find(|l| l.contains(" ERROR "))?;
        let message = line.split_once(" ERROR ")?.1.trim();
        // Drop the tracing target ("urbd::daemon: ").
        match message.split_once(": ") {
            Some((target, text)) if !target.contains(' ') => text.to_string(),
            _ => message.to_string(),
        }
    };
    (!reason.is_empty()).then(|| reason.replace("<res>", resource))
}

#[cfg(test)]
mod tests {
    use super::startup_error;

    #[test]
    fn the_daemons_error_report_becomes_one_line() {
        let log = "2026-11-23T17:00:00.000000Z  INFO urbd::peer: something\n\
                   Error: resource r0: cannot attach /dev/vdb\n\
                   \n\
                   Caused by:\n    \
                   no urbd metadata on /dev/vdb: run `urbdadm create-md <res>`\n";
        assert_eq!(
            startup_error(log, "r0").as_deref(),
            Some(
                "resource r0: cannot attach /dev/vdb: no urbd metadata on /dev/vdb: \
                 run `urbdadm create-md r0`"
            )
        );
        let numbered = "Error: outer\n\nCaused by:\n    0: middle\n    1: inner\n";
        assert_eq!(
            startup_error(numbered, "r0").as_deref(),
            Some("outer: middle: inner")
        );
        let plain = "Error: cannot listen for NBD clients on 127.0.0.1:1\n";
        assert_eq!(
            startup_error(plain, "r0").as_deref(),
            Some("cannot listen for NBD clients on 127.0.0.1:1")
        );
        let traced = "2026-11-23T17:00:00.000000Z ERROR urbd::daemon: the disk is gone\n";
        assert_eq!(
            startup_error(traced, "r0").as_deref(),
            Some("the disk is gone")
        );
        assert_eq!(startup_error("2026 INFO fine\n", "r0"), None);
        assert_eq!(startup_error("", "r0"), None);
    }
}
