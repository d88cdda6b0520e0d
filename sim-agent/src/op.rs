//! The names of everything a host does to a sandbox, as types: [`VmOp`] for the hypervisor
//! operations beside [`Method`] for the agent RPCs, and [`Op`] for either. Traces, fault rules,
//! scenario expectations and the CLI all name calls through these, so a misspelt name is an
//! error where it is written ([`UnknownName`], with the nearest valid name), never a name
//! that silently matches nothing.
//!
//! [`suggest`] is the one did-you-mean used for every closed set of names.

use std::fmt;
use std::str::FromStr;

use crate::protocols::{agent, health};
use crate::rpc::{KeyFields, Method};

/// The nearest of `candidates` to `word`, if one is near enough to be a plausible typo: a
/// case-insensitive match first, else the smallest Damerau-Levenshtein distance of at most a
/// third of the word's length (at least 1); ties go to the earlier candidate.
pub fn suggest<'a, I>(word: &str, candidates: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let candidates: Vec<&'a str> = candidates.into_iter().collect();
    if let Some(c) = candidates.iter().find(|c| c.eq_ignore_ascii_case(word)) {
        return Some(c);
    }
    let lower = word.to_ascii_lowercase();
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .iter()
        .map(|c| {
            (
                strsim::damerau_levenshtein(&lower, &c.to_ascii_lowercase()),
                *c,
            )
        })
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// A name that is not in its closed set: what kind of name, the text, the nearest valid name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct UnknownName {
    /// What was expected (`an agent RPC or a hypervisor operation`).
    pub expected: &'static str,
    /// The text given.
    pub found: String,
    /// The nearest valid name, if one is close.
    pub nearest: Option<&'static str>,
}

impl UnknownName {
    /// An error for `found`, suggesting the nearest of `candidates`.
    pub fn new(
        expected: &'static str,
        found: &str,
        candidates: impl IntoIterator<Item = &'static str>,
    ) -> Self {
        UnknownName {
            expected,
            found: found.to_string(),
            nearest: suggest(found, candidates),
        }
    }

    fn render(&self) -> String {
        match self.nearest {
            Some(n) => format!(
                "unknown {} {:?}: did you mean {n:?}?",
                self.expected, self.found
            ),
            None => format!("unknown {} {:?}", self.expected, self.found),
        }
    }
}

macro_rules! vm_ops {
    ($($variant:ident => [$($field:literal),*] $doc:literal;)*) => {
        /// A hypervisor operation, as the trace names it: the remote protocol's calls and the
        /// in-process `Hypervisor` methods, plus `KillVM` (the VM dies) and `Disconnect` (the
        /// runtime closes its connection).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum VmOp {
            $(
                #[doc = $doc]
                $variant,
            )*
        }

        impl VmOp {
            /// Every operation.
            pub const ALL: &'static [VmOp] = &[$(VmOp::$variant),*];

            /// Its name (`StartVM`).
            pub fn name(self) -> &'static str {
                match self { $(VmOp::$variant => stringify!($variant)),* }
            }

            /// Whether a fault rule can target it: the host calls it through the fault hook.
            /// `KillVM` and `Disconnect` are only recorded.
            pub fn faultable(self) -> bool {
                !matches!(self, VmOp::KillVM | VmOp::Disconnect)
            }

            /// The key fields the trace records for it (and fault filters may name).
            pub fn key_fields(self) -> &'static [&'static str] {
                match self { $(VmOp::$variant => &[$($field),*]),* }
            }
        }
    };
}

vm_ops! {
    CreateVM => ["id", "netns", "annotation"] "`CreateVM`: the sandbox's VM is created.";
    StartVM => ["timeout"] "`StartVM`: it boots.";
    StopVM => ["wait_only"] "`StopVM`: it is stopped.";
    PauseVM => [] "`PauseVM`.";
    SaveVM => [] "`SaveVM`.";
    ResumeVM => [] "`ResumeVM`.";
    KillVM => [] "`KillVM`: the VM dies (a guest crash), not a runtime call.";
    CheckVM => [] "`CheckVM`: the runtime's liveness probe of the VM.";
    AddDevice => ["kind"] "`AddDevice` (cold plug).";
    HotplugAddDevice => ["kind"] "`HotplugAddDevice`.";
    HotplugRemoveDevice => ["kind"] "`HotplugRemoveDevice`.";
    ResizeMemory => ["mem_mb", "block_mb"] "`ResizeMemory`.";
    ResizeVCPUs => ["vcpus"] "`ResizeVCPUs`.";
    Disconnect => [] "`Disconnect`: the runtime closes its hypervisor connection.";
}

