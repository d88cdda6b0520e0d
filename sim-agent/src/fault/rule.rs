//! The fault rule language: parsing `TARGET{FILTERS}=CHAIN` into a [`Rule`], with errors that
//! name the column and what was expected.
//!
//! ```text
//! RULE   := TARGET [ "{" FILTER ("," FILTER)* "}" ] "=" CHAIN
//! TARGET := an agent RPC, a hypervisor operation (but KillVM, Disconnect), or "*"
//! FILTER := FIELD "=" VALUE            (VALUE may be empty or "quoted")
//! FIELD  := a key field the target records ([`Op::key_fields`]), or "sandbox"
//! CHAIN  := TERM ("->" TERM)*
//! TERM   := [P "%"] [N "*"] ACTION
//! ACTION := off | delay(DURATION[, JITTER]) | hang | error(CODE[, "MESSAGE"])
//!         | drop(before|after) | kill_guest | oom[(CONTAINER)] | restart_agent
//!         | slow(BYTES_PER_SECOND) | corrupt | deny | unimplemented
//! ```
//!
//! Durations are a number with `us`, `ms`, `s` or `m` (`1.5s`, `200ms`), at most
//! [`MAX_DURATION`] (a day); sizes a number with an optional `k`/`m` (KiB, MiB); counts a whole
//! number below 2^64. Whitespace between tokens is ignored. A value out of range is an error
//! at its column, never a wrapped or saturated value. A name that is not one of its closed set
//! (a target, a filter key, an action, a status code) is an error at its column naming the
//! nearest valid one ([`suggest`]), so a rule that parses is one that can fire.

use std::fmt;
use std::time::Duration;

use ttrpc::Code;

use crate::error::{code_from_name, code_name};
use crate::op::{Op, suggest};

/// What a rule applies to: every call (`*`) or one operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// `*`: every call.
    Any,
    /// One agent RPC or hypervisor operation (one the fault hook sees: [`Target::new`]).
    Op(Op),
}

impl Target {
    /// A target for `op`, if a rule can fault it (`KillVM` and `Disconnect` are only
    /// recorded, no call passes the fault hook).
    pub fn new(op: Op) -> Option<Target> {
        match op {
            Op::Vm(v) if !v.faultable() => None,
            op => Some(Target::Op(op)),
        }
    }

    /// Its name as the trace and [`super::CallInfo::target`] spell it, or `*`.
    pub fn name(self) -> &'static str {
        match self {
            Target::Any => "*",
            Target::Op(op) => op.name(),
        }
    }

    /// The filter keys a rule on it may name: the key fields its calls record and `sandbox`;
    /// for `*` the key fields of any operation.
    pub fn filter_keys(self) -> Vec<&'static str> {
        let mut keys: Vec<&'static str> = match self {
            Target::Op(op) => op.key_fields(),
            Target::Any => Op::all().flat_map(Op::key_fields).collect(),
        };
        keys.push("sandbox");
        let mut seen = std::collections::BTreeSet::new();
        keys.retain(|k| seen.insert(*k));
        keys
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The action names, as written.
pub const ACTIONS: &[&str] = &[
    "off",
    "delay",
    "hang",
    "error",
    "drop",
    "kill_guest",
    "oom",
    "restart_agent",
    "slow",
    "corrupt",
    "deny",
    "unimplemented",
];

/// `unknown WHAT "word": did you mean "X"? (expected ACCEPTED)`, or without a near name
/// `unknown WHAT "word": expected ACCEPTED`.
fn unknown(what: &str, word: &str, nearest: Option<&str>, accepted: impl fmt::Display) -> String {
    match nearest {
        Some(n) => format!("unknown {what} {word:?}: did you mean {n:?}? (expected {accepted})"),
        None => format!("unknown {what} {word:?}: expected {accepted}"),
    }
}

