//! A guest process: its stdio buffers, its status and the task that runs its program.
//!
//! A process is created (the init process waits for `StartContainer`), runs its
//! [`Behaviour`] as a tokio task, and exits with a status: the
//! program's exit code, or 128 + signal when a signal ends it. Output that was written before
//! the exit stays readable; readers then get end of stream.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::program::{Behaviour, SignalReaction};

/// `SIGKILL`.
pub const SIGKILL: u32 = 9;
/// `SIGTERM`.
pub const SIGTERM: u32 = 15;

/// Where a process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcStatus {
    /// Created; the init process waits here for `StartContainer`.
    Created,
    /// Its program runs.
    Running,
    /// Exited with this status (exit code, or 128 + signal).
    Exited(i32),
}

#[derive(Debug)]
struct Inner {
    status: ProcStatus,
    stdout: VecDeque<u8>,
    stderr: VecDeque<u8>,
    stdin: VecDeque<u8>,
    stdin_closed: bool,
    task: Option<tokio::task::AbortHandle>,
    reaction: SignalReaction,
}

impl Inner {
    /// The buffer a stream's output goes to: a terminal merges both streams into one.
    fn output(&mut self, tty: bool, stream: Stream) -> &mut VecDeque<u8> {
        if tty || stream == Stream::Stdout {
            &mut self.stdout
        } else {
            &mut self.stderr
        }
    }
}

/// One guest process.
#[derive(Debug)]
pub struct Proc {
    /// The exec id it was created with (the container id or `""` for init processes).
    pub exec_id: String,
    /// Its fake pid, unique in the guest.
    pub pid: u32,
    /// Whether it is its container's init process (pid 1 of the container).
    pub init: bool,
    /// Whether it has a terminal (then both output streams are the pty).
    pub tty: bool,
    /// Its argv.
    pub args: Vec<String>,
    inner: Mutex<Inner>,
    changed: Notify,
}

/// Which output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// stdout.
    Stdout,
    /// stderr.
    Stderr,
}

/// The outcome of delivering a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The process was already gone (the agent swallows `ESRCH`).
    AlreadyExited,
    /// The signal was ignored.
    Ignored,
    /// The process ended with this status.
    Killed(i32),
}

