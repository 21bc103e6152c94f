//! `urbdadm` as a process: exit codes, error lines, rendering against a fake daemon.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use urbd::config::ResourceConfig;
use urbd::control::{
    self, Generation, NbdStatus, PeerStatus, Request, Response, ResyncProgress, Status,
};

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("urbdadm-it-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn urbdadm(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_urbdadm"))
        .env("URBD_CONFIG_DIR", dir.join("etc"))
        .env("URBD_RUN_DIR", dir.join("run"))
        .env("URBD_NODE", "alpha")
        .env_remove("URBD_BIN")
        .args(args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn status(peer: PeerStatus, disk: &str) -> Status {
    Status {
        resource: "r0".into(),
        node: "alpha".into(),
        role: "Secondary".into(),
        disk_state: disk.into(),
        size_bytes: 1 << 20,
        protocol: "C".into(),
        generation: Generation::from_uuids(4, 0, &[0, 0]),
        nbd: NbdStatus {
            address: None,
            clients: 0,
        },
        peers: vec![peer],
    }
}

fn established() -> PeerStatus {
    PeerStatus {
        connection_state: "Connected".into(),
        peer_role: "Secondary".into(),
        peer_disk_state: "UpToDate".into(),
        replication_state: "Established".into(),
        ..PeerStatus::disconnected("beta", "Connected")
    }
}

/// A fake daemon on `<dir>/run/r0.sock` answering every request with `answer`.
fn fake_daemon(dir: &Path, answer: impl Fn(&Request) -> Response + Send + Sync + 'static) {
    let listener = control::bind_socket(&dir.join("run"), "r0").unwrap();
    let answer = Arc::new(answer);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let stream = stream.unwrap();
            let answer = answer.clone();
            std::thread::spawn(move || {
                let mut writer = stream.try_clone().unwrap();
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { return };
                    let response = match Request::parse_line(&line) {
                        Ok(r) => answer(&r),
                        Err(e) => Response::error(e),
                    };
                    if writer.write_all(response.to_line().as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
}

#[test]
fn status_without_daemon_says_not_up() {
    let dir = temp_dir("notup");
    let o = urbdadm(&dir, &["status", "r0"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert_eq!(
        stderr(&o),
        format!(
            "urbdadm: resource r0 is not up on this node (no {}/run/r0.sock); run `urbdadm up r0`\n",
            dir.display()
        )
    );
    assert!(stdout(&o).is_empty());
    let o = urbdadm(&dir, &["primary", "r0"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("is not up on this node"));
    // down of a resource that is not up is fine.
    assert_eq!(urbdadm(&dir, &["down", "r0"]).status.code(), Some(0));
}

#[test]
fn usage_errors_exit_2() {
    let dir = temp_dir("usage");
    assert_eq!(urbdadm(&dir, &["frobnicate"]).status.code(), Some(2));
    assert_eq!(urbdadm(&dir, &["primary"]).status.code(), Some(2));
    assert_eq!(urbdadm(&dir, &["status", "a/b"]).status.code(), Some(2));
}

#[test]
fn config_errors_are_one_line() {
    let dir = temp_dir("config");
    let o = urbdadm(&dir, &["up", "r0"]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(
        e.starts_with(&format!(
            "urbdadm: {}/etc/r0.toml: no such file",
            dir.display()
        )),
        "{e}"
    );

    std::fs::create_dir_all(dir.join("etc")).unwrap();
    let good = ResourceConfig::example("r0", &dir);
    std::fs::write(
        dir.join("etc/r0.toml"),
        good.replace("ping-interval-ms", "pnig-interval-ms"),
    )
    .unwrap();
    let o = urbdadm(&dir, &["up", "r0"]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(e.contains("/etc/r0.toml:"), "{e}");
    assert!(
        e.contains("unknown key \"pnig-interval-ms\" in [net]; did you mean \"ping-interval-ms\"?"),
        "{e}"
    );

    std::fs::write(dir.join("etc/r0.toml"), &good).unwrap();
    let o = urbdadm(&dir, &["--node", "gamma", "up", "r0"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("no [[node]] is named \"gamma\""),
        "{}",
        stderr(&o)
    );
}

#[test]
fn example_config_create_md_dump_md() {
    let dir = temp_dir("md");
    let o = urbdadm(
        &dir,
        &["example-config", "r0", "--dir", dir.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    std::fs::write(dir.join("etc/r0.toml"), stdout(&o)).unwrap();

    let o = urbdadm(&dir, &["create-md", "r0"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("cannot open disk"), "{}", stderr(&o));
    assert!(stderr(&o).contains("truncate -s 1G"), "{}", stderr(&o));

    let img = dir.join("r0-alpha.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let o = urbdadm(&dir, &["create-md", "r0"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).starts_with("r0: metadata created on"),
        "{}",
        stdout(&o)
    );

    let o = urbdadm(&dir, &["create-md", "r0"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
    assert_eq!(
        urbdadm(&dir, &["create-md", "r0", "--force"]).status.code(),
        Some(0)
    );

    let o = urbdadm(&dir, &["dump-md", "r0"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let dump = stdout(&o);
    assert!(dump.contains("current-uuid: 0x0000000000000004"), "{dump}");
    assert!(dump.contains("node-name: alpha"), "{dump}");
    assert!(dump.contains("peer-name: beta"), "{dump}");
}

#[test]
fn up_reports_daemon_failure_with_log_tail() {
    let dir = temp_dir("up");
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    std::fs::write(dir.join("etc/r0.toml"), ResourceConfig::example("r0", &dir)).unwrap();
    let script = dir.join("fake-urbd");
    std::fs::write(
        &script,
        "#!/bin/sh\necho \"args: $*\"\necho 'boom: cannot attach' >&2\nexit 7\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_urbdadm"))
        .env("URBD_CONFIG_DIR", dir.join("etc"))
        .env("URBD_RUN_DIR", dir.join("run"))
        .env("URBD_BIN", &script)
        .args(["--node", "beta", "up", "r0"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.starts_with("urbdadm: the urbd daemon of r0 exited"),
        "{e}"
    );
    assert!(e.contains("boom: cannot attach"), "{e}");
    let expected_args = format!(
        "args: run --config-dir {0}/etc --node beta --run-dir {0}/run r0",
        dir.display()
    );
    assert!(e.contains(&expected_args), "{e}");
    let log = std::fs::read_to_string(dir.join("run/r0.log")).unwrap();
    assert!(log.contains("boom"), "{log}");
}

#[test]
fn commands_against_a_fake_daemon() {
    let dir = temp_dir("fake");
    fake_daemon(&dir, |r| {
        match r {
        Request::Status => Response::with_status(status(
            PeerStatus::disconnected("beta", "Connecting"),
            "UpToDate",
        )),
        Request::Primary { force: false } => Response::error(
            "cannot become Primary: the local disk is Inconsistent; use `urbdadm primary --force r0` to start the initial sync",
        ),
        _ => Response::ok(),
    }
    });
    let o = urbdadm(&dir, &["status", "r0"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert_eq!(
        stdout(&o),
        "r0 role:Secondary\n  disk:UpToDate\n  beta connection:Connecting\n"
    );

    let o = urbdadm(&dir, &["status", "r0", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["resource"], "r0");
    assert_eq!(v["disk-state"], "UpToDate");
    assert_eq!(v["peers"][0]["connection-state"], "Connecting");

    let o = urbdadm(&dir, &["primary", "r0"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "urbdadm: r0: cannot become Primary: the local disk is Inconsistent; use `urbdadm primary --force r0` to start the initial sync\n"
    );
    assert_eq!(
        urbdadm(&dir, &["primary", "--force", "r0"]).status.code(),
        Some(0)
    );
    for cmd in [
        "disconnect",
        "invalidate",
        "invalidate-remote",
        "pause-sync",
        "resume-sync",
    ] {
        assert_eq!(urbdadm(&dir, &[cmd, "r0"]).status.code(), Some(0), "{cmd}");
    }
    assert_eq!(
        urbdadm(&dir, &["verify", "r0", "--start", "4K"])
            .status
            .code(),
        Some(0)
    );

    let o = urbdadm(&dir, &["wait-connect", "r0", "--timeout-s", "1"]);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    assert!(
        stderr(&o).starts_with("urbdadm: timed out after 1 s waiting for r0 to connect (r0 beta connection:Connecting)"),
        "{}",
        stderr(&o)
    );
    let o = urbdadm(&dir, &["wait-sync", "r0", "--timeout-s", "1"]);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    assert!(
        stdout(&o).contains("r0 beta connection:Connecting"),
        "{}",
        stdout(&o)
    );

    // status of all resources: r0 is up, r1 is not (skipped).
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    std::fs::write(dir.join("etc/r0.toml"), "").unwrap();
    std::fs::write(dir.join("etc/r1.toml"), "").unwrap();
    let o = urbdadm(&dir, &["status"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert_eq!(
        stdout(&o),
        "r0 role:Secondary\n  disk:UpToDate\n  beta connection:Connecting\n"
    );
    let o = urbdadm(&dir, &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["resource"], "r0");
}

#[test]
fn wait_sync_done_and_standalone() {
    let dir = temp_dir("sync");
    let n = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let calls = n.clone();
    fake_daemon(&dir, move |_| {
        let i = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let peer = match i {
            0 => PeerStatus::disconnected("beta", "Connecting"),
            1 | 2 => PeerStatus {
                replication_state: "SyncTarget".into(),
                out_of_sync_bytes: 1000,
                resync: Some(ResyncProgress {
                    done_percent: 50.0,
                    rate_bytes_per_s: 1 << 20,
                    eta_s: Some(1),
                    sent_bytes: 0,
                    in_sync_bytes: 0,
                }),
                ..established()
            },
            _ => established(),
        };
        let disk = if i < 3 { "Inconsistent" } else { "UpToDate" };
        Response::with_status(status(peer, disk))
    });
    let o = urbdadm(&dir, &["wait-sync", "r0", "--timeout-s", "20"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert_eq!(
        stdout(&o),
        "r0 beta connection:Connecting\n\
         r0 beta replication:SyncTarget disk:Inconsistent peer-disk:UpToDate done:50.00 rate:1.0MiB/s eta:0:01\n\
         r0 beta replication:Established disk:UpToDate peer-disk:UpToDate\n"
    );
}

#[test]
fn wait_connect_fails_fast_when_standalone() {
    let dir = temp_dir("standalone");
    fake_daemon(&dir, |_| {
        Response::with_status(status(
            PeerStatus::disconnected("beta", "StandAlone"),
            "UpToDate",
        ))
    });
    let o = urbdadm(&dir, &["wait-connect", "r0"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert_eq!(
        stderr(&o),
        "urbdadm: r0 is StandAlone (not trying to connect to beta); run `urbdadm connect r0`\n"
    );
}
