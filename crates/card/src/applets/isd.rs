//! The card-management applet in the role of a GlobalPlatform issuer security domain (ISD).
//!
//! AID `A0 00 00 01 51 00 00 00` (GlobalPlatform's ISD AID). It holds the card's SCP03 key
//! set, the card life cycle (card-wide), the card id, and the card holder's global PIN and PUK.
//!
//! | command | APDU | rule |
//! |---|---|---|
//! | GET STATUS | `80\|84 F2 80\|40 02 Lc 4F L prefix [Le]` | the ISD (`80`) or the applications (`40`), tag-coded (`E3` templates); no session needed |
//! | GET DATA | `00\|80 CA P1 P2 [Le]` | tags `0045` card id, `9F70` life cycle, `0066` card recognition data, `00E0` key information, `00C1` failed-authentication count, `7F21` device certificate, `7F49` device public key; no session needed; any life cycle |
//! | INITIALIZE UPDATE | `80 50 KVN 00 08 host-challenge 00` | starts SCP03; not when TERMINATED; `6983` after [`AUTH_FAILURE_LIMIT`] failed EXTERNAL AUTHENTICATEs |
//! | EXTERNAL AUTHENTICATE | `84 82 SL 00 10 cryptogram C-MAC` | failure counter incremented and committed **before** the check, reset on success |
//! | PUT KEY | `84 D8 P1 81 Lc KVN' (88 11 10 key[16] 03 kcv[3])×3` | replaces the key set (ENC, MAC, DEK) with version KVN'; keys encrypted under the current static DEK; answer `KVN' kcv×3` |
//! | STORE DATA | `84 E2 P1 P2 Lc DGIs` | DGI format; `0101` card id, `8101` PIN, `8102` PUK (the "SET PIN/PUK"), `0201` issuer CA certificate, `0202` package-signing certificate, `0203` device certificate; a data group may continue in the next block of the sequence; after INSTALL [for personalization] the DGIs go to that applet |
//! | GENERATE KEY PAIR | `84 46 00 00 Lc nonce [Le]` | OP_READY, card id set; makes the card's device key pair (replacing one made before and its certificate) and answers `7F49 { 86 public-key }` `9E signature`, the proof of possession over the nonce ([`tessera_crypto::device`]) |
//! | INSTALL [for personalization] | `84 E6 20 00 Lc 00 L AID 00 00 00` | routes the following STORE DATA to applet AID |
//! | SET STATUS | `84 F0 80 LC` | card life cycle to LC: OP_READY→`0F`; `0F`→`7F`; `7F`→`0F`; any→`FF` |
//! | VERIFY / CHANGE REFERENCE DATA / RESET RETRY COUNTER | `00 20\|24\|2C ...` | the global PIN ([`crate::pin`] rules); PERSONALIZED only |
//!
//! PUT KEY, STORE DATA, INSTALL, GENERATE KEY PAIR and SET STATUS need an SCP03 session of at least C-MAC +
//! C-DECRYPTION (`6982` otherwise). Life cycle: OP_READY accepts everything; PERSONALIZED
//! refuses the ISD's own STORE DATA groups (card id, PIN, PUK: `6985`); LOCKED accepts only
//! GET DATA, the SCP03 handshake and SET STATUS; TERMINATED only GET DATA. Going to
//! PERSONALIZED needs a card id, a PIN, a PUK and a key set other than the initial one.

use serde::{Deserialize, Serialize};
use tessera_apdu::{Command, Response, StatusWord};
use tessera_crypto::keys::AesKey;
use tessera_crypto::scp03::{
    CardChallengeSource, CardConfig, ExternalAuthOutcome, INS_EXTERNAL_AUTHENTICATE,
    INS_INITIALIZE_UPDATE, Scp03Card, SecurityLevel, StaticKeys, decrypt_key_component,
    has_secure_messaging, key_check_value,
};
use zeroize::Zeroize;

use crate::applet::{Applet, Context, Persistent, StateError, TearScenario};
use crate::applets::Provisioning;
use crate::lifecycle::LifeCycle;
use crate::pin::{Pin, PinBlock, PinCommand, PinRef};

pub mod scenarios;

/// The ISD's AID (GlobalPlatform).
pub const AID: &[u8] = &[0xA0, 0x00, 0x00, 0x01, 0x51, 0x00, 0x00, 0x00];
/// Key version of the initial (test) key set of a blank card.
pub const INITIAL_KVN: u8 = 0x30;
/// Failed EXTERNAL AUTHENTICATE attempts after which the key set is locked for good.
pub const AUTH_FAILURE_LIMIT: u32 = 10;
/// Lowest SCP03 level for personalisation commands.
pub const PERSO_LEVEL: SecurityLevel = SecurityLevel::CMacCDec;
/// Longest card id.
pub const MAX_CARD_ID: usize = 32;
/// Default retry limit written by STORE DATA when a PIN data group gives `00`.
pub const DEFAULT_PIN_TRIES: u8 = 3;

