//! Consistent hashing, free of host calls: a ketama-style ring over the
//! endpoints' addresses and the small 64-bit hash it is built with.
//!
//! Every endpoint owns points on a ring of 64-bit hashes, derived from its
//! address; a key belongs to the endpoint owning the first point at or after
//! the key's hash. When an endpoint leaves, only the keys on its points move
//! (to the next point along), about 1/N of them; when one joins, it takes
//! about 1/(N+1) of the keys, from every other endpoint alike.

use crate::pick::{GOLDEN_GAMMA, normalized};

/// Ring points per unit of weight, as in ketama: enough for every endpoint
/// to get close to its share.
pub const POINTS_PER_WEIGHT: u64 = 160;

/// The most points a ring has (give or take one per endpoint), so a large
/// upstream's ring stays small to build, keep and search.
pub const MAX_RING_POINTS: u64 = 4_096;

/// A 64-bit hash of `bytes`: FNV-1a, then splitmix64's finaliser. FNV-1a
/// alone leaves keys that differ only in their last byte close together on
/// the ring; the finaliser spreads them over all of it.
pub fn hash64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let fnv = bytes
        .iter()
        .fold(OFFSET, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME));
    mix64(fnv)
}

/// splitmix64's finaliser: a bijection on 64 bits where each input bit
/// flips about half of the output bits.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// How many ring points each endpoint gets, from the weights of *every*
/// endpoint of the upstream (healthy or not): an endpoint's points then stay
/// the same whichever others come and go, which is what keeps moves to 1/N.
/// [`POINTS_PER_WEIGHT`] per unit of weight (after dividing by the weights'
/// common divisor), fewer when the whole upstream would pass
/// [`MAX_RING_POINTS`].
pub fn point_counts(weights: &[u32]) -> Vec<u32> {
    let weights = normalized(
        weights.iter().map(|&w| u64::from(w)).collect(),
        MAX_RING_POINTS,
    );
    let total: u64 = weights.iter().sum::<u64>().max(1);
    let per_weight = (MAX_RING_POINTS / total).clamp(1, POINTS_PER_WEIGHT);
    weights.iter().map(|w| (w * per_weight) as u32).collect()
}

/// A hash ring: sorted points, each owned by an endpoint index.
#[derive(Debug)]
pub struct Ring {
    points: Vec<(u64, u32)>,
}

