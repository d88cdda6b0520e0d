//! Where interpreted programs read and write: the process's stdio, pipes, guest files and the
//! character devices `/dev/null`, `/dev/zero` and `/dev/urandom`.
//!
//! Writes reach their target at once (a guest file is written through, so a process killed
//! later keeps what it wrote). Pipes and the process's output streams have the kernel's pipe
//! capacity: a writer waits while the reader lags, and a writer whose reader is gone gets
//! `BrokenPipe` (the program then dies of SIGPIPE, as `yes | head -n 1` does).

use std::io::{self, Write};
use std::sync::Arc;

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::RngCore;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::Mutex;

use crate::sim::process::{Proc, Stream};

/// A Linux pipe's default capacity.
pub const PIPE_CAPACITY: usize = 64 * 1024;

/// The most bytes one read returns.
pub const READ_CHUNK: usize = 32 * 1024;

/// A readable source.
#[derive(Debug)]
pub enum Input {
    /// End of file at once (`/dev/null`, or a closed descriptor).
    Empty,
    /// A file's contents, read when it was opened.
    Bytes(io::Cursor<Vec<u8>>),
    /// The process's stdin.
    Stdin(Arc<Proc>),
    /// The read end of a pipe.
    Pipe(DuplexStream),
    /// `/dev/zero`.
    Zero,
    /// `/dev/urandom`, from a seeded generator.
    Random(Box<ChaCha8Rng>),
}

impl Input {
    /// Reads up to `max` bytes; an empty result is end of file.
    pub async fn read(&mut self, max: usize) -> io::Result<Vec<u8>> {
        let max = max.clamp(1, READ_CHUNK);
        match self {
            Input::Empty => Ok(Vec::new()),
            Input::Bytes(c) => {
                let mut buf = vec![0; max];
                let n = io::Read::read(c, &mut buf)?;
                buf.truncate(n);
                Ok(buf)
            }
            Input::Stdin(p) => Ok(p.read_stdin(max).await.unwrap_or_default()),
            Input::Pipe(p) => {
                let mut buf = vec![0; max];
                let n = p.read(&mut buf).await?;
                buf.truncate(n);
                Ok(buf)
            }
            Input::Zero => {
                tokio::task::yield_now().await;
                Ok(vec![0; max])
            }
            Input::Random(rng) => {
                tokio::task::yield_now().await;
                let mut buf = vec![0; max];
                rng.fill_bytes(&mut buf);
                Ok(buf)
            }
        }
    }

    /// Reads everything up to end of file.
    pub async fn read_to_end(&mut self) -> io::Result<Vec<u8>> {
        if matches!(self, Input::Zero | Input::Random(_)) {
            // Busybox would run out of memory; the interpreter refuses instead of hanging.
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                "out of memory (an endless device read to its end)",
            ));
        }
        let mut out = Vec::new();
        loop {
            let chunk = self.read(READ_CHUNK).await?;
            if chunk.is_empty() {
                return Ok(out);
            }
            out.extend_from_slice(&chunk);
        }
    }
}

/// A writable target. Clones share it (as `2>&1` does).
#[derive(Debug, Clone)]
pub enum Output {
    /// One of the process's output streams.
    Proc(Arc<Proc>, Stream),
    /// The write end of a pipe; the reader sees end of file when every clone is dropped.
    Pipe(Arc<Mutex<DuplexStream>>),
    /// A guest file opened for writing.
    File(Arc<std::fs::File>),
    /// `/dev/null` and the other devices that swallow writes.
    Null,
}

impl Output {
    /// Writes all of `data`.
    pub async fn write_all(&self, data: &[u8]) -> io::Result<()> {
        match self {
            Output::Proc(p, s) => {
                p.write_output_paced(*s, data, PIPE_CAPACITY).await;
                Ok(())
            }
            Output::Pipe(p) => p.lock().await.write_all(data).await,
            Output::File(f) => {
                (&**f).write_all(data)?;
                // Endless writers (`yes > f`) must not starve the runtime.
                tokio::task::yield_now().await;
                Ok(())
            }
            Output::Null => {
                tokio::task::yield_now().await;
                Ok(())
            }
        }
    }
}

/// A pipe: the write end for one stage, the read end for the next.
pub fn pipe() -> (Output, Input) {
    let (w, r) = tokio::io::duplex(PIPE_CAPACITY);
    (Output::Pipe(Arc::new(Mutex::new(w))), Input::Pipe(r))
}

/// The three standard descriptors of a running command.
#[derive(Debug)]
pub struct Stdio {
    /// Descriptor 0.
    pub stdin: Input,
    /// Descriptor 1.
    pub stdout: Output,
    /// Descriptor 2.
    pub stderr: Output,
}

impl Stdio {
    /// Writes an error message to stderr; a failure to do so is ignored, as a program would.
    pub async fn error(&self, msg: impl AsRef<str>) {
        let mut line = msg.as_ref().to_string();
        line.push('\n');
        let _ = self.stderr.write_all(line.as_bytes()).await;
    }
}
