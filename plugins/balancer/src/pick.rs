//! Pure selection logic, unit-tested natively.

/// Longest weighted sequence kept; larger weight sums are scaled down
/// proportionally (after dividing by their common divisor).
pub const MAX_SEQUENCE: u64 = 10_000;

/// The slot of `turn` in a cycle of `len` (> 0) slots.
pub fn slot(turn: u64, len: usize) -> usize {
    (turn % len as u64) as usize
}

/// One full cycle of nginx's smooth weighted round-robin over `(index, weight)`
/// pairs: each index appears in proportion to its weight, spread out rather
/// than in blocks. Never empty for a non-empty input.
pub fn smooth_weighted_sequence(weighted: &[(u32, u32)]) -> Vec<u32> {
    let weights = normalized(weighted.iter().map(|&(_, w)| u64::from(w)).collect());
    let total: i64 = weights.iter().sum::<u64>() as i64;
    let mut current = vec![0i64; weights.len()];
    let mut sequence = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, &weight) in weights.iter().enumerate() {
            current[i] += weight as i64;
            // Strictly greater: on a tie the earlier endpoint wins, as in nginx.
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        sequence.push(weighted[best].0);
    }
    sequence
}

/// Weights reduced to their smallest equivalent: all-zero becomes all-one,
/// common divisors are removed, and a sum above [`MAX_SEQUENCE`] is scaled
/// down (every non-zero weight stays at least 1).
fn normalized(mut weights: Vec<u64>) -> Vec<u64> {
    if weights.iter().all(|&w| w == 0) {
        return vec![1; weights.len()];
    }
    let divisor = weights.iter().copied().fold(0, gcd);
    weights.iter_mut().for_each(|w| *w /= divisor);
    let total: u64 = weights.iter().sum();
    if total > MAX_SEQUENCE {
        for w in weights.iter_mut().filter(|w| **w > 0) {
            *w = (*w * MAX_SEQUENCE / total).max(1);
        }
    }
    weights
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(picks: impl Iterator<Item = u32>) -> std::collections::BTreeMap<u32, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for pick in picks {
            *counts.entry(pick).or_insert(0) += 1;
        }
        counts
    }

    #[test]
    fn round_robin_is_exact() {
        let healthy = [4u32, 7, 9];
        let picks = (0..300).map(|turn| healthy[slot(turn, healthy.len())]);
        assert_eq!(counts(picks), [(4, 100), (7, 100), (9, 100)].into());
        let first: Vec<u32> = (0..4).map(|turn| healthy[slot(turn, 3)]).collect();
        assert_eq!(first, [4, 7, 9, 4]);
    }

    #[test]
    fn weighted_is_exact_and_interleaved() {
        let sequence = smooth_weighted_sequence(&[(0, 3), (1, 1)]);
        assert_eq!(sequence, [0, 0, 1, 0]);
        let picks = (0..400).map(|turn| sequence[slot(turn, sequence.len())]);
        assert_eq!(counts(picks), [(0, 300), (1, 100)].into());
    }

    #[test]
    fn weighted_matches_nginx() {
        // The example from nginx's commit introducing smooth weighted round-robin.
        let sequence = smooth_weighted_sequence(&[(0, 5), (1, 1), (2, 1)]);
        assert_eq!(sequence, [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn weighted_uses_endpoint_indexes() {
        let sequence = smooth_weighted_sequence(&[(2, 1), (5, 2)]);
        assert_eq!(sequence, [5, 2, 5]);
    }

    #[test]
    fn equal_weights_are_plain_round_robin() {
        assert_eq!(
            smooth_weighted_sequence(&[(0, 4), (1, 4), (2, 4)]),
            [0, 1, 2]
        );
        assert_eq!(smooth_weighted_sequence(&[(3, 1)]), [3]);
    }

    #[test]
    fn zero_weights_are_skipped_unless_all_zero() {
        assert_eq!(smooth_weighted_sequence(&[(0, 0), (1, 2)]), [1]);
        assert_eq!(smooth_weighted_sequence(&[(0, 0), (1, 0)]), [0, 1]);
    }

    #[test]
    fn huge_weights_are_bounded() {
        let sequence = smooth_weighted_sequence(&[(0, u32::MAX), (1, 1), (2, 7919)]);
        assert!(
            sequence.len() as u64 <= MAX_SEQUENCE + 3,
            "{}",
            sequence.len()
        );
        let counts = counts(sequence.iter().copied());
        assert_eq!(counts[&1], 1);
        assert!(counts[&0] > 9_000);
    }
}
