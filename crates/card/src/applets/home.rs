//! The `home` applet: the home card of the authentication proxy and its e-money wallet (seed
//! 004, DESIGN.md 5; `tessera_proto::home` has every APDU).
//!
//! - **Security states** (Fig. 6), volatile: prohibited → VERIFY PIN1 → remote-access wait →
//!   VERIFY PIN2 (relayed over the control channel) → enabled → END → remote-access wait. A
//!   reset, power-off or the selection of another applet returns to prohibited. PIN1, PIN2 and
//!   the PUK have three tries each, counted and committed before the comparison; a blocked
//!   PIN1 or PIN2 makes the card unusable (every VERIFY `6983`, the state prohibited) until
//!   RESET RETRY COUNTER with the PUK. The ten-minute idle fallback needs a clock, which the
//!   card does not have: the host that powers the card enforces it by sending END
//!   (`tessera_host::home::HomeCardSession`).
//! - **TLS key** (role home): generated in the card; GENERATE KEY proves possession over the
//!   CA's challenge; the CA certificate, then the TLS certificate are installed once. SIGN CV
//!   signs only a TLS client CertificateVerify content the card builds (TLS 1.3, from the
//!   transcript hash) or checks (TLS 1.2 handshake messages), and only when enabled.
//! - **Wallet** ([`wallet`]): a payment key of its own (role payment), balance, counter,
//!   settlement log; PAY, CREDIT, CANCEL, SIGN CANCELLATION REQUEST, READ LOG, only when
//!   enabled.
//!
//! Status words: not enabled `6982`; a step out of order (no PINs, no key, no certificate,
//! already installed) `6985`; a refused certificate or untrusted signer `6984`; a bad
//! signature `6300`; malformed data `6A80`/`6700`.

use serde::{Deserialize, Serialize};
use tessera_apdu::{Command, Response, StatusWord};
use tessera_crypto::x509::Role;
use tessera_proto::home::{
    self as proto, CERT_CA, CERT_PAYMENT, CERT_TLS, CHALLENGE_LEN, DATA_STATUS, DATA_WALLET,
    EnrolmentProof, KEY_PAYMENT, KEY_TLS, PIN_TRIES, Phase, REF_PIN1, REF_PIN2, REF_PUK, Status,
};

use crate::applet::{Applet, Context, Persistent, StateError, TearScenario, fci};
use crate::pin::{Pin, PinBlock};

pub mod credential;
pub mod scenarios;
pub mod wallet;

#[cfg(test)]
mod tests;

pub use tessera_proto::home::AID;

use credential::{Anchor, KeyAndCertificate, PinCommand};
use wallet::Wallet;

/// PIN1, PIN2 and the PUK.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Pins {
    pin1: Pin,
    pin2: Pin,
    puk: Pin,
}

impl Pins {
    fn get_mut(&mut self, reference: u8) -> Result<&mut Pin, StatusWord> {
        match reference {
            REF_PIN1 => Ok(&mut self.pin1),
            REF_PIN2 => Ok(&mut self.pin2),
            REF_PUK => Ok(&mut self.puk),
            _ => Err(StatusWord::REFERENCED_DATA_NOT_FOUND),
        }
    }

    /// A blocked PIN1 or PIN2 makes the card unusable until the PUK unblocks it.
    fn unusable(&self) -> bool {
        self.pin1.is_blocked() || self.pin2.is_blocked()
    }
}

/// The applet's persistent state.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct HomeState {
    pins: Option<Pins>,
    anchor: Anchor,
    tls: KeyAndCertificate,
    wallet: wallet::WalletState,
}

#[derive(Default)]
struct Volatile {
    phase: Phase,
}

/// The home applet.
pub struct HomeApplet {
    state: Persistent<HomeState>,
    volatile: Volatile,
}

impl Default for HomeApplet {
    fn default() -> Self {
        Self::new()
    }
}

impl HomeApplet {
    /// A blank applet: no PINs, no keys.
    pub fn new() -> HomeApplet {
        HomeApplet { state: Persistent::default(), volatile: Volatile::default() }
    }

    fn require_enabled(&self) -> Result<(), StatusWord> {
        if self.volatile.phase == Phase::Enabled {
            Ok(())
        } else {
            Err(StatusWord::SECURITY_STATUS_NOT_SATISFIED)
        }
    }

