//! `wait-connect` and `wait-sync`: poll the daemon's status until a condition holds.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use super::{out, render, AdmError, Globals};
use crate::control::{ControlError, Status};

const POLL: Duration = Duration::from_millis(200);
/// Plain progress lines (not a terminal) at most this often, unless the state changes.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// Why waiting cannot succeed without an operator (StandAlone / split brain).
fn hopeless(status: &Status) -> Option<String> {
    let peer = status
        .peers
        .iter()
        .find(|p| p.split_brain || p.connection_state == "StandAlone")?;
    let r = &status.resource;
    Some(if peer.split_brain {
        format!(
            "{r}: split brain with {}; choose the node whose changes are discarded and run \
             `urbdadm connect --discard-my-data {r}` there, then `urbdadm connect {r}` on the \
             other",
            peer.node
        )
    } else {
        format!(
            "{r} is StandAlone (not trying to connect to {}); run `urbdadm connect {r}`",
            peer.node
        )
    })
}

/// Polls until `done(status)`; `tick` sees every status. Timeout → exit code 3.
fn poll_until(
    g: &Globals,
    resource: &str,
    timeout: Option<Duration>,
    what: &str,
    done: impl Fn(&Status) -> bool,
    mut tick: impl FnMut(&Status) -> Result<(), AdmError>,
) -> Result<Status, AdmError> {
    let start = Instant::now();
    let mut client = g.connect(resource)?;
    loop {
        let status = match client.status() {
            Ok(s) => s,
            Err(ControlError::Closed { .. }) => {
                return Err(AdmError::failed(format!(
                    "the urbd daemon of {resource} went away while waiting {what}"
                )))
            }
            Err(e) => return Err(e.into()),
        };
        tick(&status)?;
        if done(&status) {
            return Ok(status);
        }
        if let Some(why) = hopeless(&status) {
            return Err(AdmError::failed(why));
        }
        if let Some(t) = timeout {
            if start.elapsed() >= t {
                let state = render::render_sync_lines(&status);
                return Err(AdmError::timeout(format!(
                    "timed out after {} s waiting {what} ({})",
                    t.as_secs(),
                    state.trim_end().replace('\n', "; ")
                )));
            }
        }
        std::thread::sleep(POLL);
    }
}

pub(super) fn wait_connect(
    g: &Globals,
    resource: &str,
    timeout: Option<Duration>,
) -> Result<(), AdmError> {
    poll_until(
        g,
        resource,
        timeout,
        &format!("for {resource} to connect"),
        Status::all_connected,
        |_| Ok(()),
    )
    .map(|_| ())
}

pub(super) fn wait_sync(
    g: &Globals,
    resource: &str,
    timeout: Option<Duration>,
) -> Result<(), AdmError> {
    let tty = std::io::stdout().is_terminal();
    let width = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(80usize);
    let mut last_plain: Option<(Instant, String)> = None;
    let mut drew = false;
    let result = poll_until(
        g,
        resource,
        timeout,
        &format!("for {resource} to be in sync"),
        Status::all_in_sync,
        |status| {
            if tty {
                let line = render::render_progress_bar(status, width.saturating_sub(1));
                drew = true;
                out(&format!("\r{line:<w$}", w = width.saturating_sub(1)))
            } else {
                let lines = render::render_sync_lines(status);
                // The state without the numbers that change every poll.
                let key: String = lines
                    .split_whitespace()
                    .filter(|w| {
                        !w.starts_with("done:") && !w.starts_with("rate:") && !w.starts_with("eta:")
                    })
                    .collect();
                let due = match &last_plain {
                    None => true,
                    Some((at, k)) => *k != key || at.elapsed() >= PLAIN_EVERY,
                };
                if due && !status.all_in_sync() {
                    last_plain = Some((Instant::now(), key));
                    out(&lines)?;
                }
                Ok(())
            }
        },
    );
    if drew {
        let _ = std::io::stdout().write_all(b"\n");
    }
    let status = result?;
    out(&render::render_sync_lines(&status))
}
