//! The `access` applet's APDUs (the access card of the authentication proxy, seed 004 Figs. 5
//! and 7, DESIGN.md 5).
//!
//! The access card holds the terminal's key for the control channel's TLS client
//! authentication (certificate role access; it signs only TLS client CertificateVerify
//! contents, as the home card's TLS key does), the pinned home server (SHA-256 of its
//! certificate's SubjectPublicKeyInfo, and its address) and the terminal profiles (¶0061: which
//! screen and input layout a kind of terminal uses).
//!
//! States (Fig. 7), volatile: **prohibited** (after power-on, reset, selecting another applet,
//! or VERIFY reset) → VERIFY PIN → **accessible**. Three wrong PINs block it (`6983`) until
//! RESET RETRY COUNTER with the PUK. The ten-minute idle relock is the host's job
//! (`tessera_host::access::AccessCardSession` sends VERIFY reset).
//!
//! The pinned home server is written with the PIN only while none is set; replacing it needs
//! the PUK (P1 `01`, the PUK block before the data), so a thief who watched the PIN cannot
//! redirect the terminal to another home server.
//!
//! | command | APDU | state | data | response |
//! |---|---|---|---|---|
//! | SELECT | `00 A4 04 00 Lc AID` | any | [`AID`] | FCI |
//! | SET PINS | `80 D0 00 00 10 PIN PUK` | no PINs yet | two 8-byte blocks | none |
//! | VERIFY | `00 20 00 81 08 PIN` | any | PIN block | none |
//! | VERIFY (status) | `00 20 00 81\|82` | any | none | `9000` if verified, else `63Cx`/`6983` |
//! | VERIFY (reset) | `00 20 FF 81` | any | none | none: prohibited |
//! | CHANGE REFERENCE DATA | `00 24 00 81\|82 10 old new` | any | two blocks | none |
//! | RESET RETRY COUNTER | `00 2C 00 81 10 PUK new` | any | two blocks | none |
//! | GENERATE KEY | `80 B8 01 00 10 challenge 00` | accessible | CA challenge | [`EnrolmentProof`] |
//! | INSTALL CERTIFICATE | `80 BA P1 00 Lc DER` | accessible | P1 `01` CA, `02` access certificate | none |
//! | SIGN TLS 1.3 CV | `80 2A 13 00 20 hash 00` | accessible | transcript hash | DER signature |
//! | SIGN TLS 1.2 CV | `80 2A 12 00 Lc messages 00` | accessible | handshake messages | DER signature |
//! | PUT DATA | `80 DA P1 P2 Lc data` | accessible | P2 `01` [`HomeServer`] (P1 `00` first time, `01` PUK ‖ data to replace), P2 `02` [`Profiles`] (P1 `00`) | none |
//! | GET DATA | `80 CA 00 P2 00` | see P2 | P2 `01` home server, `02` profiles (accessible); `03` access certificate, `04` CA, `05` [`Status`] (any) | |
//!
//! The issuer may (re)set the PIN and PUK ([`DGI_PINS`]) and the pinned home server
//! ([`DGI_HOME_SERVER`]) through the card-management applet (INSTALL [for personalization],
//! STORE DATA in an SCP03 session): the issuer reset.

use tessera_apdu::Command;

pub use crate::pairing::{EnrolmentProof, Malformed, labelled};

/// The access applet's AID: `F0` (proprietary) `TESSERA` `AC`.
pub const AID: &[u8] = &[0xF0, 0x54, 0x45, 0x53, 0x53, 0x45, 0x52, 0x41, 0x41, 0x43];

/// Class byte of the proprietary commands.
pub const CLA_PROPRIETARY: u8 = 0x80;
/// INS of SET PINS.
pub const INS_SET_PINS: u8 = 0xD0;
/// INS of GENERATE KEY.
pub const INS_GENERATE_KEY: u8 = 0xB8;
/// INS of INSTALL CERTIFICATE.
pub const INS_INSTALL_CERTIFICATE: u8 = 0xBA;
/// INS of SIGN CV.
pub const INS_SIGN_CV: u8 = 0x2A;
/// INS of PUT DATA.
pub const INS_PUT_DATA: u8 = 0xDA;
/// INS of GET DATA.
pub const INS_GET_DATA: u8 = 0xCA;

