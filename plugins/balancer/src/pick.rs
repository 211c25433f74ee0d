//! Endpoint selection that needs no host call, unit-tested natively:
//! round-robin, smooth weighted round-robin, least-request, and the power of
//! two choices over peak-EWMA latency.

use portier_sdk::upstreams::Load;

use crate::hash::mix64;

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
    let weights = normalized(
        weighted.iter().map(|&(_, w)| u64::from(w)).collect(),
        MAX_SEQUENCE,
    );
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
/// common divisors are removed, and a sum above `max_total` is scaled down
/// (every non-zero weight stays at least 1).
pub fn normalized(mut weights: Vec<u64>, max_total: u64) -> Vec<u64> {
    if weights.iter().all(|&w| w == 0) {
        return vec![1; weights.len()];
    }
    let divisor = weights.iter().copied().fold(0, gcd);
    weights.iter_mut().for_each(|w| *w /= divisor);
    let total: u64 = weights.iter().sum();
    if total > max_total {
        for w in weights.iter_mut().filter(|w| **w > 0) {
            *w = (*w * max_total / total).max(1);
        }
    }
    weights
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The endpoint with the fewest requests in flight per unit of weight,
/// `(in_flight + 1) / weight`; `None` when there is none. The `+ 1` counts
/// the request being placed, so weights decide even among idle endpoints.
///
/// When several endpoints are equally loaded, `turn` (asked only then)
/// rotates among them: idle endpoints share the traffic instead of the
/// first one getting it all.
pub fn least_request(loads: &[Load], turn: impl FnOnce() -> u64) -> Option<u32> {
    let first = loads.first()?;
    let least = loads
        .iter()
        .fold(first, |best, l| if lighter(l, best) { l } else { best });
    // Nothing is lighter than `least`, so "not heavier" means "as light".
    let tied = || loads.iter().filter(|l| !lighter(least, l));
    match tied().count() {
        1 => Some(least.index),
        n => tied().nth(slot(turn(), n)).map(|l| l.index),
    }
}

/// Whether `a` carries less load per unit of weight than `b`, compared by
/// cross-multiplying so no division (or float) is needed. The manifest
/// gives every endpoint a weight of at least 1; a 0 would count as the
/// heaviest possible load rather than divide by zero.
fn lighter(a: &Load, b: &Load) -> bool {
    let load = |l: &Load| u64::from(l.in_flight) + 1;
    load(a) * u64::from(b.weight) < load(b) * u64::from(a.weight)
}

/// The power of two choices over peak-EWMA latency: two distinct endpoints
/// at random, and the cheaper of them by `latency × (in_flight + 1) / weight`.
/// `None` when there is no endpoint.
///
/// Comparing two random endpoints instead of taking the cheapest of all
/// keeps concurrent picks (which all see the same numbers) from stampeding
/// onto one endpoint, while a slow or busy endpoint still loses nearly
/// every comparison it is in.
pub fn peak_ewma(loads: &[Load], rng: &mut Rng) -> Option<u32> {
    match loads {
        [] => None,
        [only] => Some(only.index),
        _ => {
            let (a, b) = two_distinct(loads.len(), rng);
            let (a, b) = (&loads[a], &loads[b]);
            let unsampled = unsampled_latency(loads);
            Some(if cheaper(b, a, unsampled) {
                b.index
            } else {
                a.index
            })
        }
    }
}

/// Two different positions below `n` (≥ 2), each uniformly distributed.
fn two_distinct(n: usize, rng: &mut Rng) -> (usize, usize) {
    let a = rng.below(n);
    // Draw from the n - 1 other positions by skipping over `a`.
    let b = rng.below(n - 1);
    (a, if b >= a { b + 1 } else { b })
}

/// The latency assumed for an endpoint without a sample yet: half the
/// fastest sampled one (1 µs when none has one). It wins its first
/// comparisons, so it gets the requests that give it a sample (a mean would
/// make it a coin toss against a known-slow endpoint), and each request it
/// takes raises its cost through `in_flight`, so it is not flooded either.
fn unsampled_latency(loads: &[Load]) -> u64 {
    loads
        .iter()
        .map(|l| l.latency_us)
        .filter(|&l| l > 0)
        .min()
        .map_or(1, |fastest| (fastest / 2).max(1))
}

/// Whether `a` costs less than `b`, cross-multiplied by the weights in
/// 128 bits (saturating, for latencies no real endpoint has).
fn cheaper(a: &Load, b: &Load, unsampled: u64) -> bool {
    let cost = |l: &Load| {
        let latency = if l.latency_us == 0 {
            unsampled
        } else {
            l.latency_us
        };
        u128::from(latency) * (u128::from(l.in_flight) + 1)
    };
    cost(a).saturating_mul(u128::from(b.weight)) < cost(b).saturating_mul(u128::from(a.weight))
}

/// A small pseudo-random generator (splitmix64): fast, well spread, and
/// needing no import. Good for choosing endpoints, never for secrets.
#[derive(Clone, Copy, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator starting from `seed`; any value, 0 included, is fine.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN_GAMMA);
        mix64(self.0)
    }

    /// A number below `n` (> 0); the bias of the modulo is negligible for
    /// endpoint counts.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// splitmix64's increment: 2^64 divided by the golden ratio, odd.