impl fmt::Display for VmOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for VmOp {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        VmOp::ALL
            .iter()
            .copied()
            .find(|op| op.name() == s)
            .ok_or_else(|| {
                UnknownName::new(
                    "hypervisor operation",
                    s,
                    VmOp::ALL.iter().map(|o| o.name()),
                )
            })
    }
}

impl FromStr for Method {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Method::from_wire_name(s).ok_or_else(|| {
            UnknownName::new("agent RPC", s, Method::ALL.iter().map(|m| m.wire_name()))
        })
    }
}

/// Anything the host does that the trace records: an agent RPC or a hypervisor operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    /// An agent RPC.
    Agent(Method),
    /// A hypervisor operation.
    Vm(VmOp),
}

impl Op {
    /// Every name, agent RPCs first.
    pub fn all() -> impl Iterator<Item = Op> {
        Method::ALL
            .iter()
            .map(|m| Op::Agent(*m))
            .chain(VmOp::ALL.iter().map(|v| Op::Vm(*v)))
    }

    /// Its name (`CreateContainer`, `StartVM`).
    pub fn name(self) -> &'static str {
        match self {
            Op::Agent(m) => m.wire_name(),
            Op::Vm(v) => v.name(),
        }
    }

    /// Whether the hypervisor serves it.
    pub fn is_vm(self) -> bool {
        matches!(self, Op::Vm(_))
    }

    /// The key fields the trace records for it, which fault filters may name.
    pub fn key_fields(self) -> Vec<&'static str> {
        match self {
            Op::Agent(m) => m.key_fields(),
            Op::Vm(v) => v.key_fields().to_vec(),
        }
    }
}

impl From<Method> for Op {
    fn from(m: Method) -> Self {
        Op::Agent(m)
    }
}

impl From<VmOp> for Op {
    fn from(v: VmOp) -> Self {
        Op::Vm(v)
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Op {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(m) = Method::from_wire_name(s) {
            return Ok(Op::Agent(m));
        }
        if let Ok(v) = s.parse::<VmOp>() {
            return Ok(Op::Vm(v));
        }
        Err(UnknownName::new(
            "agent RPC or hypervisor operation",
            s,
            Op::all().map(Op::name),
        ))
    }
}

impl TryFrom<String> for Op {
    type Error = UnknownName;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Op> for String {
    fn from(op: Op) -> String {
        op.name().to_string()
    }
}

impl serde::Serialize for Op {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Op {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

macro_rules! method_key_fields {
    ($(($snake:ident, $variant:ident, $svc:ident, $req:ty, $resp:ty)),* $(,)?) => {
        impl Method {
            /// The key fields the trace records for its request, in their fixed order (the
            /// names fault filters may use, besides `sandbox`).
            pub fn key_fields(self) -> Vec<&'static str> {
                match self {
                    $(Method::$variant => <$req as Default>::default()
                        .key_fields()
                        .into_iter()
                        .map(|(k, _)| k)
                        .collect(),)*
                }
            }
        }
    };
}
crate::for_each_rpc!(method_key_fields);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_typos_get_the_nearest() {
        for op in Op::all() {
            assert_eq!(op.name().parse::<Op>(), Ok(op));
        }
        let e = "DestroySandox".parse::<Op>().unwrap_err();
        assert_eq!(e.nearest, Some("DestroySandbox"));
        assert_eq!(
            e.to_string(),
            "unknown agent RPC or hypervisor operation \"DestroySandox\": did you mean \"DestroySandbox\"?"
        );
        assert_eq!("Chek".parse::<Op>().unwrap_err().nearest, Some("Check"));
        assert_eq!("stopvm".parse::<Op>().unwrap_err().nearest, Some("StopVM"));
        assert_eq!("Frobnicate".parse::<Op>().unwrap_err().nearest, None);
        assert_eq!("KillVM".parse::<Op>(), Ok(Op::Vm(VmOp::KillVM)));
        assert!("KillVM".parse::<Method>().is_err());
    }

    #[test]
    fn key_fields_come_from_the_request_types() {
        assert_eq!(
            Method::WaitProcess.key_fields(),
            ["container_id", "exec_id"]
        );
        assert_eq!(
            Op::Agent(Method::CreateSandbox).key_fields(),
            ["sandbox_id", "hostname"]
        );
        assert_eq!(Op::Vm(VmOp::StartVM).key_fields(), ["timeout"]);
        assert!(Method::DestroySandbox.key_fields().is_empty());
    }

    #[test]
    fn suggestions_prefer_case_then_distance() {
        assert_eq!(
            suggest("file", ["File", "FallbackToLogsOnError"]),
            Some("File")
        );
        assert_eq!(suggest("ignroe", ["default", "ignore"]), Some("ignore"));
        assert_eq!(suggest("x", ["default", "ignore"]), None);
    }
}
