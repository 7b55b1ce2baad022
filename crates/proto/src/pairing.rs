//! The `pairing` applet's APDUs (secure terminal, seed 002) and the inputs of every signature,
//! derivation and confirmation value of its protocol, plus the service operations reachable
//! inside a paired session.
//!
//! | command | APDU | data | response |
//! |---|---|---|---|
//! | SELECT | `00 A4 04 00 Lc AID` | [`AID`] | none |
//! | GENERATE KEY | `80 B8 00 00 10 challenge 00` | CA challenge (16) | [`EnrolmentProof`] |
//! | INSTALL CERTIFICATE | `80 BA P1 00 Lc DER` | P1 `01` CA, `02` card | none |
//! | LOAD CRL | `80 BC 00 00 Lc DER` | CRL signed by the CA | none |
//! | PAIR BEGIN | `80 B0 00 00 Lc data 00` | [`PairBegin`] | [`PairBeginResponse`] |
//! | PAIR CONFIRM | `80 B2 00 00 50 data` | [`PairConfirm`] | none |
//! | USE PAIRING | `80 B4 00 00 Lc id` | terminal key id (certificate serial) | none |
//! | INITIALIZE UPDATE | `80 50 30 00 08 host challenge 00` | SCP03 | SCP03 |
//! | EXTERNAL AUTHENTICATE | `84 82 33 00 10 ...` | SCP03, level 33 only | none |
//! | INVOKE (inside SCP03) | `84 C2 service op Lc' protected data` | [`ServiceRequest`] | service answer |
//! | GET DATA | `80 CA 00 P2 00` | P2 `01` card certificate, `02` [`Status`] | |
//!
//! Every signed or MACed message is a labelled structure built by [`labelled`]: the ASCII
//! label, `00`, then each field as a 2-byte big-endian length and its bytes.
//! `docs/pairing.md` gives the flows and every failure.

use tessera_apdu::{Command, StatusWord};

/// The pairing applet's AID: `F0` (proprietary) `TESSERA` `PR`.
pub const AID: &[u8] = &[0xF0, 0x54, 0x45, 0x53, 0x53, 0x45, 0x52, 0x41, 0x50, 0x52];

/// Class byte of the proprietary commands.
pub const CLA_PROPRIETARY: u8 = 0x80;
/// INS of PAIR BEGIN.
pub const INS_PAIR_BEGIN: u8 = 0xB0;
/// INS of PAIR CONFIRM.
pub const INS_PAIR_CONFIRM: u8 = 0xB2;
/// INS of USE PAIRING.
pub const INS_USE_PAIRING: u8 = 0xB4;
/// INS of GENERATE KEY (enrolment).
pub const INS_GENERATE_KEY: u8 = 0xB8;
/// INS of INSTALL CERTIFICATE (enrolment).
pub const INS_INSTALL_CERTIFICATE: u8 = 0xBA;
/// INS of LOAD CRL.
pub const INS_LOAD_CRL: u8 = 0xBC;
/// INS of INVOKE (a service operation, only inside a paired SCP03 session).
pub const INS_INVOKE: u8 = 0xC2;
/// INS of GET DATA.
pub const INS_GET_DATA: u8 = 0xCA;

/// INSTALL CERTIFICATE P1: the CA certificate (the card's trust anchor).
pub const CERT_CA: u8 = 0x01;
/// INSTALL CERTIFICATE P1: the card's own certificate (role card).
pub const CERT_CARD: u8 = 0x02;
/// GET DATA P2: the card certificate (DER).
pub const DATA_CARD_CERTIFICATE: u8 = 0x01;
/// GET DATA P2: the applet status ([`Status`]).
pub const DATA_STATUS: u8 = 0x02;

/// SCP03 key version number of every pairing's derived key set.
pub const PAIRING_KVN: u8 = 0x30;
/// SCP03 security level every paired session runs at (C-MAC, C-DEC, R-MAC, R-ENC).
pub const SESSION_LEVEL_BYTE: u8 = 0x33;
/// Most pairings a card keeps.
pub const MAX_PAIRINGS: usize = 8;
/// Length of a nonce.
pub const NONCE_LEN: usize = 16;
/// Length of an uncompressed SEC1 P-256 public key.
pub const PUBLIC_KEY_LEN: usize = 65;
/// Length of a raw ECDSA P-256 signature `r || s`.
pub const SIGNATURE_LEN: usize = 64;
/// Length of a key confirmation value.
pub const CONFIRMATION_LEN: usize = 16;
/// Length of the enrolment challenge.
pub const CHALLENGE_LEN: usize = 16;
/// Longest key id (an X.509 serial number is at most 20 bytes).
pub const MAX_KEY_ID_LEN: usize = 20;

