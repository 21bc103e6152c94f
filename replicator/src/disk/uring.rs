//! io_uring backend: one dedicated ring thread owns the ring. Callers queue `Op`s on a channel
//! and poke an eventfd the ring always has a read armed on, so the thread sleeps in
//! `submit_and_wait` and wakes for either a completion or new work. Small buffers are
//! registered (READ/WRITE_FIXED); FUA is RWF_DSYNC; FLUSH is IORING_OP_FSYNC with DATASYNC.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};

use io_uring::{opcode, types, IoUring, Probe};

use super::buf::Pool;
use super::op::{Op, OpKind};

const EVENTFD_TOKEN: u64 = u64::MAX;

struct Shared {
    eventfd: OwnedFd,
    /// Set by a producer that wrote the eventfd; cleared by the ring thread when it sees it.
    notify_pending: AtomicBool,
}

impl Shared {
    fn wake(&self) {
        if !self.notify_pending.swap(true, Ordering::AcqRel) {
            let one = 1u64.to_ne_bytes();
            // SAFETY: writing 8 bytes from a live buffer to an eventfd we own.
            let rc = unsafe { libc::write(self.eventfd.as_raw_fd(), one.as_ptr().cast(), 8) };
            assert_eq!(
                rc,
                8,
                "eventfd write failed: {}",
                io::Error::last_os_error()
            );
        }
    }
}

/// Handle to the ring thread; dropping it finishes in-flight work and joins the thread.
pub struct UringBackend {
    tx: Option<mpsc::Sender<Op>>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl UringBackend {
    /// Starts the ring thread. Fails when io_uring is unavailable, so the caller can fall back.
    pub fn start(
        file: Arc<File>,
        entries: u32,
        pool: Option<Arc<Pool>>,
    ) -> io::Result<UringBackend> {
        let ring = IoUring::new(entries)?;
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        for code in [
            opcode::Read::CODE,
            opcode::Write::CODE,
            opcode::Fsync::CODE,
            opcode::Fallocate::CODE,
        ] {
            if !probe.is_supported(code) {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("io_uring opcode {code} not supported by this kernel"),
                ));
            }
        }
        let registered = match &pool {
            Some(pool) => register(&ring, pool),
            None => false,
        };
        // SAFETY: plain syscall; the result is checked before use.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: efd is a fresh descriptor that nothing else owns.
        let eventfd = unsafe { OwnedFd::from_raw_fd(efd) };
        let shared = Arc::new(Shared {
            eventfd,
            notify_pending: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel();
        let thread_shared = shared.clone();
        let thread = thread::Builder::new()
            .name("urbd-ring".into())
            .spawn(move || {
                let mut r = Ring {
                    ring,
                    fd: file.as_raw_fd(),
                    registered,
                    slots: Vec::new(),
                    free: Vec::new(),
                    backlog: VecDeque::new(),
                    inflight: 0,
                };
                r.run(&rx, &thread_shared);
                // The file and pool must outlive the ring (drop order: ring first).
                drop(r);
                drop(file);
                drop(pool);
            })?;
        Ok(UringBackend {
            tx: Some(tx),
            shared,
            thread: Some(thread),
        })
    }

    pub fn submit(&self, op: Op) {
        let tx = self.tx.as_ref().expect("sender lives until drop");
        match tx.send(op) {
            Ok(()) => self.shared.wake(),
            Err(mpsc::SendError(op)) => {
                op.complete(Err(io::Error::from_raw_os_error(libc::ESHUTDOWN)))
            }
        }
    }
}

impl Drop for UringBackend {
    fn drop(&mut self) {
        drop(self.tx.take());
        self.shared.notify_pending.store(false, Ordering::Release);
        self.shared.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn register(ring: &IoUring, pool: &Pool) -> bool {
    let iovecs: Vec<libc::iovec> = pool
        .slots()
        .into_iter()
        .map(|(base, len)| libc::iovec {
            iov_base: base.cast(),
            iov_len: len,
        })
        .collect();
    // SAFETY: the pool's memory stays allocated while the ring exists (the ring thread holds an
    // Arc to the pool and drops the ring first).
    match unsafe { ring.submitter().register_buffers(&iovecs) } {
        Ok(()) => true,
        Err(e) => {
            tracing::info!("io_uring buffer registration failed ({e}); using unregistered buffers");
            false
        }
    }
}

struct InFlight {
    op: Op,
    done_bytes: usize,
}

struct Ring {
    ring: IoUring,
    fd: RawFd,
    registered: bool,
    slots: Vec<Option<InFlight>>,
    free: Vec<usize>,
    backlog: VecDeque<usize>,
    inflight: usize,
}

impl Ring {
    fn run(&mut self, rx: &mpsc::Receiver<Op>, shared: &Shared) {
        let mut efd_buf = [0u8; 8];
        let mut efd_armed = false;
        let mut closing = false;
        loop {
            if !efd_armed && !closing {
                let sqe = opcode::Read::new(
                    types::Fd(shared.eventfd.as_raw_fd()),
                    efd_buf.as_mut_ptr(),
                    8,
                )
                .build()
                .user_data(EVENTFD_TOKEN);
                self.push(sqe);
                efd_armed = true;
            }
            loop {
                match rx.try_recv() {
                    Ok(op) => {
                        let slot = self.insert(op);
                        self.backlog.push_back(slot);
                    }
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        closing = true;
                        break;
                    }
                }
            }
            while let Some(slot) = self.backlog.pop_front() {
                let sqe = self.build(slot);
                self.push(sqe);
            }
            if closing && self.inflight == 0 {
                return;
            }
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => panic!("io_uring submit failed: {e}"),
            }
            let completions: Vec<(u64, i32)> = self
                .ring
                .completion()
                .map(|c| (c.user_data(), c.result()))
                .collect();
            for (token, result) in completions {
                if token == EVENTFD_TOKEN {
                    efd_armed = false;
                    shared.notify_pending.store(false, Ordering::Release);
                    continue;
                }
                self.complete(token as usize, result);
            }
        }
    }

