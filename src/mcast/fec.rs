//! How chunks become RaptorQ symbols (RFC 6330) and how many to send.
//! Each chunk's payload is one source block of K symbols of
//! `SYMBOL_SIZE` bytes, zero-padded at the end; any K (and a few) distinct
//! symbols rebuild it. K is the payload's symbol count rounded up to a
//! multiple of [`BLOCK_GRANULE`]: the padding symbols are zero on both
//! ends and never sent.

use std::collections::HashMap;

use raptorq::{
    EncodingPacket, ObjectTransmissionInformation, Octet, PayloadId, SourceBlockDecoder,
    SourceBlockEncoder, Symbol,
};

use super::wire::SYMBOL_SIZE;

/// RFC 6330's largest source block, in symbols: chunks above 79 MB cannot
/// be multicast (prepared images use 1 MiB chunks).
pub const MAX_SYMBOLS: u32 = 56403;

/// Source symbols of a payload of `len` bytes: the ones sent.
pub fn source_symbols(len: u64) -> u32 {
    len.div_ceil(u64::from(SYMBOL_SIZE)) as u32
}

/// The raptorq crate caches an encoding schedule (worth a whole solve,
/// 1.4 ms for a 1 MiB block here) per K, for 64 values of K. Compressed
/// chunks come in every size, so with K the exact symbol count nearly
/// every chunk would pay for a new schedule; rounded up to a multiple of
/// this, 1 MiB chunks need at most 24.
pub const BLOCK_GRANULE: u32 = 32;

/// Symbols of the code's block (K) for a payload of `len` bytes
/// (`source_symbols(len) <= MAX_SYMBOLS`).
pub fn block_symbols(len: u64) -> u32 {
    source_symbols(len)
        .next_multiple_of(BLOCK_GRANULE)
        .min(MAX_SYMBOLS)
}

/// Padded length of a payload of `len` bytes: what the code works on.
pub fn padded_len(len: u64) -> usize {
    block_symbols(len) as usize * SYMBOL_SIZE as usize
}

/// The code's parameters for a block of `k` symbols (`k <= MAX_SYMBOLS`).
pub fn block_config(k: u32) -> ObjectTransmissionInformation {
    config(k, SYMBOL_SIZE)
}

fn config(k: u32, symbol_size: u16) -> ObjectTransmissionInformation {
    ObjectTransmissionInformation::new(u64::from(k) * u64::from(symbol_size), symbol_size, 1, 1, 1)
}

/// Repair symbols received for one block, kept back to back.
#[derive(Default)]
pub(super) struct Repairs {
    esis: Vec<u32>,
    bytes: Vec<u8>,
}

impl Repairs {
    pub(super) fn push(&mut self, esi: u32, symbol: &[u8]) {
        self.esis.push(esi);
        self.bytes.extend_from_slice(symbol);
    }

    pub(super) fn len(&self) -> usize {
        self.esis.len()
    }

    pub(super) fn contains(&self, esi: u32) -> bool {
        self.esis.contains(&esi)
    }

    fn iter(&self) -> impl Iterator<Item = (u32, &[u8])> {
        self.esis
            .iter()
            .copied()
            .zip(self.bytes.chunks(SYMBOL_SIZE as usize))
    }
}

/// Rebuilds the lost source symbols of a block of `k`: `data` is the
/// padded block with every source symbol that arrived in place and the
/// lost ones zero, `have` says which arrived. Returns false when the
/// symbols at hand do not determine the block yet (a couple more almost
/// always do).
pub(super) fn decode(
    k: u32,
    data: &mut [u8],
    have: &[bool],
    repairs: &Repairs,
    coefficients: &mut Coefficients,
) -> bool {
    let missing: Vec<u32> = (0..k).filter(|&i| !have[i as usize]).collect();
    if missing.len() > repairs.len() {
        return false;
    }
    if missing.len() * ERASURE_SOLVE_LIMIT <= k as usize {
        let rows = coefficients.for_block(k, &missing);
        return solve_erasures(k, data, &missing, repairs, &rows);
    }
    let size = SYMBOL_SIZE as usize;
    let mut packets: Vec<EncodingPacket> = (0..k)
        .filter(|&i| have[i as usize])
        .map(|i| {
            let at = i as usize * size;
            EncodingPacket::new(PayloadId::new(0, i), data[at..at + size].to_vec())
        })
        .collect();
    packets.extend(
        repairs
            .iter()
            .map(|(esi, s)| EncodingPacket::new(PayloadId::new(0, esi), s.to_vec())),
    );
    let mut decoder = SourceBlockDecoder::new(0, &block_config(k), data.len() as u64);
    match decoder.decode(packets) {
        Some(block) => {
            data.copy_from_slice(&block);
            true
        }
        None => false,
    }
}