/// Label of the card's proof of possession at enrolment.
pub const LABEL_ENROL: &str = "tessera/pairing/enrol";
/// Label of the setup transcript the card signs.
pub const LABEL_SETUP_CARD: &str = "tessera/pairing/setup/card";
/// Label of the setup transcript the terminal signs.
pub const LABEL_SETUP_TERMINAL: &str = "tessera/pairing/setup/terminal";
/// Label of the card's key confirmation value.
pub const LABEL_CONFIRM_CARD: &str = "tessera/pairing/confirm/card";
/// Label of the terminal's key confirmation value.
pub const LABEL_CONFIRM_TERMINAL: &str = "tessera/pairing/confirm/terminal";

/// A wire value did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed pairing message: {0}")]
pub struct Malformed(pub &'static str);

impl Malformed {
    /// The status word a card answers for it (`6A80`, or `6700` for a wrong length).
    pub fn status_word(&self) -> StatusWord {
        StatusWord::INCORRECT_DATA
    }
}

/// A labelled structure: `label || 00 || (len16 || field)*`.
pub fn labelled(label: &str, fields: &[&[u8]]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(label.len() + 1 + fields.iter().map(|f| f.len() + 2).sum::<usize>());
    out.extend_from_slice(label.as_bytes());
    out.push(0);
    for f in fields {
        // Fields are certificates and keys, far below 64 KiB (APDU data is at most 65535).
        out.extend_from_slice(&(f.len().min(u16::MAX as usize) as u16).to_be_bytes());
        out.extend_from_slice(f);
    }
    out
}

/// What the card signs at enrolment to prove it holds the key it generated: its card id, the
/// new public key and the CA's challenge.
pub fn enrolment_message(card_id: &[u8], public_key: &[u8], challenge: &[u8]) -> Vec<u8> {
    labelled(LABEL_ENROL, &[card_id, public_key, challenge])
}

/// The setup transcript: both certificates, both ephemeral keys, both nonces. It is the KDF
/// context of the pairing key and, under a direction label, what each side signs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transcript<'a> {
    /// The card certificate (DER).
    pub card_certificate: &'a [u8],
    /// The terminal certificate (DER).
    pub terminal_certificate: &'a [u8],
    /// The terminal's ephemeral public key.
    pub terminal_ephemeral: &'a [u8],
    /// The card's ephemeral public key.
    pub card_ephemeral: &'a [u8],
    /// The terminal's nonce.
    pub terminal_nonce: &'a [u8],
    /// The card's nonce.
    pub card_nonce: &'a [u8],
}

impl Transcript<'_> {
    fn fields(&self) -> [&[u8]; 6] {
        [
            self.card_certificate,
            self.terminal_certificate,
            self.terminal_ephemeral,
            self.card_ephemeral,
            self.terminal_nonce,
            self.card_nonce,
        ]
    }

    /// The KDF context of the pairing key.
    pub fn context(&self) -> Vec<u8> {
        labelled("", &self.fields())[1..].to_vec()
    }

    /// What the card signs.
    pub fn card_message(&self) -> Vec<u8> {
        labelled(LABEL_SETUP_CARD, &self.fields())
    }

    /// What the terminal signs.
    pub fn terminal_message(&self) -> Vec<u8> {
        labelled(LABEL_SETUP_TERMINAL, &self.fields())
    }
}

/// The context of the SCP03 static keys derived from a pairing key: both key ids.
pub fn session_key_context(card_key_id: &[u8], terminal_key_id: &[u8]) -> Vec<u8> {
    labelled("", &[card_key_id, terminal_key_id])[1..].to_vec()
}

/// Splits `n` bytes off the front.
fn take<'a>(data: &mut &'a [u8], n: usize, what: &'static str) -> Result<&'a [u8], Malformed> {
    if data.len() < n {
        return Err(Malformed(what));
    }
    let (head, rest) = data.split_at(n);
    *data = rest;
    Ok(head)
}

fn array<const N: usize>(data: &mut &[u8], what: &'static str) -> Result<[u8; N], Malformed> {
    let bytes = take(data, N, what)?;
    let mut out = [0u8; N];
    out.copy_from_slice(bytes);
    Ok(out)
}

