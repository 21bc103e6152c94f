use super::*;

const FULL: &str = r#"
protocol = "B"
secret = "s3cr3t-s3cr3t-s3cr3t"
auto-promote = true

[[node]]
name = "alpha"
address = "127.0.0.1:7789"
disk = "/var/lib/urbd/r0-alpha.img"
meta-disk = "internal"
nbd = "127.0.0.1:10809"

[[node]]
name = "beta"
address = "[::1]:7790"
disk = "/dev/vdb"
meta-disk = "/var/lib/urbd/r0-beta.md"
nbd = "unix:/run/urbd/r0.nbd"

[net]
ping-interval-ms = 3000
ping-timeout-ms = 500
timeout-ms = 5000
connect-interval-ms = 700
max-frame-bytes = 65572
max-inflight-writes = 64
sndbuf-bytes = 4194304
rcvbuf-bytes = 8388608

[disk]
bytes-per-bit = 8192
al-extents = 900
on-io-error = "pass-on"

[resync]
rate-bytes-per-s-max = 1000000
rate-bytes-per-s-min = 1000
csums-alg = "sha256"
verify-alg = "sha256"

[split-brain]
after-sb-0pri = "discard-node-beta"
after-sb-1pri = "consensus"
after-sb-2pri = "disconnect"

[handlers]
split-brain = "logger split"
fence-peer = "/usr/local/bin/fence"
before-resync-target = "true"
after-resync-target = "true"
"#;

const MINIMAL: &str = r#"
secret = "0123456789abcdef"
[[node]]
name = "alpha"
address = "127.0.0.1:7789"
disk = "/tmp/a.img"
nbd = "127.0.0.1:10809"
[[node]]
name = "beta"
address = "127.0.0.1:7790"
disk = "/tmp/b.img"
nbd = "127.0.0.1:10810"
"#;

fn path() -> PathBuf {
    PathBuf::from("/etc/urbd/r0.toml")
}

fn parse(text: &str) -> Result<ResourceConfig, ConfigError> {
    ResourceConfig::parse(text, &path(), "r0")
}

fn err(text: &str) -> ConfigError {
    parse(text).expect_err("should be refused")
}

/// MINIMAL with `from` replaced by `to` (which must occur).
fn edit(from: &str, to: &str) -> String {
    assert!(MINIMAL.contains(from), "{from}");
    MINIMAL.replacen(from, to, 1)
}

fn with(extra: &str) -> String {
    format!("{MINIMAL}{extra}")
}

#[test]
fn full_config_parses() {
    let c = parse(FULL).unwrap();
    assert_eq!(c.resource, "r0");
    assert_eq!(c.protocol, Protocol::B);
    assert!(c.auto_promote);
    assert_eq!(c.nodes[1].address, "[::1]:7790");
    assert_eq!(
        c.nodes[1].meta_disk(),
        MetaDisk::External(Path::new("/var/lib/urbd/r0-beta.md"))
    );
    assert_eq!(
        c.nodes[1].nbd_endpoint(),
        NbdEndpoint::Unix("/run/urbd/r0.nbd".into())
    );
    assert_eq!(c.nodes[0].meta_disk(), MetaDisk::Internal);
    assert_eq!(c.net.ping_timeout(), Duration::from_millis(500));
    assert_eq!(c.net.decode_limits().max_frame_bytes(), 65572);
    assert_eq!(c.net.sndbuf_bytes, Some(4194304));
    assert_eq!(c.disk.on_io_error, OnIoError::PassOn);
    assert_eq!(c.resync.csums_alg, CsumsAlg::Sha256);
    assert_eq!(
        c.split_brain.after_sb_0pri,
        AfterSb0Pri::DiscardNode("beta".into())
    );
    assert_eq!(c.split_brain.after_sb_1pri, AfterSb1Pri::Consensus);
    assert_eq!(
        c.handlers.fence_peer.as_deref(),
        Some("/usr/local/bin/fence")
    );
    assert!(c.warnings().is_empty());
}