    fn pins(&self) -> Result<&Pins, StatusWord> {
        self.state.pins.as_ref().ok_or(StatusWord::CONDITIONS_NOT_SATISFIED)
    }

    fn set_pins(&mut self, data: &[u8]) -> Result<(), StatusWord> {
        if self.state.pins.is_some() {
            return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
        }
        self.write_pins(data)
    }

    /// Sets (or, for the issuer, replaces) the three PINs from `PIN1 || PIN2 || PUK`.
    fn write_pins(&mut self, data: &[u8]) -> Result<(), StatusWord> {
        if data.len() != 24 {
            return Err(StatusWord::WRONG_LENGTH);
        }
        let pin = |i: usize| {
            PinBlock::parse(&data[i * 8..(i + 1) * 8]).and_then(|b| Pin::new(b, PIN_TRIES))
        };
        let pins = Pins { pin1: pin(0)?, pin2: pin(1)?, puk: pin(2)? };
        self.state.pins = Some(pins);
        Ok(())
    }

    /// Counts a try of `reference`, commits, compares.
    fn check_pin(
        &mut self,
        ctx: &mut Context<'_>,
        reference: u8,
        candidate: &PinBlock,
    ) -> Result<(), StatusWord> {
        let attempt = {
            let pins = self.state.pins.as_mut().ok_or(StatusWord::CONDITIONS_NOT_SATISFIED)?;
            pins.get_mut(reference)?.begin()?
        };
        ctx.commit(&self.state.encode())?;
        let pins = self.state.pins.as_mut().ok_or(StatusWord::CONDITIONS_NOT_SATISFIED)?;
        let result = pins.get_mut(reference)?.finish(attempt, candidate);
        if pins.unusable() {
            self.volatile.phase = Phase::Prohibited;
        }
        result
    }

    fn pin_command(
        &mut self,
        ctx: &mut Context<'_>,
        command: PinCommand,
    ) -> Result<(), StatusWord> {
        let pins = self.pins()?;
        match command {
            PinCommand::Verify(r, candidate) => {
                if r == REF_PUK {
                    // The PUK is only checked by CHANGE REFERENCE DATA and RESET RETRY COUNTER.
                    return Err(StatusWord::INCORRECT_P1P2);
                }
                if pins.unusable() {
                    return Err(StatusWord::AUTH_METHOD_BLOCKED);
                }
                if r == REF_PIN2 && self.volatile.phase == Phase::Prohibited {
                    return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
                }
                self.check_pin(ctx, r, &candidate)?;
                let reached = if r == REF_PIN1 { Phase::RemoteWait } else { Phase::Enabled };
                self.volatile.phase = self.volatile.phase.max(reached);
                Ok(())
            }
            PinCommand::Status(r) => {
                let verified = match r {
                    REF_PIN1 => self.volatile.phase >= Phase::RemoteWait,
                    REF_PIN2 => self.volatile.phase == Phase::Enabled,
                    _ => false,
                };
                let pin = match r {
                    REF_PIN1 => &pins.pin1,
                    REF_PIN2 => &pins.pin2,
                    _ => &pins.puk,
                };
                if verified && !pin.is_blocked() { Ok(()) } else { Err(pin.status()) }
            }
            PinCommand::Reset(r) => {
                self.volatile.phase = match r {
                    REF_PIN1 => Phase::Prohibited,
                    REF_PIN2 => self.volatile.phase.min(Phase::RemoteWait),
                    _ => self.volatile.phase,
                };
                Ok(())
            }
            PinCommand::Change(r, old, new) => {
                self.check_pin(ctx, r, &old)?;
                let pins = self.state.pins.as_mut().ok_or(StatusWord::CONDITIONS_NOT_SATISFIED)?;
                pins.get_mut(r)?.set(new);
                Ok(())
            }
            PinCommand::Unblock(r, puk, new) => {
                if r == REF_PUK {
                    return Err(StatusWord::REFERENCED_DATA_NOT_FOUND);
                }
                self.check_pin(ctx, REF_PUK, &puk)?;
                let pins = self.state.pins.as_mut().ok_or(StatusWord::CONDITIONS_NOT_SATISFIED)?;
                pins.get_mut(r)?.set(new);
                Ok(())
            }
        }
    }

