//! How chunks become RaptorQ symbols (RFC 6330) and how many to send.
//! Each chunk's payload is one source block of K symbols of
//! `SYMBOL_SIZE` bytes, zero-padded at the end; any K (and a few) distinct
//! symbols rebuild it.

use raptorq::ObjectTransmissionInformation;

use super::wire::SYMBOL_SIZE;

/// RFC 6330's largest source block, in symbols: chunks above 79 MB cannot
/// be multicast (prepared images use 1 MiB chunks).
pub const MAX_SYMBOLS: u32 = 56403;

/// Symbols (K) of a payload of `len` bytes.
pub fn source_symbols(len: u64) -> u32 {
    len.div_ceil(u64::from(SYMBOL_SIZE)) as u32
}

/// Padded length of a payload of `len` bytes: what the code works on.
pub fn padded_len(len: u64) -> usize {
    source_symbols(len) as usize * SYMBOL_SIZE as usize
}

/// The code's parameters for a block of `k` symbols (`k <= MAX_SYMBOLS`).
pub fn block_config(k: u32) -> ObjectTransmissionInformation {
    ObjectTransmissionInformation::new(u64::from(k) * u64::from(SYMBOL_SIZE), SYMBOL_SIZE, 1, 1, 8)
}

/// Symbols to send of a block of `k` so that a receiver losing a fraction
/// `loss` of them still gets K + 2 with three standard deviations to
/// spare: then nearly every chunk decodes in the pass it is sent in, and
/// a receiver never has to wait for the loop to come round.
pub fn symbols_to_send(k: u32, loss: f64) -> u32 {
    let p = loss.clamp(0.0, 0.5);
    let need = f64::from(k) + 2.0;
    let mut n = (need / (1.0 - p)).ceil();
    while n * (1.0 - p) - 3.0 * (n * p * (1.0 - p)).sqrt() < need {
        n += 1.0;
    }
    n as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use raptorq::{EncodingPacket, SourceBlockDecoder, SourceBlockEncoder};

    #[test]
    fn sizes() {
        assert_eq!(source_symbols(1), 1);
        assert_eq!(source_symbols(1408), 1);
        assert_eq!(source_symbols(1409), 2);
        assert_eq!(padded_len(1 << 20), 745 * 1408);
    }

    #[test]
    fn more_loss_means_more_symbols() {
        assert_eq!(symbols_to_send(745, 0.0), 747);
        let (a, b, c) = (
            symbols_to_send(745, 0.01),
            symbols_to_send(745, 0.05),
            symbols_to_send(745, 0.2),
        );
        assert!(747 < a && a < b && b < c, "{a} {b} {c}");
        // 5 % loss costs about 10 % more symbols, not a second pass.
        assert!(b < 830, "{b}");
        // Loss beyond a half is planned for as a half.
        assert_eq!(symbols_to_send(10, 0.9), symbols_to_send(10, 0.5));
    }

    /// A receiver that lost symbols at the rate the sender planned for
    /// decodes the block from what it got.
    #[test]
    fn planned_loss_decodes() {
        let k = 120;
        let data: Vec<u8> = (0..padded_len(k as u64 * 1408))
            .map(|i| (i * 13 % 251) as u8)
            .collect();
        let config = block_config(k);
        let enc = SourceBlockEncoder::new(0, &config, &data);
        let n = symbols_to_send(k, 0.2);
        let mut packets = enc.source_packets();
        packets.extend(enc.repair_packets(0, n - k));
        // Repair symbol ids follow the source ids directly.
        assert_eq!(packets[k as usize].payload_id().encoding_symbol_id(), k);
        // Drop every fifth symbol: 20 % loss.
        let kept: Vec<EncodingPacket> = packets
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i % 5 != 0)
            .map(|(_, p)| p)
            .collect();
        let mut dec = SourceBlockDecoder::new(0, &config, data.len() as u64);
        assert_eq!(dec.decode(kept).as_deref(), Some(&data[..]));
    }
}
