//! The vpcd bridge: presents a [`VirtualCard`] to pcscd through vsmartcard's vpcd driver.
//!
//! # Protocol
//!
//! vpcd (the reader driver loaded by pcscd) listens on TCP port 35963 for the first slot,
//! 35964 for the second; the virtual card connects to it as a client. Both directions carry
//! frames: a 2-byte big-endian length, then that many bytes. vpcd sends; the card answers:
//!
//! | vpcd sends (payload)     | meaning                 | the card answers     |
//! |--------------------------|-------------------------|----------------------|
//! | 1 byte `00`              | power off               | nothing              |
//! | 1 byte `01`              | power on                | nothing              |
//! | 1 byte `02`              | reset                   | nothing              |
//! | 1 byte `04`              | get ATR                 | a frame with the ATR |
//! | 2 or more bytes          | a command APDU          | a frame with the response APDU |
//!
//! A one-byte payload is always a control message (no APDU is shorter than its 4-byte header).
//! vpcd treats an empty answer as a removed card, so the bridge never sends an empty frame.
//! vpcd asks for the ATR every time pcscd polls the slot, so the ATR is answered without any
//! state change, powered or not.
//!
//! # Latency
//!
//! Every answer leaves in a single `write` on a socket with `TCP_NODELAY`. Writing the length
//! and the payload separately with Nagle's algorithm on holds the payload back until the peer
//! acknowledges the length, and the peer (which waits for the whole frame) acknowledges only
//! when its delayed-ACK timer fires: one stall of up to 40 ms per APDU. `docs/performance.md`
//! has the measurements.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use thiserror::Error;

use crate::trace;
use crate::virtual_card::VirtualCard;

/// vpcd's port for the first slot.
pub const DEFAULT_PORT: u16 = 35963;
/// vpcd's port for the second slot.
pub const SECOND_SLOT_PORT: u16 = 35964;

/// Control byte: power off.
pub const CTRL_POWER_OFF: u8 = 0x00;
/// Control byte: power on.
pub const CTRL_POWER_ON: u8 = 0x01;
/// Control byte: reset.
pub const CTRL_RESET: u8 = 0x02;
/// Control byte: get ATR.
pub const CTRL_GET_ATR: u8 = 0x04;

/// Largest payload a frame can carry.
pub const MAX_PAYLOAD: usize = 0xFFFF;

/// A message from vpcd, parsed from a frame's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// Remove power from the card.
    PowerOff,
    /// Power the card.
    PowerOn,
    /// Warm-reset the card.
    Reset,
    /// Send the ATR.
    GetAtr,
    /// A command APDU to process and answer.
    Apdu(&'a [u8]),
    /// A control byte this protocol version does not define (ignored, not answered).
    UnknownControl(u8),
}

impl<'a> Message<'a> {
    /// Interprets a frame payload.
    pub fn parse(payload: &'a [u8]) -> Result<Self, VpcdError> {
        match payload {
            [] => Err(VpcdError::EmptyFrame),
            [CTRL_POWER_OFF] => Ok(Message::PowerOff),
            [CTRL_POWER_ON] => Ok(Message::PowerOn),
            [CTRL_RESET] => Ok(Message::Reset),
            [CTRL_GET_ATR] => Ok(Message::GetAtr),
            [other] => Ok(Message::UnknownControl(*other)),
            apdu => Ok(Message::Apdu(apdu)),
        }
    }
}