#[test]
fn full_config_round_trips() {
    let c = parse(FULL).unwrap();
    let text = c.to_toml();
    let again = parse(&text).unwrap();
    assert_eq!(c, again, "{text}");
    let m = parse(MINIMAL).unwrap();
    assert_eq!(parse(&m.to_toml()).unwrap(), m);
}

#[test]
fn defaults() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.protocol, Protocol::C);
    assert!(!c.auto_promote);
    assert_eq!(c.nodes[0].meta_disk, "internal");
    assert_eq!(c.net.ping_interval_ms, 2000);
    assert_eq!(c.net.ping_timeout_ms, 1000);
    assert_eq!(c.net.timeout_ms, 6000);
    assert_eq!(c.net.connect_interval_ms, 1000);
    assert_eq!(c.net.max_frame_bytes, 1048576 + 36);
    assert_eq!(c.net.max_inflight_writes, 1024);
    assert_eq!(c.net.sndbuf_bytes, None);
    assert_eq!(c.disk.bytes_per_bit, 4096);
    assert_eq!(c.disk.al_extents, AL_EXTENTS_DEFAULT);
    assert_eq!(c.disk.on_io_error, OnIoError::Detach);
    assert_eq!(c.resync.rate_bytes_per_s_max, 200 << 20);
    assert_eq!(c.resync.rate_bytes_per_s_min, 10 << 20);
    assert_eq!(c.resync.csums_alg, CsumsAlg::None);
    assert_eq!(c.resync.verify_alg, VerifyAlg::Crc32c);
    assert_eq!(c.split_brain, SplitBrainConfig::default());
    assert_eq!(c.split_brain.after_sb_0pri, AfterSb0Pri::Disconnect);
    assert_eq!(c.handlers, HandlersConfig::default());
}

#[test]
fn local_and_peer() {
    let c = parse(MINIMAL).unwrap();
    let (l, p) = c.local_and_peer("beta").unwrap();
    assert_eq!((l.name.as_str(), p.name.as_str()), ("beta", "alpha"));
    let (l, p) = c.local_and_peer("alpha").unwrap();
    assert_eq!((l.name.as_str(), p.name.as_str()), ("alpha", "beta"));
    let e = c.local_and_peer("gamma").unwrap_err();
    assert_eq!(e.kind, ConfigErrorKind::UnknownNode);
    let s = e.to_string();
    assert!(
        s.starts_with("/etc/urbd/r0.toml: no [[node]] is named \"gamma\""),
        "{s}"
    );
    assert!(s.contains("\"alpha\", \"beta\""), "{s}");
    assert!(s.contains("--node"), "{s}");
}

#[test]
fn unknown_key_in_net() {
    let e = err(&with("[net]\npnig-interval-ms = 5\n"));
    assert_eq!(e.kind, ConfigErrorKind::UnknownKey);
    let s = e.to_string();
    assert!(
        s.starts_with("/etc/urbd/r0.toml:14: unknown key \"pnig-interval-ms\" in [net]; did you mean \"ping-interval-ms\"? known keys: ping-interval-ms, ping-timeout-ms,"),
        "{s}"
    );
    assert!(!s.contains('\n'));
}

#[test]
fn unknown_key_top_and_node() {
    let s = err(&edit("secret", "secrte = \"x\"\nsecret")).to_string();
    assert!(
        s.starts_with("/etc/urbd/r0.toml:2: unknown key \"secrte\" in the top level; did you mean \"secret\"?"),
        "{s}"
    );
    let s = err(&edit(
        "nbd = \"127.0.0.1:10810\"",
        "nbd = \"127.0.0.1:10810\"\nport = 1",
    ))
    .to_string();
    assert!(
        s.starts_with("/etc/urbd/r0.toml:13: unknown key \"port\" in [[node]] node[1];"),
        "{s}"
    );
    let e = err(&with("[bogus]\nx = 1\n"));
    assert_eq!(e.kind, ConfigErrorKind::UnknownKey);
    assert!(e.message.contains("\"bogus\""), "{e}");
}