/// DGI of the card id.
pub const DGI_CARD_ID: u16 = 0x0101;
/// DGI of the global PIN: retry limit (1 byte) || PIN block (8 bytes).
pub const DGI_PIN: u16 = 0x8101;
/// DGI of the PUK: retry limit (1 byte) || PUK block (8 bytes).
pub const DGI_PUK: u16 = 0x8102;

/// DGI of the issuer CA certificate (DER): a self-signed CA; replaces the trust anchor.
pub const DGI_ISSUER_CA: u16 = 0x0201;
/// DGI of the package-signing certificate (DER), issued by the installed CA.
pub const DGI_PACKAGE_SIGNING: u16 = 0x0202;
/// DGI of the device certificate (DER): issued by the installed CA with the device role, for
/// the device key, subject common name = card id.
pub const DGI_DEVICE_CERT: u16 = 0x0203;
/// Shortest and longest nonce GENERATE KEY PAIR accepts.
pub const POP_NONCE_LEN: std::ops::RangeInclusive<usize> = 16..=64;

/// GET DATA tags.
pub mod tags {
    /// Card Image Number: the card id.
    pub const CARD_ID: u16 = 0x0045;
    /// Life Cycle State (GlobalPlatform GET STATUS tag).
    pub const LIFE_CYCLE: u16 = 0x9F70;
    /// Card Data (card recognition data).
    pub const CARD_DATA: u16 = 0x0066;
    /// Key Information Template.
    pub const KEY_INFO: u16 = 0x00E0;
    /// Failed EXTERNAL AUTHENTICATE attempts (proprietary use of GP's counter tag).
    pub const AUTH_FAILURES: u16 = 0x00C1;
    /// The device certificate (ISO/IEC 7816-6 cardholder certificate tag).
    pub const DEVICE_CERT: u16 = 0x7F21;
    /// The device public key (ISO/IEC 7816-8 public key template, `86` EC point).
    pub const DEVICE_KEY: u16 = 0x7F49;
}

const INS_GET_DATA: u8 = 0xCA;
const INS_GET_STATUS: u8 = 0xF2;
const INS_PUT_KEY: u8 = 0xD8;
const INS_STORE_DATA: u8 = 0xE2;
const INS_INSTALL: u8 = 0xE6;
const INS_SET_STATUS: u8 = 0xF0;
const INS_GENERATE_KEY_PAIR: u8 = 0x46;
const KEY_TYPE_AES: u8 = 0x88;

/// The ISD's persistent state.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
struct IsdState {
    kvn: u8,
    enc: Vec<u8>,
    mac: Vec<u8>,
    dek: Vec<u8>,
    /// Still the key set the image was made with.
    initial_keys: bool,
    /// Failed EXTERNAL AUTHENTICATE attempts since the last success.
    auth_failures: u32,
    pin: Option<Pin>,
    puk: Option<Pin>,
}

impl Drop for IsdState {
    fn drop(&mut self) {
        self.enc.zeroize();
        self.mac.zeroize();
        self.dek.zeroize();
    }
}

impl IsdState {
    fn static_keys(&self) -> Result<StaticKeys, StatusWord> {
        let key = |b: &[u8]| AesKey::from_slice(b).map_err(|_| StatusWord::UNKNOWN);
        StaticKeys::new(key(&self.enc)?, key(&self.mac)?, key(&self.dek)?, self.kvn)
            .map_err(|_| StatusWord::UNKNOWN)
    }
}

/// The ISD's volatile state.
#[derive(Default)]
struct IsdVolatile {
    scp: Scp03Card,
    /// Next expected STORE DATA block number, within one personalisation sequence.
    next_block: u8,
    /// The applet receiving STORE DATA after INSTALL [for personalization].
    perso_target: Option<Vec<u8>>,
    /// The start of a data group that continues in the next STORE DATA block.
    carry: Vec<u8>,
}

/// The card-management applet.
pub struct Isd {
    state: Persistent<IsdState>,
    volatile: IsdVolatile,
}

/// A command to the ISD, parsed once from the (unwrapped) APDU.
#[derive(Debug)]
enum IsdCommand {
    GetData(u16),
    /// GET STATUS of the ISD (`true`) or of the applications (`false`), AIDs starting with the
    /// given prefix.
    GetStatus {
        isd: bool,
        prefix: Vec<u8>,
    },
    InitializeUpdate,
    ExternalAuthenticate,
    PutKey {
        replace_kvn: u8,
        new_kvn: u8,
        keys: Vec<Vec<u8>>,
        kcvs: Vec<[u8; 3]>,
    },
    StoreData {
        block: u8,
        last: bool,
        data: Vec<u8>,
    },
    GenerateKeyPair {
        nonce: Vec<u8>,
    },
    InstallForPersonalization {
        aid: Vec<u8>,
    },
    SetStatus(LifeCycle),
    Pin(PinCommand),
}