/// PIN reference of the PIN.
pub const REF_PIN: u8 = 0x81;
/// PIN reference of the PUK.
pub const REF_PUK: u8 = 0x82;
/// Tries of the PIN and of the PUK.
pub const PIN_TRIES: u8 = 3;
/// Personalisation DGI: `PIN || PUK` (two 8-byte blocks), set or replaced by the issuer.
pub const DGI_PINS: u16 = 0x8100;
/// Personalisation DGI: a [`HomeServer`], pinned or replaced by the issuer.
pub const DGI_HOME_SERVER: u16 = 0x0110;
/// GENERATE KEY P1: the access (control-channel) key.
pub const KEY_ACCESS: u8 = 0x01;
/// INSTALL CERTIFICATE P1 / GET DATA P2 `04`: the CA certificate.
pub const CERT_CA: u8 = 0x01;
/// INSTALL CERTIFICATE P1: the access certificate.
pub const CERT_ACCESS: u8 = 0x02;
/// PUT/GET DATA P2: the pinned home server.
pub const DATA_HOME_SERVER: u8 = 0x01;
/// PUT/GET DATA P2: the terminal profiles.
pub const DATA_PROFILES: u8 = 0x02;
/// GET DATA P2: the access certificate.
pub const DATA_ACCESS_CERTIFICATE: u8 = 0x03;
/// GET DATA P2: the CA certificate.
pub const DATA_CA_CERTIFICATE: u8 = 0x04;
/// GET DATA P2: the [`Status`].
pub const DATA_STATUS: u8 = 0x05;
/// PUT DATA P1: write with the PIN (the home server only while unset).
pub const PUT_WITH_PIN: u8 = 0x00;
/// PUT DATA P1: replace the home server, authorised by the PUK block before the data.
pub const PUT_WITH_PUK: u8 = 0x01;

/// Length of an enrolment challenge.
pub const CHALLENGE_LEN: usize = crate::pairing::CHALLENGE_LEN;
/// Longest home-server address.
pub const MAX_ADDRESS_LEN: usize = 255;
/// Longest profile name, screen or input layout name.
pub const MAX_NAME_LEN: usize = 32;
/// Most terminal profiles.
pub const MAX_PROFILES: usize = 8;
/// Label of the access card's proof of possession at enrolment.
pub const LABEL_ENROL: &str = "tessera/access/enrol";

/// What the card signs at enrolment: card id, key (P1), public key, CA challenge.
pub fn enrolment_message(card_id: &[u8], key: u8, public_key: &[u8], challenge: &[u8]) -> Vec<u8> {
    labelled(LABEL_ENROL, &[card_id, &[key], public_key, challenge])
}

/// SET PINS: `PIN || PUK`.
pub fn set_pins_command(pin: &[u8; 8], puk: &[u8; 8]) -> Command {
    Command::new(CLA_PROPRIETARY, INS_SET_PINS, 0, 0).with_data([&pin[..], puk].concat())
}

/// VERIFY the PIN.
pub fn verify_command(block: &[u8; 8]) -> Command {
    Command::new(0x00, 0x20, 0x00, REF_PIN).with_data(block.to_vec())
}

/// VERIFY reset: back to prohibited (relock).
pub fn relock_command() -> Command {
    Command::new(0x00, 0x20, 0xFF, REF_PIN)
}

/// CHANGE REFERENCE DATA of `reference` (`old || new`).
pub fn change_command(reference: u8, old: &[u8; 8], new: &[u8; 8]) -> Command {
    Command::new(0x00, 0x24, 0x00, reference).with_data([&old[..], new].concat())
}

/// RESET RETRY COUNTER of the PIN with the PUK.
pub fn unblock_command(puk: &[u8; 8], new: &[u8; 8]) -> Command {
    Command::new(0x00, 0x2C, 0x00, REF_PIN).with_data([&puk[..], new].concat())
}

/// GENERATE KEY of the access key.
pub fn generate_key_command(challenge: &[u8; CHALLENGE_LEN]) -> Command {
    Command::new(CLA_PROPRIETARY, INS_GENERATE_KEY, KEY_ACCESS, 0)
        .with_data(challenge.to_vec())
        .with_le(256)
}