#[test]
fn missing_keys() {
    let e = err(&edit("secret = \"0123456789abcdef\"", ""));
    assert_eq!(e.kind, ConfigErrorKind::MissingKey);
    assert!(
        e.message
            .starts_with("missing key \"secret\" in the top level; add e.g. secret ="),
        "{e}"
    );
    let e = err(&edit("nbd = \"127.0.0.1:10810\"", ""));
    assert_eq!(e.kind, ConfigErrorKind::MissingKey);
    assert!(e.message.contains("missing key \"nbd\""), "{e}");
    let e = err("secret = \"abc\"\n");
    assert_eq!(e.kind, ConfigErrorKind::MissingKey);
    assert!(e.message.contains("\"node\""), "{e}");
}

#[test]
fn bad_values() {
    let e = err(&format!("protocol = \"D\"\n{MINIMAL}"));
    assert_eq!(e.kind, ConfigErrorKind::BadValue);
    assert_eq!(
        e.to_string(),
        "/etc/urbd/r0.toml:1: protocol \"D\" is not valid; use one of: A, B, C"
    );
    let e = err(&with("[disk]\non-io-error = \"panic\"\n"));
    assert_eq!(e.kind, ConfigErrorKind::BadValue);
    assert!(
        e.message
            .starts_with("disk.on-io-error \"panic\" is not valid; use one of: detach, pass-on"),
        "{e}"
    );
    let e = err(&with(
        "[split-brain]\nafter-sb-0pri = \"discard-everything\"\n",
    ));
    assert_eq!(e.kind, ConfigErrorKind::BadValue);
    assert!(e.message.starts_with("split-brain.after-sb-0pri \"discard-everything\" is not valid; use one of: disconnect,"), "{e}");
    let e = err(&with("[net]\ntimeout-ms = \"6s\"\n"));
    assert_eq!(e.kind, ConfigErrorKind::BadValue);
    assert!(e.message.starts_with("net.timeout-ms: invalid type"), "{e}");
    let e = err(&with("[net]\ntimeout-ms = -1\n"));
    assert_eq!(e.kind, ConfigErrorKind::BadValue);
    let e = err(&with("[resync]\ncsums-alg = \"md5\"\n"));
    assert_eq!(e.kind, ConfigErrorKind::BadValue);
    assert!(e.message.contains("none, crc32c, sha256"), "{e}");
}

#[test]
fn syntax_error() {
    let e = err(&edit("name = \"beta\"", "name = beta\""));
    assert_eq!(e.kind, ConfigErrorKind::Syntax);
    assert_eq!(e.line, Some(9));
    assert!(!e.to_string().contains('\n'));
}

#[test]
fn node_count_and_names() {
    let one = MINIMAL
        .split("[[node]]")
        .take(2)
        .collect::<Vec<_>>()
        .join("[[node]]");
    let e = err(&one);
    assert_eq!(e.kind, ConfigErrorKind::Invalid);
    assert!(
        e.message.starts_with("1 [[node]] tables found, exactly 2"),
        "{e}"
    );
    let e = err(&edit("name = \"beta\"", "name = \"alpha\""));
    assert_eq!(e.kind, ConfigErrorKind::Invalid);
    assert_eq!(
        e.to_string(),
        "/etc/urbd/r0.toml:9: node[0].name and node[1].name are both \"alpha\"; give each node its own name (its hostname, or what it passes as --node)"
    );
    let e = err(&edit("name = \"beta\"", "name = \"be ta\""));
    assert!(
        e.message.starts_with("node[1].name \"be ta\" is not valid"),
        "{e}"
    );
}