fn take<'a>(data: &mut &'a [u8], n: usize) -> Result<&'a [u8], StatusWord> {
    let (head, tail) = data.split_at_checked(n).ok_or(StatusWord::INCORRECT_DATA)?;
    *data = tail;
    Ok(head)
}

/// Parses DGI-format data: `tag (2) || length (1, or FF + 2) || value`, repeated. Returns
/// the complete groups and the bytes of a last group that is not complete (it continues in
/// the next block).
fn parse_dgis(mut data: &[u8]) -> (Vec<(u16, Vec<u8>)>, &[u8]) {
    let mut groups = Vec::new();
    while !data.is_empty() {
        let start = data;
        let group = (|| {
            let tag = take(&mut data, 2)?;
            let tag = u16::from_be_bytes([tag[0], tag[1]]);
            let len = match take(&mut data, 1)?[0] {
                0xFF => {
                    let l = take(&mut data, 2)?;
                    u16::from_be_bytes([l[0], l[1]]) as usize
                }
                l => l as usize,
            };
            Ok::<_, StatusWord>((tag, take(&mut data, len)?.to_vec()))
        })();
        match group {
            Ok(g) => groups.push(g),
            Err(_) => return (groups, start),
        }
    }
    (groups, data)
}

/// Longest data group carried over from one STORE DATA block to the next.
const MAX_CARRY: usize = 4096;

impl IsdCommand {
    fn parse(cmd: &Command) -> Result<IsdCommand, StatusWord> {
        let gp = cmd.cla & 0x80 != 0;
        let require_gp = || if gp { Ok(()) } else { Err(StatusWord::CLA_NOT_SUPPORTED) };
        match cmd.ins {
            INS_GET_STATUS => {
                require_gp()?;
                let isd = match cmd.p1 {
                    0x80 => true,
                    0x40 => false,
                    _ => return Err(StatusWord::INCORRECT_P1P2),
                };
                if cmd.p2 != 0x02 {
                    return Err(StatusWord::INCORRECT_P1P2);
                }
                // Search criteria: 4F L prefix (L = 0 matches all).
                match cmd.data.as_slice() {
                    [0x4F, len, prefix @ ..]
                        if *len as usize == prefix.len() && prefix.len() <= 16 =>
                    {
                        Ok(IsdCommand::GetStatus { isd, prefix: prefix.to_vec() })
                    }
                    _ => Err(StatusWord::INCORRECT_DATA),
                }
            }
            INS_GET_DATA => {
                if !cmd.data.is_empty() {
                    return Err(StatusWord::WRONG_LENGTH);
                }
                Ok(IsdCommand::GetData(u16::from_be_bytes([cmd.p1, cmd.p2])))
            }
            INS_INITIALIZE_UPDATE => require_gp().map(|()| IsdCommand::InitializeUpdate),
            INS_EXTERNAL_AUTHENTICATE => require_gp().map(|()| IsdCommand::ExternalAuthenticate),
            INS_PUT_KEY => {
                require_gp()?;
                if cmd.p2 != 0x81 {
                    return Err(StatusWord::INCORRECT_P1P2);
                }
                let mut data = cmd.data.as_slice();
                let new_kvn = take(&mut data, 1)?[0];
                if new_kvn == 0 || new_kvn > 0x7F {
                    return Err(StatusWord::INCORRECT_DATA);
                }
                let mut keys = Vec::new();
                let mut kcvs = Vec::new();
                for _ in 0..3 {
                    let head = take(&mut data, 2)?;
                    if head[0] != KEY_TYPE_AES {
                        return Err(StatusWord::INCORRECT_DATA);
                    }
                    let block = take(&mut data, head[1] as usize)?;
                    let kcv_len = take(&mut data, 1)?[0];
                    if kcv_len != 3 {
                        return Err(StatusWord::INCORRECT_DATA);
                    }
                    let kcv = take(&mut data, 3)?;
                    keys.push(block.to_vec());
                    kcvs.push([kcv[0], kcv[1], kcv[2]]);
                }
                if !data.is_empty() {
                    return Err(StatusWord::INCORRECT_DATA);
                }
                Ok(IsdCommand::PutKey { replace_kvn: cmd.p1, new_kvn, keys, kcvs })
            }
            INS_STORE_DATA => {
                require_gp()?;
                // P1: b8 last block, b5-b4 data structure (01 = DGI); encryption bits ignored
                // (the whole command is already encrypted by the session).
                if cmd.p1 & 0x18 != 0x08 || cmd.p1 & 0x07 != 0 {
                    return Err(StatusWord::INCORRECT_P1P2);
                }
                Ok(IsdCommand::StoreData {
                    block: cmd.p2,
                    last: cmd.p1 & 0x80 != 0,
                    data: cmd.data.clone(),
                })
            }
            INS_GENERATE_KEY_PAIR => {
                require_gp()?;
                if cmd.p1 != 0 || cmd.p2 != 0 {
                    return Err(StatusWord::INCORRECT_P1P2);
                }
                if !POP_NONCE_LEN.contains(&cmd.data.len()) {
                    return Err(StatusWord::WRONG_LENGTH);
                }
                Ok(IsdCommand::GenerateKeyPair { nonce: cmd.data.clone() })
            }
            INS_INSTALL => {
                require_gp()?;
                if cmd.p1 != 0x20 || cmd.p2 != 0 {
                    return Err(StatusWord::INCORRECT_P1P2);
                }
                let mut data = cmd.data.as_slice();
                let load_file = take(&mut data, 1)?[0] as usize;
                take(&mut data, load_file)?;
                let aid_len = take(&mut data, 1)?[0] as usize;
                if !(5..=16).contains(&aid_len) {
                    return Err(StatusWord::INCORRECT_DATA);
                }
                let aid = take(&mut data, aid_len)?.to_vec();
                if data != [0, 0, 0] {
                    return Err(StatusWord::INCORRECT_DATA);
                }
                Ok(IsdCommand::InstallForPersonalization { aid })
            }
            INS_SET_STATUS => {
                require_gp()?;
                if cmd.p1 != 0x80 {
                    return Err(StatusWord::INCORRECT_P1P2);
                }
                if !cmd.data.is_empty() {
                    return Err(StatusWord::WRONG_LENGTH);
                }
                LifeCycle::from_gp_code(cmd.p2)
                    .map(IsdCommand::SetStatus)
                    .ok_or(StatusWord::INCORRECT_P1P2)
            }
            _ => match PinCommand::parse(cmd) {
                Some(parsed) => {
                    if gp {
                        return Err(StatusWord::CLA_NOT_SUPPORTED);
                    }
                    parsed.map(IsdCommand::Pin)
                }
                None => Err(StatusWord::INS_NOT_SUPPORTED),
            },
        }
    }

