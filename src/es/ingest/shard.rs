//! `ingest --shard I/N`: the part of the input one of N machines takes. A file belongs to shard
//! `first 64 bits of its SHA-256 mod N` — the same hash as its document `_id` — so every machine
//! computes the same split from the bytes alone (whatever the mount point or file name), shards
//! never overlap, and a rerun of a shard finds its documents already indexed. `I` counts from 0,
//! as a Kubernetes Indexed Job's `JOB_COMPLETION_INDEX` does.

use std::fmt;
use std::str::FromStr;

/// Shard `index` of `count`, `index < count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shard {
    index: u64,
    count: u64,
}

impl Shard {
    /// Whether the file whose content id (hex SHA-256, see `document::content_id`) is `id`
    /// belongs to this shard.
    pub(crate) fn owns(&self, id: &str) -> bool {
        // Every id is 64 hex digits; the first 16 are a uniform 64-bit number.
        id.get(..16)
            .and_then(|prefix| u64::from_str_radix(prefix, 16).ok())
            .is_some_and(|bucket| bucket % self.count == self.index)
    }

    /// How many shards a batch's paths are spread over: a batch reads this many times
    /// `--bulk-size` paths so that about `--bulk-size` of them land in this shard.
    pub(crate) fn count(&self) -> usize {
        usize::try_from(self.count).unwrap_or(usize::MAX)
    }

    /// `2-of-4`, for file names.
    pub(crate) fn file_tag(&self) -> String {
        format!("{}-of-{}", self.index, self.count)
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let Some((index, count)) = text.split_once('/') else {
            return Err("expected I/N, e.g. 0/4 (shard I of N, I counting from 0)".to_owned());
        };
        let number = |part: &str, what: &str| {
            part.trim().parse::<u64>().map_err(|_| {
                format!("{what} must be a whole number, got {part:?} (expected I/N, e.g. 0/4)")
            })
        };
        let (index, count) = (number(index, "I")?, number(count, "N")?);
        if count == 0 {
            return Err("N must be at least 1".to_owned());
        }
        if index >= count {
            return Err(format!(
                "I counts from 0, so the shards of {count} are 0/{count} to {}/{count}",
                count - 1
            ));
        }
        Ok(Shard { index, count })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::es::ingest::document::content_id;

    #[test]
    fn parses_zero_based_shards() {
        assert_eq!("0/4".parse::<Shard>(), Ok(Shard { index: 0, count: 4 }));
        assert_eq!("3/4".parse::<Shard>(), Ok(Shard { index: 3, count: 4 }));
        assert_eq!("0/1".parse::<Shard>(), Ok(Shard { index: 0, count: 1 }));
        assert_eq!("2/4".parse::<Shard>().unwrap().to_string(), "2/4");
        assert_eq!("2/4".parse::<Shard>().unwrap().file_tag(), "2-of-4");
    }

    #[test]
    fn refuses_out_of_range_and_malformed_shards_with_the_rule() {
        assert_eq!(
            "3/3".parse::<Shard>(),
            Err("I counts from 0, so the shards of 3 are 0/3 to 2/3".to_owned())
        );
        assert_eq!(
            "0/0".parse::<Shard>(),
            Err("N must be at least 1".to_owned())
        );
        assert!("2"
            .parse::<Shard>()
            .unwrap_err()
            .starts_with("expected I/N"));
        assert_eq!(
            "-1/4".parse::<Shard>(),
            Err(r#"I must be a whole number, got "-1" (expected I/N, e.g. 0/4)"#.to_owned())
        );
        assert!("1/x".parse::<Shard>().unwrap_err().starts_with("N must be"));
        assert!("1/4/2"
            .parse::<Shard>()
            .unwrap_err()
            .starts_with("N must be"));
    }

    #[test]
    fn every_id_belongs_to_exactly_one_shard_and_the_split_is_even() {
        let shards: Vec<Shard> = (0..4).map(|i| Shard { index: i, count: 4 }).collect();
        let mut sizes = [0usize; 4];
        for n in 0..4000u32 {
            let id = content_id(&n.to_le_bytes());
            let owners: Vec<usize> = (0..4).filter(|&i| shards[i].owns(&id)).collect();
            assert_eq!(owners.len(), 1, "{id} is owned by {owners:?}");
            sizes[owners[0]] += 1;
        }
        // 1000 expected each; a binomial's standard deviation here is about 27.
        assert!(
            sizes.iter().all(|&s| (850..=1150).contains(&s)),
            "{sizes:?}"
        );
    }

    #[test]
    fn the_split_is_a_fixed_function_of_the_content() {
        // Golden: the SHA-256 of "" starts e3b0c44298fc1c14, which is 0 mod 4 and 1 mod 3.
        let id = content_id(b"");
        assert!(Shard { index: 0, count: 4 }.owns(&id));
        assert!(Shard { index: 1, count: 3 }.owns(&id));
        assert!(!Shard { index: 3, count: 4 }.owns(&id));
        assert!(Shard { index: 0, count: 1 }.owns(&id));
        assert!(!Shard { index: 0, count: 4 }.owns("not a hex id"));
    }
}
