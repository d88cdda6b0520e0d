//! A process's stdio as containerd gives it to a shim: three FIFOs made before the task's
//! Create (or the exec's Start), the output ends already open for reading.
//!
//! The output ends are opened without blocking: a FIFO opened for reading with no writer yet
//! reports nothing until the shim opens its end and writes, and end-of-file once every writer
//! has closed it (the process exited and the shim let go), so a reader task waits on the
//! pipe itself. The stdin end is opened read-write, which never blocks either; closing it (and
//! CloseIO) is the process's end of input.

use std::path::{Path, PathBuf};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::task::JoinHandle;

/// The most bytes of one stream a reader keeps; the rest is read and counted, not kept.
pub const KEEP: usize = 1 << 20;

/// What one output stream carried.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Captured {
    /// The bytes kept (at most [`KEEP`]).
    pub bytes: Vec<u8>,
    /// How many bytes arrived in all.
    pub total: u64,
}

/// A process's three FIFOs and the tasks reading its output.
#[derive(Debug)]
pub struct Stdio {
    /// The stdin FIFO's path (empty: none).
    pub stdin: String,
    /// The stdout FIFO's path.
    pub stdout: String,
    /// The stderr FIFO's path.
    pub stderr: String,
    writer: Option<pipe::Sender>,
    readers: Vec<JoinHandle<std::io::Result<Captured>>>,
}

fn mkfifo(path: &Path) -> std::io::Result<()> {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o700))
        .map_err(|e| std::io::Error::other(format!("mkfifo {}: {e}", path.display())))
}

async fn drain(mut rx: pipe::Receiver) -> std::io::Result<Captured> {
    let mut out = Captured::default();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = rx.read(&mut buf).await?;
        if n == 0 {
            return Ok(out);
        }
        out.total += n as u64;
        let room = KEEP.saturating_sub(out.bytes.len());
        out.bytes.extend_from_slice(&buf[..n.min(room)]);
    }
}

impl Stdio {
    /// Makes `{dir}/{name}-stdin|stdout|stderr` (no stdin unless `stdin`) and starts reading
    /// the outputs. Call it on a tokio runtime.
    pub fn open(dir: &Path, name: &str, stdin: bool) -> std::io::Result<Self> {
        let path = |s: &str| -> PathBuf { dir.join(format!("{name}-{s}")) };
        let mut readers = Vec::new();
        for stream in ["stdout", "stderr"] {
            let p = path(stream);
            mkfifo(&p)?;
            let rx = pipe::OpenOptions::new().open_receiver(&p)?;
            readers.push(tokio::spawn(drain(rx)));
        }
        let (stdin_path, writer) = if stdin {
            let p = path("stdin");
            mkfifo(&p)?;
            let tx = pipe::OpenOptions::new().read_write(true).open_sender(&p)?;
            (p.display().to_string(), Some(tx))
        } else {
            (String::new(), None)
        };
        Ok(Stdio {
            stdin: stdin_path,
            stdout: path("stdout").display().to_string(),
            stderr: path("stderr").display().to_string(),
            writer,
            readers,
        })
    }

    /// Writes `data` to the process's stdin.
    pub async fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        match &mut self.writer {
            Some(w) => w.write_all(data).await,
            None => Err(std::io::Error::other(
                "the process has no stdin (or it was closed)",
            )),
        }
    }

    /// Closes kata-sim's end of stdin.
    pub fn close_stdin(&mut self) {
        self.writer = None;
    }

    /// Whether both output streams have ended.
    pub fn output_done(&self) -> bool {
        self.readers.iter().all(JoinHandle::is_finished)
    }

    /// Waits for both outputs to end: (stdout, stderr).
    pub async fn output(&mut self) -> std::io::Result<(Captured, Captured)> {
        let mut got = Vec::new();
        for r in std::mem::take(&mut self.readers) {
            got.push(
                r.await
                    .map_err(|e| std::io::Error::other(format!("an output reader: {e}")))??,
            );
        }
        let err = got.pop().unwrap_or_default();
        let out = got.pop().unwrap_or_default();
        Ok((out, err))
    }
}

impl Drop for Stdio {
    fn drop(&mut self) {
        for r in &self.readers {
            r.abort();
        }
    }
}

/// A shim's log FIFO (`{bundle}/log`), as containerd keeps it: opened read-write (so the
/// shim's open and writes never block, and no writer leaving ends it), drained by a task for
/// the shim's life, and read to what is left once the shim has exited.
#[derive(Debug)]
pub struct LogPipe {
    rx: std::sync::Arc<pipe::Receiver>,
    kept: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    task: JoinHandle<()>,
}

fn keep(kept: &std::sync::Mutex<Vec<u8>>, data: &[u8]) {
    let mut k = kept.lock().unwrap_or_else(|p| p.into_inner());
    let room = KEEP.saturating_sub(k.len());
    k.extend_from_slice(&data[..data.len().min(room)]);
}

impl LogPipe {
    /// Makes the FIFO at `path` and starts draining it. Call it on a tokio runtime.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        mkfifo(path)?;
        let rx = std::sync::Arc::new(
            pipe::OpenOptions::new()
                .read_write(true)
                .open_receiver(path)?,
        );
        let kept = std::sync::Arc::<std::sync::Mutex<Vec<u8>>>::default();
        let (r, k) = (rx.clone(), kept.clone());
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                if r.readable().await.is_err() {
                    return;
                }
                match r.try_read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => keep(&k, &buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
        });
        Ok(LogPipe { rx, kept, task })
    }

    /// Stops draining and returns everything the log carried (what the task read, then what
    /// is still in the pipe).
    pub fn finish(self) -> Vec<u8> {
        self.task.abort();
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n) = self.rx.try_read(&mut buf) {
            if n == 0 {
                break;
            }
            keep(&self.kept, &buf[..n]);
        }
        std::mem::take(&mut *self.kept.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn output_waits_for_a_writer_and_ends_when_it_closes() {
        let dir = tempfile::tempdir().unwrap();
        let mut io = Stdio::open(dir.path(), "p", true).unwrap();
        // No writer yet: the readers wait rather than see an end of file.
        tokio::task::yield_now().await;
        assert!(
            !io.output_done(),
            "a FIFO without a writer is not at its end"
        );
        let out = io.stdout.clone();
        let err = io.stderr.clone();
        let input = io.stdin.clone();
        let writer = tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut stdin = std::fs::File::open(input).unwrap();
            let mut line = [0u8; 5];
            stdin.read_exact(&mut line).unwrap();
            std::fs::OpenOptions::new()
                .write(true)
                .open(out)
                .unwrap()
                .write_all(&line)
                .unwrap();
            std::fs::OpenOptions::new().write(true).open(err).unwrap();
        });
        io.write(b"hello").await.unwrap();
        writer.await.unwrap();
        let (stdout, stderr) = io.output().await.unwrap();
        assert_eq!(stdout.bytes, b"hello");
        assert_eq!(stdout.total, 5);
        assert!(stderr.bytes.is_empty());
    }

    #[tokio::test]
    async fn a_log_pipe_keeps_what_was_written_before_it_finished() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let log = LogPipe::open(&path).unwrap();
        let p = path.clone();
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut w = std::fs::OpenOptions::new().write(true).open(p).unwrap();
            w.write_all(b"level=warning msg=one\n").unwrap();
            w.write_all(b"level=info msg=two\n").unwrap();
        })
        .await
        .unwrap();
        let text = String::from_utf8(log.finish()).unwrap();
        assert_eq!(text, "level=warning msg=one\nlevel=info msg=two\n");
    }
}