    /// Needs an SCP03 session of at least [`PERSO_LEVEL`].
    fn needs_session(&self) -> bool {
        matches!(
            self,
            IsdCommand::PutKey { .. }
                | IsdCommand::StoreData { .. }
                | IsdCommand::InstallForPersonalization { .. }
                | IsdCommand::GenerateKeyPair { .. }
                | IsdCommand::SetStatus(_)
        )
    }

    /// Allowed in this life cycle (own STORE DATA groups are checked separately).
    fn allowed_in(&self, lc: LifeCycle) -> bool {
        match lc {
            LifeCycle::OpReady => !matches!(self, IsdCommand::Pin(_)),
            LifeCycle::Personalized => !matches!(self, IsdCommand::GenerateKeyPair { .. }),
            LifeCycle::Locked => matches!(
                self,
                IsdCommand::GetData(_)
                    | IsdCommand::GetStatus { .. }
                    | IsdCommand::InitializeUpdate
                    | IsdCommand::ExternalAuthenticate
                    | IsdCommand::SetStatus(_)
            ),
            LifeCycle::Terminated => matches!(self, IsdCommand::GetData(_)),
        }
    }
}

/// BER-TLV with a one- or two-byte tag and a definite length (`L`, `81 L` or `82 LL`).
fn tlv(tag: u16, value: &[u8], out: &mut Vec<u8>) {
    if tag > 0xFF {
        out.extend_from_slice(&tag.to_be_bytes());
    } else {
        out.push(tag as u8);
    }
    let n = value.len();
    if n < 0x80 {
        out.push(n as u8);
    } else if n <= 0xFF {
        out.extend_from_slice(&[0x81, n as u8]);
    } else {
        // Card data is far below 64 KiB (certificates are a few hundred bytes).
        out.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]);
    }
    out.extend_from_slice(value);
}

