//! Transmission phase replies: simple replies and structured reply chunks.

use bytes::BufMut;

use crate::consts::*;
use crate::errno::Errno;

/// Appends a simple reply header (payload, for a successful READ, follows it).
pub fn put_simple(out: &mut Vec<u8>, cookie: u64, error: Option<Errno>) {
    out.put_u32(SIMPLE_REPLY_MAGIC);
    out.put_u32(error.map_or(0, Errno::code));
    out.put_u64(cookie);
}

fn put_chunk_header(out: &mut Vec<u8>, flags: u16, chunk_type: u16, cookie: u64, length: u32) {
    out.put_u32(STRUCTURED_REPLY_MAGIC);
    out.put_u16(flags);
    out.put_u16(chunk_type);
    out.put_u64(cookie);
    out.put_u32(length);
}

/// Appends the header of a final NBD_REPLY_TYPE_OFFSET_DATA chunk; `data_bytes` of data follow.
pub fn put_offset_data_header(out: &mut Vec<u8>, cookie: u64, offset: u64, data_bytes: u32) {
    let length = data_bytes
        .checked_add(8)
        .expect("read length is bounded by the maximum block size");
    put_chunk_header(out, REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, cookie, length);
    out.put_u64(offset);
}

/// Appends a final NBD_REPLY_TYPE_NONE chunk (success with nothing more to say).
pub fn put_structured_done(out: &mut Vec<u8>, cookie: u64) {
    put_chunk_header(out, REPLY_FLAG_DONE, REPLY_TYPE_NONE, cookie, 0);
}

/// Appends a final NBD_REPLY_TYPE_ERROR chunk with a message for the client's log.
pub fn put_structured_error(out: &mut Vec<u8>, cookie: u64, error: Errno, message: &str) {
    let message = &message.as_bytes()[..message.len().min(4096)];
    let length = 6 + message.len() as u32;
    put_chunk_header(out, REPLY_FLAG_DONE, REPLY_TYPE_ERROR, cookie, length);
    out.put_u32(error.code());
    out.put_u16(message.len() as u16);
    out.put_slice(message);
}

/// One `base:allocation` extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub length: u32,
    pub flags: u32,
}

/// Appends a final NBD_REPLY_TYPE_BLOCK_STATUS chunk for one meta context.
pub fn put_block_status(out: &mut Vec<u8>, cookie: u64, context_id: u32, extents: &[Extent]) {
    let length = 4 + 8 * extents.len() as u32;
    put_chunk_header(
        out,
        REPLY_FLAG_DONE,
        REPLY_TYPE_BLOCK_STATUS,
        cookie,
        length,
    );
    out.put_u32(context_id);
    for e in extents {
        out.put_u32(e.length);
        out.put_u32(e.flags);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_reply_layout() {
        let mut out = Vec::new();
        put_simple(&mut out, 0x0102_0304_0506_0708, Some(Errno::NoSpc));
        assert_eq!(
            out,
            [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 28, 1, 2, 3, 4, 5, 6, 7, 8]
        );
    }

    #[test]
    fn structured_error_chunk_layout() {
        let mut out = Vec::new();
        put_structured_error(&mut out, 1, Errno::Inval, "no");
        assert_eq!(&out[..4], &STRUCTURED_REPLY_MAGIC.to_be_bytes());
        assert_eq!(&out[4..6], &[0, 1]); // DONE
        assert_eq!(&out[6..8], &REPLY_TYPE_ERROR.to_be_bytes());
        assert_eq!(&out[16..20], &8u32.to_be_bytes()); // 4 + 2 + "no"
        assert_eq!(&out[20..24], &22u32.to_be_bytes());
        assert_eq!(&out[24..], &[0, 2, b'n', b'o']);
    }

    #[test]
    fn offset_data_length_covers_offset_and_data() {
        let mut out = Vec::new();
        put_offset_data_header(&mut out, 9, 4096, 512);
        assert_eq!(out.len(), CHUNK_HEADER_BYTES + 8);
        assert_eq!(&out[16..20], &520u32.to_be_bytes());
        assert_eq!(&out[20..28], &4096u64.to_be_bytes());
    }
}