/// Up to one lost source symbol in this many, [`solve_erasures`] beats a
/// general RaptorQ decode (1 MiB blocks, K = 768, timed in a release
/// build: 5 % lost 0.9–1.4 ms against 2.0–2.2, 10 % 1.2–2.2 against
/// 1.9–3.6, 15 % 1.6–2.6 against 2.1–3.7, 20 % even); its elimination
/// grows as m², so past this the general decoder takes over.
const ERASURE_SOLVE_LIMIT: usize = 6;

/// Repair symbol `esi` of a block of `k` from its encoder.
fn repair_symbol(enc: &SourceBlockEncoder, k: u32, esi: u32) -> Vec<u8> {
    let packet = enc.repair_packets(esi - k, 1).pop();
    packet.expect("one repair symbol asked for").split().1
}

/// Largest block whose identity encoder [`Coefficients`] keeps: one holds
/// about 2·K² bytes (2 MiB at this K, chunks up to 1.4 MB). Larger blocks
/// get their coefficients from an encode of m-byte symbols per chunk.
const IDENTITY_MAX_K: u32 = 1024;
/// Bytes of identity encoders kept at once. The block sizes of an image
/// of 1 MiB chunks (K = 32, 64, … 768) take 10 MiB in all.
const IDENTITY_BUDGET: usize = 16 << 20;

/// Where the erasure solve gets c(e, i), the coefficient of source symbol
/// i in repair symbol e. Encoding the K × K identity block (source symbol
/// i the i-th unit vector of K bytes) makes repair symbol e the row
/// c(e, 0 … K) itself; that encode costs about as much as one chunk's
/// (0.8 ms at K = 768) and is done once per K, where an encode of m-byte
/// unit symbols per chunk costs 0.5 ms every time (the encoder's work per
/// symbol operation hardly shrinks with the symbol).
#[derive(Default)]
pub(super) struct Coefficients {
    identities: HashMap<u32, SourceBlockEncoder>,
    bytes: usize,
}

impl Coefficients {
    /// The coefficients on the `missing` source symbols of a block of `k`.
    fn for_block(&mut self, k: u32, missing: &[u32]) -> CoefficientRows<'_> {
        if k > IDENTITY_MAX_K {
            return CoefficientRows::Units(unit_encoder(k, missing));
        }
        let size = 2 * (k as usize).pow(2);
        if !self.identities.contains_key(&k) && self.bytes + size > IDENTITY_BUDGET {
            self.identities.clear();
            self.bytes = 0;
        }
        let enc = self.identities.entry(k).or_insert_with(|| {
            self.bytes += size;
            identity_encoder(k)
        });
        CoefficientRows::Identity(enc)
    }
}

/// The encoder of the K × K identity block.
fn identity_encoder(k: u32) -> SourceBlockEncoder {
    let n = k as usize;
    let mut identity = vec![0; n * n];
    for i in 0..n {
        identity[i * n + i] = 1;
    }
    SourceBlockEncoder::new(0, &config(k, k as u16), &identity)
}

/// The encoder of a block of m-byte symbols where lost symbol j is the
/// j-th unit vector and every other symbol zero: its repair symbol e is
/// c(e, missing_0 … missing_m).
fn unit_encoder(k: u32, missing: &[u32]) -> SourceBlockEncoder {
    let m = missing.len();
    let mut unit = vec![0; k as usize * m];
    for (j, &i) in missing.iter().enumerate() {
        unit[i as usize * m + j] = 1;
    }
    SourceBlockEncoder::new(0, &config(k, m as u16), &unit)
}

enum CoefficientRows<'a> {
    Identity(&'a SourceBlockEncoder),
    Units(SourceBlockEncoder),
}

impl CoefficientRows<'_> {
    /// c(esi, missing_j) for each j.
    fn row(&self, k: u32, esi: u32, missing: &[u32]) -> Vec<u8> {
        match self {
            CoefficientRows::Identity(enc) => {
                let all = repair_symbol(enc, k, esi);
                missing.iter().map(|&i| all[i as usize]).collect()
            }
            CoefficientRows::Units(enc) => repair_symbol(enc, k, esi),
        }
    }
}