/// Why the bridge stopped or a frame was refused.
#[derive(Debug, Error)]
pub enum VpcdError {
    /// vpcd sent a frame of length zero, which the protocol does not define.
    #[error("vpcd sent an empty frame")]
    EmptyFrame,
    /// An answer longer than a frame can carry.
    #[error("answer of {0} bytes exceeds the 65535-byte frame limit")]
    FrameTooLong(usize),
    /// The vpcd host name does not resolve.
    #[error("cannot resolve vpcd address {0}: {1}")]
    Resolve(String, #[source] io::Error),
    /// A socket failure other than the peer going away.
    #[error("vpcd connection: {0}")]
    Io(#[from] io::Error),
}

/// Appends a frame carrying `payload` to `out`.
pub fn encode_frame(payload: &[u8], out: &mut Vec<u8>) -> Result<(), VpcdError> {
    let len = u16::try_from(payload.len()).map_err(|_| VpcdError::FrameTooLong(payload.len()))?;
    out.reserve(2 + payload.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// Splits frames off a byte stream that may deliver them in any fragmentation.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    start: usize,
}

/// What [`FrameReader::read_frame`] saw.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadOutcome<'a> {
    /// A complete frame's payload.
    Frame(&'a [u8]),
    /// No complete frame before the socket's read timeout: poll again.
    Pending,
    /// The peer closed the connection (a partial frame, if any, is dropped).
    Closed,
}

impl FrameReader {
    /// An empty reader.
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns the next frame, reading from `src` as needed. A read timeout on `src` yields
    /// [`ReadOutcome::Pending`] and keeps what was read so far.
    pub fn read_frame<R: Read>(&mut self, src: &mut R) -> io::Result<ReadOutcome<'_>> {
        // Drop the frame returned last time.
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        loop {
            if let Some(len) = self.complete_frame_len() {
                self.start = 2 + len;
                return Ok(ReadOutcome::Frame(&self.buf[2..2 + len]));
            }
            let old = self.buf.len();
            self.buf.resize(old + 4096, 0);
            let n = match src.read(&mut self.buf[old..]) {
                Ok(n) => n,
                Err(err) => {
                    self.buf.truncate(old);
                    return match err.kind() {
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                            Ok(ReadOutcome::Pending)
                        }
                        io::ErrorKind::Interrupted => continue,
                        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => {
                            Ok(ReadOutcome::Closed)
                        }
                        _ => Err(err),
                    };
                }
            };
            self.buf.truncate(old + n);
            if n == 0 {
                return Ok(ReadOutcome::Closed);
            }
        }
    }

    fn complete_frame_len(&self) -> Option<usize> {
        let (len, rest) = self.buf.split_first_chunk::<2>()?;
        let len = usize::from(u16::from_be_bytes(*len));
        (rest.len() >= len).then_some(len)
    }
}

/// Where and how the bridge connects.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// vpcd's host (default `127.0.0.1`).
    pub host: String,
    /// vpcd's port (default [`DEFAULT_PORT`]).
    pub port: u16,
    /// First wait before reconnecting after a failed connect or a lost connection.
    pub backoff_initial: Duration,
    /// Longest wait between reconnection attempts.
    pub backoff_max: Duration,
    /// How often a blocked read wakes up to check for a stop request.
    pub poll_interval: Duration,
    /// Acknowledge vpcd's segments at once (`TCP_QUICKACK`, Linux). Only benchmarks turn this
    /// off, to show the stall it prevents.
    pub quick_ack: bool,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".to_owned(),
            port: DEFAULT_PORT,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            poll_interval: Duration::from_millis(100),
            quick_ack: true,
        }
    }
}

/// How one connection to vpcd ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// vpcd closed the connection (pcscd stopped or restarted).
    Closed,
    /// A stop was requested.
    Stopped,
}

/// Serves a [`VirtualCard`] to vpcd: connects, answers frames, reconnects when vpcd goes away.
#[derive(Debug)]
pub struct VpcdBridge<C> {
    card: C,
    config: BridgeConfig,
    apdus: u64,
    out: Vec<u8>,
}

impl<C: VirtualCard> VpcdBridge<C> {
    /// A bridge for `card`; nothing connects until [`VpcdBridge::run`].
    pub fn new(card: C, config: BridgeConfig) -> Self {
        Self { card, config, apdus: 0, out: Vec::with_capacity(512) }
    }

    /// The card being served.
    pub fn card(&self) -> &C {
        &self.card
    }

    /// Gives the card back.
    pub fn into_card(self) -> C {
        self.card
    }

    /// Command APDUs answered so far, over all connections.
    pub fn apdus_served(&self) -> u64 {
        self.apdus
    }