    fn insert(&mut self, op: Op) -> usize {
        let entry = Some(InFlight { op, done_bytes: 0 });
        self.inflight += 1;
        match self.free.pop() {
            Some(i) => {
                self.slots[i] = entry;
                i
            }
            None => {
                self.slots.push(entry);
                self.slots.len() - 1
            }
        }
    }

    fn push(&mut self, sqe: io_uring::squeue::Entry) {
        loop {
            // SAFETY: every pointer in the entry (buffers, eventfd buffer) stays valid until its
            // completion is reaped: buffers are owned by the op in `slots`, efd_buf by `run`.
            if unsafe { self.ring.submission().push(&sqe) }.is_ok() {
                return;
            }
            // Submission queue full: hand what we have to the kernel and retry.
            if let Err(e) = self.ring.submit() {
                if e.raw_os_error() != Some(libc::EBUSY) && e.raw_os_error() != Some(libc::EINTR) {
                    panic!("io_uring submit failed: {e}");
                }
            }
        }
    }

    fn build(&mut self, slot: usize) -> io_uring::squeue::Entry {
        let fd = types::Fd(self.fd);
        let registered = self.registered;
        let entry = self.slots[slot].as_mut().expect("slot in use");
        let done = entry.done_bytes;
        let offset = entry.op.offset + done as u64;
        let sqe = match &mut entry.op.kind {
            OpKind::Read { buf } => {
                let len = u32::try_from(buf.len() - done).expect("I/O under 4 GiB");
                // SAFETY: done < len, so the pointer stays inside the buffer.
                let ptr = unsafe { buf.as_mut_ptr().add(done) };
                match buf.fixed_index().filter(|_| registered) {
                    Some(i) => opcode::ReadFixed::new(fd, ptr, len, i)
                        .offset(offset)
                        .build(),
                    None => opcode::Read::new(fd, ptr, len).offset(offset).build(),
                }
            }
            OpKind::Write { buf, dsync } => {
                let len = u32::try_from(buf.len() - done).expect("I/O under 4 GiB");
                // SAFETY: done < len, so the pointer stays inside the buffer.
                let ptr = unsafe { buf.as_ptr().add(done) };
                let flags = if *dsync { libc::RWF_DSYNC } else { 0 };
                match buf.fixed_index().filter(|_| registered) {
                    Some(i) => opcode::WriteFixed::new(fd, ptr, len, i)
                        .offset(offset)
                        .rw_flags(flags)
                        .build(),
                    None => opcode::Write::new(fd, ptr, len)
                        .offset(offset)
                        .rw_flags(flags)
                        .build(),
                }
            }
            OpKind::Fsync => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            OpKind::Fallocate { mode, len } => opcode::Fallocate::new(fd, *len)
                .offset(offset)
                .mode(*mode)
                .build(),
        };
        sqe.user_data(slot as u64)
    }

    fn complete(&mut self, slot: usize, result: i32) {
        let entry = self.slots[slot]
            .as_mut()
            .expect("completion for a slot in use");
        if result >= 0 {
            let total = match &entry.op.kind {
                OpKind::Read { buf } | OpKind::Write { buf, .. } => buf.len(),
                _ => 0,
            };
            entry.done_bytes += result as usize;
            if entry.done_bytes < total {
                if result == 0 {
                    return self.finish(
                        slot,
                        Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "short transfer: end of the disk reached",
                        )),
                    );
                }
                // Short transfer (rare: signals, some filesystems): continue where it stopped.
                self.backlog.push_back(slot);
                return;
            }
            self.finish(slot, Ok(()));
        } else {
            self.finish(slot, Err(io::Error::from_raw_os_error(-result)));
        }
    }

    fn finish(&mut self, slot: usize, result: io::Result<()>) {
        let entry = self.slots[slot].take().expect("slot in use");
        self.free.push(slot);
        self.inflight -= 1;
        entry.op.complete(result);
    }
}
