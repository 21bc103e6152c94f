//! Pure text rendering for `urbdadm`: `status` in drbdadm's shape, and the `wait-sync`
//! progress line and bar.

use std::fmt::Write as _;

use crate::control::{PeerStatus, ResyncProgress, Status};

/// `urbdadm status RES` text, drbdadm's shape:
///
/// ```text
/// r0 role:Primary
///   disk:UpToDate
///   beta role:Secondary
///     replication:SyncSource peer-disk:Inconsistent done:45.20
/// ```
///
/// A peer that is not connected is one line, `  beta connection:Connecting`. ` done:NN.NN` is
/// appended during a resync, ` split-brain:yes` to the peer's last line when one was detected.
pub fn render_status(status: &Status) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{} role:{}", status.resource, status.role);
    let _ = writeln!(s, "  disk:{}", status.disk_state);
    for peer in &status.peers {
        render_peer(&mut s, peer);
    }
    s
}

fn render_peer(s: &mut String, peer: &PeerStatus) {
    let split_brain = if peer.split_brain {
        " split-brain:yes"
    } else {
        ""
    };
    if !peer.is_connected() {
        let _ = writeln!(
            s,
            "  {} connection:{}{split_brain}",
            peer.node, peer.connection_state
        );
        return;
    }
    let _ = writeln!(s, "  {} role:{}", peer.node, peer.peer_role);
    let verify = peer.verify.as_ref().filter(|v| v.running);
    let done = peer
        .resync
        .as_ref()
        .map(|r| format!(" done:{:.2}", r.done_percent))
        .or(verify.map(|v| {
            format!(
                " done:{:.2} verify-out-of-sync:{}",
                v.done_percent,
                format_bytes(v.out_of_sync_found_bytes)
            )
        }))
        .unwrap_or_default();
    let _ = writeln!(
        s,
        "    replication:{} peer-disk:{}{done}{split_brain}",
        peer.replication_state, peer.peer_disk_state
    );
}

