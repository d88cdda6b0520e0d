//! ttrpc framing: a 10-byte header (length, stream id, type, flags, big endian) and a
//! protobuf payload of at most 4 MiB. Oversized frames are skipped without allocating and
//! answered as ttrpc-rust answers them.

use protobuf::Message;
use tokio::io::{AsyncRead, AsyncReadExt};
use ttrpc::{Code, Request, Response, Status};

/// Largest payload ttrpc accepts.
pub const MAX_PAYLOAD: usize = 4 << 20;
const TYPE_REQUEST: u8 = 1;
const TYPE_RESPONSE: u8 = 2;

/// One frame read from the wire.
#[derive(Debug)]
pub struct Frame {
    /// Stream id.
    pub stream_id: u32,
    /// The payload.
    pub payload: Vec<u8>,
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

/// Reads the next frame. Non-request frames are skipped (ttrpc ignores them).
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Frame, FrameError> {
    loop {
        let mut header = [0u8; 10];
        r.read_exact(&mut header)
            .await
            .map_err(FrameError::Closed)?;
        let len = u32::from_be_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
        let stream_id = u32::from_be_bytes(header[4..8].try_into().expect("4 bytes"));
        let kind = header[8];
        if len > MAX_PAYLOAD {
            discard(r, len as u64).await.map_err(FrameError::Closed)?;
            return Err(FrameError::Answer {
                stream_id,
                status: ttrpc::get_status(
                    Code::INVALID_ARGUMENT,
                    format!("message length {len} exceed maximum message size of {MAX_PAYLOAD}"),
                ),
            });
        }
        let mut payload = vec![0u8; len];
        r.read_exact(&mut payload)
            .await
            .map_err(FrameError::Closed)?;
        if kind != TYPE_REQUEST {
            tracing::debug!(kind, stream_id, "ignoring a frame that is not a request");
            continue;
        }
        if stream_id % 2 != 1 {
            return Err(FrameError::Answer {
                stream_id,
                status: ttrpc::get_status(Code::INVALID_ARGUMENT, "stream id must be odd"),
            });
        }
        return Ok(Frame { stream_id, payload });
    }
}

async fn discard<R: AsyncRead + Unpin>(r: &mut R, mut n: u64) -> std::io::Result<()> {
    let mut buf = [0u8; 8192];
    while n > 0 {
        let want = buf.len().min(n as usize);
        let got = r.read(&mut buf[..want]).await?;
        if got == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        n -= got as u64;
    }
    Ok(())
}

impl Frame {
    /// Decodes the ttrpc `Request` envelope.
    pub fn request(&self) -> Result<Request, Status> {
        Request::parse_from_bytes(&self.payload)
            .map_err(|e| ttrpc::get_status(Code::INVALID_ARGUMENT, e.to_string()))
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
