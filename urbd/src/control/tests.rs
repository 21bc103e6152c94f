use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use super::*;

fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap()
}

#[test]
fn request_json_shapes() {
    let cases: Vec<(Request, &str)> = vec![
        (Request::Status, r#"{"cmd":"status"}"#),
        (
            Request::Primary { force: true },
            r#"{"cmd":"primary","force":true}"#,
        ),
        (
            Request::Secondary { force: false },
            r#"{"cmd":"secondary","force":false}"#,
        ),
        (
            Request::Connect {
                discard_my_data: true,
            },
            r#"{"cmd":"connect","discard-my-data":true}"#,
        ),
        (Request::Disconnect, r#"{"cmd":"disconnect"}"#),
        (
            Request::NewCurrentUuid { clear_bitmap: true },
            r#"{"cmd":"new-current-uuid","clear-bitmap":true}"#,
        ),
        (Request::Down, r#"{"cmd":"down"}"#),
        (Request::Invalidate, r#"{"cmd":"invalidate"}"#),
        (Request::InvalidateRemote, r#"{"cmd":"invalidate-remote"}"#),
        (Request::PauseSync, r#"{"cmd":"pause-sync"}"#),
        (Request::ResumeSync, r#"{"cmd":"resume-sync"}"#),
        (
            Request::Verify {
                start_bytes: Some(4096),
                stop_bytes: None,
                repair: true,
            },
            r#"{"cmd":"verify","start-bytes":4096,"stop-bytes":null,"repair":true}"#,
        ),
        (Request::Events, r#"{"cmd":"events"}"#),
    ];
    for (request, golden) in cases {
        assert_eq!(json(&request), golden);
        assert_eq!(Request::parse_line(golden).unwrap(), request);
        assert_eq!(request.to_line(), format!("{golden}\n"));
        assert_eq!(
            request.cmd(),
            golden.split('"').nth(3).unwrap(),
            "cmd() matches the JSON tag"
        );
    }
}

#[test]
fn request_defaults_and_errors() {
    assert_eq!(
        Request::parse_line("{\"cmd\":\"primary\"}\n").unwrap(),
        Request::Primary { force: false }
    );
    assert_eq!(
        Request::parse_line(r#"{"cmd":"verify"}"#).unwrap(),
        Request::Verify {
            start_bytes: None,
            stop_bytes: None,
            repair: false
        }
    );
    let e = Request::parse_line(r#"{"cmd":"explode"}"#).unwrap_err();
    assert!(
        e.starts_with("bad request: unknown variant `explode`"),
        "{e}"
    );
    assert!(!e.contains('\n'));
    assert!(Request::parse_line("not json").is_err());
    assert!(Request::parse_line(&"x".repeat(MAX_LINE_BYTES + 1))
        .unwrap_err()
        .contains("longer than"));
}

fn sample_status() -> Status {
    Status {
        resource: "r0".into(),
        node: "alpha".into(),
        role: "Primary".into(),
        disk_state: "UpToDate".into(),
        size_bytes: 1 << 30,
        protocol: "C".into(),
        generation: Generation::from_uuids(0x1a2b_3c4d_5e6f_7081, 0, &[4, 0]),
        nbd: NbdStatus {
            address: Some("127.0.0.1:10809".into()),
            clients: 1,
        },
        peers: vec![PeerStatus {
            node: "beta".into(),
            connection_state: "Connected".into(),
            peer_role: "Secondary".into(),
            peer_disk_state: "Inconsistent".into(),
            replication_state: "SyncSource".into(),
            out_of_sync_bytes: 1 << 20,
            percent_in_sync: 99.9,
            resync: Some(ResyncProgress {
                done_percent: 45.2,
                rate_bytes_per_s: 104857600,
                eta_s: Some(3),
                sent_bytes: 0,
                in_sync_bytes: 0,
            }),
            split_brain: false,
            verify: None,
            last_resync: None,
        }],
    }
}

const SAMPLE_STATUS_JSON: &str = concat!(
    r#"{"resource":"r0","node":"alpha","role":"Primary","disk-state":"UpToDate","#,
    r#""size-bytes":1073741824,"protocol":"C","#,
    r#""generation":{"current":"0x1a2b3c4d5e6f7081","bitmap":"0x0000000000000000","#,
    r#""history":["0x0000000000000004","0x0000000000000000"]},"#,
    r#""nbd":{"address":"127.0.0.1:10809","clients":1},"#,
    r#""peers":[{"node":"beta","connection-state":"Connected","peer-role":"Secondary","#,
    r#""peer-disk-state":"Inconsistent","replication-state":"SyncSource","#,
    r#""out-of-sync-bytes":1048576,"percent-in-sync":99.9,"#,
    r#""resync":{"done-percent":45.2,"rate-bytes-per-s":104857600,"eta-s":3,"#,
    r#""sent-bytes":0,"in-sync-bytes":0},"#,
    r#""split-brain":false}]}"#
);

#[test]
fn status_json_shape() {
    let s = sample_status();
    assert_eq!(json(&s), SAMPLE_STATUS_JSON);
    let back: Status = serde_json::from_str(SAMPLE_STATUS_JSON).unwrap();
    assert_eq!(back, s);
    let mut idle = s.clone();
    idle.peers[0] = PeerStatus::disconnected("beta", "Connecting");
    idle.nbd.address = None;
    let j = json(&idle);
    assert!(j.contains(r#""nbd":{"address":null,"clients":1}"#), "{j}");
    assert!(j.contains(r#""resync":null,"split-brain":false"#), "{j}");
    assert!(
        j.contains(
            r#""peer-role":"Unknown","peer-disk-state":"DUnknown","replication-state":"Off""#
        ),
        "{j}"
    );
}

#[test]
fn status_predicates() {
    let mut s = sample_status();
    assert!(s.all_connected());
    assert!(!s.all_in_sync());
    s.peers[0].replication_state = "Established".into();
    s.peers[0].peer_disk_state = "UpToDate".into();
    s.peers[0].out_of_sync_bytes = 0;
    s.peers[0].resync = None;
    assert!(s.all_in_sync());
    s.disk_state = "Inconsistent".into();
    assert!(!s.all_in_sync());
    s.peers[0] = PeerStatus::disconnected("beta", "StandAlone");
    assert!(!s.all_connected());
}

#[test]
fn uuid_hex() {
    assert_eq!(format_uuid(4), "0x0000000000000004");
    assert_eq!(format_uuid(u64::MAX), "0xffffffffffffffff");
    assert_eq!(parse_uuid("0xFFFFFFFFFFFFFFFF"), Some(u64::MAX));
    assert_eq!(parse_uuid("0x4"), Some(4));
    assert_eq!(parse_uuid("4"), None);
    assert_eq!(parse_uuid("0x"), None);
    assert_eq!(parse_uuid("0x00000000000000001"), None);
}

#[test]
fn response_json_shapes() {
    assert_eq!(json(&Response::ok()), r#"{"ok":true}"#);
    assert_eq!(
        json(&Response::error("peer is Primary;\n run secondary there")),
        r#"{"ok":false,"error":"peer is Primary; run secondary there"}"#
    );
    assert_eq!(
        Response::with_status(sample_status()).to_line(),
        format!("{{\"ok\":true,\"status\":{SAMPLE_STATUS_JSON}}}\n")
    );
    let r: Response = serde_json::from_str(r#"{"ok":false,"error":"no"}"#).unwrap();
    assert_eq!(r.into_result(), Err("no".to_string()));
    let r: Response = serde_json::from_str(r#"{"ok":true}"#).unwrap();
    assert_eq!(r.into_result(), Ok(None));
}

#[test]
fn event_shapes() {
    let cases: Vec<(Event, &str, &str)> = vec![
        (
            Event::new(EventWhat::Change, EventObject::Resource, "r0").role("Primary"),
            "change resource name:r0 role:Primary",
            r#"{"what":"change","object":"resource","name":"r0","role":"Primary"}"#,
        ),
        (
            Event::new(EventWhat::Change, EventObject::PeerDevice, "r0")
                .peer_node("beta")
                .replication("SyncSource")
                .done(45.2),
            "change peer-device name:r0 peer-node:beta replication:SyncSource done:45.20",
            r#"{"what":"change","object":"peer-device","name":"r0","peer-node":"beta","replication":"SyncSource","done":45.2}"#,
        ),
        (
            Event::new(EventWhat::Exists, EventObject::Device, "r0")
                .disk("UpToDate")
                .size_bytes(1 << 30),
            "exists device name:r0 disk:UpToDate size-bytes:1073741824",
            r#"{"what":"exists","object":"device","name":"r0","disk":"UpToDate","size-bytes":1073741824}"#,
        ),
        (
            Event::new(EventWhat::Exists, EventObject::Connection, "r0")
                .peer_node("beta")
                .connection("Connected")
                .peer_role("Secondary"),
            "exists connection name:r0 peer-node:beta connection:Connected peer-role:Secondary",
            r#"{"what":"exists","object":"connection","name":"r0","peer-node":"beta","connection":"Connected","peer-role":"Secondary"}"#,
        ),
        (
            Event::new(EventWhat::Change, EventObject::PeerDevice, "r0")
                .peer_node("beta")
                .peer_disk("UpToDate")
                .out_of_sync_bytes(0)
                .split_brain(true),
            "change peer-device name:r0 peer-node:beta peer-disk:UpToDate out-of-sync-bytes:0 split-brain:yes",
            r#"{"what":"change","object":"peer-device","name":"r0","peer-node":"beta","peer-disk":"UpToDate","out-of-sync-bytes":0,"split-brain":true}"#,
        ),
        (
            Event::new(EventWhat::Response, EventObject::Helper, "r0")
                .peer_node("beta")
                .helper("split brain")
                .exit_code(3),
            "response helper name:r0 peer-node:beta helper:split_brain exit-code:3",
            r#"{"what":"response","object":"helper","name":"r0","peer-node":"beta","helper":"split brain","exit-code":3}"#,
        ),
        (
            Event::end_of_initial_state(),
            "exists -",
            r#"{"what":"exists","object":"-"}"#,
        ),
        (
            Event::new(EventWhat::Destroy, EventObject::Resource, "r0"),
            "destroy resource name:r0",
            r#"{"what":"destroy","object":"resource","name":"r0"}"#,
        ),
    ];
    for (event, text, golden) in cases {
        assert_eq!(event.to_text(), text);
        assert_eq!(json(&event), golden);
        assert_eq!(serde_json::from_str::<Event>(golden).unwrap(), event);
    }
}

#[test]
fn paths() {
    let run = PathBuf::from("/run/urbd");
    assert_eq!(socket_path(&run, "r0"), PathBuf::from("/run/urbd/r0.sock"));
    assert_eq!(log_path(&run, "r0"), PathBuf::from("/run/urbd/r0.log"));
}

#[test]
fn peer_uid_is_ours() {
    let (a, b) = UnixStream::pair().unwrap();
    // SAFETY: geteuid has no preconditions.
    assert_eq!(peer_uid(&a), Some(unsafe { libc::geteuid() }));
    assert!(peer_uid_allowed(&a));
    assert!(peer_uid_allowed(&b));
    // Not a socket: refused.
    let f = std::fs::File::open("/dev/null").unwrap();
    assert!(!peer_uid_allowed(&f));
}

fn temp_run_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("urbd-control-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A fake daemon answering `answers` in turn, one per request line, then closing.
fn fake_daemon(
    run_dir: &std::path::Path,
    answers: Vec<String>,
) -> std::thread::JoinHandle<Vec<String>> {
    let listener = bind_socket(run_dir, "r0").unwrap();
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        assert!(peer_uid_allowed(&stream));
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        let mut seen = Vec::new();
        for answer in answers {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap() == 0 {
                break;
            }
            seen.push(line);
            writer.write_all(answer.as_bytes()).unwrap();
        }
        seen
    })
}

#[test]
fn client_against_fake_daemon() {
    let dir = temp_run_dir("client");
    let e = Client::connect(&dir, "r0").err().unwrap();
    assert!(e.is_not_up());
    assert_eq!(
        e.to_string(),
        format!(
            "resource r0 is not up on this node (no {}/r0.sock); run `urbdadm up r0`",
            dir.display()
        )
    );

    let server = fake_daemon(
        &dir,
        vec![
            Response::with_status(sample_status()).to_line(),
            Response::error("cannot become Primary: the peer is Primary; demote beta first")
                .to_line(),
            Response::ok().to_line(),
        ],
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(socket_path(&dir, "r0"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let mut c = Client::connect(&dir, "r0").unwrap();
    assert_eq!(c.status().unwrap(), sample_status());
    let e = c.request(&Request::Primary { force: false }).unwrap_err();
    assert_eq!(
        e.to_string(),
        "cannot become Primary: the peer is Primary; demote beta first"
    );
    assert_eq!(c.call(&Request::Disconnect).unwrap(), Response::ok());
    let e = c.call(&Request::Status).unwrap_err();
    assert!(matches!(e, ControlError::Closed { .. }), "{e}");
    let seen = server.join().unwrap();
    assert_eq!(
        seen,
        vec![
            "{\"cmd\":\"status\"}\n",
            "{\"cmd\":\"primary\",\"force\":false}\n",
            "{\"cmd\":\"disconnect\"}\n"
        ]
    );

    // The listener is gone but the file stays: stale.
    let e = Client::connect(&dir, "r0").err().unwrap();
    assert!(matches!(e, ControlError::Stale { .. }), "{e}");
    assert!(e.is_not_up());
    // bind_socket replaces a stale socket.
    let _listener = bind_socket(&dir, "r0").unwrap();
    let e = bind_socket(&dir, "r0").unwrap_err();
    assert!(e.to_string().contains("already up"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn client_timeout_and_garbage() {
    let dir = temp_run_dir("timeout");
    let listener = bind_socket(&dir, "r0").unwrap();
    let server = std::thread::spawn(move || {
        // First connection: never answers. Second: garbage.
        let (silent, _) = listener.accept().unwrap();
        let (mut garbage, _) = listener.accept().unwrap();
        let mut line = String::new();
        BufReader::new(garbage.try_clone().unwrap())
            .read_line(&mut line)
            .unwrap();
        garbage.write_all(b"hello\n").unwrap();
        drop(silent);
    });
    let mut c = Client::connect(&dir, "r0").unwrap();
    c.set_timeout(Duration::from_millis(200));
    let e = c.call(&Request::Status).unwrap_err();
    assert!(matches!(e, ControlError::Timeout { .. }), "{e}");
    let mut c = Client::connect(&dir, "r0").unwrap();
    let e = c.call(&Request::Status).unwrap_err();
    assert!(matches!(e, ControlError::Protocol { .. }), "{e}");
    server.join().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn client_events() {
    let dir = temp_run_dir("events");
    let events = [
        Event::new(EventWhat::Exists, EventObject::Resource, "r0").role("Secondary"),
        Event::end_of_initial_state(),
        Event::new(EventWhat::Change, EventObject::Resource, "r0").role("Primary"),
    ];
    let stream: String = events.iter().map(Event::to_line).collect();
    let server = fake_daemon(&dir, vec![format!("{}{stream}", Response::ok().to_line())]);
    let got: Vec<Event> = Client::connect(&dir, "r0")
        .unwrap()
        .events()
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(got, events);
    assert_eq!(server.join().unwrap(), vec!["{\"cmd\":\"events\"}\n"]);

    let server = fake_daemon(&dir, vec![Response::error("events are off").to_line()]);
    let e = Client::connect(&dir, "r0").unwrap().events().err().unwrap();
    assert_eq!(e.to_string(), "events are off");
    server.join().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