/// `1.5 KiB`, `100.0 MiB`, …
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `0:07`, `1:02:03`; `?` when unknown.
pub fn format_eta(eta_s: Option<u64>) -> String {
    match eta_s {
        None => "?".to_string(),
        Some(s) if s >= 3600 => format!("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60),
        Some(s) => format!("{}:{:02}", s / 60, s % 60),
    }
}

fn rate_eta(r: &ResyncProgress) -> String {
    format!(
        "rate:{}/s eta:{}",
        format_bytes(r.rate_bytes_per_s).replace(' ', ""),
        format_eta(r.eta_s)
    )
}

/// One plain line per peer for `wait-sync` when stdout is not a terminal:
/// `r0 beta replication:SyncSource peer-disk:Inconsistent done:45.20 rate:100.0MiB/s eta:0:03`
/// or `r0 beta connection:Connecting`.
pub fn render_sync_lines(status: &Status) -> String {
    let mut s = String::new();
    for peer in &status.peers {
        let _ = write!(s, "{} {} ", status.resource, peer.node);
        if !peer.is_connected() {
            let _ = write!(s, "connection:{}", peer.connection_state);
        } else {
            let _ = write!(
                s,
                "replication:{} disk:{} peer-disk:{}",
                peer.replication_state, status.disk_state, peer.peer_disk_state
            );
            if let Some(r) = &peer.resync {
                let _ = write!(s, " done:{:.2} {}", r.done_percent, rate_eta(r));
            }
        }
        if peer.split_brain {
            s.push_str(" split-brain:yes");
        }
        s.push('\n');
    }
    s
}

/// The `wait-sync` progress bar (terminal), `width` columns at most, no newline:
/// `r0 beta SyncSource [#########...........]  45.20%  100.0 MiB/s  eta 0:03`.
/// Without a resync running: the state, e.g. `r0 beta connection:Connecting`.
pub fn render_progress_bar(status: &Status, width: usize) -> String {
    let Some(peer) = status.peers.first() else {
        return format!("{} (no peer)", status.resource);
    };
    let line = match (&peer.resync, peer.is_connected()) {
        (Some(r), true) => {
            let prefix = format!(
                "{} {} {} ",
                status.resource, peer.node, peer.replication_state
            );
            let suffix = format!(
                " {:6.2}%  {}/s  eta {}",
                r.done_percent,
                format_bytes(r.rate_bytes_per_s),
                format_eta(r.eta_s)
            );
            let bar_width = width
                .saturating_sub(prefix.chars().count() + suffix.chars().count() + 2)
                .clamp(10, 50);
            let filled = ((r.done_percent.clamp(0.0, 100.0) / 100.0) * bar_width as f64) as usize;
            format!(
                "{prefix}[{}{}]{suffix}",
                "#".repeat(filled),
                ".".repeat(bar_width - filled)
            )
        }
        (_, true) => format!(
            "{} {} replication:{} disk:{} peer-disk:{}",
            status.resource,
            peer.node,
            peer.replication_state,
            status.disk_state,
            peer.peer_disk_state
        ),
        (_, false) => format!(
            "{} {} connection:{}",
            status.resource, peer.node, peer.connection_state
        ),
    };
    line.chars().take(width.max(20)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{Generation, NbdStatus};

    fn status(peer: PeerStatus) -> Status {
        Status {
            resource: "r0".into(),
            node: "alpha".into(),
            role: "Primary".into(),
            disk_state: "UpToDate".into(),
            size_bytes: 1 << 30,
            protocol: "C".into(),
            generation: Generation::from_uuids(5, 0, &[0, 0]),
            nbd: NbdStatus {
                address: Some("127.0.0.1:10809".into()),
                clients: 0,
            },
            peers: vec![peer],
        }
    }

    fn connected(replication: &str, peer_disk: &str) -> PeerStatus {
        PeerStatus {
            connection_state: "Connected".into(),
            peer_role: "Secondary".into(),
            peer_disk_state: peer_disk.into(),
            replication_state: replication.into(),
            ..PeerStatus::disconnected("beta", "Connected")
        }
    }

    fn syncing() -> PeerStatus {
        PeerStatus {
            resync: Some(ResyncProgress {
                done_percent: 45.2,
                rate_bytes_per_s: 100 << 20,
                eta_s: Some(3),
                sent_bytes: 0,
                in_sync_bytes: 0,
            }),
            out_of_sync_bytes: 1 << 20,
            ..connected("SyncSource", "Inconsistent")
        }
    }

    #[test]
    fn established() {
        assert_eq!(
            render_status(&status(connected("Established", "UpToDate"))),
            "r0 role:Primary\n  disk:UpToDate\n  beta role:Secondary\n    replication:Established peer-disk:UpToDate\n"
        );
    }

    #[test]
    fn connecting() {
        let mut s = status(PeerStatus::disconnected("beta", "Connecting"));
        s.role = "Secondary".into();
        s.disk_state = "Consistent".into();
        assert_eq!(
            render_status(&s),
            "r0 role:Secondary\n  disk:Consistent\n  beta connection:Connecting\n"
        );
    }

    #[test]
    fn syncing_shows_done() {
        assert_eq!(
            render_status(&status(syncing())),
            "r0 role:Primary\n  disk:UpToDate\n  beta role:Secondary\n    replication:SyncSource peer-disk:Inconsistent done:45.20\n"
        );
    }

    #[test]
    fn split_brain() {
        let mut p = PeerStatus::disconnected("beta", "StandAlone");
        p.split_brain = true;
        assert_eq!(
            render_status(&status(p)),
            "r0 role:Primary\n  disk:UpToDate\n  beta connection:StandAlone split-brain:yes\n"
        );
        let mut p = connected("Established", "UpToDate");
        p.split_brain = true;
        assert!(render_status(&status(p))
            .ends_with("    replication:Established peer-disk:UpToDate split-brain:yes\n"));
    }

    #[test]
    fn no_peers() {
        let mut s = status(syncing());
        s.peers.clear();
        assert_eq!(render_status(&s), "r0 role:Primary\n  disk:UpToDate\n");
    }

    #[test]
    fn sizes_and_eta() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(1536), "1.5 KiB");
        assert_eq!(format_bytes(100 << 20), "100.0 MiB");
        assert_eq!(format_bytes(u64::MAX), "16384.0 PiB");
        assert_eq!(format_eta(Some(3)), "0:03");
        assert_eq!(format_eta(Some(83)), "1:23");
        assert_eq!(format_eta(Some(3723)), "1:02:03");
        assert_eq!(format_eta(None), "?");
    }

    #[test]
    fn sync_lines() {
        assert_eq!(
            render_sync_lines(&status(syncing())),
            "r0 beta replication:SyncSource disk:UpToDate peer-disk:Inconsistent done:45.20 rate:100.0MiB/s eta:0:03\n"
        );
        assert_eq!(
            render_sync_lines(&status(PeerStatus::disconnected("beta", "Connecting"))),
            "r0 beta connection:Connecting\n"
        );
    }

    #[test]
    fn progress_bar() {
        let line = render_progress_bar(&status(syncing()), 80);
        assert!(line.starts_with("r0 beta SyncSource ["), "{line}");
        assert!(line.ends_with("]  45.20%  100.0 MiB/s  eta 0:03"), "{line}");
        assert!(line.chars().count() <= 80, "{line}");
        let bar: String = line
            .chars()
            .skip_while(|c| *c != '[')
            .skip(1)
            .take_while(|c| *c != ']')
            .collect();
        let filled = bar.chars().filter(|c| *c == '#').count();
        assert_eq!(filled, (bar.len() as f64 * 0.452) as usize, "{line}");
        assert_eq!(
            render_progress_bar(&status(PeerStatus::disconnected("beta", "Connecting")), 80),
            "r0 beta connection:Connecting"
        );
        assert!(render_progress_bar(&status(syncing()), 5).chars().count() <= 20);
    }
}
