//! `kata-sim shrink FILE --seed N`: a scenario with probabilistic faults that fails for one
//! seed, reduced to a minimal deterministic scenario that still fails the same expectation.
//!
//! 1. The failing run is replayed deterministically: every rule becomes the chain of exactly
//!    the firings it made (`K*off -> 1*ACTION -> ...`, ordinals from the engine's
//!    [`sim_agent::fault::Fired::nth`]), so no term draws; the result must fail the same way.
//! 2. Greedy passes, each keeping a change only if the expectation still fails the same way
//!    (the same [`crate::check::Mismatch::what`] and `actual`): drop a whole
//!    rule (with its `remove_fault` steps), drop one firing of a rule, drop one step. A
//!    candidate must pass the loader's checks ([`crate::load::check_built`]). The passes
//!    repeat until none removes anything, within [`MAX_RUNS`] runs. A rule left without
//!    firings stays as `Target=off` meanwhile (so the engine's rule ids, which a failure's
//!    record of fired faults names, do not move), and goes at the end if the failure allows.
//!
//! Every run is in process on the paused clock, so the search is deterministic too.

use std::fmt::Write as _;
use std::time::Duration;

use sim_agent::fault::{Action, Rule, RuleId, Term};

use crate::check::check;
use crate::host::Outcome;
use crate::schema::{Scenario, Step};

/// The most runs one shrink makes.
pub const MAX_RUNS: usize = 2_000;

/// Why a scenario cannot be shrunk.
#[derive(Debug, thiserror::Error)]
pub enum ShrinkError {
    /// It passes with this seed: there is nothing to keep failing.
    #[error("{name} passes with seed {seed}: nothing to shrink (give a seed it fails for)")]
    Passes {
        /// The scenario.
        name: String,
        /// The seed.
        seed: u64,
    },
    /// More faults fired than the engine keeps a record of.
    #[error("{0} faults fired but were not kept (the record is bounded); shrink a shorter run")]
    NotKept(u64),
    /// Replaying the firings did not fail the same expectation.
    #[error("replaying the run's {firings} firings deterministically does not fail `{what}` again")]
    NotReproduced {
        /// The expectation.
        what: String,
        /// How many firings were replayed.
        firings: usize,
    },
}

/// A shrunk scenario and how it came about.
#[derive(Debug)]
pub struct Shrunk {
    /// The minimal deterministic scenario.
    pub scenario: Scenario,
    /// The expectation it fails (a [`crate::check::Mismatch::what`]).
    pub what: String,
    /// Steps, rules and firings before and after.
    pub before: Size,
    /// See `before`.
    pub after: Size,
    /// How many runs the search made.
    pub runs: usize,
}

impl Shrunk {
    /// `6 -> 3 steps, 3 -> 1 rules, 2 -> 1 firings`.
    pub fn sizes(&self) -> String {
        let (b, a) = (self.before, self.after);
        format!(
            "{} -> {} steps, {} -> {} rules, {} -> {} firings",
            b.steps, a.steps, b.rules, a.rules, b.firings, a.firings
        )
    }
}

/// How big a scenario is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    /// Steps.
    pub steps: usize,
    /// Fault rules (in `faults` and `add_fault` steps).
    pub rules: usize,
    /// Faults that fired in its run.
    pub firings: usize,
}

/// Where a rule lives: `faults[i]` or the `add_fault` step `steps[i]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Faults(usize),
    Step(usize),
}

/// One rule's firings: (ordinal among the calls it was asked about, what it did).
type Firings = Vec<(u64, Action)>;

/// A candidate: the scenario with its rules as slots and each rule's firings.
#[derive(Debug, Clone)]
struct Candidate {
    base: Scenario,
    rules: Vec<(Slot, Rule, Firings)>,
    /// Whether a rule left without firings stays, as `Target=off` (engine ids, and so the
    /// fired-faults record, stay as they were), or goes.
    keep_unfired: bool,
}

fn run(s: &Scenario) -> Outcome {
    crate::runner::isolated(s, crate::host::run_blocking)
}

/// The engine's id of each rule: the scenario's `faults` from 1 in order, then its `add_fault`
/// steps in the order they ran (each runs once).
fn slots(s: &Scenario) -> Vec<(RuleId, Slot, Rule)> {
    let mut out: Vec<(RuleId, Slot, Rule)> = Vec::new();
    for (i, r) in s.faults.iter().enumerate() {
        out.push((out.len() as RuleId + 1, Slot::Faults(i), r.clone()));
    }
    for (i, step) in s.steps.iter().enumerate() {
        if let Step::AddFault(r) = step {
            out.push((out.len() as RuleId + 1, Slot::Step(i), r.clone()));
        }
    }
    out
}

/// An action as rule text that parses back to it (delays in whole microseconds, the finest
/// unit the rule language has).
fn action_text(a: &Action) -> String {
    match a {
        Action::Delay { delay, .. } => {
            let us = delay.as_micros().max(u128::from(!delay.is_zero()));
            format!("delay({us}us)")
        }
        a => a.to_string(),
    }
}

