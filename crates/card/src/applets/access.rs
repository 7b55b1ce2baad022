//! The `access` applet: the access card of the authentication proxy (seed 004 Figs. 5 and 7,
//! DESIGN.md 5; `tessera_proto::access` has every APDU).
//!
//! - **States** (Fig. 7), volatile: prohibited → VERIFY PIN → accessible; VERIFY reset, a
//!   reset, power-off or another applet's selection return to prohibited. The PIN and the PUK
//!   have three tries, counted and committed before the comparison; a blocked PIN `6983`
//!   until RESET RETRY COUNTER with the PUK. The ten-minute idle relock is the host's
//!   (`tessera_host::access::AccessCardSession`).
//! - **Access key** (role access): generated in the card with a proof of possession; the CA
//!   and access certificates are installed once; SIGN CV signs TLS client CertificateVerify
//!   contents only (the control channel's client authentication), only when accessible.
//! - **Settings**: the pinned home server (SPKI hash and address) is written with the PIN
//!   while unset, and replaced only with the PUK; the terminal profiles are written with the
//!   PIN. Both are read when accessible.

use serde::{Deserialize, Serialize};
use tessera_apdu::{Command, Response, StatusWord};
use tessera_crypto::x509::Role;
use tessera_proto::access::{
    self as proto, CERT_ACCESS, CERT_CA, CHALLENGE_LEN, DATA_ACCESS_CERTIFICATE,
    DATA_CA_CERTIFICATE, DATA_HOME_SERVER, DATA_PROFILES, DATA_STATUS, EnrolmentProof, HomeServer,
    KEY_ACCESS, PIN_TRIES, PUT_WITH_PIN, PUT_WITH_PUK, Profiles, REF_PIN, REF_PUK, Status,
};

use crate::applet::{Applet, Context, Persistent, StateError, TearScenario, fci};
use crate::pin::{BLOCK_LEN, Pin, PinBlock};

use super::home::credential::{self, Anchor, KeyAndCertificate, PinCommand};

pub mod scenarios;
#[cfg(test)]
mod tests;

pub use tessera_proto::access::AID;

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Pins {
    pin: Pin,
    puk: Pin,
}

#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct AccessState {
    pins: Option<Pins>,
    anchor: Anchor,
    key: KeyAndCertificate,
    /// [`HomeServer`] encoding.
    home_server: Option<Vec<u8>>,
    /// [`Profiles`] encoding.
    profiles: Vec<u8>,
}

#[derive(Default)]
struct Volatile {
    accessible: bool,
}

/// The access applet.
pub struct AccessApplet {
    state: Persistent<AccessState>,
    volatile: Volatile,
}

impl Default for AccessApplet {
    fn default() -> Self {
        Self::new()
    }
}

impl AccessApplet {
    /// A blank applet.
    pub fn new() -> AccessApplet {
        AccessApplet { state: Persistent::default(), volatile: Volatile::default() }
    }

    fn require_accessible(&self) -> Result<(), StatusWord> {
        if self.volatile.accessible {
            Ok(())
        } else {
            Err(StatusWord::SECURITY_STATUS_NOT_SATISFIED)
        }
    }

    fn pin_mut(&mut self, reference: u8) -> Result<&mut Pin, StatusWord> {
        let pins = self.state.pins.as_mut().ok_or(StatusWord::CONDITIONS_NOT_SATISFIED)?;
        match reference {
            REF_PIN => Ok(&mut pins.pin),
            REF_PUK => Ok(&mut pins.puk),
            _ => Err(StatusWord::REFERENCED_DATA_NOT_FOUND),
        }
    }

    /// Counts a try, commits, compares.
    fn check_pin(
        &mut self,
        ctx: &mut Context<'_>,
        reference: u8,
        candidate: &PinBlock,
    ) -> Result<(), StatusWord> {
        let attempt = self.pin_mut(reference)?.begin()?;
        ctx.commit(&self.state.encode())?;
        let result = self.pin_mut(reference)?.finish(attempt, candidate);
        if reference == REF_PIN && result.is_err() {
            self.volatile.accessible = false;
        }
        result
    }