impl Proc {
    /// A process that has not started.
    pub fn new(exec_id: String, pid: u32, init: bool, tty: bool, args: Vec<String>) -> Self {
        Proc {
            exec_id,
            pid,
            init,
            tty,
            args,
            inner: Mutex::new(Inner {
                status: ProcStatus::Created,
                stdout: VecDeque::new(),
                stderr: VecDeque::new(),
                stdin: VecDeque::new(),
                stdin_closed: false,
                task: None,
                reaction: SignalReaction::Default,
            }),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current status.
    pub fn status(&self) -> ProcStatus {
        self.lock().status
    }

    /// The exit status, once exited.
    pub fn exit_status(&self) -> Option<i32> {
        match self.status() {
            ProcStatus::Exited(s) => Some(s),
            _ => None,
        }
    }

    /// Starts the program on the current tokio runtime.
    pub fn start(self: &Arc<Self>, behaviour: Behaviour, ctx: super::program::ProgramCtx) {
        let mut inner = self.lock();
        if inner.status != ProcStatus::Created {
            return;
        }
        inner.status = ProcStatus::Running;
        inner.reaction = behaviour.signal_reaction();
        if let Some(why) = behaviour.not_understood() {
            (ctx.note)(why.to_string());
        }
        let me = Arc::clone(self);
        let handle = tokio::spawn(async move {
            let code = behaviour.run(&me, &ctx).await;
            me.exit(code);
        });
        inner.task = Some(handle.abort_handle());
        drop(inner);
        self.changed.notify_waiters();
    }

    /// Records the exit (first exit wins) and wakes every reader and waiter.
    pub fn exit(&self, status: i32) {
        let mut inner = self.lock();
        if matches!(inner.status, ProcStatus::Exited(_)) {
            return;
        }
        inner.status = ProcStatus::Exited(status);
        if let Some(task) = inner.task.take() {
            task.abort();
        }
        drop(inner);
        self.changed.notify_waiters();
    }

    /// Delivers a signal as the kernel would to this process.
    pub fn signal(&self, sig: u32) -> Delivery {
        let reaction = {
            let inner = self.lock();
            if let ProcStatus::Exited(_) = inner.status {
                return Delivery::AlreadyExited;
            }
            inner.reaction
        };
        if sig == 0 {
            return Delivery::Ignored;
        }
        // SIGKILL cannot be caught; SIGCHLD, SIGCONT, SIGURG and SIGWINCH are ignored by
        // default; stop signals are modelled as ignored.
        let status = if sig == SIGKILL {
            128 + sig as i32
        } else if matches!(sig, 17 | 18 | 19 | 20 | 21 | 22 | 23 | 28) {
            return Delivery::Ignored;
        } else {
            match reaction {
                SignalReaction::Ignore => return Delivery::Ignored,
                SignalReaction::Exit(code) => code,
                // The pid 1 of a container ignores signals it has no handler for.
                SignalReaction::Default if self.init => return Delivery::Ignored,
                SignalReaction::Default => 128 + sig as i32,
            }
        };
        self.exit(status);
        Delivery::Killed(status)
    }

    /// Appends program output.
    pub fn write_output(&self, stream: Stream, data: &[u8]) {
        let mut inner = self.lock();
        if matches!(inner.status, ProcStatus::Exited(_)) {
            return;
        }
        let target = inner.output(self.tty, stream);
        target.extend(data);
        drop(inner);
        self.changed.notify_waiters();
    }

    /// Appends program output, waiting while `capacity` bytes or more are unread (a pipe
    /// that is full blocks its writer). Returns at once when the process has exited.
    pub async fn write_output_paced(&self, stream: Stream, mut data: &[u8], capacity: usize) {
        while !data.is_empty() {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut inner = self.lock();
                if matches!(inner.status, ProcStatus::Exited(_)) {
                    return;
                }
                let target = inner.output(self.tty, stream);
                let room = capacity.saturating_sub(target.len());
                if room > 0 {
                    let n = room.min(data.len());
                    target.extend(&data[..n]);
                    data = &data[n..];
                    drop(inner);
                    self.changed.notify_waiters();
                    continue;
                }
            }
            notified.await;
        }
    }

    /// Reads up to `len` bytes of output; waits while the stream is empty and the process
    /// lives. An empty result means end of stream.
    pub async fn read_output(&self, stream: Stream, len: usize) -> Vec<u8> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut inner = self.lock();
                let exited = matches!(inner.status, ProcStatus::Exited(_));
                let buf = inner.output(self.tty, stream);
                if !buf.is_empty() {
                    let n = len.min(buf.len());
                    let data: Vec<u8> = buf.drain(..n).collect();
                    drop(inner);
                    // A writer may be waiting for room.
                    self.changed.notify_waiters();
                    return data;
                }
                if exited {
                    return Vec::new();
                }
            }
            notified.await;
        }
    }

    /// Feeds stdin; returns false when stdin is closed.
    pub fn write_stdin(&self, data: &[u8]) -> bool {
        let mut inner = self.lock();
        if inner.stdin_closed {
            return false;
        }
        inner.stdin.extend(data);
        drop(inner);
        self.changed.notify_waiters();
        true
    }

    /// Feeds stdin as a pipe does: waits while `capacity` bytes or more are unread by a
    /// running program (a full pipe blocks its writer). Returns false when stdin is closed.
    pub async fn write_stdin_paced(&self, mut data: &[u8], capacity: usize) -> bool {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut inner = self.lock();
                if inner.stdin_closed {
                    return false;
                }
                // Nobody will read what a finished process did not: accept it, as the
                // agent's copy into a dead pipe end does not block either.
                let running = !matches!(inner.status, ProcStatus::Exited(_));
                let room = if running {
                    capacity.saturating_sub(inner.stdin.len())
                } else {
                    data.len()
                };
                if room > 0 {
                    let n = room.min(data.len());
                    inner.stdin.extend(&data[..n]);
                    data = &data[n..];
                    drop(inner);
                    self.changed.notify_waiters();
                    if data.is_empty() {
                        return true;
                    }
                    continue;
                }
            }
            notified.await;
        }
    }

    /// Closes stdin (the program then reads end of file).
    pub fn close_stdin(&self) {
        self.lock().stdin_closed = true;
        self.changed.notify_waiters();
    }

    /// Program side: reads up to `max` bytes of stdin; `None` at end of file.
    pub async fn read_stdin(&self, max: usize) -> Option<Vec<u8>> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut inner = self.lock();
                if !inner.stdin.is_empty() {
                    let n = max.min(inner.stdin.len());
                    let data: Vec<u8> = inner.stdin.drain(..n).collect();
                    drop(inner);
                    // A writer may be waiting for room.
                    self.changed.notify_waiters();
                    return Some(data);
                }
                if inner.stdin_closed {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// Waits until the process exits; returns its status.
    pub async fn wait(&self) -> i32 {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(s) = self.exit_status() {
                return s;
            }
            notified.await;
        }
    }

    /// Bytes of output not read yet, per stream (for metrics and snapshots).
    pub fn pending_output(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.stdout.len(), inner.stderr.len())
    }
}