/// Solves for the `m` lost source symbols alone. The code is linear over
/// GF(256), byte by byte: a repair symbol is `Σ c(e,i)·source_i` with the
/// same coefficients at every byte. So (1) encoding the block with the lost
/// symbols zero gives each repair symbol's part from the symbols we have,
/// which leaves `r_e - known_e = Σ_j c(e, lost_j)·x_j`; (2) `coefficients`
/// gives the c(e, lost_j); (3) Gaussian elimination over m independent
/// repair symbols yields the x_j. That is one encode (whose operation
/// schedule the raptorq crate caches per K) and about m² symbol operations,
/// where a general decode solves for all K + S + H intermediate symbols of
/// a fresh constraint matrix.
fn solve_erasures(
    k: u32,
    data: &mut [u8],
    missing: &[u32],
    repairs: &Repairs,
    coefficients: &CoefficientRows,
) -> bool {
    let m = missing.len();
    if m == 0 {
        return true;
    }
    let size = SYMBOL_SIZE as usize;
    let known_enc = SourceBlockEncoder::new(0, &block_config(k), data);
    // Rows [c(e, lost_0..m) | r_e - known_e], reduced as they come so that
    // each new row is zero at the earlier rows' pivots.
    let mut rows: Vec<(usize, Symbol)> = Vec::with_capacity(m);
    for (esi, received) in repairs.iter() {
        let mut row = coefficients.row(k, esi, missing);
        let known = repair_symbol(&known_enc, k, esi);
        row.extend(known.iter().zip(received).map(|(a, b)| a ^ b));
        let mut row = Symbol::new(row);
        for (pivot, earlier) in &rows {
            let f = row.as_bytes()[*pivot];
            add_scaled(&mut row, earlier, f);
        }
        let Some(pivot) = row.as_bytes()[..m].iter().position(|&b| b != 0) else {
            continue; // dependent on the rows already taken
        };
        let lead = row.as_bytes()[pivot];
        if lead != 1 {
            row.mulassign_scalar(&(Octet::one() / Octet::new(lead)));
        }
        rows.push((pivot, row));
        if rows.len() == m {
            break;
        }
    }
    if rows.len() < m {
        return false;
    }
    // Back substitution: the last row is a unit row; clear its pivot from
    // the rows before it, and so on up.
    for t in (1..m).rev() {
        let (before, rest) = rows.split_at_mut(t);
        let (pivot, row) = &rest[0];
        for (_, earlier) in before {
            let f = earlier.as_bytes()[*pivot];
            add_scaled(earlier, row, f);
        }
    }
    for (pivot, row) in rows {
        let at = missing[pivot] as usize * size;
        data[at..at + size].copy_from_slice(&row.as_bytes()[m..]);
    }
    true
}

/// `row += f·other` over GF(256).
fn add_scaled(row: &mut Symbol, other: &Symbol, f: u8) {
    match f {
        0 => {}
        1 => *row += other,
        _ => row.fused_addassign_mul_scalar(other, &Octet::new(f)),
    }
}

