//! The secure-terminal benchmark (issue 6): one per-insertion authentication against one
//! setup, and one protected APDU against the same APDU unprotected, measured in the same run,
//! in process, on an in-memory card image. Numbers, not tests: nothing here asserts a speed.

use std::time::{Duration, Instant};

use tessera_apdu::{Command, StatusWord};
use tessera_card::applets::isd::scenarios as isd;
use tessera_card::pin::PinBlock;
use tessera_card::script::Script;
use tessera_card::{Card, CardOptions, PowerCut, TearDriver};
use tessera_crypto::rng::OsRng;
use tessera_proto::pairing::{self as proto, AID, DATA_STATUS};

use super::ca::LocalCa;
use super::enrol::{enrol_card, enrol_terminal, select, verify_pin};
use super::files::PairingStore;
use super::terminal::{PairedSession, Terminal};
use super::{PairingError, Result};
use crate::channel::CardChannel;
use crate::in_process::InProcessChannel;

/// Mean times of one operation, microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BenchReport {
    /// One setup: VERIFY PIN, LOAD CRL (already current), PAIR BEGIN, PAIR CONFIRM, with the
    /// terminal's certificate checks, signature and ECDH.
    pub setup_us: f64,
    /// One authentication: SELECT, USE PAIRING, INITIALIZE UPDATE, EXTERNAL AUTHENTICATE.
    pub authentication_us: f64,
    /// Card image writes during the measured authentications (expected: none).
    pub authentication_writes: u64,
    /// GET DATA (status) unprotected, one round trip.
    pub plain_apdu_us: f64,
    /// The same GET DATA wrapped at level 33 and unwrapped, one round trip.
    pub protected_apdu_us: f64,
}

impl BenchReport {
    /// Authentication cost over setup cost (the target: at most 1/20).
    pub fn authentication_over_setup(&self) -> f64 {
        self.authentication_us / self.setup_us
    }

    /// Protected round trip over unprotected (the target: at most 3).
    pub fn protected_over_plain(&self) -> f64 {
        self.protected_apdu_us / self.plain_apdu_us
    }
}

struct Plain<'a>(&'a mut Card);

impl TearDriver for Plain<'_> {
    fn transmit(&mut self, apdu: &[u8]) -> std::result::Result<Vec<u8>, PowerCut> {
        Ok(self.0.transmit(apdu))
    }
    fn arm(&mut self) {}
}

/// Runs `f` repeatedly for about `duration` (at least `min` times); mean microseconds.
fn mean(duration: Duration, min: u32, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?; // warm up
    let start = Instant::now();
    let mut n = 0u32;
    while n < min || start.elapsed() < duration {
        f()?;
        n += 1;
    }
    Ok(start.elapsed().as_secs_f64() * 1e6 / f64::from(n))
}

/// SELECT and authentication.
fn authenticate<'a>(
    terminal: &Terminal,
    channel: &'a mut InProcessChannel<Card>,
    store: &PairingStore,
) -> Result<PairedSession<&'a mut InProcessChannel<Card>>> {
    select(channel, AID, "SELECT")?;
    terminal.authenticate(channel, store, &mut OsRng).map_err(|(_, e)| e)
}

/// Runs the benchmark, spending about `duration` on each of the four measurements.
pub fn run(duration: Duration) -> Result<BenchReport> {
    let mut ca = LocalCa::in_memory("bench CA")?;
    let mut card = Card::in_memory(CardOptions::default());
    card.power_on();
    isd::personalize(&mut Script::new(&mut Plain(&mut card)))
        .map_err(|e| PairingError::File(format!("issuing the bench card: {e:?}")))?;
    let mut channel = InProcessChannel::new(card);
    let pin = PinBlock::from_value(isd::PIN)
        .map_err(|sw| PairingError::File(format!("PIN block: {sw}")))?;
    enrol_card(&mut channel, &mut ca, &pin, "bench card")?;
    let terminal = Terminal::new(enrol_terminal(&mut ca, "bench terminal")?);
    let mut store = PairingStore::in_memory();
    let mut rng = OsRng;

    let setup_us = mean(duration, 20, || {
        verify_pin(&mut channel, &pin)?;
        select(&mut channel, AID, "SELECT")?;
        terminal.setup(&mut channel, &mut store, &mut rng).map(|_| ())
    })?;

    // Commit the last staged pairing, then measure authentications alone.
    authenticate(&terminal, &mut channel, &store)?;
    let generation = channel.card().generation();
    let authentication_us =
        mean(duration, 200, || authenticate(&terminal, &mut channel, &store).map(|_| ()))?;
    let authentication_writes = channel.card().generation() - generation;

    let status =
        Command::new(proto::CLA_PROPRIETARY, proto::INS_GET_DATA, 0, DATA_STATUS).with_le(256);
    let plain_apdu_us = mean(duration, 1000, || {
        let r = channel.transmit(&status)?;
        if r.sw != StatusWord::SUCCESS {
            return Err(PairingError::card("GET DATA", r.sw));
        }
        Ok(())
    })?;
    let mut session = authenticate(&terminal, &mut channel, &store)?;
    let protected_apdu_us = mean(duration, 1000, || {
        let (_, _, r) = session.transmit_shown(&status)?;
        if r.sw != StatusWord::SUCCESS {
            return Err(PairingError::card("GET DATA (protected)", r.sw));
        }
        Ok(())
    })?;
    Ok(BenchReport {
        setup_us,
        authentication_us,
        authentication_writes,
        plain_apdu_us,
        protected_apdu_us,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The benchmark runs end to end (speed is reported, never asserted) and authentication
    /// leaves the image untouched.
    #[test]
    fn runs_and_authentication_writes_nothing() {
        let r = run(Duration::from_millis(1)).unwrap();
        assert_eq!(r.authentication_writes, 0);
        assert!(r.setup_us > 0.0 && r.protected_apdu_us > 0.0);
    }
}
