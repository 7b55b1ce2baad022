//! The control channel between terminal and home server (`docs/proxy.md`, "Control channel").
//!
//! [`tls`] sets up the TLS 1.3 connection (access card key, pinned home server, registered
//! cards only); inside it the two sides exchange [`tessera_proto::control::Frame`]s, read and
//! written here: [`read_frame`]/[`write_frame`] for the home server (tokio),
//! [`read_frame_sync`]/[`write_frame_sync`] for the terminal (blocking, with socket timeouts).

pub mod tls;

use std::io::{self, Read, Write};

use tessera_proto::control::{ControlError, Frame, frame_len};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Reading or writing a frame failed.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The connection failed or timed out.
    #[error("control channel: {0}")]
    Io(#[from] io::Error),
    /// The peer sent a malformed frame.
    #[error("{0}")]
    Malformed(#[from] ControlError),
    /// The connection ended in the middle of a frame.
    #[error("control channel: connection closed in the middle of a frame")]
    Truncated,
}

fn eof_to_truncated(e: io::Error) -> FrameError {
    if e.kind() == io::ErrorKind::UnexpectedEof { FrameError::Truncated } else { FrameError::Io(e) }
}

/// Reads one frame; `Ok(None)` when the peer closed the connection between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Frame>, FrameError> {
    let mut prefix = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut prefix[got..]).await?;
        if n == 0 {
            return if got == 0 { Ok(None) } else { Err(FrameError::Truncated) };
        }
        got += n;
    }
    let len = frame_len(prefix)?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await.map_err(eof_to_truncated)?;
    Ok(Some(Frame::parse(&body)?))
}

/// Writes one frame and flushes it.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, f: &Frame) -> Result<(), FrameError> {
    w.write_all(&f.encode()?).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one frame (blocking); `Ok(None)` when the peer closed the connection between frames.
pub fn read_frame_sync<R: Read>(r: &mut R) -> Result<Option<Frame>, FrameError> {
    let mut prefix = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = match r.read(&mut prefix[got..]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            return if got == 0 { Ok(None) } else { Err(FrameError::Truncated) };
        }
        got += n;
    }
    let len = frame_len(prefix)?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).map_err(eof_to_truncated)?;
    Ok(Some(Frame::parse(&body)?))
}

/// Writes one frame and flushes it (blocking).
pub fn write_frame_sync<W: Write>(w: &mut W, f: &Frame) -> Result<(), FrameError> {
    w.write_all(&f.encode()?)?;
    w.flush()?;
    Ok(())
}