    fn pin_command(
        &mut self,
        ctx: &mut Context<'_>,
        command: PinCommand,
    ) -> Result<(), StatusWord> {
        match command {
            PinCommand::Verify(REF_PIN, candidate) => {
                self.check_pin(ctx, REF_PIN, &candidate)?;
                self.volatile.accessible = true;
                Ok(())
            }
            PinCommand::Verify(..) => Err(StatusWord::INCORRECT_P1P2),
            PinCommand::Status(r) => {
                let accessible = self.volatile.accessible && r == REF_PIN;
                let pin = self.pin_mut(r)?;
                if accessible && !pin.is_blocked() { Ok(()) } else { Err(pin.status()) }
            }
            PinCommand::Reset(_) => {
                self.volatile.accessible = false;
                Ok(())
            }
            PinCommand::Change(r, old, new) => {
                self.check_pin(ctx, r, &old)?;
                self.pin_mut(r)?.set(new);
                Ok(())
            }
            PinCommand::Unblock(REF_PIN, puk, new) => {
                self.check_pin(ctx, REF_PUK, &puk)?;
                self.pin_mut(REF_PIN)?.set(new);
                Ok(())
            }
            PinCommand::Unblock(..) => Err(StatusWord::REFERENCED_DATA_NOT_FOUND),
        }
    }

    fn set_pins(&mut self, data: &[u8]) -> Result<(), StatusWord> {
        if self.state.pins.is_some() {
            return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
        }
        self.write_pins(data)
    }

    /// Sets (or, for the issuer, replaces) the PIN and the PUK from `PIN || PUK`.
    fn write_pins(&mut self, data: &[u8]) -> Result<(), StatusWord> {
        if data.len() != 2 * BLOCK_LEN {
            return Err(StatusWord::WRONG_LENGTH);
        }
        let (pin, puk) = data.split_at(BLOCK_LEN);
        let pins = Pins {
            pin: Pin::new(PinBlock::parse(pin)?, PIN_TRIES)?,
            puk: Pin::new(PinBlock::parse(puk)?, PIN_TRIES)?,
        };
        self.state.pins = Some(pins);
        Ok(())
    }

    fn generate_key(
        &mut self,
        ctx: &mut Context<'_>,
        cmd: &Command,
    ) -> Result<Vec<u8>, StatusWord> {
        self.require_accessible()?;
        if cmd.p1 != KEY_ACCESS || cmd.p2 != 0 {
            return Err(StatusWord::INCORRECT_P1P2);
        }
        let card_id = ctx.card().card_id.clone();
        if card_id.is_empty() {
            return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
        }
        let challenge: [u8; CHALLENGE_LEN] =
            cmd.data.as_slice().try_into().map_err(|_| StatusWord::WRONG_LENGTH)?;
        let key = self.state.key.generate(ctx)?;
        let public_key = key.public_key().to_sec1_bytes();
        let signature = key
            .sign(&proto::enrolment_message(&card_id, KEY_ACCESS, &public_key, &challenge))
            .to_bytes();
        Ok(EnrolmentProof { public_key, signature }.to_bytes())
    }

    fn install_certificate(&mut self, cmd: &Command) -> Result<(), StatusWord> {
        self.require_accessible()?;
        if cmd.p2 != 0 {
            return Err(StatusWord::INCORRECT_P1P2);
        }
        let state = &mut *self.state;
        match cmd.p1 {
            CERT_CA => state.anchor.install(&cmd.data),
            CERT_ACCESS => {
                state.key.install(&mut state.anchor, &cmd.data, Role::Access).map(|_| ())
            }
            _ => Err(StatusWord::INCORRECT_P1P2),
        }
    }

