//! Sets of byte ranges, kept as sorted vectors of `Range<u64>`.

use std::ops::Range;

/// Sorts ranges, merges overlapping or adjacent ones and drops empty ones:
/// the canonical form every range list in reimage is kept in.
pub fn normalize(mut ranges: Vec<Range<u64>>) -> Vec<Range<u64>> {
    ranges.retain(|r| r.start < r.end);
    ranges.sort_unstable_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn normalize_sorts_merges_and_drops_empty() {
        assert_eq!(
            super::normalize(vec![10..20, 0..5, 5..8, 19..30, 40..40, 50..60]),
            vec![0..8, 10..30, 50..60]
        );
        assert_eq!(super::normalize(vec![]), vec![]);
    }
}
