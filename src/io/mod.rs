//! I/O building blocks: aligned buffers for O_DIRECT, a direct-I/O
//! sequential reader, and the small adapters the copy is built from.

mod aligned;
mod direct;

pub use aligned::AlignedBuf;
pub use direct::{DirectReader, open_read_direct};

/// A forward-only byte stream that knows its position: a local file read
/// with O_DIRECT, or the body of an HTTP response. Sources read images
/// through this, whatever carries them.
pub trait SeqRead: std::io::Read + Send {
    /// Bytes consumed so far.
    fn position(&self) -> u64;

    /// Moves forward to `offset`, never backwards. The default reads and
    /// discards, which is what a network stream has to do.
    fn skip_to(&mut self, offset: u64) -> std::io::Result<()> {
        skip_by_reading(self, offset)
    }
}

/// Moves `r` forward to `offset` by reading and discarding.
pub fn skip_by_reading<R: SeqRead + ?Sized>(r: &mut R, offset: u64) -> std::io::Result<()> {
    let here = r.position();
    if offset < here {
        return Err(std::io::Error::other(
            "internal: cannot seek a stream backwards",
        ));
    }
    let gap = offset - here;
    let skipped = std::io::copy(&mut std::io::Read::take(&mut *r, gap), &mut std::io::sink())?;
    if skipped < gap {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Alignment of every I/O buffer, in bytes. O_DIRECT needs buffers aligned to
/// the device's logical block size; 4096 covers 512e and 4Kn devices alike.
pub const IO_ALIGN: usize = 4096;

/// True when every byte of `buf` is zero. Compares machine words, which is
/// fast enough that raw restores can test every buffer (zero runs become
/// BLKZEROOUT instead of writes).
pub fn is_zero(buf: &[u8]) -> bool {
    let (head, words, tail) = {
        // SAFETY: u64 has no invalid bit patterns, so reinterpreting the
        // aligned middle of a byte slice as u64 words is sound.
        unsafe { buf.align_to::<u64>() }
    };
    head.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
pub fn read_full(r: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    #[test]
    fn is_zero_sees_every_byte() {
        let mut v = vec![0u8; 4099];
        assert!(super::is_zero(&v));
        for i in [0, 1, 7, 8, 4000, 4098] {
            v[i] = 1;
            assert!(!super::is_zero(&v), "byte {i}");
            v[i] = 0;
        }
        assert!(super::is_zero(&[]));
    }
}