/// A filter value as rule text (quoted when it is not a plain word).
fn value_text(v: &str) -> String {
    let plain = !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if plain || v.is_empty() {
        v.to_string()
    } else {
        let escaped: String = v
            .chars()
            .flat_map(|c| match c {
                '"' | '\\' => vec!['\\', c],
                c => vec![c],
            })
            .collect();
        format!("\"{escaped}\"")
    }
}

/// The deterministic rule that fires exactly `firings` (ordinals ascending) on `of`'s target
/// and filters; with none, `TARGET{FILTERS}=off`, which fires nothing.
fn deterministic(of: &Rule, firings: &Firings) -> Rule {
    let mut chain = Vec::new();
    let mut next = 0;
    for (nth, action) in firings {
        if *nth > next {
            chain.push(Term {
                percent: 100.0,
                count: Some(nth - next),
                action: Action::Off,
            });
        }
        let action = match action {
            Action::Delay { delay, .. } => Action::Delay {
                delay: Duration::from_micros(
                    u64::try_from(delay.as_micros())
                        .unwrap_or(u64::MAX)
                        .max(u64::from(!delay.is_zero())),
                ),
                jitter: Duration::ZERO,
            },
            a => a.clone(),
        };
        chain.push(Term {
            percent: 100.0,
            count: Some(1),
            action,
        });
        next = nth + 1;
    }
    let mut text = of.target.name().to_string();
    if !of.filters.is_empty() {
        let f: Vec<String> = of
            .filters
            .iter()
            .map(|(k, v)| format!("{k}={}", value_text(v)))
            .collect();
        let _ = write!(text, "{{{}}}", f.join(","));
    }
    if chain.is_empty() {
        chain.push(Term {
            percent: 100.0,
            count: None,
            action: Action::Off,
        });
    }
    let terms: Vec<String> = chain
        .iter()
        .map(|t| match t.count {
            Some(n) => format!("{n}*{}", action_text(&t.action)),
            None => action_text(&t.action),
        })
        .collect();
    let _ = write!(text, "={}", terms.join("->"));
    Rule {
        target: of.target,
        filters: of.filters.clone(),
        chain,
        text,
    }
}

impl Candidate {
    /// The scenario this candidate stands for: each rule replaced by its deterministic chain
    /// (a rule without firings is left out, with its `remove_fault` steps).
    fn scenario(&self) -> Scenario {
        let mut s = self.base.clone();
        let mut faults = Vec::new();
        // Step rules are replaced in place; removed ones (and their remove_fault steps) go.
        let mut drop_steps = Vec::new();
        let mut renamed: Vec<(String, Option<Rule>)> = Vec::new();
        for (slot, rule, firings) in &self.rules {
            let det = if firings.is_empty() {
                self.keep_unfired.then(|| deterministic(rule, firings))
            } else {
                Some(deterministic(rule, firings))
            };
            match slot {
                Slot::Faults(_) => faults.extend(det.clone()),
                Slot::Step(i) => match &det {
                    Some(d) => s.steps[*i] = Step::AddFault(d.clone()),
                    None => drop_steps.push(*i),
                },
            }
            if matches!(slot, Slot::Step(_)) {
                renamed.push((rule.text.clone(), det));
            }
        }
        s.faults = faults;
        for step in s.steps.iter_mut() {
            if let Step::RemoveFault(r) = step
                && let Some((_, new)) = renamed.iter().find(|(old, _)| *old == r.text)
                && let Some(new) = new
            {
                *r = new.clone();
            }
        }
        let removed: Vec<String> = renamed
            .iter()
            .filter(|(_, new)| new.is_none())
            .map(|(old, _)| old.clone())
            .collect();
        let mut i = 0;
        s.steps.retain(|step| {
            let keep = !drop_steps.contains(&i)
                && !matches!(step, Step::RemoveFault(r) if removed.contains(&r.text));
            i += 1;
            keep
        });
        s
    }

    fn size(&self) -> Size {
        let s = self.scenario();
        Size {
            steps: s.steps.len(),
            rules: self.rules.iter().filter(|(_, _, f)| !f.is_empty()).count(),
            firings: self.rules.iter().map(|(_, _, f)| f.len()).sum(),
        }
    }

    /// This candidate without step `i` of the base (slots after it move up).
    fn without_step(&self, i: usize) -> Option<Candidate> {
        if matches!(self.base.steps.get(i), Some(Step::AddFault(_)) | None) {
            return None;
        }
        let mut c = self.clone();
        c.base.steps.remove(i);
        for (slot, _, _) in c.rules.iter_mut() {
            if let Slot::Step(j) = slot
                && *j > i
            {
                *j -= 1;
            }
        }
        Some(c)
    }
}