/// INSTALL CERTIFICATE (`which`: [`CERT_CA`], [`CERT_ACCESS`]).
pub fn install_certificate_command(which: u8, der: &[u8]) -> Command {
    Command::new(CLA_PROPRIETARY, INS_INSTALL_CERTIFICATE, which, 0).with_data(der.to_vec())
}

/// SIGN CV for TLS 1.3.
pub fn sign_tls13_command(transcript_hash: &[u8; 32]) -> Command {
    Command::new(CLA_PROPRIETARY, INS_SIGN_CV, crate::home::CV_TLS13, 0)
        .with_data(transcript_hash.to_vec())
        .with_le(256)
}

/// SIGN CV for TLS 1.2.
pub fn sign_tls12_command(handshake_messages: &[u8]) -> Command {
    Command::new(CLA_PROPRIETARY, INS_SIGN_CV, crate::home::CV_TLS12, 0)
        .with_data(handshake_messages.to_vec())
        .with_le(256)
}

/// PUT DATA of the home server, the first time (PIN).
pub fn put_home_server_command(server: &HomeServer) -> Command {
    Command::new(CLA_PROPRIETARY, INS_PUT_DATA, PUT_WITH_PIN, DATA_HOME_SERVER)
        .with_data(server.to_bytes())
}

/// PUT DATA replacing the home server, authorised by the PUK.
pub fn replace_home_server_command(puk: &[u8; 8], server: &HomeServer) -> Command {
    Command::new(CLA_PROPRIETARY, INS_PUT_DATA, PUT_WITH_PUK, DATA_HOME_SERVER)
        .with_data([&puk[..], &server.to_bytes()].concat())
}

/// PUT DATA of the terminal profiles.
pub fn put_profiles_command(profiles: &Profiles) -> Command {
    Command::new(CLA_PROPRIETARY, INS_PUT_DATA, PUT_WITH_PIN, DATA_PROFILES)
        .with_data(profiles.to_bytes())
}

/// GET DATA (`what`: a `DATA_*` code).
pub fn get_data_command(what: u8) -> Command {
    Command::new(CLA_PROPRIETARY, INS_GET_DATA, 0, what).with_le(65536)
}

/// The pinned home server: `SHA-256(SubjectPublicKeyInfo DER) (32) || address (UTF-8,
/// "host:port", 1 to 255 bytes)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HomeServer {
    /// SHA-256 of the home server certificate's SubjectPublicKeyInfo (DER).
    pub spki_sha256: [u8; 32],
    /// Where to reach it (`host:port`).
    pub address: String,
}

impl HomeServer {
    /// The encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        [&self.spki_sha256[..], self.address.as_bytes()].concat()
    }

    /// Parses the encoding.
    pub fn parse(data: &[u8]) -> Result<HomeServer, Malformed> {
        if data.len() < 33 || data.len() > 32 + MAX_ADDRESS_LEN {
            return Err(Malformed("home server length"));
        }
        let (hash, address) = data.split_at(32);
        let address = std::str::from_utf8(address).map_err(|_| Malformed("home server address"))?;
        if address.chars().any(char::is_control) {
            return Err(Malformed("home server address"));
        }
        let mut spki_sha256 = [0u8; 32];
        spki_sha256.copy_from_slice(hash);
        Ok(HomeServer { spki_sha256, address: address.to_owned() })
    }
}

/// A terminal profile (¶0061): the kind of terminal, and the screen and input layouts to
/// use on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TerminalProfile {
    /// The terminal kind (e.g. `phone`, `pda`, `desktop`).
    pub name: String,
    /// The screen layout's name.
    pub screen: String,
    /// The input layout's name.
    pub input: String,
}

/// The terminal profiles: `count (1) || (len || name || len || screen || len || input)*`,
/// each name 1 to 32 bytes of printable UTF-8, at most [`MAX_PROFILES`], names unique.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profiles(pub Vec<TerminalProfile>);