    /// Connects to vpcd and serves the card until `stop` is set, reconnecting with exponential
    /// backoff whenever vpcd is not there or goes away. The card is powered off whenever the
    /// connection is lost, as a real card is when pulled from its reader.
    pub fn run(&mut self, stop: &AtomicBool) -> Result<(), VpcdError> {
        let target = format!("{}:{}", self.config.host, self.config.port);
        let mut backoff = self.config.backoff_initial;
        let mut announced_wait = false;
        while !stop.load(Ordering::Relaxed) {
            // Resolve on every attempt: a restarted host may have a new address.
            let addrs: Vec<SocketAddr> = target
                .to_socket_addrs()
                .map_err(|e| VpcdError::Resolve(target.clone(), e))?
                .collect();
            match connect_any(&addrs) {
                Ok(stream) => {
                    tracing::info!("connected to vpcd at {target}");
                    announced_wait = false;
                    backoff = self.config.backoff_initial;
                    let end = self.serve_stream(stream, stop);
                    self.card.power_off();
                    match end {
                        Ok(SessionEnd::Stopped) => break,
                        Ok(SessionEnd::Closed) => {
                            tracing::info!("vpcd closed the connection; reconnecting");
                        }
                        Err(err) => tracing::warn!("vpcd connection lost ({err}); reconnecting"),
                    }
                    // A vpcd that accepts and drops at once must not make this a busy loop.
                    sleep_unless_stopped(self.config.backoff_initial, stop);
                }
                Err(err) => {
                    if !announced_wait {
                        tracing::info!(
                            "waiting for vpcd at {target} ({err}): is pcscd running with the \
                             vsmartcard-vpcd driver?"
                        );
                        announced_wait = true;
                    }
                    sleep_unless_stopped(backoff, stop);
                    backoff = (backoff * 2).min(self.config.backoff_max);
                }
            }
        }
        Ok(())
    }

    /// Serves one established connection until vpcd closes it or `stop` is set.
    pub fn serve_stream(
        &mut self,
        mut stream: TcpStream,
        stop: &AtomicBool,
    ) -> Result<SessionEnd, VpcdError> {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(self.config.poll_interval))?;
        stream.set_write_timeout(Some(Duration::from_secs(5)))?;
        let mut reader = FrameReader::new();
        loop {
            if stop.load(Ordering::Relaxed) {
                let _ = stream.shutdown(std::net::Shutdown::Both);
                return Ok(SessionEnd::Stopped);
            }
            // vpcd writes a frame's length and its payload with two send() calls and Nagle on:
            // the payload leaves only once the length is acknowledged. Ask the kernel to
            // acknowledge at once rather than after the delayed-ACK timer (up to 40 ms). Linux
            // clears the flag as it sees fit, so it is set again before every read.
            if self.config.quick_ack {
                set_quickack(&stream);
            }
            let payload = match reader.read_frame(&mut stream)? {
                ReadOutcome::Frame(payload) => payload,
                ReadOutcome::Pending => continue,
                ReadOutcome::Closed => return Ok(SessionEnd::Closed),
            };
            if let Some(answer) = self.handle(payload)? {
                stream.write_all(answer)?;
            }
        }
    }

    /// Handles one frame payload; returns the complete frame to send back, if any.
    ///
    /// An empty frame, which vpcd never sends, is ignored with a warning (as vicc does).
    pub fn handle(&mut self, payload: &[u8]) -> Result<Option<&[u8]>, VpcdError> {
        self.out.clear();
        let message = match Message::parse(payload) {
            Ok(message) => message,
            Err(VpcdError::EmptyFrame) => {
                tracing::warn!("vpcd sent an empty frame; ignored");
                return Ok(None);
            }
            Err(err) => return Err(err),
        };
        match message {
            Message::PowerOff => {
                tracing::debug!("vpcd: power off");
                self.card.power_off();
                return Ok(None);
            }
            Message::PowerOn => {
                tracing::debug!("vpcd: power on");
                self.card.power_on();
                return Ok(None);
            }
            Message::Reset => {
                tracing::debug!("vpcd: reset");
                self.card.reset();
                return Ok(None);
            }
            Message::UnknownControl(byte) => {
                tracing::warn!("vpcd: unknown control byte {byte:02X}, ignored");
                return Ok(None);
            }
            Message::GetAtr => {
                let atr = self.card.atr();
                encode_frame(&atr, &mut self.out)?;
            }
            Message::Apdu(command) => {
                self.apdus += 1;
                let traced = tracing::enabled!(target: trace::TARGET, tracing::Level::TRACE);
                if traced {
                    tracing::trace!(target: trace::TARGET, "card {}", trace::describe_command(command));
                }
                let mut response = self.card.transmit(command);
                if traced {
                    tracing::trace!(target: trace::TARGET, "card {}", trace::describe_response(&response));
                }
                if response.len() < 2 || response.len() > MAX_PAYLOAD {
                    tracing::warn!("card answered {} bytes; sending 6F00", response.len());
                    response = vec![0x6F, 0x00];
                }
                encode_frame(&response, &mut self.out)?;
            }
        }
        Ok(Some(&self.out))
    }
}

