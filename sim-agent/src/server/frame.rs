//! ttrpc framing: a 10-byte header (length, stream id, type, flags, big endian) and a
//! protobuf payload of at most 4 MiB. Oversized frames are skipped without buffering them and
//! answered as ttrpc-rust answers them.

use protobuf::Message;
use tokio::io::{AsyncRead, AsyncReadExt};
use ttrpc::{Code, Request, Response, Status};

/// Largest payload ttrpc accepts.
pub const MAX_PAYLOAD: usize = 4 << 20;
const TYPE_REQUEST: u8 = 1;
const TYPE_RESPONSE: u8 = 2;

/// One request frame read from the wire.
#[derive(Debug)]
pub struct Frame {
    /// Stream id.
    pub stream_id: u32,
    /// The decoded ttrpc `Request` envelope, or the status that answers a payload that is
    /// not one.
    pub request: Result<Request, Status>,
}

/// A frame that could not be taken.
#[derive(Debug)]
pub enum FrameError {
    /// Answer this status on this stream; the connection goes on.
    Answer {
        /// Stream id of the offending frame.
        stream_id: u32,
        /// The status to answer.
        status: Status,
    },
    /// The connection is over (EOF or an I/O error).
    Closed(std::io::Error),
}

/// The length of a frame header.
const HEADER: usize = 10;

/// Reads frames from a connection, keeping every byte it has taken in its own buffer, so
/// that [`FrameReader::next`] is cancel safe: a `select!` that drops it mid-frame (another
/// branch won) loses nothing, and the next call resumes where this one stopped. Small frames
/// usually arrive whole in one read.
///
/// The default one holds no memory until the first byte arrives: an idle connection costs
/// no buffer.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    /// The unconsumed bytes are `buf[lo..hi]`.
    lo: usize,
    hi: usize,
    /// Bytes of an oversized frame still to skip, with its stream id and length: it is
    /// answered once skipped, as ttrpc-rust does.
    skip: u64,
    oversized: Option<(u32, usize)>,
}

/// The buffer a connection takes at its first byte (and returns to after a large frame).
pub const READ_BUF: usize = 8 << 10;

impl FrameReader {
    /// Reads the next request frame. Non-request frames are skipped (ttrpc ignores them).
    /// Cancel safe.
    pub async fn next<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> Result<Frame, FrameError> {
        loop {
            match self.parse() {
                Some(Ok(frame)) => return Ok(frame),
                Some(Err(e)) => return Err(e),
                None => self.fill(r).await.map_err(FrameError::Closed)?,
            }
        }
    }

    /// Takes one complete frame from the buffer, or `None` when more bytes are needed.
    fn parse(&mut self) -> Option<Result<Frame, FrameError>> {
        loop {
            if self.skip > 0 {
                let n = (self.hi - self.lo).min(self.skip as usize);
                self.lo += n;
                self.skip -= n as u64;
                if self.skip > 0 {
                    return None;
                }
            }
            if let Some((stream_id, len)) = self.oversized.take() {
                return Some(Err(FrameError::Answer {
                    stream_id,
                    status: ttrpc::get_status(
                        Code::INVALID_ARGUMENT,
                        format!(
                            "message length {len} exceed maximum message size of {MAX_PAYLOAD}"
                        ),
                    ),
                }));
            }
            let avail = &self.buf[self.lo..self.hi];
            let header: [u8; HEADER] = avail.get(..HEADER)?.try_into().ok()?;
            let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
            let stream_id = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
            let kind = header[8];
            if len > MAX_PAYLOAD {
                self.lo += HEADER;
                self.skip = len as u64;
                self.oversized = Some((stream_id, len));
                continue;
            }
            if avail.len() < HEADER + len {
                return None;
            }
            let start = self.lo + HEADER;
            self.lo = start + len;
            if kind != TYPE_REQUEST {
                tracing::debug!(kind, stream_id, "ignoring a frame that is not a request");
                continue;
            }
            if stream_id % 2 != 1 {
                return Some(Err(FrameError::Answer {
                    stream_id,
                    status: ttrpc::get_status(Code::INVALID_ARGUMENT, "stream id must be odd"),
                }));
            }
            let request = Request::parse_from_bytes(&self.buf[start..start + len])
                .map_err(|e| ttrpc::get_status(Code::INVALID_ARGUMENT, e.to_string()));
            return Some(Ok(Frame { stream_id, request }));
        }
    }

