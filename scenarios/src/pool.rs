//! Running independent jobs on several threads (`-j N`) while the caller hears about them in
//! input order, exactly as a serial run would have told it: results are held back until every
//! earlier one is in.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::mpsc;

/// The default number of jobs: the CPUs this process may use (1 if that is unknown).
pub fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// What a job says while it runs (`Note`) and what it gives (`Done`), with its index.
#[derive(Debug)]
pub enum Event<N, R> {
    /// A note from job `index` while it runs, passed on as soon as it arrives.
    Note(usize, N),
    /// Job `index`'s result, passed on in input order.
    Done(usize, R),
}

/// Runs `work(index, item, note)` for every item on up to `jobs` threads (at least one; one
/// runs them in turn on the caller's thread). `on` runs on the caller's thread: every `Done`
/// in input order, each as soon as all earlier ones are in, and every `Note` when it arrives.
/// A panic in `work` is the caller's to prevent (the runner isolates each run).
pub fn ordered<T, N, R>(
    items: Vec<T>,
    jobs: usize,
    work: impl Fn(usize, T, &dyn Fn(N)) -> R + Sync,
    mut on: impl FnMut(Event<N, R>),
) where
    T: Send,
    N: Send,
    R: Send,
{
    let jobs = jobs.max(1).min(items.len().max(1));
    if jobs == 1 {
        let on = std::cell::RefCell::new(on);
        for (i, item) in items.into_iter().enumerate() {
            let note = |n: N| (on.borrow_mut())(Event::Note(i, n));
            let r = work(i, item, &note);
            (on.borrow_mut())(Event::Done(i, r));
        }
        return;
    }
    let total = items.len();
    let queue = Mutex::new(items.into_iter().enumerate());
    let (tx, rx) = mpsc::channel::<Event<N, R>>();
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            let tx = tx.clone();
            let queue = &queue;
            let work = &work;
            scope.spawn(move || {
                loop {
                    let next = queue.lock().unwrap_or_else(|p| p.into_inner()).next();
                    let Some((i, item)) = next else { break };
                    let note_tx = tx.clone();
                    let note = move |n: N| {
                        let _ = note_tx.send(Event::Note(i, n));
                    };
                    let r = work(i, item, &note);
                    if tx.send(Event::Done(i, r)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let mut held: BTreeMap<usize, R> = BTreeMap::new();
        let mut next = 0;
        for ev in rx {
            match ev {
                Event::Note(i, n) => on(Event::Note(i, n)),
                Event::Done(i, r) => {
                    held.insert(i, r);
                    while let Some(r) = held.remove(&next) {
                        on(Event::Done(next, r));
                        next += 1;
                    }
                }
            }
            if next == total {
                break;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_arrive_in_input_order_whatever_order_jobs_end_in() {
        // Job i waits for job i+1 to have started, so with 4 threads they end out of order.
        let n = 16;
        let (gate_tx, gate_rx) = std::sync::mpsc::channel::<usize>();
        let gate_rx = Mutex::new(gate_rx);
        let mut done = Vec::new();
        let mut notes = 0;
        ordered(
            (0..n).collect(),
            4,
            |i, item: usize, note| {
                note(i);
                if i % 4 == 0 {
                    // The first of every four waits for a later one to finish first.
                    let _ = gate_rx.lock().unwrap().recv();
                } else if i % 4 == 3 {
                    let _ = gate_tx.send(i);
                }
                item * 10
            },
            |ev| match ev {
                Event::Note(..) => notes += 1,
                Event::Done(i, r) => done.push((i, r)),
            },
        );
        assert_eq!(done, (0..n).map(|i| (i, i * 10)).collect::<Vec<_>>());
        assert_eq!(notes, n);
    }

    #[test]
    fn one_job_runs_in_turn_and_notes_come_before_the_result() {
        let mut seen = Vec::new();
        ordered(
            vec!["a", "b"],
            1,
            |_, item, note| {
                note(format!("{item}:note"));
                item.to_string()
            },
            |ev| match ev {
                Event::Note(_, n) => seen.push(n),
                Event::Done(_, r) => seen.push(r),
            },
        );
        assert_eq!(seen, ["a:note", "a", "b:note", "b"]);
    }
}