/// Shrinks `s` (run with `seed`): see the module's documentation.
pub fn shrink(mut s: Scenario, seed: u64) -> Result<Shrunk, ShrinkError> {
    s.seed = seed;
    let mut runs = 1;
    let first = run(&s);
    let Some(target) = check(&s, &first).into_iter().next() else {
        return Err(ShrinkError::Passes {
            name: s.name.clone(),
            seed,
        });
    };
    if first.faults_not_kept > 0 {
        return Err(ShrinkError::NotKept(first.faults_not_kept));
    }
    let rules: Vec<(Slot, Rule, Firings)> = slots(&s)
        .into_iter()
        .map(|(id, slot, rule)| {
            let mut f: Firings = first
                .firings
                .iter()
                .filter(|f| f.rule == id)
                .map(|f| (f.nth, f.action.clone()))
                .collect();
            f.sort_by_key(|(n, _)| *n);
            (slot, rule, f)
        })
        .collect();
    let what = target.what.clone();
    let before = Size {
        steps: s.steps.len(),
        rules: s.faults.len()
            + s.steps
                .iter()
                .filter(|st| matches!(st, Step::AddFault(_)))
                .count(),
        firings: first.firings.len(),
    };
    let mut best = Candidate {
        base: s,
        rules,
        keep_unfired: true,
    };
    let fails = |c: &Candidate, runs: &mut usize| -> bool {
        let s = c.scenario();
        if crate::load::check_built(&s).is_err() || *runs >= MAX_RUNS {
            return false;
        }
        *runs += 1;
        let o = run(&s);
        // The same expectation, failing the same way (an exit code of 255, not no process).
        check(&s, &o)
            .iter()
            .any(|m| m.what == target.what && m.actual == target.actual)
    };
    if !fails(&best, &mut runs) {
        return Err(ShrinkError::NotReproduced {
            what,
            firings: before.firings,
        });
    }
    loop {
        let mut changed = false;
        // Whole rules.
        let mut r = 0;
        while r < best.rules.len() {
            if !best.rules[r].2.is_empty() {
                let mut c = best.clone();
                c.rules[r].2.clear();
                if fails(&c, &mut runs) {
                    best = c;
                    changed = true;
                }
            }
            r += 1;
        }
        // One firing at a time.
        for r in 0..best.rules.len() {
            let mut k = 0;
            while k < best.rules[r].2.len() {
                let mut c = best.clone();
                c.rules[r].2.remove(k);
                if fails(&c, &mut runs) {
                    best = c;
                    changed = true;
                } else {
                    k += 1;
                }
            }
        }
        // One step at a time, from the last.
        let mut i = best.base.steps.len();
        while i > 0 {
            i -= 1;
            if let Some(c) = best.without_step(i)
                && fails(&c, &mut runs)
            {
                best = c;
                changed = true;
            }
        }
        if !changed || runs >= MAX_RUNS {
            break;
        }
    }
    // Rules without firings go too, if the failure stays the same without them.
    let mut stripped = best.clone();
    stripped.keep_unfired = false;
    if fails(&stripped, &mut runs) {
        best = stripped;
    }
    let after = best.size();
    let mut scenario = best.scenario();
    scenario.name = format!("{}-seed-{seed}", scenario.name);
    Ok(Shrunk {
        scenario,
        what,
        before,
        after,
        runs,
    })
}

/// The shrunk scenario as a file: a comment saying where it came from, then its YAML.
pub fn render(shrunk: &Shrunk, from: &str, seed: u64) -> Result<String, String> {
    let yaml = serde_saphyr::to_string(&shrunk.scenario).map_err(|e| e.to_string())?;
    Ok(format!(
        "# kata-sim shrink {from} --seed {seed}: the smallest deterministic run that still fails\n\
         # `{}` ({}, {} runs).\n{yaml}",
        shrunk.what,
        shrunk.sizes(),
        shrunk.runs
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deterministic_chain_fires_on_exactly_the_recorded_calls_and_parses_back() {
        let rule: Rule = "Check{service=\"a b\"}=30%error(UNAVAILABLE)"
            .parse()
            .unwrap();
        let err = rule.chain[0].action.clone();
        let firings = vec![(0, err.clone()), (3, err.clone())];
        let d = deterministic(&rule, &firings);
        assert_eq!(
            d.text,
            "Check{service=\"a b\"}=1*error(UNAVAILABLE)->2*off->1*error(UNAVAILABLE)"
        );
        let back: Rule = d.text.parse().unwrap();
        assert_eq!(back.chain, d.chain);
        assert_eq!(back.filters, d.filters);
    }

    #[test]
    fn a_jittered_delay_is_replayed_in_whole_microseconds() {
        let rule: Rule = "*=delay(1s, 1s)".parse().unwrap();
        let fired = Action::Delay {
            delay: Duration::from_nanos(1_234_567_891),
            jitter: Duration::ZERO,
        };
        let d = deterministic(&rule, &vec![(2, fired)]);
        assert_eq!(d.text, "*=2*off->1*delay(1234567us)");
        assert_eq!(d.text.parse::<Rule>().unwrap().chain, d.chain);
    }
}
