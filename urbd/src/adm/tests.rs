use clap::{CommandFactory, Parser};

use super::*;

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("urbdadm").chain(args.iter().copied()))
}

#[test]
fn cli_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn command_names_are_drbdadm_like() {
    let names: Vec<String> = Cli::command()
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect();
    for name in [
        "create-md",
        "dump-md",
        "up",
        "down",
        "primary",
        "secondary",
        "connect",
        "disconnect",
        "new-current-uuid",
        "status",
        "events",
        "wait-connect",
        "wait-sync",
        "invalidate",
        "invalidate-remote",
        "pause-sync",
        "resume-sync",
        "verify",
        "example-config",
    ] {
        assert!(
            names.iter().any(|n| n == name),
            "{name} missing from {names:?}"
        );
    }
}

#[test]
fn globals_and_flags() {
    let cli = parse(&[
        "--config-dir",
        "/c",
        "--node",
        "beta",
        "--run-dir",
        "/r",
        "primary",
        "r0",
        "--force",
    ])
    .unwrap();
    assert_eq!(cli.config_dir, PathBuf::from("/c"));
    assert_eq!(cli.node.as_deref(), Some("beta"));
    assert_eq!(cli.run_dir, PathBuf::from("/r"));
    assert!(
        matches!(cli.command, Command::Primary { ref resource, force: true } if resource == "r0")
    );
    // Global options after the subcommand too.
    let cli = parse(&["connect", "r0", "--discard-my-data", "--node", "alpha"]).unwrap();
    assert_eq!(cli.node.as_deref(), Some("alpha"));
    assert!(matches!(
        cli.command,
        Command::Connect {
            discard_my_data: true,
            ..
        }
    ));
    let cli = parse(&["new-current-uuid", "--clear-bitmap", "r0"]).unwrap();
    assert!(matches!(
        cli.command,
        Command::NewCurrentUuid {
            clear_bitmap: true,
            ..
        }
    ));
    let cli = parse(&["status", "--json"]).unwrap();
    assert!(matches!(
        cli.command,
        Command::Status {
            resource: None,
            json: true
        }
    ));
    let cli = parse(&["wait-sync", "r0", "--timeout-s", "7"]).unwrap();
    assert!(matches!(
        cli.command,
        Command::WaitSync {
            timeout_s: Some(7),
            ..
        }
    ));
    let cli = parse(&["verify", "r0", "--start", "1M", "--stop", "2G", "--repair"]).unwrap();
    assert!(matches!(
        cli.command,
        Command::Verify {
            start: Some(1048576),
            stop: Some(2147483648),
            repair: true,
            ..
        }
    ));
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["primary"][..],
        &["frobnicate", "r0"],
        &["verify", "r0", "--start", "1Q"],
        &["wait-sync", "r0", "--timeout-s", "-1"],
    ] {
        let e = parse(args).unwrap_err();
        assert_eq!(e.exit_code(), i32::from(EXIT_USAGE), "{args:?}");
    }
}

#[test]
fn sizes() {
    assert_eq!(parse_size("4096"), Ok(4096));
    assert_eq!(parse_size("4K"), Ok(4096));
    assert_eq!(parse_size("4kib"), Ok(4096));
    assert_eq!(parse_size("1M"), Ok(1 << 20));
    assert_eq!(parse_size("3G"), Ok(3 << 30));
    assert_eq!(parse_size("2T"), Ok(2 << 40));
    assert!(parse_size("x").is_err());
    assert!(parse_size("1X").is_err());
    assert!(parse_size("99999999999T").is_err());
}

#[test]
fn resource_names() {
    assert!(check_resource_name("r0").is_ok());
    assert_eq!(check_resource_name("../x").unwrap_err().code, EXIT_USAGE);
    assert_eq!(check_resource_name("a b").unwrap_err().code, EXIT_USAGE);
}

#[test]
fn hostname_is_non_empty() {
    assert!(!hostname().is_empty());
}

#[test]
fn log_tail_takes_the_end_after_offset() {
    let p = std::env::temp_dir().join(format!("urbdadm-logtail-{}", std::process::id()));
    let old = "old line\n";
    let new: String = (0..30).map(|i| format!("line {i}\n")).collect();
    std::fs::write(&p, format!("{old}{new}")).unwrap();
    let tail = log_tail(&p, old.len() as u64, 20).unwrap();
    assert!(
        tail.contains("line 10\n") && tail.ends_with("line 29"),
        "{tail}"
    );
    assert!(
        !tail.contains("line 9\n") && !tail.contains("old"),
        "{tail}"
    );
    assert_eq!(log_tail(&p, (old.len() + new.len()) as u64, 20), None);
    std::fs::remove_file(&p).unwrap();
}