impl Ring {
    /// A ring over `(index, address, points)` members; an endpoint's points
    /// depend only on its address, never on its index or the other members.
    pub fn new<'a>(members: impl IntoIterator<Item = (u32, &'a str, u32)>) -> Ring {
        let mut points = Vec::new();
        for (index, address, count) in members {
            // A splitmix64 stream seeded by the address: as many
            // well-spread points as needed, from one hash of the address.
            let seed = hash64(address.as_bytes());
            points.extend((1..=u64::from(count)).map(|i| {
                (
                    mix64(seed.wrapping_add(i.wrapping_mul(GOLDEN_GAMMA))),
                    index,
                )
            }));
        }
        // The index breaks ties, so the ring never depends on member order.
        points.sort_unstable();
        Ring { points }
    }

    /// The endpoint that owns `key`; `None` only for an empty ring.
    pub fn get(&self, key: &[u8]) -> Option<u32> {
        let hash = hash64(key);
        let at = self.points.partition_point(|&(point, _)| point < hash);
        // Past the last point the ring wraps around to the first.
        let (_, index) = self.points.get(at).or(self.points.first())?;
        Some(*index)
    }

    /// How many points the ring has.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.points.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addresses(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("10.0.0.{i}:8080")).collect()
    }

    /// A ring over `addresses` with weight 1 each, computing point counts
    /// from `all` (the whole upstream) like the plugin does.
    fn ring(all: &[(String, u32)], members: &[usize]) -> Ring {
        let weights: Vec<u32> = all.iter().map(|(_, w)| *w).collect();
        let counts = point_counts(&weights);
        Ring::new(
            members
                .iter()
                .map(|&i| (i as u32, all[i].0.as_str(), counts[i])),
        )
    }

    fn unweighted(n: usize) -> Vec<(String, u32)> {
        addresses(n).into_iter().map(|a| (a, 1)).collect()
    }

    fn keys() -> impl Iterator<Item = String> {
        (0..10_000).map(|i| format!("user-{i}"))
    }

    #[test]
    fn hash64_is_stable_and_spreads_close_keys() {
        // Pinned: a changed hash would move every key of every deployed ring.
        // FNV-1a's published value for "a", then the finaliser.
        assert_eq!(hash64(b"a"), mix64(0xaf63_dc4c_8601_ec8c));
        assert_eq!(hash64(b""), mix64(0xcbf2_9ce4_8422_2325));
        let (a, b) = (hash64(b"user-1"), hash64(b"user-2"));
        assert!((a ^ b).count_ones() > 16, "{a:x} {b:x}");
        assert_eq!(mix64(0), 0);
        assert_eq!(mix64(1), 0x5692_161d_100b_05e5);
    }

    #[test]
    fn a_key_always_maps_to_the_same_endpoint() {
        let all = unweighted(5);
        let (one, two) = (ring(&all, &[0, 1, 2, 3, 4]), ring(&all, &[4, 3, 2, 1, 0]));
        for key in keys() {
            let owner = one.get(key.as_bytes());
            assert!(owner.is_some());
            assert_eq!(owner, one.get(key.as_bytes()));
            assert_eq!(owner, two.get(key.as_bytes()), "member order matters not");
        }
        assert_eq!(one.len(), 5 * 160);
    }

    #[test]
    fn keys_spread_evenly() {
        let all = unweighted(5);
        let ring = ring(&all, &[0, 1, 2, 3, 4]);
        let mut counts = [0usize; 5];
        for key in keys() {
            counts[ring.get(key.as_bytes()).unwrap() as usize] += 1;
        }
        for n in counts {
            assert!((1_500..2_500).contains(&n), "{counts:?}");
        }
    }

    #[test]
    fn removing_one_of_five_moves_only_its_keys() {
        let all = unweighted(5);
        let before = ring(&all, &[0, 1, 2, 3, 4]);
        let after = ring(&all, &[0, 1, 3, 4]); // endpoint 2 left
        let mut moved = 0;
        for key in keys() {
            let (was, is) = (before.get(key.as_bytes()), after.get(key.as_bytes()));
            if was != is {
                assert_eq!(was, Some(2), "{key} moved off a remaining endpoint");
                moved += 1;
            }
        }
        assert!((1_200..=2_800).contains(&moved), "{moved} of 10000 moved");
    }

    #[test]
    fn adding_a_sixth_moves_about_a_sixth() {
        let all = unweighted(6);
        let before = ring(&all, &[0, 1, 2, 3, 4]);
        let after = ring(&all, &[0, 1, 2, 3, 4, 5]);
        let mut moved = 0;
        for key in keys() {
            let (was, is) = (before.get(key.as_bytes()), after.get(key.as_bytes()));
            if was != is {
                assert_eq!(is, Some(5), "{key} moved between old endpoints");
                moved += 1;
            }
        }
        assert!((1_000..=2_400).contains(&moved), "{moved} of 10000 moved");
    }

    #[test]
    fn weights_shift_the_share() {
        let all = vec![
            ("10.0.0.1:80".to_string(), 3),
            ("10.0.0.2:80".to_string(), 1),
        ];
        let ring = ring(&all, &[0, 1]);
        assert_eq!(ring.len(), 4 * 160);
        let heavy = keys().filter(|k| ring.get(k.as_bytes()) == Some(0)).count();
        assert!((6_800..=8_200).contains(&heavy), "{heavy} of 10000");
    }

    #[test]
    fn point_counts_are_bounded_and_independent_of_health() {
        assert_eq!(point_counts(&[1, 1, 1]), [160, 160, 160]);
        assert_eq!(point_counts(&[2, 6]), [160, 480], "common divisor removed");
        let big = point_counts(&[1; 100]);
        assert!(big.iter().all(|&n| n == 40), "{big:?}");
        let huge = point_counts(&[u32::MAX, 1, 7919]);
        assert!(huge.iter().map(|&n| u64::from(n)).sum::<u64>() <= MAX_RING_POINTS + 3);
        assert!(huge.iter().all(|&n| n > 0));
    }

    #[test]
    fn an_empty_ring_owns_nothing() {
        assert_eq!(Ring::new([]).get(b"key"), None);
    }
}
