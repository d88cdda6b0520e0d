//! [`FaultEngine`]: installed rules, indexed by target, deciding each call from a seeded
//! generator.
//!
//! Rules are consulted in installation order; the first whose target and filters match and
//! whose current term triggers decides the call. A term with a count moves on to the next term
//! after that many triggers (a probability that does not fire does not use up the count); when
//! every term is used up the rule is inert. Only terms with a probability below 100% draw from
//! the generator, so the same seed and the same call sequence give the same decisions.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

use super::rule::{Action, Rule, RuleError};
use super::{CallInfo, FaultHook, Verdict};
use crate::error::AgentError;

/// The id of an installed rule.
pub type RuleId = u64;

/// One fault that fired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fired {
    /// The rule.
    pub rule: RuleId,
    /// The call's target.
    pub target: String,
    /// The action, as text (`error(UNAVAILABLE, "guest busy")`).
    pub action: String,
}

#[derive(Debug)]
struct Installed {
    rule: Rule,
    /// The term now in force, and how many times it has triggered.
    term: usize,
    used: u64,
}

#[derive(Debug)]
struct State {
    next_id: RuleId,
    rules: BTreeMap<RuleId, Installed>,
    /// Rule ids by target; `*` rules are under "*". Lookups never scan other targets' rules.
    by_target: BTreeMap<String, Vec<RuleId>>,
    rng: ChaCha8Rng,
    seed: u64,
    fired: Vec<Fired>,
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
    /// An engine with no rules, drawing from `seed`.
    pub fn new(seed: u64) -> Self {
        FaultEngine {
            state: Arc::new(Mutex::new(State {
                next_id: 1,
                rules: BTreeMap::new(),
                by_target: BTreeMap::new(),
                rng: ChaCha8Rng::seed_from_u64(seed),
                seed,
                fired: Vec::new(),
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
            .entry(rule.target.clone())
            .or_default()
            .push(id);
        st.rules.insert(
            id,
            Installed {
                rule,
                term: 0,
                used: 0,
            },
        );
        FaultGuard {
            engine: Arc::downgrade(&self.state),
            id,
        }
    }

    /// Installs a rule for the engine's lifetime (the CLI's `--fault`); returns its id.
    pub fn add(&self, rule: &str) -> Result<RuleId, RuleError> {
        let g = self.install(rule)?;
        let id = g.id();
        g.forget();
        Ok(id)
    }

    /// Removes a rule; false if it was not installed.
    pub fn remove(&self, id: RuleId) -> bool {
        let mut st = self.lock();
        let Some(r) = st.rules.remove(&id) else {
            return false;
        };
        if let Some(ids) = st.by_target.get_mut(&r.rule.target) {
            ids.retain(|i| *i != id);
            if ids.is_empty() {
                st.by_target.remove(&r.rule.target);
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

    /// Every fault that fired, in order.
    pub fn fired(&self) -> Vec<Fired> {
        self.lock().fired.clone()
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
            let fires = term.percent >= 100.0 || {
                // A uniform draw in [0, 100).
                let draw = (state.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 100.0;
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
                    let extra = state.rng.next_u64() % (jitter.as_nanos() as u64 + 1);
                    Action::Delay {
                        delay: delay + Duration::from_nanos(extra),
                        jitter: Duration::ZERO,
                    }
                }
                a => a,
            };
            state.fired.push(Fired {
                rule: id,
                target: call.target.to_string(),
                action: action.to_string(),
            });
            return Some((id, action));
        }
        None
    }
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
