//! fio with its nbd ioengine: random writes of mixed sizes with crc32c
//! verification, single and multiple connections.

use std::time::Duration;

use urbd_tests::util::write_at;
use urbd_tests::{make_sparse_disk, require_tool, Cmd, Json, Listen, Server, TempDir, MIB};

struct FioJob<'a> {
    uri: &'a str,
    /// fio's working directory (it may drop state files there).
    dir: &'a std::path::Path,
    size_mib: u64,
    numjobs: u32,
    verify_only: bool,
}

/// Run fio and return the per-job JSON objects, asserting success, no
/// errors, full coverage and that every written byte was verified.
fn run_fio(job: &FioJob) -> Vec<Json> {
    let size = job.size_mib * MIB;
    let o = fio_cmd(job).output();
    assert!(o.status.success(), "fio failed\n{}", o.describe());
    let json_start = o
        .stdout
        .find("\n{")
        .map(|i| i + 1)
        .or_else(|| o.stdout.starts_with('{').then_some(0))
        .unwrap_or_else(|| panic!("no JSON in fio output\n{}", o.describe()));
    let j = Json::parse_or_panic("fio --output-format=json", &o.stdout[json_start..]);
    let jobs = j.get("jobs").as_array().to_vec();
    assert_eq!(
        jobs.len(),
        job.numjobs as usize,
        "fio job count\n{}",
        o.describe()
    );
    for (i, jj) in jobs.iter().enumerate() {
        assert_eq!(jj.u64_at("error"), 0, "fio job {i} error\n{}", o.describe());
        let written = jj.get("write").u64_at("io_bytes");
        let read = jj.get("read").u64_at("io_bytes");
        // (with verify_only fio reports the writes it would have done)
        assert_eq!(
            written, size,
            "job {i} did not write its whole region (runtime hit?)"
        );
        assert_eq!(
            read, size,
            "job {i}: verify did not read back every written byte"
        );
    }
    jobs
}

fn fio_cmd(job: &FioJob) -> Cmd {
    let size = job.size_mib * MIB;
    let mut cmd = Cmd::new("fio")
        .args([
            "--name=urbd",
            "--ioengine=nbd",
            &format!("--uri={}", job.uri),
            "--rw=randwrite",
            "--bsrange=512-256k",
            "--blockalign=512",
            "--iodepth=32",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            "--randrepeat=1",
            "--randseed=1234",
            &format!("--size={size}"),
            &format!("--numjobs={}", job.numjobs),
            &format!("--offset_increment={size}"),
            "--group_reporting=0",
            "--runtime=90",
            "--verify_state_save=0",
            "--output-format=json",
        ])
        .current_dir(job.dir)
        .timeout(Duration::from_secs(180));
    if job.verify_only {
        cmd = cmd.arg("--verify_only=1");
    }
    cmd
}

fn fio_scenario(
    t: &str,
    listen: Listen,
    extra: &[&str],
    numjobs: u32,
    size_mib: u64,
    restart_verify: bool,
) {
    if !require_tool(t, "fio") {
        return;
    }
    let o = Cmd::new("fio").arg("--enghelp=nbd").output();
    if !o.status.success() || !o.stdout.contains("uri") {
        println!("SKIPPED: {t}: this fio has no nbd ioengine (apt-get install fio)");
        return;
    }
    let dir = TempDir::new(t);
    let disk = dir.join("disk.img");
    make_sparse_disk(&disk, size_mib * numjobs as u64 + 1);
    let mut server = Server::start_with(&disk, listen, extra);
    run_fio(&FioJob {
        uri: server.uri(),
        dir: dir.path(),
        size_mib,
        numjobs,
        verify_only: false,
    });
    if restart_verify {
        // The data survives a server restart: a new process on the same
        // disk, read back and verified by fio (same seed, same layout).
        server.stop();
        let mut server = Server::start_with(&disk, listen, extra);
        run_fio(&FioJob {
            uri: server.uri(),
            dir: dir.path(),
            size_mib,
            numjobs,
            verify_only: true,
        });
        // The verification can fail: corrupt one sector of the backing
        // file behind the server's back and fio must notice.
        server.stop();
        write_at(&disk, 3 * MIB + 512, &[0x5a; 512]);
        let server = Server::start_with(&disk, listen, extra);
        let o = fio_cmd(&FioJob {
            uri: server.uri(),
            dir: dir.path(),
            size_mib,
            numjobs,
            verify_only: true,
        })
        .output();
        assert!(
            !o.status.success() && o.stderr.contains("verify"),
            "fio did not detect a corrupted sector\n{}",
            o.describe()
        );
    }
}

#[test]
fn fio_randwrite_verify() {
    fio_scenario("fio_randwrite_verify", Listen::Tcp, &[], 1, 24, true);
}

#[test]
fn fio_randwrite_verify_4_connections() {
    fio_scenario(
        "fio_randwrite_verify_4_connections",
        Listen::Tcp,
        &[],
        4,
        12,
        true,
    );
}

#[test]
fn fio_randwrite_verify_rmw_align_4096() {
    fio_scenario(
        "fio_randwrite_verify_rmw_align_4096",
        Listen::Tcp,
        &["--io-align-bytes", "4096"],
        2,
        12,
        false,
    );
}

#[test]
fn fio_randwrite_verify_threads_engine() {
    fio_scenario(
        "fio_randwrite_verify_threads_engine",
        Listen::Tcp,
        &["--disk-engine", "threads"],
        2,
        12,
        false,
    );
}

#[test]
fn fio_randwrite_verify_unix_socket() {
    fio_scenario(
        "fio_randwrite_verify_unix_socket",
        Listen::Unix,
        &[],
        2,
        8,
        true,
    );
}
