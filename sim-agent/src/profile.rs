//! Agent version profiles: what differs between kata-agent releases in ways runtimes notice.
//!
//! [`BOUNDARIES`] is the one table of version boundaries. Each row names the upstream change
//! that introduced the behaviour; an agent older than the row's version behaves the old way.

use std::fmt;
use std::str::FromStr;

use crate::rpc::Method;

/// A kata-agent release version (`major.minor.patch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AgentVersion(pub u32, pub u32, pub u32);

impl AgentVersion {
    /// The agent kata-sim models by default (upstream HEAD, VERSION 4.1.0), and the newest
    /// release it accepts.
    pub const CURRENT: AgentVersion = AgentVersion(4, 1, 0);

    /// The oldest release kata-sim accepts: the start of the 3.x series. The oldest row of
    /// [`BOUNDARIES`] (SetPolicy, 3.3.0) is in that series, so the table says how every 3.x
    /// agent differs from the current one; of 2.x (a different agent and protocol generation)
    /// it models nothing, and a version there would silently run as a 3.x agent.
    pub const OLDEST: AgentVersion = AgentVersion(BOUNDARIES[0].since.0, 0, 0);
}

impl Default for AgentVersion {
    fn default() -> Self {
        AgentVersion::CURRENT
    }
}

impl fmt::Display for AgentVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// A version string kata-sim cannot model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadVersion {
    /// Not `MAJOR.MINOR.PATCH` (three whole numbers).
    #[error("invalid agent version {0:?}: expected a release MAJOR.MINOR.PATCH, such as 3.19.1")]
    Malformed(String),
    /// A release outside [`AgentVersion::OLDEST`]..=[`AgentVersion::CURRENT`].
    #[error(
        "agent version {0} is not a release kata-sim models: expected {oldest} to {current}",
        oldest = AgentVersion::OLDEST,
        current = AgentVersion::CURRENT
    )]
    OutOfRange(AgentVersion),
}

impl FromStr for AgentVersion {
    type Err = BadVersion;

    /// Strict: exactly three dot-separated whole numbers (no `v`, no pre-release suffix), in
    /// [`AgentVersion::OLDEST`]..=[`AgentVersion::CURRENT`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadVersion::Malformed(s.to_string());
        let parts: Vec<&str> = s.split('.').collect();
        let [major, minor, patch] = parts[..] else {
            return Err(bad());
        };
        let num = |p: &str| {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            p.parse::<u32>().map_err(|_| bad())
        };
        let v = AgentVersion(num(major)?, num(minor)?, num(patch)?);
        if !(AgentVersion::OLDEST..=AgentVersion::CURRENT).contains(&v) {
            return Err(BadVersion::OutOfRange(v));
        }
        Ok(v)
    }
}

impl serde::Serialize for AgentVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for AgentVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A behaviour that appeared in some agent release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    /// ReadStdout/ReadStderr end a stream with an OK reply carrying empty data (after
    /// draining up to 500 ms past exit). Older agents answer INTERNAL `eof`.
    StreamEofEmptyOk,
    /// An RPC exists; older agents answer it as an unknown method.
    Rpc(Method),
}

/// One row of the boundary table.
#[derive(Debug, Clone, Copy)]
pub struct Boundary {
    /// The behaviour.
    pub feature: Feature,
    /// The first release that has it.
    pub since: AgentVersion,
    /// The upstream change that introduced it.
    pub upstream: &'static str,
}

/// Every version boundary kata-sim models, oldest first.
pub const BOUNDARIES: &[Boundary] = &[
    Boundary {
        feature: Feature::Rpc(Method::SetPolicy),
        since: AgentVersion(3, 3, 0),
        upstream: "commit ab829d1038 (Aug 2023), first in 3.3.0: SetPolicy RPC",
    },
    Boundary {
        feature: Feature::Rpc(Method::MemAgentMemcgSet),
        since: AgentVersion(3, 13, 0),
        upstream: "commit 74a17f96f4 (Dec 2024), first in 3.13.0: mem-agent RPCs",
    },
    Boundary {
        feature: Feature::Rpc(Method::MemAgentCompactSet),
        since: AgentVersion(3, 13, 0),
        upstream: "commit 74a17f96f4 (Dec 2024), first in 3.13.0: mem-agent RPCs",
    },
    Boundary {
        feature: Feature::StreamEofEmptyOk,
        since: AgentVersion(3, 27, 0),
        upstream: "commit 1080f6d87e (Jan 2026), first in 3.27.0: drain after exit, empty OK ends a stream",
    },
    Boundary {
        feature: Feature::Rpc(Method::GetDiagnosticData),
        since: AgentVersion(3, 29, 0),
        upstream: "commit 64c139208f (Apr 2026), first in 3.29.0: GetDiagnosticData",
    },
];

impl AgentVersion {
    /// Whether an agent of this version has the behaviour.
    pub fn has(self, feature: Feature) -> bool {
        BOUNDARIES
            .iter()
            .filter(|b| b.feature == feature)
            .all(|b| self >= b.since)
    }

    /// Whether an agent of this version serves the RPC.
    pub fn serves(self, method: Method) -> bool {
        self.has(Feature::Rpc(method))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_order() {
        assert_eq!(
            "3.19.1".parse::<AgentVersion>().unwrap(),
            AgentVersion(3, 19, 1)
        );
        assert_eq!(
            "4.1.0".parse::<AgentVersion>().unwrap(),
            AgentVersion::CURRENT
        );
        for bad in [
            "three",
            "1.2.3.4",
            "9.9",
            "3",
            "v4.1.0",
            "4.1.0-rc1",
            "3.+1.0",
            "3..1",
            "",
        ] {
            assert_eq!(
                bad.parse::<AgentVersion>(),
                Err(BadVersion::Malformed(bad.into())),
                "{bad}"
            );
        }
        assert!(AgentVersion(3, 19, 1) < AgentVersion(3, 27, 0));
    }

    #[test]
    fn only_modelled_releases_are_accepted() {
        let e = "99.0.0".parse::<AgentVersion>().unwrap_err();
        assert_eq!(e, BadVersion::OutOfRange(AgentVersion(99, 0, 0)));
        assert_eq!(
            e.to_string(),
            "agent version 99.0.0 is not a release kata-sim models: expected 3.0.0 to 4.1.0"
        );
        assert!("2.5.2".parse::<AgentVersion>().is_err());
        assert!("4.1.1".parse::<AgentVersion>().is_err());
        assert_eq!("3.0.0".parse::<AgentVersion>(), Ok(AgentVersion::OLDEST));
        // The oldest boundary is inside the accepted range.
        assert!(BOUNDARIES.iter().all(|b| b.since >= AgentVersion::OLDEST));
        assert!(BOUNDARIES.iter().all(|b| b.since <= AgentVersion::CURRENT));
    }

    #[test]
    fn boundaries_split_old_and_new_agents() {
        let old = AgentVersion(3, 19, 1);
        assert!(!old.has(Feature::StreamEofEmptyOk));
        assert!(!old.serves(Method::GetDiagnosticData));
        assert!(old.serves(Method::CreateContainer));
        assert!(AgentVersion(3, 27, 0).has(Feature::StreamEofEmptyOk));
        assert!(!AgentVersion(3, 28, 0).serves(Method::GetDiagnosticData));
        assert!(AgentVersion::CURRENT.serves(Method::GetDiagnosticData));
    }
}