/// `a, b or c`.
fn one_of(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => (*one).to_string(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// The longest duration a rule may name (a delay, its jitter): one day. A delay plus its
/// jitter therefore always fits any clock arithmetic.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// One action of a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Let the call through.
    Off,
    /// Answer late: the delay plus up to `jitter` more, drawn from the seeded generator.
    Delay {
        /// The delay.
        delay: Duration,
        /// The most extra delay.
        jitter: Duration,
    },
    /// Never answer (until the caller gives up or disconnects).
    Hang,
    /// Answer this status.
    Error {
        /// The code.
        code: Code,
        /// The message (default: the code's name).
        message: Option<String>,
    },
    /// Close the connection, before the call (`after: false`) or after its side effect.
    Drop {
        /// Whether the call's side effect happens first.
        after: bool,
    },
    /// The VM dies.
    KillGuest,
    /// An OOM kill of this container (default: the call's `container_id`).
    Oom(Option<String>),
    /// The agent restarts: every connection drops and its state is lost.
    RestartAgent,
    /// Stdio streams and CopyFile at this many bytes per second.
    Slow(u64),
    /// A malformed response frame.
    Corrupt,
    /// PERMISSION_DENIED, as a policy-enforcing agent answers.
    Deny,
    /// UNIMPLEMENTED, as an agent without the RPC answers.
    Unimplemented,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Off => f.write_str("off"),
            Action::Delay { delay, jitter } if jitter.is_zero() => write!(f, "delay({delay:?})"),
            Action::Delay { delay, jitter } => write!(f, "delay({delay:?}, {jitter:?})"),
            Action::Hang => f.write_str("hang"),
            Action::Error {
                code,
                message: None,
            } => write!(f, "error({})", crate::error::code_name(*code)),
            Action::Error {
                code,
                message: Some(m),
            } => write!(f, "error({}, {m:?})", crate::error::code_name(*code)),
            Action::Drop { after: false } => f.write_str("drop(before)"),
            Action::Drop { after: true } => f.write_str("drop(after)"),
            Action::KillGuest => f.write_str("kill_guest"),
            Action::Oom(None) => f.write_str("oom"),
            Action::Oom(Some(c)) => write!(f, "oom({c})"),
            Action::RestartAgent => f.write_str("restart_agent"),
            Action::Slow(bps) => write!(f, "slow({bps})"),
            Action::Corrupt => f.write_str("corrupt"),
            Action::Deny => f.write_str("deny"),
            Action::Unimplemented => f.write_str("unimplemented"),
        }
    }
}

/// One term of a chain: `[P%][N*]ACTION`.
#[derive(Debug, Clone, PartialEq)]
pub struct Term {
    /// The chance (0..=100) that a matching call triggers the action; 100 when absent.
    pub percent: f64,
    /// How many triggers before the next term applies; `None`: forever.
    pub count: Option<u64>,
    /// The action.
    pub action: Action,
}

/// A parsed rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// The RPC or operation, or `*`.
    pub target: Target,
    /// Field filters, all of which must match.
    pub filters: Vec<(String, String)>,
    /// The terms, applied in turn as their counts run out.
    pub chain: Vec<Term>,
    /// The text it was parsed from.
    pub text: String,
}

/// A rule that did not parse: where, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct RuleError {
    /// The rule text.
    pub rule: String,
    /// The 1-based column (in characters) of the problem.
    pub column: usize,
    /// What was wrong, e.g. `expected "=" after the target, found "{"`.
    pub message: String,
}

impl RuleError {
    fn render(&self) -> String {
        format!(
            "column {}: {}\n  {}\n  {}^",
            self.column,
            self.message,
            self.rule,
            " ".repeat(self.column.saturating_sub(1))
        )
    }
}

struct Parser<'a> {
    text: &'a str,
    chars: Vec<char>,
    pos: usize,
}

fn describe(c: Option<char>) -> String {
    match c {
        None => "end of rule".into(),
        Some(c) => format!("{c:?}"),
    }
}

