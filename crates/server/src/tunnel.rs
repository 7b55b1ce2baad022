//! The APDU tunnel's card-side script: which APDUs the server sends, and what it reads from
//! the card's answers. Pure functions over bytes; the session bookkeeping (steps,
//! idempotency, expiry) lives in [`crate::store::sessions`].
//!
//! Step 0 identifies the card: `SELECT` the issuer security domain and `GET DATA 0045` (card
//! id). Once the server knows the card (and has claimed it for this session), step 1 reads
//! its counters: `GET DATA 00E0` (key information: the SCP03 key version, which only grows).
//! A terminal may ask for both steps' APDUs at once (they go to the same applet): step 0
//! then answers both. Later issues append the card's pending jobs (updates, key renewal) as
//! further steps; a terminal that names the card and reads the counters in step 0 may also
//! ask for the update step's device authentication there (the combined first step,
//! [`crate::store::sessions::SessionOptions::device_auth`]).

use serde::{Deserialize, Serialize};
use tessera_apdu::{Command, Response, StatusWord, Tag, Tlv};

use crate::error::ServerError;

/// GlobalPlatform's ISD AID (the card's management applet).
pub const ISD_AID: &[u8] = &[0xA0, 0x00, 0x00, 0x01, 0x51, 0x00, 0x00, 0x00];

/// The counter name under which the ISD key version is tracked.
pub const COUNTER_ISD_KVN: &str = "isd.kvn";

/// Where a session is in its script, stored as JSON in the session row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum TunnelState {
    /// The identification APDUs are out; `expected_card` is the id the terminal claimed at
    /// the start, if any.
    Identify {
        /// The card id given when the session was created.
        expected_card: Option<String>,
        /// Whether the counter-reading APDUs went out with them (one exchange fewer).
        #[serde(default)]
        read_counters: bool,
        /// The combined first step: the update step's SELECT update and DEVICE AUTHENTICATE
        /// went out behind the counters, over this single-use challenge
        /// ([`tessera_proto::update::Challenge::to_bytes`], hex), recorded when the session
        /// was opened (one exchange fewer again).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device_auth: Option<String>,
    },
    /// The card is known; the counter-reading APDUs are out.
    ReadCounters {
        /// The card.
        card_id: String,
    },
    /// Issuance: the hello (SELECT, GET DATA, INITIALIZE UPDATE) is out.
    IssueHello {
        /// The card id to personalise.
        card_id: String,
        /// The host challenge sent, hex.
        host_challenge: String,
        /// The [`crate::issuance::IssuanceSecrets`], sealed under the master key, hex.
        secrets: String,
    },
    /// Issuance: EXTERNAL AUTHENTICATE, the personalisation commands and GENERATE KEY PAIR
    /// are out.
    IssueKeygen(crate::issuance::KeygenStep),
    /// Issuance: the certificates and SET STATUS are out.
    IssueFinish(crate::issuance::FinishStep),
    /// The keyring step of a sync: one keyring command out (see [`crate::store::keyring`]).
    Keyring(crate::store::keyring::KeyringSync),
    /// The update step of a sync: device authentication, then one package at a time (see
    /// [`crate::store::update`]).
    Update(crate::store::update::UpdateSync),
    /// The vault step of a sync: ATTEST, then IMPORT SEALED of a provisioned key (see
    /// [`crate::store::vault`]).
    Vault(crate::store::vault::VaultSync),
    /// Nothing more to send.
    Finished,
}

/// The APDUs of the identification step.
pub fn identify_apdus() -> Vec<Vec<u8>> {
    let commands = [
        Command::new(0x00, 0xA4, 0x04, 0x00).with_data(ISD_AID.to_vec()).with_le(256),
        Command::new(0x80, 0xCA, 0x00, 0x45).with_le(256),
    ];
    commands.iter().filter_map(|c| c.to_bytes().ok()).collect()
}

/// The APDUs of the counter-reading step.
pub fn counter_apdus() -> Vec<Vec<u8>> {
    [Command::new(0x80, 0xCA, 0x00, 0xE0).with_le(256)]
        .iter()
        .filter_map(|c| c.to_bytes().ok())
        .collect()
}

fn bad(msg: impl Into<String>) -> ServerError {
    ServerError::BadRequest(msg.into())
}

fn expect_ok(raw: &[u8], what: &str) -> Result<Response, ServerError> {
    let r = Response::parse(raw)
        .ok_or_else(|| bad(format!("{what}: response shorter than a status word")))?;
    if r.sw != StatusWord::SUCCESS {
        return Err(ServerError::Conflict(format!("{what}: the card answered {:04X}", r.sw.0)));
    }
    Ok(r)
}

