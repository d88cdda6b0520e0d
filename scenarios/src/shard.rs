//! Past one machine: `--shard I/N` splits a run (or a matrix) deterministically by a stable
//! hash of each scenario's (or cell's) name, as nextest's hash partitioning does; each shard
//! writes its results (`--results FILE`, JSON of [`Results`]) and `kata-sim merge` puts the
//! shards back together into the report one machine would have produced.
//!
//! A row keeps its place in the whole run (`position`) and its outputs as the single run
//! renders them (the summary row, the failure text, the JSON line, the JUnit `<testcase>`), so
//! a merge only orders and concatenates: it parses nothing it rendered.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::runner::{Report, Verdict};

/// One shard of `count` (`index` from 1), as `--shard 2/4` writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// Which one, from 1.
    pub index: u32,
    /// Of how many.
    pub count: u32,
}

impl Shard {
    /// The whole run: shard 1 of 1.
    pub const ALL: Shard = Shard { index: 1, count: 1 };

    /// Whether the item named `key` belongs to this shard.
    pub fn selects(self, key: &str) -> bool {
        stable_hash(key) % u64::from(self.count) == u64::from(self.index - 1)
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Shard, String> {
        let bad = || format!("{s:?}: expected I/N, shard I of N, with 1 <= I <= N (e.g. 2/4)");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: u32 = i.trim().parse().map_err(|_| bad())?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        if index == 0 || count == 0 || index > count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl Serialize for Shard {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Shard {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Shard, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// FNV-1a (64 bits) of `key`: the same on every machine, build and release.
pub fn stable_hash(key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// One scenario of a run, as every output renders it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// Its place in the whole (unsharded) run.
    pub position: usize,
    /// The scenario's name (the file's when it did not load).
    pub name: String,
    /// The persona it ran with.
    pub persona: Option<String>,
    /// The seed it ran with.
    pub seed: Option<u64>,
    /// What became of it.
    pub verdict: Verdict,
    /// How many calls its record has.
    pub calls: usize,
    /// Its part of the failures text (empty when it passed).
    pub failure: String,
    /// Its `--format json` object.
    pub json: serde_json::Value,
    /// Its JUnit test case.
    pub junit: crate::junit::Case,
}

impl Row {
    /// The row of `report`, the `position`-th scenario of the whole run.
    pub fn of(position: usize, report: &Report) -> Row {
        Row {
            position,
            name: report.name(),
            persona: report
                .scenario
                .as_ref()
                .map(|s| s.config.persona.name().to_string()),
            seed: report.scenario.as_ref().map(|s| s.seed),
            verdict: report.verdict(),
            calls: report.outcome.as_ref().map_or(0, |o| o.calls.len()),
            failure: crate::runner::failures(std::slice::from_ref(report)),
            json: crate::runner::json(report),
            junit: crate::junit::case(report),
        }
    }
}

/// What one shard (or a whole run) wrote: the file `kata-sim merge` reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Results {
    /// The format's version (this is 1).
    pub version: u32,
    /// Which shard.
    pub shard: Shard,
    /// How many items the whole run has, over every shard.
    pub total: usize,
    /// What it ran.
    #[serde(flatten)]
    pub body: Body,
}

/// A run's rows or a matrix's cells.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Body {
    /// `kata-sim run`.
    Run {
        /// Its scenarios, in their order.
        rows: Vec<Row>,
    },
    /// `kata-sim matrix`.
    Matrix {
        /// The matrix's persona and base scenario.
        header: crate::matrix::Header,
        /// Its cells (each with its position), in their order.
        cells: Vec<crate::matrix::CellResult>,
    },
}

/// The format version [`Results::version`] has.
pub const VERSION: u32 = 1;

/// Why shard files do not merge.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// A file could not be read or is not a results file.
    #[error("{file}: {message}")]
    Read {
        /// The file.
        file: String,
        /// Why.
        message: String,
    },
    /// The files do not make one whole run.
    #[error("{0}")]
    Mismatch(String),
}

/// Reads one results file.
pub fn read(file: &Path) -> Result<Results, MergeError> {
    let read_err = |message: String| MergeError::Read {
        file: file.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(file).map_err(|e| read_err(e.to_string()))?;
    let r: Results = serde_json::from_str(&text)
        .map_err(|e| read_err(format!("not a kata-sim results file: {e}")))?;
    if r.version != VERSION {
        return Err(read_err(format!(
            "results format version {}, this kata-sim reads {VERSION}",
            r.version
        )));
    }
    Ok(r)
}

/// Puts shards together: every shard 1..=N exactly once, of one kind and one total, and every
/// position exactly once; the result is shard 1/1 with the items in order.
pub fn merge(parts: Vec<Results>) -> Result<Results, MergeError> {
    let mismatch = |m: String| Err(MergeError::Mismatch(m));
    let Some(first) = parts.first() else {
        return mismatch("no results files to merge".into());
    };
    let (count, total) = (first.shard.count, first.total);
    let mut seen = vec![false; count as usize];
    for p in &parts {
        if p.shard.count != count || p.total != total {
            return mismatch(format!(
                "shard {} of a run of {} items does not belong with shard {} of a run of {total}",
                p.shard, p.total, first.shard
            ));
        }
        let slot = &mut seen[(p.shard.index - 1) as usize];
        if *slot {
            return mismatch(format!("shard {} is given twice", p.shard));
        }
        *slot = true;
    }
    if let Some(missing) = seen.iter().position(|s| !s) {
        return mismatch(format!("shard {}/{count} is missing", missing + 1));
    }
    let body = match &first.body {
        Body::Run { .. } => {
            let mut rows = Vec::with_capacity(total);
            for p in parts {
                match p.body {
                    Body::Run { rows: r } => rows.extend(r),
                    Body::Matrix { .. } => {
                        return mismatch("a run's results and a matrix's do not merge".into());
                    }
                }
            }
            rows.sort_by_key(|r| r.position);
            check_positions(rows.iter().map(|r| r.position), total)?;
            Body::Run { rows }
        }
        Body::Matrix { header, .. } => {
            let header = header.clone();
            let mut cells = Vec::with_capacity(total);
            for p in parts {
                match p.body {
                    Body::Matrix {
                        header: h,
                        cells: c,
                    } if h == header => cells.extend(c),
                    Body::Matrix { .. } => {
                        return mismatch(
                            "matrix shards of different personas or base scenarios".into(),
                        );
                    }
                    Body::Run { .. } => {
                        return mismatch("a run's results and a matrix's do not merge".into());
                    }
                }
            }
            cells.sort_by_key(|c| c.position);
            check_positions(cells.iter().map(|c| c.position), total)?;
            Body::Matrix { header, cells }
        }
    };
    Ok(Results {
        version: VERSION,
        shard: Shard::ALL,
        total,
        body,
    })
}

fn check_positions(positions: impl Iterator<Item = usize>, total: usize) -> Result<(), MergeError> {
    let mut n = 0;
    for (want, have) in positions.enumerate() {
        if want != have {
            return Err(MergeError::Mismatch(format!(
                "item {want} of {total} is {} in the shards",
                if have > want {
                    "missing"
                } else {
                    "given twice"
                }
            )));
        }
        n += 1;
    }
    if n != total {
        return Err(MergeError::Mismatch(format!(
            "the shards hold {n} of the run's {total} items"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_parses_as_i_of_n_and_rejects_the_rest() {
        assert_eq!("2/4".parse(), Ok(Shard { index: 2, count: 4 }));
        for bad in ["0/4", "5/4", "1/0", "4", "a/b", "-1/2", ""] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }

    #[test]
    fn every_name_is_in_exactly_one_shard_and_the_hash_is_stable() {
        // FNV-1a's published value for "a".
        assert_eq!(stable_hash("a"), 0xaf63_dc4c_8601_ec8c);
        let names: Vec<String> = (0..200).map(|i| format!("scenario-{i}")).collect();
        let mut sizes = [0; 4];
        for n in &names {
            let owners: Vec<u32> = (1..=4)
                .filter(|&i| Shard { index: i, count: 4 }.selects(n))
                .collect();
            assert_eq!(owners.len(), 1, "{n}");
            sizes[(owners[0] - 1) as usize] += 1;
        }
        // Spread: no shard gets under half its share.
        assert!(sizes.iter().all(|&s| s >= 25), "{sizes:?}");
    }

    #[test]
    fn a_merge_needs_every_shard_once() {
        let part = |index| Results {
            version: VERSION,
            shard: Shard { index, count: 2 },
            total: 0,
            body: Body::Run { rows: Vec::new() },
        };
        assert!(merge(vec![part(1), part(2)]).is_ok());
        let e = merge(vec![part(1)]).unwrap_err().to_string();
        assert!(e.contains("shard 2/2 is missing"), "{e}");
        let e = merge(vec![part(1), part(1)]).unwrap_err().to_string();
        assert!(e.contains("given twice"), "{e}");
    }
}