#[test]
fn addresses() {
    let e = err(&edit(
        "address = \"127.0.0.1:7790\"",
        "address = \"127.0.0.1\"",
    ));
    assert_eq!(e.kind, ConfigErrorKind::Invalid);
    assert_eq!(
        e.to_string(),
        "/etc/urbd/r0.toml:10: node[1].address \"127.0.0.1\" is not HOST:PORT; write e.g. \"127.0.0.1:7790\""
    );
    let e = err(&edit(
        "address = \"127.0.0.1:7790\"",
        "address = \"127.0.0.1:7789\"",
    ));
    assert!(
        e.message
            .starts_with("node[0].address and node[1].address are both"),
        "{e}"
    );
    let e = err(&edit(
        "address = \"127.0.0.1:7790\"",
        "address = \"host:99999\"",
    ));
    assert!(e.message.contains("is not HOST:PORT"), "{e}");
    let e = err(&edit(
        "nbd = \"127.0.0.1:10810\"",
        "nbd = \"unix:relative.sock\"",
    ));
    assert!(
        e.message
            .starts_with("node[1].nbd \"unix:relative.sock\" is neither"),
        "{e}"
    );
    let e = err(&edit("nbd = \"127.0.0.1:10810\"", "nbd = \"10810\""));
    assert!(
        e.message.starts_with("node[1].nbd \"10810\" is neither"),
        "{e}"
    );
    let e = err(&edit(
        "nbd = \"127.0.0.1:10810\"",
        "nbd = \"127.0.0.1:7790\"",
    ));
    assert!(e.message.contains("replication address"), "{e}");
    let e = err(&edit("disk = \"/tmp/b.img\"", "disk = \"b.img\""));
    assert!(
        e.message
            .starts_with("node[1].disk \"b.img\" is not an absolute path"),
        "{e}"
    );
    let e = err(&edit("disk = \"/tmp/b.img\"", "disk = \"/tmp/a.img\""));
    assert!(e.message.contains("on the same host"), "{e}");
    let e = err(&edit(
        "disk = \"/tmp/b.img\"",
        "disk = \"/tmp/b.img\"\nmeta-disk = \"md\"",
    ));
    assert!(e.message.starts_with("node[1].meta-disk \"md\""), "{e}");

    assert_eq!(parse_host_port("a.example:1"), Some(("a.example", 1)));
    assert_eq!(parse_host_port("[::1]:7789"), Some(("[::1]", 7789)));
    assert_eq!(parse_host_port("::1:7789"), None);
    assert_eq!(parse_host_port(":7789"), None);
    assert_eq!(parse_host_port("h:0"), None);
}

#[test]
fn secret_rules() {
    let e = err(&edit("secret = \"0123456789abcdef\"", "secret = \"\""));
    assert_eq!(e.kind, ConfigErrorKind::Invalid);
    assert_eq!(e.line, Some(2));
    assert!(e.message.starts_with("secret is empty;"), "{e}");
    let c = parse(&edit("0123456789abcdef", "change-me")).unwrap();
    let w = c.warnings();
    assert_eq!(w.len(), 1);
    assert!(w[0].contains("placeholder \"change-me\""), "{w:?}");
}

#[test]
fn net_rules() {
    for (extra, needle) in [
        ("ping-interval-ms = 0", "net.ping-interval-ms is 0"),
        ("timeout-ms = 0", "net.timeout-ms is 0"),
        ("connect-interval-ms = 0", "net.connect-interval-ms is 0"),
        ("ping-timeout-ms = 0", "net.ping-timeout-ms is 0"),
        (
            "ping-timeout-ms = 6000",
            "net.ping-timeout-ms 6000 must be less than net.timeout-ms 6000",
        ),
        (
            "max-frame-bytes = 100",
            "net.max-frame-bytes 100 is out of range",
        ),
        ("max-inflight-writes = 0", "net.max-inflight-writes is 0"),
        ("sndbuf-bytes = 0", "net.sndbuf-bytes is 0"),
    ] {
        let e = err(&with(&format!("[net]\n{extra}\n")));
        assert_eq!(e.kind, ConfigErrorKind::Invalid, "{extra}");
        assert!(e.message.starts_with(needle), "{extra}: {e}");
        assert_eq!(e.line, Some(14), "{extra}: {e}");
    }
}