#[cfg(target_os = "linux")]
fn set_quickack(stream: &TcpStream) {
    use std::os::linux::net::TcpStreamExt;
    // Failure only costs latency.
    let _ = stream.set_quickack(true);
}

#[cfg(not(target_os = "linux"))]
fn set_quickack(_stream: &TcpStream) {}

fn connect_any(addrs: &[SocketAddr]) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for addr in addrs {
        match TcpStream::connect_timeout(addr, Duration::from_secs(2)) {
            Ok(stream) => return Ok(stream),
            Err(err) => last = err,
        }
    }
    Err(last)
}

fn sleep_unless_stopped(total: Duration, stop: &AtomicBool) {
    let step = Duration::from_millis(20);
    let mut slept = Duration::ZERO;
    while slept < total && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(step);
        slept += step;
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::sync::Arc;

    use super::*;
    use crate::virtual_card::{ECHO_ATR, EchoCard};

    #[test]
    fn messages_parse_by_length_and_control_byte() {
        assert_eq!(Message::parse(&[0]).unwrap(), Message::PowerOff);
        assert_eq!(Message::parse(&[1]).unwrap(), Message::PowerOn);
        assert_eq!(Message::parse(&[2]).unwrap(), Message::Reset);
        assert_eq!(Message::parse(&[4]).unwrap(), Message::GetAtr);
        assert_eq!(Message::parse(&[3]).unwrap(), Message::UnknownControl(3));
        assert_eq!(Message::parse(&[0, 0x84]).unwrap(), Message::Apdu(&[0, 0x84]));
        assert!(matches!(Message::parse(&[]), Err(VpcdError::EmptyFrame)));
    }

    #[test]
    fn frames_are_length_prefixed_big_endian() {
        let mut out = Vec::new();
        encode_frame(&[0x90, 0x00], &mut out).unwrap();
        assert_eq!(out, [0x00, 0x02, 0x90, 0x00]);
        let big = vec![0xAA; 0x1234];
        out.clear();
        encode_frame(&big, &mut out).unwrap();
        assert_eq!(&out[..2], &[0x12, 0x34]);
        assert_eq!(out.len(), 2 + 0x1234);
        assert!(matches!(
            encode_frame(&vec![0; 0x10000], &mut out),
            Err(VpcdError::FrameTooLong(0x10000))
        ));
    }

    /// Delivers a byte stream in fixed-size pieces, then reports a timeout, then end of stream.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        piece: usize,
        timeout_once: bool,
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.pos == self.data.len() && self.timeout_once {
                self.timeout_once = false;
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = self.piece.min(buf.len()).min(self.data.len() - self.pos);
            buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    #[test]
    fn frame_reader_reassembles_any_fragmentation() {
        let payloads: Vec<Vec<u8>> =
            vec![vec![1], vec![0, 0xA4, 4, 0], (0..=255).collect(), vec![4], vec![7; 5000]];
        let mut stream = Vec::new();
        for p in &payloads {
            encode_frame(p, &mut stream).unwrap();
        }
        for piece in [1, 2, 3, 7, 4096, 100_000] {
            let mut src = Trickle { data: stream.clone(), pos: 0, piece, timeout_once: true };
            let mut reader = FrameReader::new();
            let mut got = Vec::new();
            loop {
                match reader.read_frame(&mut src).unwrap() {
                    ReadOutcome::Frame(p) => got.push(p.to_vec()),
                    ReadOutcome::Pending => continue,
                    ReadOutcome::Closed => break,
                }
            }
            assert_eq!(got, payloads, "piece size {piece}");
        }
    }

    #[test]
    fn truncated_stream_is_closed_not_a_frame() {
        let mut src = Trickle { data: vec![0, 5, 1, 2], pos: 0, piece: 10, timeout_once: false };
        let mut reader = FrameReader::new();
        assert_eq!(reader.read_frame(&mut src).unwrap(), ReadOutcome::Closed);
    }

    #[test]
    fn handle_maps_control_messages_to_the_card() {
        let mut bridge = VpcdBridge::new(EchoCard::new(), BridgeConfig::default());
        assert_eq!(bridge.handle(&[CTRL_POWER_ON]).unwrap(), None);
        assert!(bridge.card().is_powered());
        let mut atr_frame = vec![0, ECHO_ATR.len() as u8];
        atr_frame.extend_from_slice(&ECHO_ATR);
        assert_eq!(bridge.handle(&[CTRL_GET_ATR]).unwrap(), Some(&atr_frame[..]));
        assert_eq!(bridge.handle(&[CTRL_POWER_OFF]).unwrap(), None);
        assert!(!bridge.card().is_powered());
        // The ATR is answered while unpowered too (vpcd polls presence that way).
        assert_eq!(bridge.handle(&[CTRL_GET_ATR]).unwrap(), Some(&atr_frame[..]));
        assert_eq!(bridge.handle(&[CTRL_RESET]).unwrap(), None);
        assert!(bridge.card().is_powered());
        assert_eq!(bridge.handle(&[9]).unwrap(), None);
        let answer = bridge.handle(&[0x00, 0x01, 0x00, 0x00, 0x01, 0x42]).unwrap().unwrap();
        assert_eq!(answer, [0x00, 0x03, 0x42, 0x90, 0x00]);
        assert_eq!(bridge.apdus_served(), 1);
        assert_eq!(bridge.handle(&[]).unwrap(), None);
        // Too short to be a command: the card's own status word, never a dropped frame.
        assert_eq!(bridge.handle(&[0x00, 0x84]).unwrap().unwrap(), [0x00, 0x02, 0x67, 0x00]);
    }

    /// A fake vpcd: accepts the card, drives it, then closes; accepts again to prove the
    /// bridge reconnects.
    #[test]
    fn bridge_serves_a_fake_vpcd_and_reconnects() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let config = BridgeConfig { port, ..BridgeConfig::default() };
        let stop2 = stop.clone();
        let server = std::thread::spawn(move || {
            let mut bridge = VpcdBridge::new(EchoCard::new(), config);
            bridge.run(&stop2).unwrap();
            bridge
        });
        for round in 0..2u8 {
            let (mut sock, _) = listener.accept().unwrap();
            // Control messages and an APDU written in one go; answers must come in order.
            let mut out = Vec::new();
            encode_frame(&[CTRL_POWER_ON], &mut out).unwrap();
            encode_frame(&[CTRL_GET_ATR], &mut out).unwrap();
            encode_frame(&[0x00, 0x01, 0x00, 0x00, 0x01, round], &mut out).unwrap();
            sock.write_all(&out).unwrap();
            let mut reader = FrameReader::new();
            let ReadOutcome::Frame(atr) = reader.read_frame(&mut sock).unwrap() else {
                panic!("no ATR frame")
            };
            assert_eq!(atr, ECHO_ATR);
            let ReadOutcome::Frame(rsp) = reader.read_frame(&mut sock).unwrap() else {
                panic!("no response frame")
            };
            assert_eq!(rsp, [round, 0x90, 0x00]);
            drop(sock);
        }
        stop.store(true, Ordering::Relaxed);
        let bridge = server.join().unwrap();
        assert_eq!(bridge.apdus_served(), 2);
        assert!(!bridge.card().is_powered());
    }
}
