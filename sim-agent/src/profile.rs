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
    /// The agent kata-sim models by default (upstream HEAD, VERSION 4.1.0).
    pub const CURRENT: AgentVersion = AgentVersion(4, 1, 0);
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

/// A version string that is not `MAJOR.MINOR.PATCH`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid agent version {0:?}: expected MAJOR.MINOR.PATCH, e.g. 3.19.1")]
pub struct BadVersion(pub String);

impl FromStr for AgentVersion {
    type Err = BadVersion;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadVersion(s.to_string());
        let core = s.trim().trim_start_matches('v');
        let core = core.split(['-', '+']).next().unwrap_or(core);
        let mut it = core.split('.').map(|p| p.parse::<u32>().map_err(|_| bad()));
        let v = AgentVersion(
            it.next().ok_or_else(bad)??,
            it.next().unwrap_or(Ok(0))?,
            it.next().unwrap_or(Ok(0))?,
        );
        if it.next().is_some() {
            return Err(bad());
        }
        Ok(v)
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
            "v4.1.0-rc1".parse::<AgentVersion>().unwrap(),
            AgentVersion(4, 1, 0)
        );
        assert!("three".parse::<AgentVersion>().is_err());
        assert!("1.2.3.4".parse::<AgentVersion>().is_err());
        assert!(AgentVersion(3, 19, 1) < AgentVersion(3, 27, 0));
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
