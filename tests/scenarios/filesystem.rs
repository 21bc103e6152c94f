//! A real ext4 filesystem on urbd: nbdfuse exposes the export as a file,
//! a loop device turns it into a block device for the kernel.
//! Root only (loop devices, mount); skipped otherwise.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use urbd_tests::tools::{wait_timeout, wait_until};
use urbd_tests::util::assert_same_bytes;
use urbd_tests::{make_sparse_disk, require_root, require_tool, Cmd, Prng, Server, TempDir};

const T: Duration = Duration::from_secs(60);

/// nbdfuse in the background; unmounted (and reaped) on drop.
struct NbdFuse {
    child: Option<Child>,
    mountdir: PathBuf,
}

impl NbdFuse {
    fn start(dir: &Path, uri: &str) -> NbdFuse {
        let mountdir = dir.join("fuse");
        fs::create_dir_all(&mountdir).unwrap();
        let pidfile = dir.join("nbdfuse.pid");
        let child = Cmd::new("nbdfuse")
            .arg("-P")
            .arg(&pidfile)
            .arg(mountdir.join("nbd"))
            .arg(uri)
            .spawn_logged(&dir.join("nbdfuse.log"));
        let mut g = NbdFuse {
            child: Some(child),
            mountdir,
        };
        let file = g.file();
        let ready = wait_until(Duration::from_secs(15), || {
            pidfile.exists() && file.exists()
        });
        if !ready {
            let st = g.child.as_mut().unwrap().try_wait();
            panic!(
                "nbdfuse did not come up (status {st:?}); log:\n{}",
                fs::read_to_string(dir.join("nbdfuse.log")).unwrap_or_default()
            );
        }
        g
    }

    fn file(&self) -> PathBuf {
        self.mountdir.join("nbd")
    }

    /// Unmount and check that nbdfuse exits cleanly.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            Cmd::new("fusermount3")
                .arg("-u")
                .arg(&self.mountdir)
                .timeout(T)
                .ok();
            let st = wait_timeout(&mut c, T);
            if st.is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
            let st = st.expect("nbdfuse did not exit after fusermount3 -u");
            assert!(st.success(), "nbdfuse exited with {st}");
        }
    }
}