    fn generate_key(
        &mut self,
        ctx: &mut Context<'_>,
        cmd: &Command,
    ) -> Result<Vec<u8>, StatusWord> {
        self.require_enabled()?;
        if cmd.p2 != 0 {
            return Err(StatusWord::INCORRECT_P1P2);
        }
        let card_id = ctx.card().card_id.clone();
        if card_id.is_empty() {
            return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
        }
        let (challenge, key) = match cmd.p1 {
            KEY_TLS => {
                let challenge: [u8; CHALLENGE_LEN] =
                    cmd.data.as_slice().try_into().map_err(|_| StatusWord::WRONG_LENGTH)?;
                (challenge, self.state.tls.generate(ctx)?)
            }
            KEY_PAYMENT => {
                if cmd.data.len() != CHALLENGE_LEN + 3 {
                    return Err(StatusWord::WRONG_LENGTH);
                }
                let (challenge, currency) = cmd.data.split_at(CHALLENGE_LEN);
                let currency: [u8; 3] =
                    currency.try_into().map_err(|_| StatusWord::WRONG_LENGTH)?;
                if !currency.iter().all(u8::is_ascii_uppercase) {
                    return Err(StatusWord::INCORRECT_DATA);
                }
                let challenge: [u8; CHALLENGE_LEN] =
                    challenge.try_into().map_err(|_| StatusWord::WRONG_LENGTH)?;
                (challenge, self.state.wallet.open(ctx, currency)?)
            }
            _ => return Err(StatusWord::INCORRECT_P1P2),
        };
        let public_key = key.public_key().to_sec1_bytes();
        let signature = key
            .sign(&proto::enrolment_message(&card_id, cmd.p1, &public_key, &challenge))
            .to_bytes();
        Ok(EnrolmentProof { public_key, signature }.to_bytes())
    }

    fn install_certificate(&mut self, ctx: &Context<'_>, cmd: &Command) -> Result<(), StatusWord> {
        self.require_enabled()?;
        if cmd.p2 != 0 {
            return Err(StatusWord::INCORRECT_P1P2);
        }
        let state = &mut *self.state;
        match cmd.p1 {
            CERT_CA => state.anchor.install(&cmd.data),
            CERT_TLS => state.tls.install(&mut state.anchor, &cmd.data, Role::Home).map(|_| ()),
            CERT_PAYMENT => {
                state.wallet.install_certificate(&mut state.anchor, &cmd.data, &ctx.card().card_id)
            }
            _ => Err(StatusWord::INCORRECT_P1P2),
        }
    }

    fn status(&self) -> Status {
        let tries =
            |f: fn(&Pins) -> &Pin| self.state.pins.as_ref().map_or(0, |p| f(p).tries_left());
        Status {
            phase: self.volatile.phase,
            pin1_tries: tries(|p| &p.pin1),
            pin2_tries: tries(|p| &p.pin2),
            puk_tries: tries(|p| &p.puk),
            pins_set: self.state.pins.is_some(),
            ca: self.state.anchor.der().is_some(),
            tls_certificate: self.state.tls.certificate().is_some(),
            payment_certificate: self.state.wallet.certificate().is_some(),
        }
    }

    fn get_data(&self, cmd: &Command) -> Result<Vec<u8>, StatusWord> {
        if cmd.p1 != 0 {
            return Err(StatusWord::INCORRECT_P1P2);
        }
        let found =
            |d: Option<&[u8]>| d.map(<[u8]>::to_vec).ok_or(StatusWord::REFERENCED_DATA_NOT_FOUND);
        match cmd.p2 {
            CERT_CA => found(self.state.anchor.der()),
            CERT_TLS => found(self.state.tls.certificate()),
            CERT_PAYMENT => found(self.state.wallet.certificate()),
            DATA_STATUS => Ok(self.status().to_bytes()),
            DATA_WALLET => {
                self.require_enabled()?;
                self.state.wallet.info().map(|i| i.to_bytes())
            }
            _ => Err(StatusWord::INCORRECT_P1P2),
        }
    }