/// Symbols to send of a chunk of `k` source symbols so that a receiver
/// losing a fraction `loss` of them still gets k + 2 with three standard deviations to
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

    #[test]
    fn sizes() {
        assert_eq!(source_symbols(1), 1);
        assert_eq!(source_symbols(1408), 1);
        assert_eq!(source_symbols(1409), 2);
        assert_eq!(source_symbols(1 << 20), 745);
        assert_eq!(block_symbols(1), 32);
        assert_eq!(block_symbols(1 << 20), 768);
        assert_eq!(padded_len(1 << 20), 768 * 1408);
        let largest = u64::from(MAX_SYMBOLS) * 1408;
        assert_eq!(block_symbols(largest), MAX_SYMBOLS);
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
        let data: Vec<u8> = (0..k as usize * 1408)
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

    /// A block of `k` symbols of varied bytes and its encoder.
    fn block(k: u32, seed: usize) -> (Vec<u8>, SourceBlockEncoder) {
        let data: Vec<u8> = (0..k as usize * 1408)
            .map(|i| ((i * 31 + seed) % 251) as u8 ^ (i >> 9) as u8)
            .collect();
        let enc = SourceBlockEncoder::new(0, &block_config(k), &data);
        (data, enc)
    }

    /// Decodes `k`-symbol blocks after losing the source symbols `lost`
    /// picks, with the first `extra` + lost-count repair symbols of those
    /// `keep_repair` lets through.
    fn lose_and_decode(
        k: u32,
        lost: impl Fn(u32) -> bool,
        keep_repair: impl Fn(u32) -> bool,
        extra: usize,
    ) -> Option<Vec<u8>> {
        let (data, enc) = block(k, k as usize);
        let mut have = vec![true; k as usize];
        let mut got = data.clone();
        for i in (0..k).filter(|&i| lost(i)) {
            have[i as usize] = false;
            got[i as usize * 1408..(i as usize + 1) * 1408].fill(0);
        }
        let m = have.iter().filter(|h| !**h).count();
        let mut repairs = Repairs::default();
        for p in enc.repair_packets(0, 2 * k + 40) {
            let esi = p.payload_id().encoding_symbol_id();
            if keep_repair(esi) && repairs.len() < m + extra {
                repairs.push(esi, p.data());
            }
        }
        decode(k, &mut got, &have, &repairs, &mut Coefficients::default()).then(|| {
            assert_eq!(got, data, "decoded but wrong");
            got
        })
    }

    /// Few losses take the erasure solve, many the full decode; both give
    /// back the block, whatever the loss pattern and whichever repair
    /// symbols made it. A block above `IDENTITY_MAX_K` takes the erasure
    /// solve's other source of coefficients.
    #[test]
    fn lost_symbols_come_back_on_either_path() {
        for k in [8, 9, 57, 745, IDENTITY_MAX_K + 1] {
            for rate in [1, 3, 5, 11, 12, 30, 100] {
                let lost = |i: u32| (i.wrapping_mul(2_654_435_761) >> 7) % 100 < rate;
                let m = (0..k).filter(|&i| lost(i)).count();
                let keep = |e: u32| e % 7 != 2;
                assert!(
                    lose_and_decode(k, lost, keep, 3).is_some(),
                    "k {k}, {m} lost, 3 extra"
                );
            }
        }
        // A single lost symbol, its one repair symbol.
        assert!(lose_and_decode(745, |i| i == 744, |_| true, 0).is_some());
    }

    /// Too few symbols: no answer, nothing made up. Exactly as many
    /// repair symbols as lost ones almost always suffice.
    #[test]
    fn too_few_symbols_decode_nothing() {
        let lost = |i: u32| i % 20 == 3;
        assert!(lose_and_decode(745, lost, |_| true, 0).is_some());
        let (_, enc) = block(745, 1);
        let mut data = vec![0; 745 * 1408];
        let have: Vec<bool> = (0..745).map(|i| !lost(i)).collect();
        let mut repairs = Repairs::default();
        for p in enc.repair_packets(0, 36) {
            repairs.push(p.payload_id().encoding_symbol_id(), p.data());
        }
        // 38 lost, 36 repair symbols.
        let mut coefficients = Coefficients::default();
        assert!(!decode(745, &mut data, &have, &repairs, &mut coefficients));
        let missing: Vec<u32> = (0..745).filter(|&i| lost(i)).collect();
        let rows = coefficients.for_block(745, &missing);
        assert!(!solve_erasures(745, &mut data, &missing, &repairs, &rows));
    }

    /// Both sources of coefficients agree, for any lost symbols and any
    /// repair symbol, and the identity encoders kept stay within budget.
    #[test]
    fn identity_rows_are_the_unit_encoders_coefficients() {
        let mut coefficients = Coefficients::default();
        for k in [8, 100, 745] {
            let missing: Vec<u32> = (0..k).filter(|i| i % 9 == 4 || *i == k - 1).collect();
            let units = CoefficientRows::Units(unit_encoder(k, &missing));
            let identity = coefficients.for_block(k, &missing);
            assert!(matches!(identity, CoefficientRows::Identity(_)));
            for esi in [k, k + 1, k + 37, 3 * k] {
                let row = units.row(k, esi, &missing);
                assert_eq!(row.len(), missing.len());
                assert!(row.iter().any(|&c| c != 0), "k {k}, esi {esi}");
                assert_eq!(identity.row(k, esi, &missing), row, "k {k}, esi {esi}");
            }
        }
        assert!(coefficients.bytes <= IDENTITY_BUDGET);
        for k in (32..=IDENTITY_MAX_K).step_by(32) {
            coefficients.for_block(k, &[0]);
            assert!(
                coefficients.bytes <= IDENTITY_BUDGET,
                "{}",
                coefficients.bytes
            );
        }
        let above = coefficients.for_block(IDENTITY_MAX_K + 1, &[0]);
        assert!(matches!(above, CoefficientRows::Units(_)));
    }
}