/// GENERATE KEY's answer: the new public key and its proof of possession
/// ([`enrolment_message`] signed by the new key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrolmentProof {
    /// The card's new public key (uncompressed SEC1).
    pub public_key: [u8; PUBLIC_KEY_LEN],
    /// Signature over [`enrolment_message`].
    pub signature: [u8; SIGNATURE_LEN],
}

impl EnrolmentProof {
    /// `public key (65) || signature (64)`.
    pub fn to_bytes(&self) -> Vec<u8> {
        [&self.public_key[..], &self.signature[..]].concat()
    }

    /// Parses [`EnrolmentProof::to_bytes`].
    pub fn parse(mut data: &[u8]) -> Result<Self, Malformed> {
        let public_key = array(&mut data, "enrolment public key")?;
        let signature = array(&mut data, "enrolment signature")?;
        if !data.is_empty() {
            return Err(Malformed("trailing bytes after enrolment proof"));
        }
        Ok(Self { public_key, signature })
    }
}

/// PAIR BEGIN's data: `nonce (16) || ephemeral (65) || terminal certificate (DER)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairBegin {
    /// The terminal's nonce.
    pub nonce: [u8; NONCE_LEN],
    /// The terminal's ephemeral public key.
    pub ephemeral: [u8; PUBLIC_KEY_LEN],
    /// The terminal's certificate (role terminal).
    pub certificate: Vec<u8>,
}

impl PairBegin {
    /// The data field.
    pub fn to_bytes(&self) -> Vec<u8> {
        [&self.nonce[..], &self.ephemeral[..], &self.certificate].concat()
    }

    /// Parses the data field.
    pub fn parse(mut data: &[u8]) -> Result<Self, Malformed> {
        let nonce = array(&mut data, "terminal nonce")?;
        let ephemeral = array(&mut data, "terminal ephemeral key")?;
        if data.is_empty() {
            return Err(Malformed("terminal certificate missing"));
        }
        Ok(Self { nonce, ephemeral, certificate: data.to_vec() })
    }

    /// The command APDU (extended length when the certificate needs it).
    pub fn command(&self) -> Command {
        Command::new(CLA_PROPRIETARY, INS_PAIR_BEGIN, 0, 0)
            .with_data(self.to_bytes())
            .with_le(if self.to_bytes().len() > 255 { 65536 } else { 256 })
    }
}

/// PAIR BEGIN's answer: `nonce (16) || ephemeral (65) || signature (64) || confirmation (16) ||
/// card certificate (DER)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairBeginResponse {
    /// The card's nonce.
    pub nonce: [u8; NONCE_LEN],
    /// The card's ephemeral public key.
    pub ephemeral: [u8; PUBLIC_KEY_LEN],
    /// The card's signature over [`Transcript::card_message`].
    pub signature: [u8; SIGNATURE_LEN],
    /// The card's key confirmation value.
    pub confirmation: [u8; CONFIRMATION_LEN],
    /// The card certificate (role card).
    pub certificate: Vec<u8>,
}

impl PairBeginResponse {
    /// The response data.
    pub fn to_bytes(&self) -> Vec<u8> {
        [
            &self.nonce[..],
            &self.ephemeral[..],
            &self.signature[..],
            &self.confirmation[..],
            &self.certificate,
        ]
        .concat()
    }

    /// Parses the response data.
    pub fn parse(mut data: &[u8]) -> Result<Self, Malformed> {
        let nonce = array(&mut data, "card nonce")?;
        let ephemeral = array(&mut data, "card ephemeral key")?;
        let signature = array(&mut data, "card signature")?;
        let confirmation = array(&mut data, "card confirmation")?;
        if data.is_empty() {
            return Err(Malformed("card certificate missing"));
        }
        Ok(Self { nonce, ephemeral, signature, confirmation, certificate: data.to_vec() })
    }
}

/// PAIR CONFIRM's data: `signature (64) || confirmation (16)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairConfirm {
    /// The terminal's signature over [`Transcript::terminal_message`].
    pub signature: [u8; SIGNATURE_LEN],
    /// The terminal's key confirmation value.
    pub confirmation: [u8; CONFIRMATION_LEN],
}

impl PairConfirm {
    /// The data field.
    pub fn to_bytes(&self) -> Vec<u8> {
        [&self.signature[..], &self.confirmation[..]].concat()
    }