/// GET STATUS (GP 2.3 11.4), tag-coded response (P2 `02`): one `E3` template per entry with
/// `4F` AID, `9F70` life cycle and `C5` privileges. The ISD reports the card life cycle and the
/// privileges security domain, card lock, card terminate and CVM management (`9A 00 00`);
/// applications report SELECTABLE (`07`) and no privileges. `6A88` when nothing matches.
fn get_status(ctx: &Context<'_>, isd: bool, prefix: &[u8]) -> Result<Vec<u8>, StatusWord> {
    let mut out = Vec::new();
    let mut entry = |aid: &[u8], lc: u8, privileges: &[u8]| {
        let mut inner = Vec::new();
        tlv(0x4F, aid, &mut inner);
        tlv(0x9F70, &[lc], &mut inner);
        tlv(0xC5, privileges, &mut inner);
        tlv(0xE3, &inner, &mut out);
    };
    if isd {
        if AID.starts_with(prefix) {
            // Privileges byte 1: security domain 80, card lock 10, card terminate 08, CVM 02.
            entry(AID, ctx.card().life_cycle.gp_code(), &[0x9A, 0x00, 0x00]);
        }
    } else {
        for aid in ctx.peer_aids().filter(|aid| aid.starts_with(prefix)) {
            entry(aid, 0x07, &[0x00, 0x00, 0x00]);
        }
    }
    if out.is_empty() {
        return Err(StatusWord::REFERENCED_DATA_NOT_FOUND);
    }
    Ok(out)
}

impl Isd {
    /// A fresh ISD holding the provisioned initial key set.
    pub fn new(provisioning: &Provisioning) -> Isd {
        let keys = &provisioning.isd_keys;
        Isd {
            state: Persistent::new(IsdState {
                kvn: keys.kvn,
                enc: keys.enc.expose_secret().to_vec(),
                mac: keys.mac.expose_secret().to_vec(),
                dek: keys.dek.expose_secret().to_vec(),
                initial_keys: true,
                auth_failures: 0,
                pin: None,
                puk: None,
            }),
            volatile: IsdVolatile::default(),
        }
    }

    fn get_data(&self, ctx: &Context<'_>, tag: u16) -> Result<Vec<u8>, StatusWord> {
        let mut out = Vec::new();
        match tag {
            tags::CARD_ID => {
                if ctx.card().card_id.is_empty() {
                    return Err(StatusWord::REFERENCED_DATA_NOT_FOUND);
                }
                tlv(0x45, &ctx.card().card_id, &mut out);
            }
            tags::LIFE_CYCLE => tlv(0x9F70, &[ctx.card().life_cycle.gp_code()], &mut out),
            tags::CARD_DATA => {
                // Card recognition data (GP 2.3 H.2): GP RID OID, SCP03 with i = 70.
                let mut inner = Vec::new();
                tlv(0x06, &[0x2A, 0x86, 0x48, 0x86, 0xFC, 0x6B, 0x01], &mut inner);
                let mut scp = Vec::new();
                tlv(0x06, &[0x2A, 0x86, 0x48, 0x86, 0xFC, 0x6B, 0x04, 0x03, 0x70], &mut scp);
                tlv(0x64, &scp, &mut inner);
                let mut rec = Vec::new();
                tlv(0x73, &inner, &mut rec);
                tlv(0x66, &rec, &mut out);
            }
            tags::KEY_INFO => {
                let len = self.state.enc.len() as u8;
                let mut inner = Vec::new();
                for id in 1..=3u8 {
                    tlv(0xC0, &[id, self.state.kvn, KEY_TYPE_AES, len], &mut inner);
                }
                tlv(0xE0, &inner, &mut out);
            }
            tags::AUTH_FAILURES => tlv(0xC1, &self.state.auth_failures.to_be_bytes(), &mut out),
            tags::DEVICE_CERT => {
                let cert = ctx.card().device.certificate();
                tlv(
                    tags::DEVICE_CERT,
                    cert.ok_or(StatusWord::REFERENCED_DATA_NOT_FOUND)?,
                    &mut out,
                );
            }
            tags::DEVICE_KEY => {
                let key = ctx.card().device.public_key();
                let key = key.ok_or(StatusWord::REFERENCED_DATA_NOT_FOUND)?;
                let mut inner = Vec::new();
                tlv(0x86, &key.to_sec1_bytes(), &mut inner);
                tlv(tags::DEVICE_KEY, &inner, &mut out);
            }
            _ => return Err(StatusWord::REFERENCED_DATA_NOT_FOUND),
        }
        Ok(out)
    }

    fn initialize_update(
        &mut self,
        ctx: &mut Context<'_>,
        cmd: &Command,
    ) -> Result<Response, StatusWord> {
        self.volatile.scp.close();
        self.volatile.next_block = 0;
        self.volatile.perso_target = None;
        self.volatile.carry.clear();
        if self.state.auth_failures >= AUTH_FAILURE_LIMIT {
            return Err(StatusWord::AUTH_METHOD_BLOCKED);
        }
        let keys = self.state.static_keys()?;
        let mut diversification_data = [0u8; 10];
        let id = &ctx.card().card_id;
        let n = id.len().min(10);
        diversification_data[..n].copy_from_slice(&id[..n]);
        let config = CardConfig {
            keys: &keys,
            diversification_data,
            r_mac: true,
            r_enc: true,
            challenge: CardChallengeSource::Random,
        };
        let outcome = self
            .volatile
            .scp
            .initialize_update(cmd, &config, ctx.rng())
            .map_err(|e| e.status_word())?;
        Ok(outcome.response)
    }

