//! [`FaultEngine`]: installed rules, indexed by target, deciding each call from a seeded
//! generator.
//!
//! Rules are consulted in installation order; the first whose target and filters match and
//! whose current term triggers decides the call. A term with a count moves on to the next term
//! after that many triggers (a probability that does not fire does not use up the count); when
//! every term is used up the rule is inert. Only terms with a probability below 100% draw, and
//! each draw is a function of the seed, the rule, the call (its target and key fields) and how
//! many draws that rule already made for that same call (see `draw`): not of the order in which
//! concurrent calls arrive (a stdio read racing a lifecycle call, an OOM poll, a second
//! connection), so the same seed gives the same decisions on every run and over either
//! transport. A rule keeps one draw count per distinct call, for at most
//! [`DRAW_KEYS_PER_RULE`] of them; calls beyond those share one count.
//!
//! The engine records every fault that fires ([`FaultEngine::fired`]). A long-running server
//! keeps only the most recent ones ([`FaultEngine::bounded`], as its traces are bounded) and
//! counts the rest ([`FaultEngine::fired_dropped`]).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

use super::rule::{Action, Rule, RuleError};
use super::{CallInfo, FaultHook, Verdict};
use crate::error::AgentError;

/// The id of an installed rule.
pub type RuleId = u64;

/// How many distinct calls (target and key fields) one rule keeps a draw count for; further
/// calls share one count, so a long-running server's engine stays bounded.
pub const DRAW_KEYS_PER_RULE: usize = 4096;

/// The key of the calls that share one draw count: one past [`DRAW_KEYS_PER_RULE`] distinct
/// calls.
const SHARED_DRAW_KEY: u64 = u64::MAX;

/// One fault that fired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fired {
    /// The rule.
    pub rule: RuleId,
    /// The call's target.
    pub target: String,
    /// The action, as text (`error(UNAVAILABLE, "guest busy")`).
    pub action: String,
    /// The action itself (a delay with its jitter drawn).
    pub kind: Action,
    /// How many calls the rule had been asked about before this one (calls it matched while
    /// not used up, whether or not they fired): a rule `N*off -> 1*ACTION` fires on the same
    /// call, which is how `kata-sim shrink` makes a random run deterministic.
    pub nth: u64,
}

#[derive(Debug)]
struct Installed {
    rule: Rule,
    /// The term now in force, and how many times it has triggered.
    term: usize,
    used: u64,
    /// How many draws the rule made for each distinct call (by [`call_key`]).
    draws: BTreeMap<u64, u64>,
    /// How many calls it was asked about (matched while not used up).
    asked: u64,
}

#[derive(Debug)]
struct State {
    next_id: RuleId,
    rules: BTreeMap<RuleId, Installed>,
    /// Rule ids by target; `*` rules are under "*". Lookups never scan other targets' rules.
    by_target: BTreeMap<String, Vec<RuleId>>,
    seed: u64,
    /// The faults that fired, oldest first (the most recent `fired_limit` of them).
    fired: VecDeque<Fired>,
    fired_limit: Option<usize>,
    /// How many older fired faults were let go to stay within `fired_limit`.
    fired_dropped: u64,
}

/// The seeded fault engine. Cheap to clone; clones share the rules.
#[derive(Debug, Clone)]
pub struct FaultEngine {
    state: Arc<Mutex<State>>,
}

/// Uninstalls its rule when dropped.
#[must_use = "the rule is removed when the guard is dropped"]
#[derive(Debug)]
pub struct FaultGuard {
    engine: Weak<Mutex<State>>,
    id: RuleId,
}

impl FaultGuard {
    /// The rule's id.
    pub fn id(&self) -> RuleId {
        self.id
    }

    /// Keeps the rule installed for the engine's lifetime.
    pub fn forget(self) {
        std::mem::forget(self);
    }
}

impl Drop for FaultGuard {
    fn drop(&mut self) {
        if let Some(state) = self.engine.upgrade() {
            FaultEngine { state }.remove(self.id);
        }
    }
}

impl Default for FaultEngine {
    fn default() -> Self {
        Self::new(0)
    }
}

impl FaultEngine {
    /// An engine with no rules, drawing from `seed`; it records every fault that fires.
    pub fn new(seed: u64) -> Self {
        Self::with_fired_limit(seed, None)
    }