impl Profiles {
    /// The encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![self.0.len().min(MAX_PROFILES) as u8];
        for p in self.0.iter().take(MAX_PROFILES) {
            for s in [&p.name, &p.screen, &p.input] {
                let b = &s.as_bytes()[..s.len().min(MAX_NAME_LEN)];
                out.push(b.len() as u8);
                out.extend_from_slice(b);
            }
        }
        out
    }

    /// Parses the encoding.
    pub fn parse(data: &[u8]) -> Result<Profiles, Malformed> {
        let (&count, mut rest) = data.split_first().ok_or(Malformed("profiles count"))?;
        if usize::from(count) > MAX_PROFILES {
            return Err(Malformed("too many profiles"));
        }
        let mut name = || -> Result<String, Malformed> {
            let (&n, tail) = rest.split_first().ok_or(Malformed("profile name"))?;
            let n = usize::from(n);
            if n == 0 || n > MAX_NAME_LEN || tail.len() < n {
                return Err(Malformed("profile name length"));
            }
            let s = std::str::from_utf8(&tail[..n]).map_err(|_| Malformed("profile name"))?;
            if s.chars().any(char::is_control) {
                return Err(Malformed("profile name"));
            }
            rest = &tail[n..];
            Ok(s.to_owned())
        };
        let mut profiles = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let p = TerminalProfile { name: name()?, screen: name()?, input: name()? };
            if profiles.iter().any(|q: &TerminalProfile| q.name == p.name) {
                return Err(Malformed("duplicate profile name"));
            }
            profiles.push(p);
        }
        if !rest.is_empty() {
            return Err(Malformed("trailing bytes after profiles"));
        }
        Ok(Profiles(profiles))
    }
}

/// GET DATA `05`: `accessible (1) || PIN tries (1) || PUK tries (1) || flags (1)`; flags b0
/// PINs set, b1 CA, b2 access certificate, b3 home server pinned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// The PIN was verified (accessible state).
    pub accessible: bool,
    /// PIN tries left.
    pub pin_tries: u8,
    /// PUK tries left.
    pub puk_tries: u8,
    /// SET PINS was done.
    pub pins_set: bool,
    /// The CA certificate is installed.
    pub ca: bool,
    /// The access certificate is installed.
    pub certificate: bool,
    /// A home server is pinned.
    pub home_server: bool,
}

impl Status {
    /// The encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        let flags = u8::from(self.pins_set)
            | u8::from(self.ca) << 1
            | u8::from(self.certificate) << 2
            | u8::from(self.home_server) << 3;
        vec![u8::from(self.accessible), self.pin_tries, self.puk_tries, flags]
    }

    /// Parses the encoding.
    pub fn parse(data: &[u8]) -> Result<Status, Malformed> {
        let [accessible, pin_tries, puk_tries, flags] = data else {
            return Err(Malformed("access status length"));
        };
        if *accessible > 1 || flags & 0xF0 != 0 {
            return Err(Malformed("access status"));
        }
        Ok(Status {
            accessible: *accessible == 1,
            pin_tries: *pin_tries,
            puk_tries: *puk_tries,
            pins_set: flags & 1 != 0,
            ca: flags & 2 != 0,
            certificate: flags & 4 != 0,
            home_server: flags & 8 != 0,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    #[test]
    fn settings_round_trip_and_refuse_bad_input() {
        let h = HomeServer { spki_sha256: [3; 32], address: "home.example:8443".into() };
        assert_eq!(HomeServer::parse(&h.to_bytes()).unwrap(), h);
        assert!(HomeServer::parse(&[3; 32]).is_err());
        assert!(HomeServer::parse(&[[3; 32].as_slice(), b"a\nb"].concat()).is_err());
        let p = Profiles(vec![
            TerminalProfile {
                name: "phone".into(),
                screen: "small".into(),
                input: "keypad".into(),
            },
            TerminalProfile { name: "pda".into(), screen: "touch".into(), input: "stylus".into() },
        ]);
        assert_eq!(Profiles::parse(&p.to_bytes()).unwrap(), p);
        let dup = Profiles(vec![p.0[0].clone(), p.0[0].clone()]);
        assert!(Profiles::parse(&dup.to_bytes()).is_err());
        assert!(Profiles::parse(&[9]).is_err());
        assert_eq!(Profiles::parse(&[0]).unwrap(), Profiles::default());
        let s = Status {
            accessible: true,
            pin_tries: 2,
            puk_tries: 3,
            pins_set: true,
            ca: false,
            certificate: false,
            home_server: true,
        };
        assert_eq!(Status::parse(&s.to_bytes()).unwrap(), s);
    }

    proptest! {
        #[test]
        fn parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = HomeServer::parse(&data);
            let _ = Profiles::parse(&data);
            let _ = Status::parse(&data);
        }
    }
}