    fn external_authenticate(
        &mut self,
        ctx: &mut Context<'_>,
        cmd: &Command,
    ) -> Result<Response, StatusWord> {
        if !self.volatile.scp.awaiting_external_authenticate() {
            return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
        }
        if self.state.auth_failures >= AUTH_FAILURE_LIMIT {
            self.volatile.scp.close();
            return Err(StatusWord::AUTH_METHOD_BLOCKED);
        }
        // Shape checks first: a malformed command ends the handshake without counting.
        let shape_ok = has_secure_messaging(cmd)
            && cmd.p2 == 0
            && cmd.data.len() == 16
            && SecurityLevel::from_byte(cmd.p1).is_ok();
        if !shape_ok {
            self.volatile.scp.close();
            return Err(if cmd.data.len() != 16 {
                StatusWord::WRONG_LENGTH
            } else {
                StatusWord::INCORRECT_P1P2
            });
        }
        // Count the attempt durably before checking it: a power cut cannot save a try.
        let before = self.state.auth_failures;
        self.state.auth_failures = before + 1;
        ctx.commit(&self.save())?;
        let outcome = self
            .volatile
            .scp
            .external_authenticate(cmd, before, AUTH_FAILURE_LIMIT)
            .map_err(|e| e.status_word())?;
        if let ExternalAuthOutcome::Authenticated(_) = outcome {
            self.state.auth_failures = 0;
        }
        Ok(outcome.response())
    }

    fn put_key(
        &mut self,
        replace_kvn: u8,
        new_kvn: u8,
        blocks: &[Vec<u8>],
        kcvs: &[[u8; 3]],
    ) -> Result<Vec<u8>, StatusWord> {
        if replace_kvn != 0 && replace_kvn != self.state.kvn {
            return Err(StatusWord::REFERENCED_DATA_NOT_FOUND);
        }
        if replace_kvn == 0 && new_kvn == self.state.kvn {
            return Err(StatusWord::INCORRECT_DATA);
        }
        let dek = AesKey::from_slice(&self.state.dek).map_err(|_| StatusWord::UNKNOWN)?;
        let mut keys = Vec::with_capacity(3);
        for (block, kcv) in blocks.iter().zip(kcvs) {
            let plain =
                decrypt_key_component(&dek, block).map_err(|_| StatusWord::INCORRECT_DATA)?;
            let key = AesKey::from_slice(&plain).map_err(|_| StatusWord::INCORRECT_DATA)?;
            if key_check_value(&key) != *kcv {
                return Err(StatusWord::INCORRECT_DATA);
            }
            keys.push(key);
        }
        if keys.iter().any(|k| k.len() != keys[0].len()) {
            return Err(StatusWord::INCORRECT_DATA);
        }
        self.state.kvn = new_kvn;
        self.state.enc = keys[0].expose_secret().to_vec();
        self.state.mac = keys[1].expose_secret().to_vec();
        self.state.dek = keys[2].expose_secret().to_vec();
        self.state.initial_keys = false;
        let mut out = vec![new_kvn];
        for kcv in kcvs {
            out.extend_from_slice(kcv);
        }
        Ok(out)
    }

    fn store_own(
        &mut self,
        ctx: &mut Context<'_>,
        dgi: u16,
        value: &[u8],
    ) -> Result<(), StatusWord> {
        if ctx.card().life_cycle != LifeCycle::OpReady {
            return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
        }
        match dgi {
            DGI_CARD_ID => {
                if value.is_empty() || value.len() > MAX_CARD_ID {
                    return Err(StatusWord::INCORRECT_DATA);
                }
                ctx.card_mut().card_id = value.to_vec();
            }
            DGI_PIN | DGI_PUK => {
                let (&tries, block) = value.split_first().ok_or(StatusWord::INCORRECT_DATA)?;
                let tries = if tries == 0 { DEFAULT_PIN_TRIES } else { tries };
                let block = PinBlock::parse(block).map_err(|_| StatusWord::INCORRECT_DATA)?;
                let pin = Pin::new(block, tries)?;
                if dgi == DGI_PIN {
                    self.state.pin = Some(pin);
                } else {
                    self.state.puk = Some(pin);
                }
            }
            DGI_ISSUER_CA => ctx.card_mut().device.set_issuer_ca(value)?,
            DGI_PACKAGE_SIGNING => ctx.card_mut().device.set_package_signing(value)?,
            DGI_DEVICE_CERT => {
                let card = ctx.card_mut();
                card.device.set_certificate(value, &card.card_id)?;
            }
            _ => return Err(StatusWord::REFERENCED_DATA_NOT_FOUND),
        }
        Ok(())
    }