impl<'a> Parser<'a> {
    fn err<T>(&self, at: usize, message: impl Into<String>) -> Result<T, RuleError> {
        Err(RuleError {
            rule: self.text.to_string(),
            column: at + 1,
            message: message.into(),
        })
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, c: char) -> bool {
        self.skip_ws();
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: char, context: &str) -> Result<(), RuleError> {
        if self.eat(c) {
            Ok(())
        } else {
            self.err(
                self.pos,
                format!("expected {c:?} {context}, found {}", describe(self.peek())),
            )
        }
    }

    /// `[A-Za-z0-9_.-]+`.
    fn word(&mut self) -> String {
        self.skip_ws();
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        {
            // `->` ends a word.
            if self.peek() == Some('-') && self.chars.get(self.pos + 1) == Some(&'>') {
                break;
            }
            self.pos += 1;
        }
        self.chars[start..self.pos].iter().collect()
    }

    fn quoted(&mut self) -> Result<String, RuleError> {
        let start = self.pos;
        self.pos += 1;
        let mut out = String::new();
        loop {
            match self.peek() {
                None => return self.err(start, "unterminated string: expected a closing '\"'"),
                Some('"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some('\\') if self.chars.get(self.pos + 1).is_some() => {
                    out.push(self.chars[self.pos + 1]);
                    self.pos += 2;
                }
                Some(c) => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
    }

    fn rule(&mut self) -> Result<Rule, RuleError> {
        self.skip_ws();
        let start = self.pos;
        let target = if self.eat('*') {
            Target::Any
        } else {
            let name = self.word();
            if name.is_empty() {
                return self.err(
                    start,
                    format!(
                        "expected a target (an RPC, a hypervisor operation or \"*\"), found {}",
                        describe(self.peek())
                    ),
                );
            }
            let op = match name.parse::<Op>() {
                Ok(op) => op,
                Err(e) => {
                    return self.err(
                        start,
                        unknown(
                            "target",
                            &name,
                            e.nearest,
                            "an agent RPC such as CreateContainer, a hypervisor operation such as StartVM, or \"*\"",
                        ),
                    );
                }
            };
            match Target::new(op) {
                Some(t) => t,
                None => {
                    return self.err(
                        start,
                        format!(
                            "{op} is recorded, cannot be faulted: no call passes the fault hook (to make the VM die, use the kill_guest action on another target)"
                        ),
                    );
                }
            }
        };
        let keys = target.filter_keys();
        let mut filters = Vec::new();
        if self.eat('{') {
            loop {
                self.skip_ws();
                let at = self.pos;
                let field = self.word();
                if field.is_empty() {
                    return self.err(
                        at,
                        format!("expected a field name, found {}", describe(self.peek())),
                    );
                }
                if !keys.contains(&field.as_str()) {
                    let what = match target {
                        Target::Any => "any call",
                        Target::Op(op) => op.name(),
                    };
                    let accepted = format!("the keys {what} records: {}", one_of(&keys));
                    return self.err(
                        at,
                        match suggest(&field, keys.iter().copied()) {
                            Some(n) => format!(
                                "unknown filter key {field:?} for {target}: did you mean {n:?}? ({accepted})"
                            ),
                            None => {
                                format!("unknown filter key {field:?} for {target}: expected {accepted}")
                            }
                        },
                    );
                }
                self.expect('=', &format!("after the field {field:?}"))?;
                self.skip_ws();
                let value = if self.peek() == Some('"') {
                    self.quoted()?
                } else {
                    self.word()
                };
                filters.push((field, value));
                if self.eat(',') {
                    continue;
                }
                self.expect('}', "or \",\" after a filter")?;
                break;
            }
        }
        self.expect('=', "after the target and its filters")?;
        let mut chain = vec![self.term()?];
        loop {
            self.skip_ws();
            if self.peek() == Some('-') && self.chars.get(self.pos + 1) == Some(&'>') {
                self.pos += 2;
                chain.push(self.term()?);
            } else {
                break;
            }
        }
        self.skip_ws();
        if self.peek().is_some() {
            return self.err(
                self.pos,
                format!(
                    "expected \"->\" or the end of the rule, found {}",
                    describe(self.peek())
                ),
            );
        }
        Ok(Rule {
            target,
            filters,
            chain,
            text: self.text.trim().to_string(),
        })
    }

    /// A decimal number (digits with an optional fraction).
    fn number(&mut self) -> Option<(f64, String)> {
        self.skip_ws();
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit() || c == '.') {
            self.pos += 1;
        }
        let s: String = self.chars[start..self.pos].iter().collect();
        if s.is_empty() {
            return None;
        }
        match s.parse::<f64>() {
            Ok(v) => Some((v, s)),
            Err(_) => {
                self.pos = start;
                None
            }
        }
    }

    fn term(&mut self) -> Result<Term, RuleError> {
        self.skip_ws();
        let mut percent = 100.0;
        let mut count = None;
        let at = self.pos;
        if let Some((n, text)) = self.number() {
            if self.eat('%') {
                if !(0.0..=100.0).contains(&n) {
                    return self.err(at, format!("a probability must be 0-100%, found {text}%"));
                }
                percent = n;
                let at = self.pos;
                if let Some((c, text)) = self.number() {
                    count = Some(self.count(at, c, &text)?);
                }
            } else {
                count = Some(self.count(at, n, &text)?);
            }
        }
        let action = self.action()?;
        Ok(Term {
            percent,
            count,
            action,
        })
    }

    fn count(&mut self, at: usize, n: f64, text: &str) -> Result<u64, RuleError> {
        if n.fract() != 0.0 || text.contains('.') {
            return self.err(at, format!("a count must be a whole number, found {text}"));
        }
        // 2^64: the first value a u64 cannot hold.
        if n >= 18_446_744_073_709_551_616.0 {
            return self.err(at, format!("a count must be below 2^64, found {text}"));
        }
        self.skip_ws();
        if !self.eat('*') {
            return self.err(
                self.pos,
                format!(
                    "expected \"%\" or \"*\" after the number {text}, found {}",
                    describe(self.peek())
                ),
            );
        }
        Ok(n as u64)
    }

    fn action(&mut self) -> Result<Action, RuleError> {
        self.skip_ws();
        let at = self.pos;
        let name = self.word();
        let has_args = self.eat('(');
        let no_args = |p: &mut Self, a: Action| -> Result<Action, RuleError> {
            if has_args {
                p.err(at, format!("{name} takes no arguments"))
            } else {
                Ok(a)
            }
        };
        let action = match name.as_str() {
            "off" => no_args(self, Action::Off)?,
            "hang" => no_args(self, Action::Hang)?,
            "kill_guest" => no_args(self, Action::KillGuest)?,
            "restart_agent" => no_args(self, Action::RestartAgent)?,
            "corrupt" => no_args(self, Action::Corrupt)?,
            "deny" => no_args(self, Action::Deny)?,
            "unimplemented" => no_args(self, Action::Unimplemented)?,
            "oom" if !has_args => Action::Oom(None),
            "oom" => {
                let at = self.pos;
                let c = self.word();
                if c.is_empty() {
                    return self.err(at, "expected a container id in oom(...)");
                }
                self.expect(')', "after the container id")?;
                Action::Oom(Some(c))
            }
            "delay" => {
                self.require_args(has_args, at, "delay(DURATION[, JITTER])")?;
                let delay = self.duration()?;
                let jitter = if self.eat(',') {
                    self.duration()?
                } else {
                    Duration::ZERO
                };
                self.expect(')', "after the delay")?;
                Action::Delay { delay, jitter }
            }
            "error" => {
                self.require_args(has_args, at, "error(CODE[, \"MESSAGE\"])")?;
                let at = self.pos;
                let word = self.word();
                let code = code_from_name(&word).ok_or_else(|| RuleError {
                    rule: self.text.to_string(),
                    column: at + 1,
                    message: if word.is_empty() {
                        format!(
                            "expected a status code name (such as UNAVAILABLE or INTERNAL), found {}",
                            describe(self.chars.get(at).copied())
                        )
                    } else {
                        unknown(
                            "status code",
                            &word,
                            suggest(&word, crate::error::CODES.iter().map(|c| code_name(*c))),
                            "a status code name such as UNAVAILABLE or INTERNAL",
                        )
                    },
                })?;
                let message = if self.eat(',') {
                    self.skip_ws();
                    if self.peek() != Some('"') {
                        return self.err(
                            self.pos,
                            format!(
                                "expected a \"quoted\" message, found {}",
                                describe(self.peek())
                            ),
                        );
                    }
                    Some(self.quoted()?)
                } else {
                    None
                };
                self.expect(')', "after the error")?;
                Action::Error { code, message }
            }
            "drop" => {
                self.require_args(has_args, at, "drop(before|after)")?;
                let at = self.pos;
                let when = self.word();
                let after = match when.as_str() {
                    "before" => false,
                    "after" => true,
                    _ => {
                        return self.err(
                            at,
                            format!(
                                "expected before or after, found {}",
                                if when.is_empty() {
                                    describe(self.peek())
                                } else {
                                    match suggest(&when, ["before", "after"]) {
                                        Some(n) => format!("{when:?} (did you mean {n:?}?)"),
                                        None => format!("{when:?}"),
                                    }
                                }
                            ),
                        );
                    }
                };
                self.expect(')', "after drop's argument")?;
                Action::Drop { after }
            }
            "slow" => {
                self.require_args(has_args, at, "slow(BYTES_PER_SECOND)")?;
                let at = self.pos;
                let bps = self.size().filter(|b| *b > 0).ok_or_else(|| RuleError {
                    rule: self.text.to_string(),
                    column: at + 1,
                    message: "expected a positive bytes-per-second rate (such as 4096 or 64k)"
                        .into(),
                })?;
                self.expect(')', "after the rate")?;
                Action::Slow(bps)
            }
            "" => {
                return self.err(
                    at,
                    format!("expected an action, found {}", describe(self.peek())),
                );
            }
            other => {
                return self.err(
                    at,
                    unknown(
                        "action",
                        other,
                        suggest(other, ACTIONS.iter().copied()),
                        one_of(ACTIONS),
                    ),
                );
            }
        };
        Ok(action)
    }

    fn require_args(&self, has: bool, at: usize, form: &str) -> Result<(), RuleError> {
        if has {
            Ok(())
        } else {
            self.err(at, format!("expected arguments: {form}"))
        }
    }

    fn duration(&mut self) -> Result<Duration, RuleError> {
        self.skip_ws();
        let at = self.pos;
        let Some((n, text)) = self.number() else {
            return self.err(
                at,
                format!(
                    "expected a duration (such as 5s or 200ms), found {}",
                    describe(self.peek())
                ),
            );
        };
        let unit = self.word();
        let secs = match unit.as_str() {
            "us" => n / 1e6,
            "ms" => n / 1e3,
            "s" => n,
            "m" => n * 60.0,
            _ => {
                return self.err(
                    at,
                    format!(
                        "expected a unit (us, ms, s or m) after {text}, found {}",
                        if unit.is_empty() {
                            describe(self.peek())
                        } else {
                            format!("{unit:?}")
                        }
                    ),
                );
            }
        };
        match Duration::try_from_secs_f64(secs) {
            Ok(d) if d <= MAX_DURATION => Ok(d),
            _ => self.err(
                at,
                format!(
                    "duration {text}{unit} out of range: expected 0us to {}s (a day)",
                    MAX_DURATION.as_secs()
                ),
            ),
        }
    }

    fn size(&mut self) -> Option<u64> {
        let (n, _) = self.number()?;
        let mult = match self.peek() {
            Some('k' | 'K') => {
                self.pos += 1;
                1024.0
            }
            Some('m' | 'M') => {
                self.pos += 1;
                1024.0 * 1024.0
            }
            _ => 1.0,
        };
        let v = n * mult;
        (v.fract() == 0.0 && v >= 0.0 && v < u64::MAX as f64).then_some(v as u64)
    }
}

impl std::str::FromStr for Rule {
    type Err = RuleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Parser {
            text: s,
            chars: s.chars().collect(),
            pos: 0,
        }
        .rule()
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl TryFrom<String> for Rule {
    type Error = RuleError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// A rule serializes as its text.
impl serde::Serialize for Rule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

/// A rule deserializes from its text; an error is the [`RuleError`]'s message (a loader that
/// wants the column parses the scalar it read as a rule).
impl<'de> serde::Deserialize<'de> for Rule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|e: RuleError| serde::de::Error::custom(e.message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::Method;

    fn parse(s: &str) -> Rule {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn the_issue_examples_parse() {
        let r = parse(r#"GetDiagnosticData=error(UNAVAILABLE,"guest busy")"#);
        assert_eq!(
            r.chain[0].action,
            Action::Error {
                code: Code::UNAVAILABLE,
                message: Some("guest busy".into())
            }
        );
        let r = parse("Check=50%error(INTERNAL)");
        assert_eq!(r.chain[0].percent, 50.0);
        let r = parse("CreateContainer=1*drop(after)->off");
        assert_eq!(r.chain.len(), 2);
        assert_eq!(r.chain[0].count, Some(1));
        assert_eq!(r.chain[0].action, Action::Drop { after: true });
        assert_eq!(r.chain[1].action, Action::Off);
        let r = parse("WaitProcess{container_id=c1}=hang");
        assert_eq!(r.filters, vec![("container_id".into(), "c1".into())]);
        let r = parse("StartVM=delay(5s)");
        assert_eq!(
            r.chain[0].action,
            Action::Delay {
                delay: Duration::from_secs(5),
                jitter: Duration::ZERO
            }
        );
        parse("GetDiagnosticData=unimplemented");
    }

    fn error(s: &str) -> RuleError {
        s.parse::<Rule>().expect_err(s)
    }

    #[test]
    fn out_of_range_values_are_located_errors() {
        // Used to parse, then overflow the clock in the engine or the servers.
        let e = error("Check=delay(18446744073709549568s)");
        assert_eq!(e.column, 13, "{e}");
        assert!(
            e.message.contains("out of range") && e.message.contains("86400s"),
            "{e}"
        );
        let e = error("Check=delay(1s, 86401s)");
        assert_eq!(e.column, 17, "{e}");
        let e = error("Check=delay(1441m)");
        assert!(e.message.contains("out of range"), "{e}");
        let e = error("Check=99999999999999999999*hang");
        assert_eq!(e.column, 7, "{e}");
        assert!(e.message.contains("below 2^64"), "{e}");
        assert_eq!(
            parse("Check=delay(1440m)").chain[0].action,
            Action::Delay {
                delay: MAX_DURATION,
                jitter: Duration::ZERO
            }
        );
    }

    #[test]
    fn every_form_parses() {
        let r = parse(
            r#" * { exec_id= , log_type=termination_log, sandbox="a b" } = 25% 3*delay(1.5s, 200ms) -> oom(c9) -> slow(64k) "#,
        );
        assert_eq!(r.target, Target::Any);
        assert_eq!(
            r.filters,
            vec![
                ("exec_id".into(), "".into()),
                ("log_type".into(), "termination_log".into()),
                ("sandbox".into(), "a b".into())
            ]
        );
        assert_eq!(r.chain[0].percent, 25.0);
        assert_eq!(r.chain[0].count, Some(3));
        assert_eq!(
            r.chain[0].action,
            Action::Delay {
                delay: Duration::from_millis(1500),
                jitter: Duration::from_millis(200)
            }
        );
        assert_eq!(r.chain[1].action, Action::Oom(Some("c9".into())));
        assert_eq!(r.chain[2].action, Action::Slow(65536));
        for a in [
            "hang",
            "kill_guest",
            "oom",
            "restart_agent",
            "corrupt",
            "deny",
            "drop(before)",
        ] {
            parse(&format!("Check={a}"));
        }
    }

    #[test]
    fn targets_are_operations_the_hook_sees() {
        use crate::op::VmOp;
        assert_eq!(
            parse("StartVM=hang").target,
            Target::Op(Op::Vm(VmOp::StartVM))
        );
        assert_eq!(
            parse("Check=hang").target,
            Target::Op(Op::Agent(Method::Check))
        );
        for vm in VmOp::ALL.iter().filter(|v| v.faultable()) {
            parse(&format!("{vm}=hang"));
        }
        for op in ["KillVM", "Disconnect"] {
            let e = error(&format!("  {op}=hang"));
            assert_eq!(e.column, 3, "{e}");
            assert!(
                e.message
                    .starts_with(&format!("{op} is recorded, cannot be faulted")),
                "{e}"
            );
        }
        let e = error("Chek=hang");
        assert_eq!(e.column, 1);
        assert!(
            e.message.starts_with(
                r#"unknown target "Chek": did you mean "Check"? (expected an agent RPC"#
            ),
            "{e}"
        );
        let e = error("Frobnicate=hang");
        assert!(
            e.message
                .starts_with(r#"unknown target "Frobnicate": expected an agent RPC"#),
            "{e}"
        );
    }

    #[test]
    fn filter_keys_are_the_ones_the_target_records() {
        let e = error("WaitProcess{container=c2}=hang");
        assert_eq!(e.column, 13, "{e}");
        assert_eq!(
            e.message,
            r#"unknown filter key "container" for WaitProcess: did you mean "container_id"? (the keys WaitProcess records: container_id, exec_id or sandbox)"#
        );
        parse("WaitProcess{container_id=c2, exec_id=e1, sandbox=s}=hang");
        parse("StartVM{timeout=1}=hang");
        let e = error("StartVM{container_id=c1}=hang");
        assert_eq!(e.column, 9, "{e}");
        // `*`: any key some operation records.
        parse("*{container_id=c1, kind=blk}=hang");
        let e = error("*{bogus=1}=hang");
        assert_eq!(e.column, 3, "{e}");
        assert!(
            e.message.starts_with(
                r#"unknown filter key "bogus" for *: expected the keys any call records: "#
            ),
            "{e}"
        );
    }

    #[test]
    fn misspelt_actions_codes_and_arguments_get_the_nearest() {
        let e = error("Check=hnag");
        assert_eq!(e.column, 7);
        assert!(
            e.message
                .starts_with(r#"unknown action "hnag": did you mean "hang"? (expected off, delay"#),
            "{e}"
        );
        let e = error("Check=error(UNAVAILBLE)");
        assert_eq!(e.column, 13);
        assert!(
            e.message
                .starts_with(r#"unknown status code "UNAVAILBLE": did you mean "UNAVAILABLE"?"#),
            "{e}"
        );
        let e = error("Check=drop(befor)");
        assert!(e.message.contains(r#"did you mean "before"?"#), "{e}");
    }

    #[test]
    fn rules_round_trip_through_serde_as_their_text() {
        let r = parse("Check{sandbox=a}=1*hang->off");
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, r#""Check{sandbox=a}=1*hang->off""#);
        assert_eq!(serde_json::from_str::<Rule>(&json).unwrap(), r);
        let e = serde_json::from_str::<Rule>(r#""Check=explode""#).unwrap_err();
        assert!(e.to_string().starts_with("unknown action"), "{e}");
    }
}