    /// Parses the data field.
    pub fn parse(mut data: &[u8]) -> Result<Self, Malformed> {
        let signature = array(&mut data, "terminal signature")?;
        let confirmation = array(&mut data, "terminal confirmation")?;
        if !data.is_empty() {
            return Err(Malformed("trailing bytes after PAIR CONFIRM"));
        }
        Ok(Self { signature, confirmation })
    }

    /// The command APDU.
    pub fn command(&self) -> Command {
        Command::new(CLA_PROPRIETARY, INS_PAIR_CONFIRM, 0, 0).with_data(self.to_bytes())
    }
}

/// USE PAIRING: names the pairing (by the terminal certificate's serial) whose keys the next
/// INITIALIZE UPDATE uses.
pub fn use_pairing_command(terminal_key_id: &[u8]) -> Command {
    Command::new(CLA_PROPRIETARY, INS_USE_PAIRING, 0, 0).with_data(terminal_key_id.to_vec())
}

/// GENERATE KEY with the CA's challenge.
pub fn generate_key_command(challenge: &[u8; CHALLENGE_LEN]) -> Command {
    Command::new(CLA_PROPRIETARY, INS_GENERATE_KEY, 0, 0).with_data(challenge.to_vec()).with_le(256)
}

fn long_data(cla: u8, ins: u8, p1: u8, data: &[u8]) -> Command {
    Command::new(cla, ins, p1, 0).with_data(data.to_vec())
}

/// INSTALL CERTIFICATE (`which` is [`CERT_CA`] or [`CERT_CARD`]).
pub fn install_certificate_command(which: u8, der: &[u8]) -> Command {
    long_data(CLA_PROPRIETARY, INS_INSTALL_CERTIFICATE, which, der)
}

/// LOAD CRL.
pub fn load_crl_command(der: &[u8]) -> Command {
    long_data(CLA_PROPRIETARY, INS_LOAD_CRL, 0, der)
}

/// GET DATA (`what` is [`DATA_CARD_CERTIFICATE`] or [`DATA_STATUS`]).
pub fn get_data_command(what: u8) -> Command {
    Command::new(CLA_PROPRIETARY, INS_GET_DATA, 0, what).with_le(65536)
}

/// The applet's status (GET DATA `02`): `enrolled (1) || time floor (8) || committed (1) ||
/// staged (1)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// A card certificate is installed (enrolment is over).
    pub enrolled: bool,
    /// The card's time floor: the latest CA-signed time it has seen (Unix seconds).
    pub time_floor: i64,
    /// Committed pairings.
    pub committed: u8,
    /// Staged pairings (set up, never authenticated).
    pub staged: u8,
}

impl Status {
    /// The encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = vec![u8::from(self.enrolled)];
        v.extend_from_slice(&self.time_floor.to_be_bytes());
        v.extend_from_slice(&[self.committed, self.staged]);
        v
    }

    /// Parses the encoding.
    pub fn parse(mut data: &[u8]) -> Result<Self, Malformed> {
        let [enrolled] = array(&mut data, "status")?;
        let floor = array(&mut data, "status time floor")?;
        let [committed, staged] = array(&mut data, "status counts")?;
        if !data.is_empty() || enrolled > 1 {
            return Err(Malformed("status"));
        }
        Ok(Self {
            enrolled: enrolled == 1,
            time_floor: i64::from_be_bytes(floor),
            committed,
            staged,
        })
    }
}

/// A service the pairing applet hosts, named by INVOKE's P1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServiceId {
    /// The balance/ledger service.
    Ledger,
    /// The secure note store.
    Notes,
}

impl ServiceId {
    /// Every service.
    pub const ALL: [ServiceId; 2] = [ServiceId::Ledger, ServiceId::Notes];

    /// INVOKE's P1.
    pub const fn code(self) -> u8 {
        match self {
            ServiceId::Ledger => 0x01,
            ServiceId::Notes => 0x02,
        }
    }

    /// Parses INVOKE's P1 (`6A86` when unknown, answered by the card).
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.code() == code)
    }

    /// The service's name (`tessera service <name>`).
    pub const fn name(self) -> &'static str {
        match self {
            ServiceId::Ledger => "ledger",
            ServiceId::Notes => "notes",
        }
    }
}