    /// GENERATE KEY PAIR: the device key, and the proof of possession over `nonce`.
    fn generate_key_pair(
        &mut self,
        ctx: &mut Context<'_>,
        nonce: &[u8],
    ) -> Result<Vec<u8>, StatusWord> {
        if ctx.card().card_id.is_empty() {
            return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
        }
        let mut device = ctx.card().device.clone();
        let public = device.generate(ctx.rng());
        let body = tessera_crypto::device::possession_body(nonce, &public);
        let proof = device.sign(
            tessera_crypto::device::Purpose::PossessionProof,
            &ctx.card().card_id,
            &body,
        )?;
        ctx.card_mut().device = device;
        let mut inner = Vec::new();
        tlv(0x86, &public.to_sec1_bytes(), &mut inner);
        let mut out = Vec::new();
        tlv(tags::DEVICE_KEY, &inner, &mut out);
        tlv(0x9E, &proof.to_bytes(), &mut out);
        Ok(out)
    }

    fn store_data(
        &mut self,
        ctx: &mut Context<'_>,
        block: u8,
        last: bool,
        data: &[u8],
    ) -> Result<(), StatusWord> {
        if block != self.volatile.next_block {
            return Err(StatusWord::INCORRECT_P1P2);
        }
        let mut joined = self.volatile.carry.clone();
        joined.extend_from_slice(data);
        let (groups, rest) = parse_dgis(&joined);
        if !rest.is_empty() && (last || rest.len() > MAX_CARRY) {
            return Err(StatusWord::INCORRECT_DATA);
        }
        let rest = rest.to_vec();
        for (dgi, value) in &groups {
            match &self.volatile.perso_target {
                Some(aid) => {
                    let aid = aid.clone();
                    ctx.personalize_peer(&aid, *dgi, value)?;
                }
                None => self.store_own(ctx, *dgi, value)?,
            }
        }
        // Volatile bookkeeping moves on only when the block was accepted (the runtime restores
        // persistent state on failure; this is set after every group succeeded).
        self.volatile.carry = rest;
        if last {
            self.volatile.next_block = 0;
            self.volatile.perso_target = None;
        } else {
            self.volatile.next_block = block.wrapping_add(1);
        }
        Ok(())
    }

    fn set_status(&mut self, ctx: &mut Context<'_>, target: LifeCycle) -> Result<(), StatusWord> {
        let current = ctx.card().life_cycle;
        if !current.may_become(target) {
            return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
        }
        if current == LifeCycle::OpReady && target == LifeCycle::Personalized {
            let ready = !ctx.card().card_id.is_empty()
                && self.state.pin.is_some()
                && self.state.puk.is_some()
                && !self.state.initial_keys;
            if !ready {
                return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
            }
        }
        ctx.card_mut().life_cycle = target;
        if target != LifeCycle::Personalized {
            ctx.security_mut().global_pin_verified = false;
        }
        Ok(())
    }

    fn pin_command(
        &mut self,
        ctx: &mut Context<'_>,
        command: PinCommand,
    ) -> Result<(), StatusWord> {
        match command {
            PinCommand::Status(r) => {
                let pin = self.pin_ref(r)?;
                if r == PinRef::Pin && ctx.security().global_pin_verified {
                    return Ok(());
                }
                Err(pin.status())
            }
            PinCommand::Reset(r) => {
                self.pin_ref(r)?;
                if r == PinRef::Pin {
                    ctx.security_mut().global_pin_verified = false;
                }
                Ok(())
            }
            PinCommand::Verify(r, candidate) => {
                if r == PinRef::Pin {
                    ctx.security_mut().global_pin_verified = false;
                }
                self.check(ctx, r, &candidate)?;
                if r == PinRef::Pin {
                    ctx.security_mut().global_pin_verified = true;
                }
                Ok(())
            }
            PinCommand::Change(r, old, new) => {
                self.check(ctx, r, &old)?;
                self.pin_mut(r)?.set(new);
                Ok(())
            }
            PinCommand::Unblock(puk, new) => {
                self.pin_ref(PinRef::Pin)?;
                self.check(ctx, PinRef::Puk, &puk)?;
                self.pin_mut(PinRef::Pin)?.set(new);
                ctx.security_mut().global_pin_verified = false;
                Ok(())
            }
        }
    }

    fn pin_ref(&self, r: PinRef) -> Result<&Pin, StatusWord> {
        match r {
            PinRef::Pin => self.state.pin.as_ref(),
            PinRef::Puk => self.state.puk.as_ref(),
        }
        .ok_or(StatusWord::REFERENCED_DATA_NOT_FOUND)
    }