    fn put_data(&mut self, ctx: &mut Context<'_>, cmd: &Command) -> Result<(), StatusWord> {
        self.require_accessible()?;
        match (cmd.p1, cmd.p2) {
            (PUT_WITH_PIN, DATA_HOME_SERVER) => {
                if self.state.home_server.is_some() {
                    return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
                }
                HomeServer::parse(&cmd.data).map_err(|_| StatusWord::INCORRECT_DATA)?;
                self.state.home_server = Some(cmd.data.clone());
                Ok(())
            }
            (PUT_WITH_PUK, DATA_HOME_SERVER) => {
                if cmd.data.len() < BLOCK_LEN {
                    return Err(StatusWord::WRONG_LENGTH);
                }
                let (puk, server) = cmd.data.split_at(BLOCK_LEN);
                let puk = PinBlock::parse(puk)?;
                HomeServer::parse(server).map_err(|_| StatusWord::INCORRECT_DATA)?;
                self.check_pin(ctx, REF_PUK, &puk)?;
                self.state.home_server = Some(server.to_vec());
                Ok(())
            }
            (PUT_WITH_PIN, DATA_PROFILES) => {
                Profiles::parse(&cmd.data).map_err(|_| StatusWord::INCORRECT_DATA)?;
                self.state.profiles = cmd.data.clone();
                Ok(())
            }
            _ => Err(StatusWord::INCORRECT_P1P2),
        }
    }

    fn status(&self) -> Status {
        let pins = self.state.pins.as_ref();
        Status {
            accessible: self.volatile.accessible,
            pin_tries: pins.map_or(0, |p| p.pin.tries_left()),
            puk_tries: pins.map_or(0, |p| p.puk.tries_left()),
            pins_set: pins.is_some(),
            ca: self.state.anchor.der().is_some(),
            certificate: self.state.key.certificate().is_some(),
            home_server: self.state.home_server.is_some(),
        }
    }

    fn get_data(&self, cmd: &Command) -> Result<Vec<u8>, StatusWord> {
        if cmd.p1 != 0 {
            return Err(StatusWord::INCORRECT_P1P2);
        }
        let found =
            |d: Option<&[u8]>| d.map(<[u8]>::to_vec).ok_or(StatusWord::REFERENCED_DATA_NOT_FOUND);
        match cmd.p2 {
            DATA_HOME_SERVER => {
                self.require_accessible()?;
                found(self.state.home_server.as_deref())
            }
            DATA_PROFILES => {
                self.require_accessible()?;
                if self.state.profiles.is_empty() {
                    Ok(Profiles::default().to_bytes())
                } else {
                    Ok(self.state.profiles.clone())
                }
            }
            DATA_ACCESS_CERTIFICATE => found(self.state.key.certificate()),
            DATA_CA_CERTIFICATE => found(self.state.anchor.der()),
            DATA_STATUS => Ok(self.status().to_bytes()),
            _ => Err(StatusWord::INCORRECT_P1P2),
        }
    }
}

impl Applet for AccessApplet {
    fn aid(&self) -> &'static [u8] {
        AID
    }

    fn name(&self) -> &'static str {
        "access"
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
        if let Some(parsed) = PinCommand::parse(cmd, &[REF_PIN, REF_PUK]) {
            let parsed = parsed?;
            if self.state.pins.is_none() {
                return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
            }
            return self.pin_command(ctx, parsed).map(|()| Response::ok(Vec::new()));
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
            proto::INS_GENERATE_KEY => self.generate_key(ctx, cmd).map(Response::ok),
            proto::INS_INSTALL_CERTIFICATE => done(self.install_certificate(cmd)),
            proto::INS_SIGN_CV => {
                self.require_accessible()?;
                credential::sign_cv(&self.state.key, cmd).map(Response::ok)
            }
            proto::INS_PUT_DATA => done(self.put_data(ctx, cmd)),
            proto::INS_GET_DATA => self.get_data(cmd).map(Response::ok),
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
                self.volatile.accessible = false;
                self.write_pins(data).map_err(|_| StatusWord::INCORRECT_DATA)
            }
            proto::DGI_HOME_SERVER => {
                HomeServer::parse(data).map_err(|_| StatusWord::INCORRECT_DATA)?;
                self.state.home_server = Some(data.to_vec());
                Ok(())
            }
            _ => Err(StatusWord::REFERENCED_DATA_NOT_FOUND),
        }
    }

    fn tear_scenarios(&self) -> Vec<TearScenario> {
        scenarios::all()
    }
}