/// One service operation: INVOKE's P1 (service), P2 (operation) and data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRequest {
    /// The service.
    pub service: ServiceId,
    /// The operation code, defined by the service.
    pub op: u8,
    /// The operation's argument.
    pub data: Vec<u8>,
}

impl ServiceRequest {
    /// The plain command (the session wraps it before it leaves).
    pub fn command(&self) -> Command {
        let cmd = Command::new(CLA_PROPRIETARY, INS_INVOKE, self.service.code(), self.op);
        let cmd = if self.data.is_empty() { cmd } else { cmd.with_data(self.data.clone()) };
        cmd.with_le(256)
    }
}

/// The ledger service's operations.
pub mod ledger {
    use super::{Malformed, array};

    /// BALANCE: no data; answers the balance (8 bytes, big-endian, minor units).
    pub const OP_BALANCE: u8 = 0x01;
    /// CREDIT: amount (8); answers the new balance.
    pub const OP_CREDIT: u8 = 0x02;
    /// DEBIT: amount (8); answers the new balance; `6985` when the balance is too low.
    pub const OP_DEBIT: u8 = 0x03;
    /// HISTORY: no data; answers the entries, newest last, [`Entry::LEN`] bytes each.
    pub const OP_HISTORY: u8 = 0x04;
    /// Entries kept (the oldest is dropped beyond).
    pub const MAX_ENTRIES: usize = 16;

    /// Parses an amount argument (8 bytes, non-zero).
    pub fn parse_amount(data: &[u8]) -> Result<u64, Malformed> {
        let mut d = data;
        let a = u64::from_be_bytes(array(&mut d, "amount")?);
        if !d.is_empty() || a == 0 {
            return Err(Malformed("amount must be 8 bytes, non-zero"));
        }
        Ok(a)
    }

    /// Parses a balance answer.
    pub fn parse_balance(data: &[u8]) -> Result<u64, Malformed> {
        let mut d = data;
        let b = u64::from_be_bytes(array(&mut d, "balance")?);
        if !d.is_empty() {
            return Err(Malformed("balance"));
        }
        Ok(b)
    }

    /// One ledger entry: `seq (4) || kind (1: 1 credit, 2 debit) || amount (8) || balance (8)
    /// || terminal key id length (1) || terminal key id (up to 20, zero padded)`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Entry {
        /// Sequence number, from 1.
        pub seq: u32,
        /// True for a credit, false for a debit.
        pub credit: bool,
        /// The amount.
        pub amount: u64,
        /// The balance after the entry.
        pub balance: u64,
        /// The terminal (certificate serial) that made the entry.
        pub terminal: Vec<u8>,
    }

    impl Entry {
        /// Encoded length.
        pub const LEN: usize = 4 + 1 + 8 + 8 + 1 + super::MAX_KEY_ID_LEN;

        /// The encoding.
        pub fn to_bytes(&self) -> Vec<u8> {
            let mut v = Vec::with_capacity(Self::LEN);
            v.extend_from_slice(&self.seq.to_be_bytes());
            v.push(if self.credit { 1 } else { 2 });
            v.extend_from_slice(&self.amount.to_be_bytes());
            v.extend_from_slice(&self.balance.to_be_bytes());
            let n = self.terminal.len().min(super::MAX_KEY_ID_LEN);
            v.push(n as u8);
            v.extend_from_slice(&self.terminal[..n]);
            v.resize(Self::LEN, 0);
            v
        }

        /// Parses a HISTORY answer.
        pub fn parse_all(data: &[u8]) -> Result<Vec<Entry>, Malformed> {
            if !data.len().is_multiple_of(Self::LEN) {
                return Err(Malformed("history length"));
            }
            data.chunks(Self::LEN)
                .map(|mut c| {
                    let seq = u32::from_be_bytes(array(&mut c, "seq")?);
                    let [kind] = array(&mut c, "kind")?;
                    let amount = u64::from_be_bytes(array(&mut c, "amount")?);
                    let balance = u64::from_be_bytes(array(&mut c, "balance")?);
                    let [n] = array(&mut c, "terminal length")?;
                    let n = usize::from(n);
                    if n > super::MAX_KEY_ID_LEN || !matches!(kind, 1 | 2) {
                        return Err(Malformed("history entry"));
                    }
                    // The padding after the terminal id is zero (one encoding per entry).
                    if c[n..].iter().any(|&b| b != 0) {
                        return Err(Malformed("history entry padding"));
                    }
                    Ok(Entry { seq, credit: kind == 1, amount, balance, terminal: c[..n].to_vec() })
                })
                .collect()
        }
    }
}