/// Reads the card id from the answers to [`identify_apdus`].
pub fn parse_identify(responses: &[Vec<u8>]) -> Result<String, ServerError> {
    let [select, card_id] = responses else {
        return Err(bad(format!(
            "expected 2 responses to the identification step, got {}",
            responses.len()
        )));
    };
    expect_ok(select, "SELECT issuer security domain")?;
    let r = expect_ok(card_id, "GET DATA card id")?;
    let tlv = Tlv::parse_exact(&r.data).map_err(|e| bad(format!("GET DATA card id: {e}")))?;
    if tlv.tag != Tag::new(0x45) {
        return Err(bad("GET DATA card id: not tag 45"));
    }
    std::str::from_utf8(tlv.value)
        .ok()
        .filter(|s| valid_card_id(s))
        .map(str::to_owned)
        .ok_or_else(|| bad("GET DATA card id: not a printable card id"))
}

/// Reads the ISD key version from the answer to [`counter_apdus`].
pub fn parse_counters(responses: &[Vec<u8>]) -> Result<u8, ServerError> {
    let [key_info] = responses else {
        return Err(bad(format!(
            "expected 1 response to the counter step, got {}",
            responses.len()
        )));
    };
    let r = expect_ok(key_info, "GET DATA key information")?;
    let tlv =
        Tlv::parse_exact(&r.data).map_err(|e| bad(format!("GET DATA key information: {e}")))?;
    if tlv.tag != Tag::new(0xE0) {
        return Err(bad("GET DATA key information: not tag E0"));
    }
    let mut kvn = None;
    for child in tlv.children().map_err(|e| bad(format!("key information: {e}")))? {
        let child = child.map_err(|e| bad(format!("key information: {e}")))?;
        if child.tag == Tag::new(0xC0) {
            let v = *child.value.get(1).ok_or_else(|| bad("key information: short C0"))?;
            if kvn.is_some_and(|k| k != v) {
                return Err(bad("key information: keys of different versions"));
            }
            kvn = Some(v);
        }
    }
    kvn.ok_or_else(|| bad("key information: no key"))
}

/// A card id: 1 to 32 printable ASCII characters without spaces or slashes.
pub fn valid_card_id(s: &str) -> bool {
    (1..=32).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic() && b != b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(data: &[u8]) -> Vec<u8> {
        Response::ok(data.to_vec()).to_bytes()
    }

    fn key_info(kvn: u8) -> Vec<u8> {
        let mut inner = Vec::new();
        for id in 1..=3u8 {
            tessera_apdu::tlv::encode(Tag::new(0xC0), &[id, kvn, 0x88, 16], &mut inner).unwrap();
        }
        let mut out = Vec::new();
        tessera_apdu::tlv::encode(Tag::new(0xE0), &inner, &mut out).unwrap();
        out
    }

    #[test]
    fn apdus_are_select_and_get_data() {
        let apdus = identify_apdus();
        assert_eq!(hex::encode_upper(&apdus[0]), "00A4040008A00000015100000000");
        assert_eq!(hex::encode_upper(&apdus[1]), "80CA004500");
        assert_eq!(hex::encode_upper(&counter_apdus()[0]), "80CA00E000");
    }

    #[test]
    fn parses_card_id_and_key_version() {
        assert_eq!(parse_identify(&[ok(&[]), ok(b"\x45\x04CARD")]).unwrap(), "CARD");
        assert_eq!(parse_counters(&[ok(&key_info(0x31))]).unwrap(), 0x31);
    }

    #[test]
    fn rejects_wrong_count_errors_and_garbage() {
        assert!(matches!(parse_identify(&[ok(&[])]), Err(ServerError::BadRequest(_))));
        let no_id = Response::status(StatusWord(0x6A88)).to_bytes();
        assert!(matches!(parse_identify(&[ok(&[]), no_id]), Err(ServerError::Conflict(_))));
        assert!(parse_identify(&[ok(&[]), ok(b"\x45\x09CARD")]).is_err());
        assert!(parse_identify(&[ok(&[]), ok(b"\x46\x04CARD")]).is_err());
        assert!(parse_identify(&[ok(&[]), ok(b"\x45\x02a/")]).is_err());
        assert!(parse_identify(&[vec![0x90], ok(b"\x45\x01a")]).is_err());
        assert!(parse_counters(&[ok(b"\xE0\x00")]).is_err());
        assert!(parse_counters(&[ok(&key_info(1)), ok(&key_info(1))]).is_err());
        let mut mixed = Vec::new();
        tessera_apdu::tlv::encode(Tag::new(0xC0), &[1, 1, 0x88, 16], &mut mixed).unwrap();
        tessera_apdu::tlv::encode(Tag::new(0xC0), &[2, 2, 0x88, 16], &mut mixed).unwrap();
        let mut e0 = Vec::new();
        tessera_apdu::tlv::encode(Tag::new(0xE0), &mixed, &mut e0).unwrap();
        assert!(parse_counters(&[ok(&e0)]).is_err());
    }
}