    fn pin_mut(&mut self, r: PinRef) -> Result<&mut Pin, StatusWord> {
        match r {
            PinRef::Pin => self.state.pin.as_mut(),
            PinRef::Puk => self.state.puk.as_mut(),
        }
        .ok_or(StatusWord::REFERENCED_DATA_NOT_FOUND)
    }

    /// Checks a PIN or PUK: counter decremented and committed, then compared.
    fn check(
        &mut self,
        ctx: &mut Context<'_>,
        r: PinRef,
        candidate: &PinBlock,
    ) -> Result<(), StatusWord> {
        let attempt = self.pin_mut(r)?.begin()?;
        ctx.commit(&self.save())?;
        self.pin_mut(r)?.finish(attempt, candidate)
    }

    fn dispatch(
        &mut self,
        ctx: &mut Context<'_>,
        raw: &Command,
        cmd: &Command,
    ) -> Result<Response, StatusWord> {
        let parsed = IsdCommand::parse(cmd)?;
        let lc = ctx.card().life_cycle;
        if !parsed.allowed_in(lc) {
            return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
        }
        if parsed.needs_session() {
            let level = self.volatile.scp.security_level();
            if !level.is_some_and(|l| l.satisfies(PERSO_LEVEL)) || !has_secure_messaging(raw) {
                return Err(StatusWord::SECURITY_STATUS_NOT_SATISFIED);
            }
        }
        match parsed {
            IsdCommand::GetData(tag) => self.get_data(ctx, tag).map(Response::ok),
            IsdCommand::GetStatus { isd, prefix } => {
                get_status(ctx, isd, &prefix).map(Response::ok)
            }
            IsdCommand::InitializeUpdate => self.initialize_update(ctx, raw),
            IsdCommand::ExternalAuthenticate => self.external_authenticate(ctx, raw),
            IsdCommand::PutKey { replace_kvn, new_kvn, keys, kcvs } => {
                self.put_key(replace_kvn, new_kvn, &keys, &kcvs).map(Response::ok)
            }
            IsdCommand::StoreData { block, last, data } => {
                self.store_data(ctx, block, last, &data).map(|()| Response::ok(Vec::new()))
            }
            IsdCommand::GenerateKeyPair { nonce } => {
                self.generate_key_pair(ctx, &nonce).map(Response::ok)
            }
            IsdCommand::InstallForPersonalization { aid } => {
                if !ctx.has_peer(&aid) {
                    return Err(StatusWord::REFERENCED_DATA_NOT_FOUND);
                }
                self.volatile.perso_target = Some(aid);
                self.volatile.next_block = 0;
                self.volatile.carry.clear();
                Ok(Response::ok(vec![0x00]))
            }
            IsdCommand::SetStatus(target) => {
                self.set_status(ctx, target).map(|()| Response::ok(Vec::new()))
            }
            IsdCommand::Pin(command) => {
                self.pin_command(ctx, command).map(|()| Response::ok(Vec::new()))
            }
        }
    }
}

impl Applet for Isd {
    fn aid(&self) -> &'static [u8] {
        AID
    }

    fn name(&self) -> &'static str {
        "isd"
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
        self.volatile = IsdVolatile::default();
    }

    fn select(&mut self, _ctx: &mut Context<'_>) -> Result<Vec<u8>, StatusWord> {
        // FCI: 6F { 84 AID, A5 { 9F6E?, 9F65 max command data } } (GP 2.3 11.9.3.1).
        let mut prop = Vec::new();
        tlv(0x9F65, &[0xFF], &mut prop);
        let mut inner = Vec::new();
        tlv(0x84, AID, &mut inner);
        tlv(0xA5, &prop, &mut inner);
        let mut fci = Vec::new();
        tlv(0x6F, &inner, &mut fci);
        Ok(fci)
    }

    fn call(&mut self, ctx: &mut Context<'_>, cmd: &Command) -> Result<Response, StatusWord> {
        let ext_auth = cmd.ins == INS_EXTERNAL_AUTHENTICATE && cmd.cla & 0x80 != 0;
        if has_secure_messaging(cmd) && !ext_auth {
            // A secured command: unwrap (a MAC failure ends the session), run, wrap.
            let plain = self.volatile.scp.unwrap_command(cmd).map_err(|e| e.status_word())?;
            let response = match self.dispatch(ctx, cmd, &plain) {
                Ok(r) => r,
                Err(sw) => Response::status(sw),
            };
            return self.volatile.scp.wrap_response(&response).map_err(|e| e.status_word());
        }
        self.dispatch(ctx, cmd, cmd)
    }

    fn tear_scenarios(&self) -> Vec<TearScenario> {
        scenarios::all()
    }
}