/// The note store's operations.
pub mod notes {
    use super::Malformed;

    /// LIST: no data; answers the occupied slot numbers, one byte each.
    pub const OP_LIST: u8 = 0x01;
    /// PUT: slot (1) || text (1 to [`MAX_NOTE_LEN`]); replaces the slot's note.
    pub const OP_PUT: u8 = 0x02;
    /// GET: slot (1); answers the text, `6A88` when empty.
    pub const OP_GET: u8 = 0x03;
    /// DELETE: slot (1); `6A88` when empty.
    pub const OP_DELETE: u8 = 0x04;
    /// Slots `0..MAX_NOTES`.
    pub const MAX_NOTES: u8 = 8;
    /// Longest note (it must fit a protected short APDU).
    pub const MAX_NOTE_LEN: usize = 200;

    /// Parses a slot argument.
    pub fn parse_slot(data: &[u8]) -> Result<u8, Malformed> {
        match data {
            [slot] if *slot < MAX_NOTES => Ok(*slot),
            _ => Err(Malformed("note slot")),
        }
    }

    /// Parses PUT's argument.
    pub fn parse_put(data: &[u8]) -> Result<(u8, &[u8]), Malformed> {
        match data.split_first() {
            Some((&slot, text))
                if slot < MAX_NOTES && !text.is_empty() && text.len() <= MAX_NOTE_LEN =>
            {
                Ok((slot, text))
            }
            _ => Err(Malformed("note: slot and 1 to 200 bytes of text")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_refuse_truncation() {
        let begin = PairBegin { nonce: [1; 16], ephemeral: [2; 65], certificate: vec![3; 300] };
        let bytes = begin.to_bytes();
        assert_eq!(PairBegin::parse(&bytes), Ok(begin.clone()));
        assert!(PairBegin::parse(&bytes[..81]).is_err());
        assert!(begin.command().is_extended());
        let resp = PairBeginResponse {
            nonce: [4; 16],
            ephemeral: [5; 65],
            signature: [6; 64],
            confirmation: [7; 16],
            certificate: vec![8; 10],
        };
        assert_eq!(PairBeginResponse::parse(&resp.to_bytes()), Ok(resp));
        let confirm = PairConfirm { signature: [9; 64], confirmation: [10; 16] };
        assert_eq!(PairConfirm::parse(&confirm.to_bytes()), Ok(confirm.clone()));
        let mut long = confirm.to_bytes();
        long.push(0);
        assert!(PairConfirm::parse(&long).is_err());
        let status = Status { enrolled: true, time_floor: -5, committed: 3, staged: 1 };
        assert_eq!(Status::parse(&status.to_bytes()), Ok(status));
    }

    #[test]
    fn transcript_labels_separate_directions() {
        let t = Transcript {
            card_certificate: b"c",
            terminal_certificate: b"t",
            terminal_ephemeral: b"te",
            card_ephemeral: b"ce",
            terminal_nonce: b"tn",
            card_nonce: b"cn",
        };
        assert_ne!(t.card_message(), t.terminal_message());
        assert!(t.card_message().starts_with(LABEL_SETUP_CARD.as_bytes()));
        // Moving a byte between fields changes the encoding (length prefixes).
        let u = Transcript { card_certificate: b"ct", terminal_certificate: b"", ..t.clone() };
        assert_ne!(t.context(), u.context());
    }

    #[test]
    fn service_arguments() {
        assert_eq!(ledger::parse_amount(&5u64.to_be_bytes()), Ok(5));
        assert!(ledger::parse_amount(&0u64.to_be_bytes()).is_err());
        assert!(ledger::parse_amount(&[1, 2]).is_err());
        let e =
            ledger::Entry { seq: 2, credit: false, amount: 9, balance: 1, terminal: vec![7; 16] };
        assert_eq!(ledger::Entry::parse_all(&e.to_bytes()), Ok(vec![e]));
        assert_eq!(notes::parse_put(b"\x01hello"), Ok((1, &b"hello"[..])));
        assert!(notes::parse_put(b"\x08hello").is_err());
        assert!(notes::parse_put(b"\x01").is_err());
        assert!(notes::parse_slot(&[]).is_err());
        assert_eq!(ServiceId::from_code(2), Some(ServiceId::Notes));
        assert_eq!(ServiceId::from_code(9), None);
    }
}