#[test]
fn disk_resync_split_brain_handler_rules() {
    for (extra, needle) in [
        ("[disk]\nbytes-per-bit = 3000", "disk.bytes-per-bit 3000 must be a power of two"),
        ("[disk]\nal-extents = 0", "disk.al-extents 0 is out of range"),
        ("[disk]\nal-extents = 5000", "disk.al-extents 5000 is out of range"),
        ("[resync]\nrate-bytes-per-s-max = 0", "resync.rate-bytes-per-s-max is 0"),
        (
            "[resync]\nrate-bytes-per-s-max = 10\nrate-bytes-per-s-min = 11",
            "resync.rate-bytes-per-s-min 11 is above",
        ),
        (
            "[split-brain]\nafter-sb-0pri = \"discard-node-gamma\"",
            "split-brain.after-sb-0pri \"discard-node-gamma\" names no node; use discard-node-alpha or discard-node-beta",
        ),
        ("[handlers]\nsplit-brain = \" \"", "handlers.split-brain is empty"),
    ] {
        let e = err(&with(&format!("{extra}\n")));
        assert_eq!(e.kind, ConfigErrorKind::Invalid, "{extra}");
        assert!(e.message.starts_with(needle), "{extra}: {e}");
    }
    let e = err(&with(
        "[split-brain]\nafter-sb-2pri = \"discard-secondary\"\n",
    ));
    assert_eq!(e.kind, ConfigErrorKind::BadValue);
    assert!(e.message.ends_with("use one of: disconnect"), "{e}");
}

#[test]
fn load_from_directory() {
    let dir = std::env::temp_dir().join(format!("urbd-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let e = Config::load(&dir, "r0").unwrap_err();
    assert_eq!(e.kind, ConfigErrorKind::NotFound);
    assert!(e.to_string().contains("urbdadm example-config r0"), "{e}");
    let e = Config::load(&dir.join("missing"), "r0").unwrap_err();
    assert_eq!(e.kind, ConfigErrorKind::NotFound);
    assert!(e.message.contains("does not exist"), "{e}");
    let e = Config::load(&dir, "../etc/passwd").unwrap_err();
    assert_eq!(e.kind, ConfigErrorKind::BadResourceName);
    let e = Config::list(&dir.join("missing")).unwrap_err();
    assert_eq!(e.kind, ConfigErrorKind::NoConfigDir);

    std::fs::write(dir.join("r0.toml"), ResourceConfig::example("r0", &dir)).unwrap();
    std::fs::write(dir.join("r1.toml"), MINIMAL).unwrap();
    std::fs::write(dir.join("notes.txt"), "x").unwrap();
    assert_eq!(Config::list(&dir).unwrap(), vec!["r0", "r1"]);
    let c = Config::load(&dir, "r0").unwrap();
    assert_eq!(c.path, dir.join("r0.toml"));
    assert_eq!(c.nodes[0].disk, dir.join("r0-alpha.img"));
    assert_eq!(c.nodes[1].nbd, "127.0.0.1:10810");
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
    assert!(c.local_and_peer("alpha").is_ok() && c.local_and_peer("beta").is_ok());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn example_is_complete_and_random() {
    let a = ResourceConfig::example("r7", Path::new("/var/tmp"));
    let b = ResourceConfig::example("r7", Path::new("/var/tmp"));
    assert_ne!(a, b, "secrets differ");
    let c = ResourceConfig::parse(&a, Path::new("/x/r7.toml"), "r7").unwrap();
    assert_eq!(c.secret.len(), 36);
    assert_eq!(c.nodes[0].disk, PathBuf::from("/var/tmp/r7-alpha.img"));
    let c = ResourceConfig::parse(
        &ResourceConfig::example_with_ports("r8", Path::new("/v"), [1, 2, 3, 4]),
        Path::new("/x/r8.toml"),
        "r8",
    )
    .unwrap();
    assert_eq!(c.nodes[1].address, "127.0.0.1:2");
    assert_eq!(c.nodes[1].nbd, "127.0.0.1:4");
}

#[test]
fn error_is_one_line() {
    let e = ConfigError::new(ConfigErrorKind::Syntax, &path(), Some(3), "a\nb   c".into());
    assert_eq!(e.to_string(), "/etc/urbd/r0.toml:3: a b c");
}