    fn wallet(&mut self, ctx: &mut Context<'_>, cmd: &Command) -> Result<Vec<u8>, StatusWord> {
        // The challenge is single use whatever happens (taken before any check).
        let challenge = if cmd.ins == proto::INS_PAY { ctx.take_challenge() } else { None };
        self.require_enabled()?;
        if cmd.p1 != 0 || cmd.p2 != 0 {
            return Err(StatusWord::INCORRECT_P1P2);
        }
        let card_id = ctx.card().card_id.clone();
        let mut w = Wallet { state: &mut self.state.wallet, card_id: &card_id };
        match cmd.ins {
            proto::INS_PAY => w.pay(&cmd.data, challenge.as_deref()),
            proto::INS_CREDIT => w.credit(&cmd.data),
            proto::INS_CANCEL => w.cancel(&cmd.data),
            proto::INS_SIGN_CANCEL_REQUEST => w.sign_cancel_request(&cmd.data),
            _ => w.read_log(&cmd.data),
        }
    }

    fn trust(&mut self, cmd: &Command) -> Result<(), StatusWord> {
        self.require_enabled()?;
        if cmd.p2 != 0 {
            return Err(StatusWord::INCORRECT_P1P2);
        }
        let state = &mut *self.state;
        state.wallet.trust(&mut state.anchor, cmd.p1, &cmd.data)
    }
}

impl Applet for HomeApplet {
    fn aid(&self) -> &'static [u8] {
        AID
    }

    fn name(&self) -> &'static str {
        "home"
    }

    fn save(&self) -> Vec<u8> {
        self.state.encode()
    }

    fn load(&mut self, state: &[u8]) -> Result<(), StateError> {
        self.state.load(state)
    }

    fn take_changed(&mut self) -> bool {
        self.state.take_changed()
    }

    fn clear_volatile(&mut self) {
        self.volatile = Volatile::default();
    }

    fn select(&mut self, _ctx: &mut Context<'_>) -> Result<Vec<u8>, StatusWord> {
        Ok(fci(AID))
    }

    fn call(&mut self, ctx: &mut Context<'_>, cmd: &Command) -> Result<Response, StatusWord> {
        if let Some(parsed) = PinCommand::parse(cmd, &[REF_PIN1, REF_PIN2, REF_PUK]) {
            return self.pin_command(ctx, parsed?).map(|()| Response::ok(Vec::new()));
        }
        if cmd.cla != proto::CLA_PROPRIETARY {
            return Err(StatusWord::CLA_NOT_SUPPORTED);
        }
        let done = |r: Result<(), StatusWord>| r.map(|()| Response::ok(Vec::new()));
        match cmd.ins {
            proto::INS_SET_PINS => {
                if cmd.p1 != 0 || cmd.p2 != 0 {
                    return Err(StatusWord::INCORRECT_P1P2);
                }
                done(self.set_pins(&cmd.data))
            }
            proto::INS_END => {
                if cmd.p1 != 0 || cmd.p2 != 0 {
                    return Err(StatusWord::INCORRECT_P1P2);
                }
                self.volatile.phase = self.volatile.phase.min(Phase::RemoteWait);
                done(Ok(()))
            }
            proto::INS_GENERATE_KEY => self.generate_key(ctx, cmd).map(Response::ok),
            proto::INS_INSTALL_CERTIFICATE => done(self.install_certificate(ctx, cmd)),
            proto::INS_TRUST => done(self.trust(cmd)),
            proto::INS_GET_DATA => self.get_data(cmd).map(Response::ok),
            proto::INS_SIGN_CV => {
                self.require_enabled()?;
                credential::sign_cv(&self.state.tls, cmd).map(Response::ok)
            }
            proto::INS_PAY
            | proto::INS_CREDIT
            | proto::INS_CANCEL
            | proto::INS_SIGN_CANCEL_REQUEST
            | proto::INS_READ_LOG => self.wallet(ctx, cmd).map(Response::ok),
            _ => Err(StatusWord::INS_NOT_SUPPORTED),
        }
    }

    fn personalize(
        &mut self,
        _ctx: &mut Context<'_>,
        dgi: u16,
        data: &[u8],
    ) -> Result<(), StatusWord> {
        match dgi {
            proto::DGI_PINS => {
                self.volatile.phase = Phase::Prohibited;
                self.write_pins(data).map_err(|_| StatusWord::INCORRECT_DATA)
            }
            _ => Err(StatusWord::REFERENCED_DATA_NOT_FOUND),
        }
    }

    fn tear_scenarios(&self) -> Vec<TearScenario> {
        scenarios::all()
    }
}
