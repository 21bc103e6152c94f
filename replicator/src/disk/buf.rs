//! Aligned I/O buffers. Buffers are owned by whoever holds the `IoBuf`; while an operation is in
//! flight the engine holds it, so a dropped future can never free memory the kernel writes to.
//! Small buffers come from a pool that the io_uring engine registers with the kernel.

use std::alloc::{self, Layout};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

/// Memory alignment of every buffer (enough for O_DIRECT on any device we know).
pub const BUF_ALIGN_BYTES: usize = 4096;

/// An owned, aligned byte buffer of a fixed length.
pub struct IoBuf {
    ptr: NonNull<u8>,
    len: usize,
    origin: Origin,
}

enum Origin {
    Heap(Layout),
    Pool(Arc<Pool>, u16),
}

// SAFETY: an IoBuf owns its memory exclusively (like a Box<[u8]>); the pointer is never shared.
unsafe impl Send for IoBuf {}
// SAFETY: shared references only give out `&[u8]`, as for Box<[u8]>.
unsafe impl Sync for IoBuf {}

impl IoBuf {
    /// A zeroed buffer of `len` bytes from the heap.
    pub fn heap(len: usize) -> IoBuf {
        let cap = len.max(1).next_multiple_of(BUF_ALIGN_BYTES);
        let layout = Layout::from_size_align(cap, BUF_ALIGN_BYTES).expect("valid buffer layout");
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        IoBuf {
            ptr,
            len,
            origin: Origin::Heap(layout),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Index of the registered (fixed) buffer this one lives in, for READ/WRITE_FIXED.
    pub fn fixed_index(&self) -> Option<u16> {
        match &self.origin {
            Origin::Pool(pool, i) if pool.registrable => Some(*i),
            _ => None,
        }
    }

    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl AsRef<[u8]> for IoBuf {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: ptr points to at least `len` initialised (zeroed at allocation) bytes we own.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl AsMut<[u8]> for IoBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in as_ref, and `&mut self` guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for IoBuf {
    fn drop(&mut self) {
        match &self.origin {
            // SAFETY: allocated in `heap` with exactly this layout.
            Origin::Heap(layout) => unsafe { alloc::dealloc(self.ptr.as_ptr(), *layout) },
            Origin::Pool(pool, index) => pool.release(*index),
        }
    }
}

impl std::fmt::Debug for IoBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "IoBuf({} bytes, fixed={:?})",
            self.len,
            self.fixed_index()
        )
    }
}

/// A fixed set of equal-sized aligned buffers in one allocation (registrable with io_uring).
pub struct Pool {
    base: NonNull<u8>,
    layout: Layout,
    buffer_bytes: usize,
    count: u16,
    free: Mutex<Vec<u16>>,
    /// Whether the io_uring engine registers this pool (only one pool can be).
    registrable: bool,
}

// SAFETY: the pool's memory is handed out slot by slot to exclusive IoBuf owners; the free list is
// behind a mutex.
unsafe impl Send for Pool {}
// SAFETY: as above.
unsafe impl Sync for Pool {}

impl Pool {
    /// A pool the io_uring engine registers, so its buffers use READ/WRITE_FIXED.
    pub fn registrable(count: u16, buffer_bytes: usize) -> Arc<Pool> {
        Pool::new(count, buffer_bytes, true)
    }

    /// A pool that only saves allocating (and zeroing) large buffers per request.
    pub fn plain(count: u16, buffer_bytes: usize) -> Arc<Pool> {
        Pool::new(count, buffer_bytes, false)
    }

    fn new(count: u16, buffer_bytes: usize, registrable: bool) -> Arc<Pool> {
        assert!(count > 0 && buffer_bytes % BUF_ALIGN_BYTES == 0 && buffer_bytes > 0);
        let layout = Layout::from_size_align(usize::from(count) * buffer_bytes, BUF_ALIGN_BYTES)
            .expect("valid pool layout");
        // SAFETY: non-zero size, checked above.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let base = NonNull::new(raw).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        Arc::new(Pool {
            base,
            layout,
            buffer_bytes,
            count,
            free: Mutex::new((0..count).rev().collect()),
            registrable,
        })
    }

    /// `(address, length)` of every slot, in index order, for registration.
    pub fn slots(&self) -> Vec<(*mut u8, usize)> {
        (0..self.count)
            .map(|i| (self.slot_ptr(i).as_ptr(), self.buffer_bytes))
            .collect()
    }

    fn slot_ptr(&self, index: u16) -> NonNull<u8> {
        assert!(index < self.count);
        // SAFETY: index < count, so the offset stays inside the allocation.
        unsafe { self.base.add(usize::from(index) * self.buffer_bytes) }
    }

    /// A buffer of `len` bytes from the pool, or None when it is too large or all are in use.
    pub fn take(self: &Arc<Pool>, len: usize) -> Option<IoBuf> {
        if len > self.buffer_bytes {
            return None;
        }
        let index = self.free.lock().expect("pool lock").pop()?;
        Some(IoBuf {
            ptr: self.slot_ptr(index),
            len,
            origin: Origin::Pool(self.clone(), index),
        })
    }

    fn release(&self, index: u16) {
        let mut free = self.free.lock().expect("pool lock");
        assert!(
            free.len() < usize::from(self.count),
            "buffer released twice"
        );
        free.push(index);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; every IoBuf holds an Arc, so none is alive.
        unsafe { alloc::dealloc(self.base.as_ptr(), self.layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heap_buffers_are_aligned_and_zeroed() {
        for len in [0, 1, 511, 4096, 65537] {
            let b = IoBuf::heap(len);
            assert_eq!(b.as_ptr() as usize % BUF_ALIGN_BYTES, 0);
            assert_eq!(b.len(), len);
            assert!(b.as_ref().iter().all(|&x| x == 0));
        }
    }

    #[test]
    fn pool_hands_out_distinct_slots_and_takes_them_back() {
        let pool = Pool::registrable(2, 8192);
        let mut a = pool.take(100).expect("slot");
        let b = pool.take(8192).expect("slot");
        assert!(pool.take(1).is_none(), "pool exhausted");
        assert_ne!(a.fixed_index(), b.fixed_index());
        a.as_mut().fill(7);
        assert!(b.as_ref().iter().all(|&x| x == 0));
        drop(a);
        assert!(pool.take(8193).is_none(), "too large for a slot");
        assert!(pool.take(1).is_some());
    }
}