    /// An engine that records only the most recent `limit` faults that fire (at least one),
    /// for a server that runs for hours ([`crate::trace::SERVER_TRACE_LIMIT`]); the others
    /// are counted in [`FaultEngine::fired_dropped`].
    pub fn bounded(seed: u64, limit: usize) -> Self {
        Self::with_fired_limit(seed, Some(limit.max(1)))
    }

    /// An engine that records every fired fault (`None`) or the most recent `limit`.
    pub fn with_fired_limit(seed: u64, limit: Option<usize>) -> Self {
        FaultEngine {
            state: Arc::new(Mutex::new(State {
                next_id: 1,
                rules: BTreeMap::new(),
                by_target: BTreeMap::new(),
                seed,
                fired: VecDeque::new(),
                fired_limit: limit.map(|l| l.max(1)),
                fired_dropped: 0,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The seed it draws from.
    pub fn seed(&self) -> u64 {
        self.lock().seed
    }

    /// Parses and installs a rule; the guard removes it.
    pub fn install(&self, rule: &str) -> Result<FaultGuard, RuleError> {
        let rule: Rule = rule.parse()?;
        Ok(self.install_rule(rule))
    }

    /// Installs a parsed rule; the guard removes it.
    pub fn install_rule(&self, rule: Rule) -> FaultGuard {
        let mut st = self.lock();
        let id = st.next_id;
        st.next_id += 1;
        st.by_target
            .entry(rule.target.name().to_string())
            .or_default()
            .push(id);
        st.rules.insert(
            id,
            Installed {
                rule,
                term: 0,
                used: 0,
                draws: BTreeMap::new(),
                asked: 0,
            },
        );
        FaultGuard {
            engine: Arc::downgrade(&self.state),
            id,
        }
    }

    /// Parses and installs a rule for the engine's lifetime (the control socket's `add`);
    /// returns its id.
    pub fn add(&self, rule: &str) -> Result<RuleId, RuleError> {
        Ok(self.add_rule(rule.parse()?))
    }

    /// Installs a parsed rule for the engine's lifetime (a scenario's `faults`, the CLI's
    /// `--fault`); returns its id.
    pub fn add_rule(&self, rule: Rule) -> RuleId {
        let g = self.install_rule(rule);
        let id = g.id();
        g.forget();
        id
    }

    /// Removes a rule; false if it was not installed.
    pub fn remove(&self, id: RuleId) -> bool {
        let mut st = self.lock();
        let Some(r) = st.rules.remove(&id) else {
            return false;
        };
        let target = r.rule.target.name();
        if let Some(ids) = st.by_target.get_mut(target) {
            ids.retain(|i| *i != id);
            if ids.is_empty() {
                st.by_target.remove(target);
            }
        }
        true
    }

    /// Removes every rule.
    pub fn clear(&self) {
        let mut st = self.lock();
        st.rules.clear();
        st.by_target.clear();
    }

    /// The installed rules, by id.
    pub fn list(&self) -> Vec<(RuleId, String)> {
        self.lock()
            .rules
            .iter()
            .map(|(id, r)| (*id, r.rule.text.clone()))
            .collect()
    }

    /// The faults that fired, in order: every one, or the most recent ones of a
    /// [`FaultEngine::bounded`] engine.
    pub fn fired(&self) -> Vec<Fired> {
        self.lock().fired.iter().cloned().collect()
    }

    /// How many fired faults a bounded engine no longer keeps (the oldest ones).
    pub fn fired_dropped(&self) -> u64 {
        self.lock().fired_dropped
    }

    /// How many faults fired in all, kept or not.
    pub fn fired_total(&self) -> u64 {
        let st = self.lock();
        st.fired_dropped + st.fired.len() as u64
    }

    /// The action for one call, if a rule triggers.
    fn choose(&self, call: &CallInfo<'_>) -> Option<(RuleId, Action)> {
        let mut st = self.lock();
        if st.rules.is_empty() {
            return None;
        }
        let mut candidates: Vec<RuleId> = Vec::new();
        if let Some(ids) = st.by_target.get(call.target) {
            candidates.extend(ids);
        }
        if let Some(ids) = st.by_target.get("*") {
            candidates.extend(ids);
        }
        if candidates.is_empty() {
            return None;
        }
        candidates.sort_unstable();
        let state = &mut *st;
        let key = call_key(call);
        for id in candidates {
            let Some(inst) = state.rules.get_mut(&id) else {
                continue;
            };
            if !matches(&inst.rule, call) {
                continue;
            }
            let Some(term) = inst.rule.chain.get(inst.term) else {
                continue; // used up
            };
            let nth = inst.asked;
            inst.asked += 1;
            // The generator of this rule for this call's n-th draw: None when the term does
            // not draw (a certain term and no jitter).
            let mut rng = None;
            let seed = state.seed;
            let generator = |draws: &mut BTreeMap<u64, u64>| -> ChaCha8Rng {
                let key = if draws.len() < DRAW_KEYS_PER_RULE || draws.contains_key(&key) {
                    key
                } else {
                    SHARED_DRAW_KEY
                };
                let n = draws.entry(key).or_default();
                let g = draw(seed, id, key, *n);
                *n += 1;
                g
            };
            let fires = term.percent >= 100.0 || {
                let g = rng.insert(generator(&mut inst.draws));
                // A uniform draw in [0, 100).
                let draw = (g.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 100.0;
                draw < term.percent
            };
            if !fires {
                continue;
            }
            let action = term.action.clone();
            if let Some(n) = term.count {
                inst.used += 1;
                if inst.used >= n {
                    inst.term += 1;
                    inst.used = 0;
                }
            }
            if action == Action::Off {
                // This rule lets the call through; a later rule may still fault it.
                continue;
            }
            let action = match action {
                Action::Delay { delay, jitter } if !jitter.is_zero() => {
                    // Rules bound both to a day (`rule::MAX_DURATION`); saturate all the same.
                    let span = u64::try_from(jitter.as_nanos()).unwrap_or(u64::MAX);
                    let g = match &mut rng {
                        Some(g) => g,
                        None => rng.insert(generator(&mut inst.draws)),
                    };
                    let extra = g.next_u64() % span.saturating_add(1);
                    Action::Delay {
                        delay: delay.saturating_add(Duration::from_nanos(extra)),
                        jitter: Duration::ZERO,
                    }
                }
                a => a,
            };
            if state.fired_limit.is_some_and(|l| state.fired.len() >= l) {
                state.fired.pop_front();
                state.fired_dropped += 1;
            }
            state.fired.push_back(Fired {
                rule: id,
                target: call.target.to_string(),
                action: action.to_string(),
                kind: action.clone(),
                nth,
            });
            return Some((id, action));
        }
        None
    }
}

/// A stable key of a call: FNV-1a over its target and key fields (names and values), the same
/// on every run and build.
fn call_key(call: &CallInfo<'_>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes.iter().chain([&0xff]) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(call.target.as_bytes());
    for (k, v) in call.fields {
        eat(k.as_bytes());
        eat(v.as_bytes());
    }
    h
}

/// The generator of rule `rule`'s `n`-th draw for the calls keyed `key`, under `seed`.
fn draw(seed: u64, rule: RuleId, key: u64, n: u64) -> ChaCha8Rng {
    let mut seed_bytes = [0u8; 32];
    for (chunk, v) in seed_bytes.chunks_exact_mut(8).zip([seed, rule, key, n]) {
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    ChaCha8Rng::from_seed(seed_bytes)
}

fn matches(rule: &Rule, call: &CallInfo<'_>) -> bool {
    rule.filters.iter().all(|(field, want)| {
        let have = if field == "sandbox" {
            call.sandbox.unwrap_or("")
        } else {
            call.field(field).unwrap_or("")
        };
        have == want
    })
}

impl FaultHook for FaultEngine {
    fn decide(&self, call: &CallInfo<'_>) -> Verdict {
        let Some((id, action)) = self.choose(call) else {
            return Verdict::Pass;
        };
        let verdict = match action {
            Action::Off => Verdict::Pass,
            Action::Delay { delay, .. } => Verdict::Delay(delay),
            Action::Hang => Verdict::Hang,
            Action::Error { code, message } => Verdict::Fail(AgentError::status(
                code,
                message.unwrap_or_else(|| crate::error::code_name(code).to_string()),
            )),
            Action::Drop { after } => Verdict::Drop { after },
            Action::KillGuest => Verdict::KillGuest,
            Action::Oom(c) => Verdict::Oom(c),
            Action::RestartAgent => Verdict::RestartAgent,
            Action::Slow(bps) => Verdict::Slow(bps),
            Action::Corrupt => Verdict::Corrupt,
            Action::Deny => Verdict::Fail(AgentError::quoted(
                ttrpc::Code::PERMISSION_DENIED,
                &format!(
                    "{} is blocked by policy: denied by kata-sim fault rule #{id}",
                    call.request
                ),
            )),
            Action::Unimplemented => Verdict::Fail(AgentError::status(
                ttrpc::Code::UNIMPLEMENTED,
                format!("{} method", call.target),
            )),
        };
        tracing::debug!(rule = id, target = call.target, ?verdict, "fault fired");
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(target: &str) -> CallInfo<'_> {
        CallInfo {
            target,
            request: "CheckRequest",
            fields: &[],
            conn: None,
            sandbox: None,
        }
    }

    #[test]
    fn a_bounded_engine_keeps_the_most_recent_fired_faults_and_counts_the_rest() {
        let engine = FaultEngine::bounded(1, 3);
        engine.add("Check=error(INTERNAL)").unwrap();
        engine.add("Version=hang").unwrap();
        for i in 0..10 {
            engine.decide(&call(if i % 5 == 4 { "Version" } else { "Check" }));
        }
        let fired = engine.fired();
        assert_eq!(fired.len(), 3);
        assert_eq!(
            fired.iter().map(|f| f.target.as_str()).collect::<Vec<_>>(),
            ["Check", "Check", "Version"],
            "the most recent ones, in order"
        );
        assert_eq!(engine.fired_dropped(), 7);
        assert_eq!(engine.fired_total(), 10);
        let unbounded = FaultEngine::new(1);
        unbounded.add("Check=hang").unwrap();
        for _ in 0..100 {
            unbounded.decide(&call("Check"));
        }
        assert_eq!(unbounded.fired().len(), 100);
        assert_eq!(unbounded.fired_dropped(), 0);
    }

    #[test]
    fn a_draw_depends_on_the_seed_the_rule_and_the_call_not_on_arrival_order() {
        let fields = |cid: &str| vec![("container_id", cid.to_string())];
        let (c1, c2) = (fields("c1"), fields("c2"));
        let calls: Vec<(&str, &[(&'static str, String)])> = vec![
            ("ReadStdout", &c1),
            ("ReadStdout", &c2),
            ("ExecProcess", &c1),
            ("GetOOMEvent", &[]),
        ];
        // Each call's verdicts, in the order that call was made, for one arrival order.
        let run = |seed: u64, order: &[usize]| {
            let engine = FaultEngine::new(seed);
            engine.add("ReadStdout=50%error(INTERNAL)").unwrap();
            engine.add("*=30%delay(1ms, 5ms)").unwrap();
            let mut got: BTreeMap<usize, Vec<Verdict>> = BTreeMap::new();
            for &i in order {
                let (target, fields) = calls[i];
                let v = engine.decide(&CallInfo {
                    fields,
                    ..call(target)
                });
                got.entry(i).or_default().push(v);
            }
            got
        };
        let each_in_turn: Vec<usize> = (0..40).map(|i| i % calls.len()).collect();
        let mut grouped = each_in_turn.clone();
        grouped.sort_unstable();
        let mut reversed = grouped.clone();
        reversed.reverse();
        let a = run(7, &each_in_turn);
        assert_eq!(a, run(7, &grouped));
        assert_eq!(a, run(7, &reversed));
        assert_ne!(a, run(8, &each_in_turn), "another seed draws otherwise");
        let faults = a
            .values()
            .flatten()
            .filter(|v| **v != Verdict::Pass)
            .count();
        assert!(faults > 5 && faults < 35, "{faults} of 40 fired");
    }

    #[test]
    fn a_rule_keeps_a_bounded_number_of_draw_counts() {
        let engine = FaultEngine::new(1);
        engine.add("*=50%error(INTERNAL)").unwrap();
        for i in 0..DRAW_KEYS_PER_RULE + 100 {
            let f = [("container_id", format!("c{i}"))];
            engine.decide(&CallInfo {
                fields: &f,
                ..call("StartContainer")
            });
        }
        let st = engine.lock();
        let draws = &st.rules.values().next().expect("the rule").draws;
        assert_eq!(
            draws.len(),
            DRAW_KEYS_PER_RULE + 1,
            "the rest share one count"
        );
        assert_eq!(draws[&SHARED_DRAW_KEY], 100);
    }

    #[test]
    fn the_largest_delay_and_jitter_do_not_overflow() {
        let engine = FaultEngine::new(3);
        engine.add("Check=delay(1440m, 1440m)").unwrap();
        for _ in 0..100 {
            let Verdict::Delay(d) = engine.decide(&call("Check")) else {
                panic!("a delay")
            };
            assert!(
                d >= super::super::rule::MAX_DURATION && d <= 2 * super::super::rule::MAX_DURATION
            );
        }
    }
}
