//! Fallback backend: a small pool of threads doing pread/pwrite/fdatasync/fallocate, for when
//! io_uring is unavailable (seccomp, `kernel.io_uring_disabled`).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;

use super::op::{Op, OpKind};

/// Handle to the thread pool; dropping it lets the threads finish queued work and exit.
pub struct ThreadBackend {
    tx: mpsc::Sender<Op>,
}

impl ThreadBackend {
    pub fn start(file: Arc<File>, threads: usize) -> io::Result<ThreadBackend> {
        let (tx, rx) = mpsc::channel::<Op>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let file = file.clone();
            thread::Builder::new()
                .name(format!("urbd-disk-{i}"))
                .spawn(move || loop {
                    let mut op = match rx.lock().expect("queue lock").recv() {
                        Ok(op) => op,
                        Err(_) => return,
                    };
                    let result = execute(&file, &mut op);
                    op.complete(result);
                })?;
        }
        Ok(ThreadBackend { tx })
    }

    pub fn submit(&self, op: Op) {
        if let Err(mpsc::SendError(op)) = self.tx.send(op) {
            op.complete(Err(io::Error::from_raw_os_error(libc::ESHUTDOWN)));
        }
    }
}

/// Executes one operation synchronously in the calling thread.
pub fn execute(file: &File, op: &mut Op) -> io::Result<()> {
    match &mut op.kind {
        OpKind::Read { buf } => file.read_exact_at(buf.as_mut(), op.offset),
        OpKind::Write { buf, dsync } => {
            file.write_all_at(buf.as_ref(), op.offset)?;
            if *dsync {
                file.sync_data()?;
            }
            Ok(())
        }
        OpKind::Fsync => file.sync_data(),
        &mut OpKind::Fallocate { mode, len } => {
            let off =
                i64::try_from(op.offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
            let len = i64::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
            // SAFETY: plain syscall on a file descriptor we keep open.
            let rc = unsafe { libc::fallocate(file.as_raw_fd(), mode, off, len) };
            if rc == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        }
    }
}