impl Drop for NbdFuse {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Cmd::new("fusermount3")
                .arg("-u")
                .arg(&self.mountdir)
                .timeout(T)
                .output();
            if wait_timeout(&mut c, Duration::from_secs(10)).is_none() {
                let _ = Cmd::new("fusermount3")
                    .args(["-u", "-z"])
                    .arg(&self.mountdir)
                    .timeout(T)
                    .output();
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// A loop device, detached on drop.
struct Loop {
    dev: Option<String>,
}

impl Loop {
    fn attach(file: &Path) -> Loop {
        let o = Cmd::new("losetup")
            .args(["-f", "--show", "--direct-io=off"])
            .arg(file)
            .timeout(T)
            .ok();
        let dev = o.stdout.trim().to_string();
        assert!(dev.starts_with("/dev/loop"), "losetup printed {dev:?}");
        Loop { dev: Some(dev) }
    }

    fn dev(&self) -> &str {
        self.dev.as_deref().unwrap()
    }

    fn detach(&mut self) {
        if let Some(d) = self.dev.take() {
            Cmd::new("losetup").args(["-d", &d]).timeout(T).ok();
        }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        if let Some(d) = self.dev.take() {
            let _ = Cmd::new("losetup").args(["-d", &d]).timeout(T).output();
        }
    }
}

/// A mounted filesystem, unmounted on drop.
struct Mount {
    dir: Option<PathBuf>,
}

impl Mount {
    fn ext4(dev: &str, dir: &Path) -> Mount {
        fs::create_dir_all(dir).unwrap();
        Cmd::new("mount")
            .args(["-t", "ext4", dev])
            .arg(dir)
            .timeout(T)
            .ok();
        Mount {
            dir: Some(dir.to_path_buf()),
        }
    }

    fn umount(&mut self) {
        if let Some(d) = self.dir.take() {
            Cmd::new("umount").arg(&d).timeout(T).ok();
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(d) = self.dir.take() {
            let ok = Cmd::new("umount")
                .arg(&d)
                .timeout(T)
                .output()
                .status
                .success();
            if !ok {
                let _ = Cmd::new("umount").arg("-l").arg(&d).timeout(T).output();
            }
        }
    }
}

fn sha256_manifest(dir: &Path, names: &[String]) -> String {
    Cmd::new("sh")
        .arg("-c")
        .arg(format!(
            "cd '{}' && sha256sum {}",
            dir.display(),
            names.join(" ")
        ))
        .timeout(T)
        .ok()
        .stdout
}

#[test]
fn ext4_on_nbdfuse_loop() {
    let t = "ext4_on_nbdfuse_loop";
    if !require_root(t) {
        return;
    }
    for tool in [
        "nbdfuse",
        "fusermount3",
        "mkfs.ext4",
        "fsck.ext4",
        "losetup",
        "sha256sum",
        "debugfs",
    ] {
        if !require_tool(t, tool) {
            return;
        }
    }
    let dir = TempDir::new(t);
    let disk = dir.join("disk.img");
    make_sparse_disk(&disk, 64);
    let mut server = Server::start(&disk, &[]);

    // Reference copies of the files, kept outside the filesystem.
    let orig = dir.join("orig");
    fs::create_dir_all(&orig).unwrap();
    let mut rng = Prng::new(0xe474);
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..24 {
        let len = match i {
            0 => 8 << 20,
            1 => 0,
            2 => 1,
            3 => 4097,
            _ => (rng.next_u64() % (600 << 10)) as usize + 1,
        };
        files.push((format!("f{i:02}.bin"), rng.bytes(len)));
    }
    for (name, data) in &files {
        fs::write(orig.join(name), data).unwrap();
    }
    let names: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
    let manifest = sha256_manifest(&orig, &names);

    let mnt = dir.join("mnt");
    {
        let mut fuse = NbdFuse::start(dir.path(), server.uri());
        assert_eq!(
            fs::metadata(fuse.file()).unwrap().len(),
            64 << 20,
            "nbdfuse file size"
        );
        let mut lo = Loop::attach(&fuse.file());
        Cmd::new("mkfs.ext4")
            .args(["-q", "-F", lo.dev()])
            .timeout(T)
            .ok();
        {
            let mut m = Mount::ext4(lo.dev(), &mnt);
            fs::create_dir_all(mnt.join("sub/dir")).unwrap();
            for (name, data) in &files {
                fs::write(mnt.join(name), data).unwrap();
            }
            fs::copy(orig.join("f03.bin"), mnt.join("sub/dir/copy.bin")).unwrap();
            Cmd::new("sync").timeout(T).ok();
            m.umount();
        }
        Cmd::new("fsck.ext4")
            .args(["-fn", lo.dev()])
            .timeout(T)
            .ok();
        {
            let mut m = Mount::ext4(lo.dev(), &mnt);
            fs::write(mnt.join("SHA256SUMS"), &manifest).unwrap();
            Cmd::new("sh")
                .arg("-c")
                .arg(format!(
                    "cd '{}' && sha256sum --strict -c SHA256SUMS",
                    mnt.display()
                ))
                .timeout(T)
                .ok();
            for (name, data) in &files {
                let got = fs::read(mnt.join(name)).unwrap();
                assert_same_bytes(&format!("{name} after remount"), &got, data);
            }
            let got = fs::read(mnt.join("sub/dir/copy.bin")).unwrap();
            assert_same_bytes("sub/dir/copy.bin", &got, &files[3].1);
            // The checks above can fail: a modified file is noticed.
            fs::write(mnt.join(&files[5].0), b"changed").unwrap();
            let o = Cmd::new("sh")
                .arg("-c")
                .arg(format!("cd '{}' && sha256sum -c SHA256SUMS", mnt.display()))
                .timeout(T)
                .output();
            assert!(
                !o.status.success(),
                "sha256sum -c missed a change\n{}",
                o.describe()
            );
            fs::write(mnt.join(&files[5].0), &files[5].1).unwrap();
            m.umount();
        }
        Cmd::new("fsck.ext4")
            .args(["-fn", lo.dev()])
            .timeout(T)
            .ok();
        lo.detach();
        fuse.stop();
    }
    server.stop();

    // The backing file itself is a clean ext4 image with the files in it.
    Cmd::new("fsck.ext4").arg("-fn").arg(&disk).timeout(T).ok();
    for (name, data) in files.iter().take(6) {
        let dump = dir.join("dump.bin");
        Cmd::new("debugfs")
            .arg("-R")
            .arg(format!("dump /{name} {}", dump.display()))
            .arg(&disk)
            .timeout(T)
            .ok();
        let got = fs::read(&dump).unwrap();
        assert_same_bytes(&format!("{name} read from the backing file"), &got, data);
        fs::remove_file(&dump).unwrap();
    }
}