    /// How many bytes the buffer holds (for tests of its growth).
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// One read into the buffer (cancel safe: the bytes count only once the read returns).
    ///
    /// The buffer grows as bytes arrive, never from what a header announces: it at most
    /// doubles when it is full of bytes the peer actually sent, so a peer that announces
    /// 4 MiB and sends 10 bytes costs [`READ_BUF`], and one that sends half of a large frame
    /// costs about that half. Once a large frame is consumed the buffer shrinks back.
    async fn fill<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> std::io::Result<()> {
        if self.lo == self.hi {
            self.lo = 0;
            self.hi = 0;
        }
        let pending = self.hi - self.lo;
        if self.buf.len() > READ_BUF && pending <= READ_BUF / 2 && self.skip == 0 {
            // A large frame is done: give its memory back, keeping what follows it.
            let mut small = vec![0; READ_BUF];
            small[..pending].copy_from_slice(&self.buf[self.lo..self.hi]);
            self.buf = small;
            self.lo = 0;
            self.hi = pending;
        }
        // The frame being read: how many bytes it needs in all (its header says).
        let want = match self.buf[self.lo..self.hi].get(..4) {
            Some(len) if self.skip == 0 => {
                let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
                // An oversized frame is skipped, never buffered.
                HEADER + if len > MAX_PAYLOAD { 0 } else { len }
            }
            _ => HEADER,
        };
        if self.hi == self.buf.len() || self.lo + want > self.buf.len() {
            // Move the pending bytes to the front before growing or reading on.
            self.buf.copy_within(self.lo..self.hi, 0);
            self.hi = pending;
            self.lo = 0;
        }
        if self.hi == self.buf.len() {
            // Full of received bytes: grow, at most doubling, never past the frame.
            let grown = (self.buf.len() * 2).max(READ_BUF).min(want.max(READ_BUF));
            let grown = grown.max(self.hi + 1);
            self.buf.resize(grown, 0);
        }
        let n = r.read(&mut self.buf[self.hi..]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.hi += n;
        Ok(())
    }
}

/// Encodes a response frame with a status and payload.
pub fn response_frame(stream_id: u32, status: &Status, payload: Vec<u8>) -> Vec<u8> {
    let mut resp = Response::new();
    resp.set_status(status.clone());
    resp.payload = payload;
    encode_response(stream_id, &resp)
}

/// Encodes a `Response` into a frame; an oversized one becomes the ttrpc error status.
pub fn encode_response(stream_id: u32, resp: &Response) -> Vec<u8> {
    let mut body = resp.write_to_bytes().unwrap_or_default();
    if body.len() > MAX_PAYLOAD {
        let status = ttrpc::get_status(
            Code::INVALID_ARGUMENT,
            format!(
                "message length {} exceed maximum message size of {MAX_PAYLOAD}",
                body.len()
            ),
        );
        let mut small = Response::new();
        small.set_status(status);
        body = small.write_to_bytes().unwrap_or_default();
    }
    response_bytes(stream_id, &body)
}

/// A response frame: the 10-byte header, then `body`.
fn response_bytes(stream_id: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(10 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.push(TYPE_RESPONSE);
    out.push(0);
    out.extend_from_slice(body);
    out
}

/// A response frame whose payload is not a ttrpc `Response` (the `corrupt` fault): the header
/// is well formed, so the client reads it whole and fails to decode it.
pub fn corrupt_frame(stream_id: u32) -> Vec<u8> {
    response_bytes(stream_id, &[0xff_u8; 8])
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn header(len: u32, stream_id: u32) -> Vec<u8> {
        let mut h = len.to_be_bytes().to_vec();
        h.extend_from_slice(&stream_id.to_be_bytes());
        h.extend_from_slice(&[TYPE_REQUEST, 0]);
        h
    }

    // On the paused clock: a timeout that fires means the reader waits for more bytes.
    #[tokio::test(start_paused = true)]
    async fn the_buffer_grows_with_the_bytes_sent_not_the_length_announced() {
        let (mut peer, mut conn) = tokio::io::duplex(8 << 20);
        let mut reader = FrameReader::default();
        assert_eq!(reader.capacity(), 0, "an idle connection holds no buffer");
        // 4 MiB announced, 100 bytes sent.
        peer.write_all(&header(MAX_PAYLOAD as u32, 1))
            .await
            .unwrap();
        peer.write_all(&[0x0a; 100]).await.unwrap();
        let pending =
            tokio::time::timeout(std::time::Duration::from_millis(50), reader.next(&mut conn))
                .await;
        assert!(pending.is_err(), "a partial frame is not a frame");
        assert_eq!(reader.capacity(), READ_BUF);
        // Half of it: the buffer is about that half, at most twice what was sent.
        peer.write_all(&vec![0x0a; 1 << 20]).await.unwrap();
        let _ = tokio::time::timeout(std::time::Duration::from_millis(50), reader.next(&mut conn))
            .await;
        assert!(reader.capacity() >= 1 << 20);
        assert!(
            reader.capacity() <= 2 * ((1 << 20) + 100 + HEADER),
            "{}",
            reader.capacity()
        );
        // The rest, then a small frame: the large buffer goes once the frame is taken.
        peer.write_all(&vec![0x0a; MAX_PAYLOAD - (1 << 20) - 100])
            .await
            .unwrap();
        let big = reader.next(&mut conn).await.unwrap();
        assert_eq!(big.stream_id, 1);
        let small = ttrpc::Request::new().write_to_bytes().unwrap();
        peer.write_all(&header(small.len() as u32, 3))
            .await
            .unwrap();
        peer.write_all(&small).await.unwrap();
        let next = reader.next(&mut conn).await.unwrap();
        assert_eq!(next.stream_id, 3);
        assert_eq!(
            reader.capacity(),
            READ_BUF,
            "the large frame's memory was given back"
        );
    }
}
