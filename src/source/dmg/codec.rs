//! Decoding one UDIF run. Every codec goes through `Read`, so output is
//! bounded by the run's declared size: a run that decodes to more or fewer
//! bytes is an error, and a decompression bomb never grows a buffer.

use std::io::Read;

use anyhow::{Result, bail};

use super::udif::{Run, RunKind};

/// Decodes the stored bytes `input` of `run` into `out`, which is exactly
/// the run's size.
pub fn decode(run: &Run, input: &[u8], out: &mut [u8]) -> Result<()> {
    let mut lzfse = lzfse_rust::LzfseRingDecoder::default();
    let mut reader: Box<dyn Read + '_> = match run.kind {
        RunKind::Raw => {
            out.copy_from_slice(input);
            return Ok(());
        }
        RunKind::Zero | RunKind::Free => {
            out.fill(0);
            return Ok(());
        }
        RunKind::Adc => Box::new(adc::AdcDecoder::new(input)),
        RunKind::Zlib => Box::new(flate2::read::ZlibDecoder::new(input)),
        RunKind::Bzip2 => Box::new(bzip2::read::BzDecoder::new(input)),
        RunKind::Lzfse => Box::new(lzfse.reader_bytes(input)),
        RunKind::Lzma => Box::new(liblzma::read::XzDecoder::new(input)),
    };
    let what = run.kind.name();
    let got = crate::io::read_full(&mut reader, out)
        .map_err(|e| anyhow::anyhow!("its {what} data does not decode ({e})"))?;
    if got < out.len() {
        bail!(
            "its {what} data decodes to {got} bytes, not the {} its sectors need",
            out.len()
        );
    }
    let mut extra = [0u8; 1];
    if matches!(reader.read(&mut extra), Ok(1)) {
        bail!(
            "its {what} data decodes to more than the {} bytes its sectors hold",
            out.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn run(kind: RunKind, len: usize) -> Run {
        Run {
            kind,
            sector: 0,
            sectors: 1,
            offset: 0,
            len: len as u64,
        }
    }

    fn sector() -> Vec<u8> {
        (0..512u32).map(|i| (i * 7 % 13) as u8).collect()
    }

    #[test]
    fn zlib_round_trip_and_size_mismatches() {
        let data = sector();
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&data).unwrap();
        let packed = z.finish().unwrap();
        let mut out = vec![0u8; 512];
        decode(&run(RunKind::Zlib, packed.len()), &packed, &mut out).unwrap();
        assert_eq!(out, data);

        let err = decode(&run(RunKind::Zlib, packed.len()), &packed, &mut out[..0])
            .unwrap_err()
            .to_string();
        assert!(err.contains("more than"), "{err}");
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&data[..100]).unwrap();
        let small = z.finish().unwrap();
        let err = decode(&run(RunKind::Zlib, small.len()), &small, &mut out)
            .unwrap_err()
            .to_string();
        assert!(err.contains("decodes to 100 bytes"), "{err}");
        let err = decode(&run(RunKind::Zlib, 3), b"\x78\x9c\xff", &mut out)
            .unwrap_err()
            .to_string();
        assert!(err.contains("zlib data does not decode"), "{err}");
    }

    #[test]
    fn lzfse_and_bzip2_round_trip() {
        let data = sector();
        let mut packed = Vec::new();
        lzfse_rust::encode_bytes(&data, &mut packed).unwrap();
        let mut out = vec![0u8; 512];
        decode(&run(RunKind::Lzfse, packed.len()), &packed, &mut out).unwrap();
        assert_eq!(out, data);
        let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::best());
        bz.write_all(&data).unwrap();
        let packed = bz.finish().unwrap();
        out.fill(0);
        decode(&run(RunKind::Bzip2, packed.len()), &packed, &mut out).unwrap();
        assert_eq!(out, data);
    }

    /// Garbage and damaged streams give errors (or wrong bytes, which the
    /// table CRC catches), never a panic or an oversized buffer.
    #[test]
    fn garbage_never_panics() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let data = sector();
        let mut lz = Vec::new();
        lzfse_rust::encode_bytes(&data, &mut lz).unwrap();
        let mut out = vec![0u8; 512];
        for kind in [
            RunKind::Adc,
            RunKind::Zlib,
            RunKind::Bzip2,
            RunKind::Lzfse,
            RunKind::Lzma,
        ] {
            for i in 0..300 {
                let mut input: Vec<u8> = if kind == RunKind::Lzfse && i % 2 == 0 {
                    lz.clone()
                } else {
                    (0..1 + next() % 600).map(|_| next() as u8).collect()
                };
                let at = next() as usize % input.len();
                input[at] ^= 1 << (next() % 8);
                let _ = decode(&run(kind, input.len()), &input, &mut out);
            }
        }
    }
}