pub const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

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

    fn load(index: u32, weight: u32, in_flight: u32, latency_us: u64) -> Load {
        Load {
            index,
            weight,
            in_flight,
            latency_us,
        }
    }

    #[test]
    fn round_robin_is_exact() {
        let healthy = [4u32, 7, 9];
        let picks = (0..300).map(|turn| healthy[slot(turn, healthy.len())]);
        assert_eq!(counts(picks), [(4, 100), (7, 100), (9, 100)].into());
        let first: Vec<u32> = (0..7).map(|turn| healthy[slot(turn, 3)]).collect();
        assert_eq!(first, [4, 7, 9, 4, 7, 9, 4]);
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

    #[test]
    fn least_request_picks_the_least_loaded() {
        let loads = [load(0, 1, 5, 0), load(3, 1, 2, 0), load(7, 1, 9, 0)];
        let no_turn = || panic!("no tie, so no turn should be asked for");
        assert_eq!(least_request(&loads, no_turn), Some(3));
        assert_eq!(least_request(&[], no_turn), None);
        assert_eq!(least_request(&[load(4, 1, 100, 0)], no_turn), Some(4));
    }

    #[test]
    fn least_request_divides_by_weight() {
        // 4 in flight at weight 3 is (4 + 1) / 3 per unit, less than (1 + 1) / 1.
        let loads = [load(0, 1, 1, 0), load(1, 3, 4, 0)];
        assert_eq!(least_request(&loads, || unreachable!()), Some(1));
        // One more and it is (5 + 1) / 3 = 2, a tie that the turn settles.
        let loads = [load(0, 1, 1, 0), load(1, 3, 5, 0)];
        assert_eq!(least_request(&loads, || 0), Some(0));
        assert_eq!(least_request(&loads, || 1), Some(1));
        // Idle, weight still decides: 1 / 2 beats 1 / 1.
        let loads = [load(0, 1, 0, 0), load(1, 2, 0, 0)];
        assert_eq!(least_request(&loads, || unreachable!()), Some(1));
        // Weight 0 loses to anything else.
        let loads = [load(0, 0, 0, 0), load(1, 1, 50, 0)];
        assert_eq!(least_request(&loads, || unreachable!()), Some(1));
    }

    #[test]
    fn least_request_rotates_ties() {
        let loads = [
            load(1, 1, 0, 0),
            load(2, 1, 4, 0),
            load(5, 1, 0, 0),
            load(6, 2, 1, 0), // (1 + 1) / 2: as light as the idle ones
        ];
        let picks: Vec<u32> = (0..8)
            .map(|turn| least_request(&loads, || turn).unwrap())
            .collect();
        assert_eq!(picks, [1, 5, 6, 1, 5, 6, 1, 5]);
        // All weight 0: all tied, still rotating.
        let zero = [load(0, 0, 0, 0), load(1, 0, 3, 0)];
        assert_eq!(least_request(&zero, || 1), Some(1));
    }

    #[test]
    fn two_distinct_never_repeats_and_covers_every_pair() {
        let mut rng = Rng::new(7);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..10_000 {
            let (a, b) = two_distinct(4, &mut rng);
            assert!(a < 4 && b < 4 && a != b, "({a}, {b})");
            seen.insert((a, b));
        }
        assert_eq!(seen.len(), 12, "every ordered pair of 4 shows up");
        let (a, b) = two_distinct(2, &mut rng);
        assert_eq!(a + b, 1, "with two endpoints both are candidates");
    }

    #[test]
    fn peak_ewma_sends_a_slow_endpoint_clearly_less() {
        let loads = [
            load(0, 1, 0, 1_000),
            load(1, 1, 0, 1_000),
            load(2, 1, 0, 20_000), // slow
            load(3, 1, 0, 1_000),
        ];
        let mut rng = Rng::new(0x5eed);
        let picks = counts((0..10_000).map(|_| peak_ewma(&loads, &mut rng).unwrap()));
        // It loses every comparison it is in: no traffic at all while it stays slow.
        assert_eq!(picks.get(&2), None);
        for fast in [0, 1, 3] {
            assert!((3_000..3_700).contains(&picks[&fast]), "{picks:?}");
        }
    }

    #[test]
    fn peak_ewma_weighs_in_flight_and_weight() {
        // Same latency, but 3 in flight (cost 4) against 1 (cost 2): the busy one loses.
        let loads = [load(0, 1, 3, 500), load(1, 1, 1, 500)];
        let mut rng = Rng::new(1);
        for _ in 0..100 {
            assert_eq!(peak_ewma(&loads, &mut rng), Some(1));
        }
        // Weight 4 makes the same cost a quarter: 4 / 4 < 2 / 1.
        let loads = [load(0, 4, 3, 500), load(1, 1, 1, 500)];
        for _ in 0..100 {
            assert_eq!(peak_ewma(&loads, &mut rng), Some(0));
        }
    }

    #[test]
    fn peak_ewma_tries_a_new_endpoint_before_the_known_ones() {
        // Endpoint 2 has no sample: it counts as half the fastest (500 µs),
        // so it wins both of its pairs; 0 wins its pair against 1.
        let loads = [load(0, 1, 0, 1_000), load(1, 1, 0, 3_000), load(2, 1, 0, 0)];
        let mut rng = Rng::new(99);
        let picks = counts((0..9_000).map(|_| peak_ewma(&loads, &mut rng).unwrap()));
        // Each pair comes up a third of the time: 2 wins two pairs, 0 one, 1 none.
        assert!((5_500..6_500).contains(&picks[&2]), "{picks:?}");
        assert!((2_500..3_500).contains(&picks[&0]), "{picks:?}");
        assert_eq!(picks.get(&1), None);
        assert_eq!(unsampled_latency(&loads), 500);
        // Against one known-slow endpoint, the new one always wins until
        // its own requests in flight make it dearer.
        let slow_known = [load(0, 1, 0, 1_000_000), load(1, 1, 0, 0)];
        assert!((0..100).all(|_| peak_ewma(&slow_known, &mut rng) == Some(1)));
        let busy_new = [load(0, 1, 0, 1_000), load(1, 1, 3, 0)];
        assert_eq!(
            peak_ewma(&busy_new, &mut rng),
            Some(0),
            "500 µs x 4 > 1 000 µs x 1"
        );
        // Nothing sampled yet: latency counts as 1 everywhere and load decides.
        let fresh = [load(0, 1, 2, 0), load(1, 1, 0, 0)];
        assert_eq!(unsampled_latency(&fresh), 1);
        assert_eq!(peak_ewma(&fresh, &mut rng), Some(1));
    }

    #[test]
    fn peak_ewma_with_one_or_no_endpoint() {
        let mut rng = Rng::new(3);
        assert_eq!(peak_ewma(&[], &mut rng), None);
        assert_eq!(peak_ewma(&[load(9, 1, 7, 50_000)], &mut rng), Some(9));
    }

    #[test]
    fn extreme_loads_do_not_overflow() {
        let loads = [
            load(0, u32::MAX, u32::MAX, u64::MAX),
            load(1, 1, u32::MAX, u64::MAX),
        ];
        let mut rng = Rng::new(5);
        assert!(peak_ewma(&loads, &mut rng).is_some());
        assert_eq!(least_request(&loads, || unreachable!()), Some(0));
    }

    #[test]
    fn rng_is_deterministic_per_seed_and_spread() {
        // splitmix64's reference output for seed 0.
        assert_eq!(Rng::new(0).next_u64(), 0xe220_a839_7b1d_cdaf);
        let (mut a, mut b) = (Rng::new(42), Rng::new(42));
        assert_eq!(a.next_u64(), b.next_u64());
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
        let mut rng = Rng::new(0);
        let spread = counts((0..10_000).map(|_| rng.below(5) as u32));
        assert!(
            spread.values().all(|&n| (1_800..2_200).contains(&n)),
            "{spread:?}"
        );
    }
}
