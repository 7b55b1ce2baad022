//! `tessera card info`: what the card says about itself.
//!
//! Selects the card-management applet and reads, with GET DATA (`80 CA P1 P2`): the card id
//! (tag `0045`), the life cycle (`9F70`), and the key information template (`00E0`); then lists
//! the applets with GET STATUS (`80 F2 40 02 4F00`, `E3` templates of AID `4F`, life cycle
//! `9F70`, following `6310` with "next occurrence"). Each item the card does not answer is
//! reported as absent, with its status word, instead of failing the command: a blank card has
//! no id yet, another vendor's card may refuse some tags.

use serde_json::{Value, json};
use tessera_apdu::{Command, Response, StatusWord, Tag, Tlv};
use tessera_card::LifeCycle;
use tessera_host::CardChannel;

use crate::Output;
use crate::error::CliError;
use crate::source::{CardSource, PassphraseArg};

/// AID of the card-management applet (GlobalPlatform issuer security domain).
pub const ISD_AID: [u8; 8] = [0xA0, 0x00, 0x00, 0x01, 0x51, 0x00, 0x00, 0x00];

/// What `card info` found.
struct Info {
    atr: Vec<u8>,
    card_id: Result<Vec<u8>, StatusWord>,
    life_cycle: Result<u8, StatusWord>,
    key_version: Result<u8, StatusWord>,
    applets: Result<Vec<AppletInfo>, StatusWord>,
}

/// One application as GET STATUS lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AppletInfo {
    aid: Vec<u8>,
    life_cycle: u8,
}

/// GET STATUS answers this while more entries remain.
const MORE_DATA: StatusWord = StatusWord(0x6310);

/// Runs `tessera card info`.
pub fn run(source: &CardSource, passphrase: &PassphraseArg, out: Output) -> Result<(), CliError> {
    let mut channel = source.open(passphrase)?;
    let info = read(&mut *channel)?;
    out.emit(|| human(&info), || machine(&info));
    Ok(())
}

fn read(channel: &mut dyn CardChannel) -> Result<Info, CliError> {
    let atr = channel.atr()?;
    let select =
        channel.transmit(&Command::new(0x00, 0xA4, 0x04, 0x00).with_data(ISD_AID).with_le(256))?;
    if select.sw != StatusWord::SUCCESS {
        return Err(CliError::card_said_no("SELECT card management (A000000151000000)", select.sw));
    }
    let mut get = |tag: u16| -> Result<Result<Vec<u8>, StatusWord>, CliError> {
        let [p1, p2] = tag.to_be_bytes();
        let Response { data, sw } =
            channel.transmit(&Command::new(0x80, 0xCA, p1, p2).with_le(256))?;
        if sw != StatusWord::SUCCESS {
            return Ok(Err(sw));
        }
        Ok(Ok(data))
    };
    let card_id = get(0x0045)?.map(|d| tlv_value(&d, &[0x45]).unwrap_or(d));
    let life_cycle = get(0x9F70)?.and_then(|d| {
        tlv_value(&d, &[0x9F, 0x70])
            .and_then(|v| v.first().copied())
            .ok_or(StatusWord::DATA_CORRUPTED)
    });
    // Key information template E0 { C0 04 id kvn type len ... }: the version of the first key.
    let key_version = get(0x00E0)?.and_then(|d| {
        tlv_value(&d, &[0xE0])
            .and_then(|inner| tlv_value(&inner, &[0xC0]))
            .and_then(|c0| c0.get(1).copied())
            .ok_or(StatusWord::DATA_CORRUPTED)
    });
    let applets = get_status(channel)?;
    Ok(Info { atr, card_id, life_cycle, key_version, applets })
}

/// GET STATUS of the applications, all occurrences.
fn get_status(
    channel: &mut dyn CardChannel,
) -> Result<Result<Vec<AppletInfo>, StatusWord>, CliError> {
    let mut applets = Vec::new();
    let mut p2 = 0x02; // tag-coded, first occurrence
    for _ in 0..64 {
        let cmd = Command::new(0x80, 0xF2, 0x40, p2).with_data([0x4F, 0x00]).with_le(256);
        let Response { data, sw } = channel.transmit(&cmd)?;
        if sw != StatusWord::SUCCESS && sw != MORE_DATA {
            return Ok(Err(sw));
        }
        // A malformed answer is reported as such (6281: data may be corrupted).
        let Ok(templates) = Tlv::parse_all(&data) else {
            return Ok(Err(StatusWord::DATA_CORRUPTED));
        };
        for template in templates {
            if template.tag != Tag::new(0xE3) {
                continue;
            }
            let aid = template.find(Tag::new(0x4F)).ok().flatten();
            let lcs = template.find(Tag::new(0x9F70)).ok().flatten();
            if let (Some(aid), Some(lcs)) = (aid, lcs) {
                applets.push(AppletInfo {
                    aid: aid.value.to_vec(),
                    life_cycle: lcs.value.first().copied().unwrap_or(0),
                });
            }
        }
        if sw == StatusWord::SUCCESS {
            return Ok(Ok(applets));
        }
        p2 = 0x03; // next occurrence
    }
    Ok(Err(MORE_DATA))
}

/// This build's name for an applet AID.
fn applet_name(aid: &[u8]) -> &'static str {
    if aid == ISD_AID {
        return "card management";
    }
    tessera_card::applets::registry(&Default::default())
        .iter()
        .find(|a| a.aid() == aid)
        .map_or("unknown", |a| a.name())
}

/// GlobalPlatform application life cycle (GP 2.3 table 11-5).
fn applet_state_name(code: u8) -> &'static str {
    match code {
        _ if code & 0x80 != 0 => "LOCKED",
        0x03 => "INSTALLED",
        0x07 => "SELECTABLE",
        _ if code & 0x07 == 0x07 => "SELECTABLE (application-specific state)",
        _ => "unknown",
    }
}

/// The value of the first data object when `data` starts with `tag` and a one-byte length.
fn tlv_value(data: &[u8], tag: &[u8]) -> Option<Vec<u8>> {
    let rest = data.strip_prefix(tag)?;
    let (&len, rest) = rest.split_first()?;
    rest.get(..usize::from(len)).map(<[u8]>::to_vec)
}

fn life_cycle_name(code: u8) -> &'static str {
    match LifeCycle::from_gp_code(code) {
        Some(LifeCycle::OpReady) => "OP_READY",
        Some(LifeCycle::Personalized) => "PERSONALIZED",
        Some(LifeCycle::Locked) => "LOCKED",
        Some(LifeCycle::Terminated) => "TERMINATED",
        None => "unknown",
    }
}

fn human(info: &Info) -> String {
    let absent = |sw: &StatusWord| format!("(not available: card answered {sw})");
    let card_id = match &info.card_id {
        // Issuers' ids are printable ASCII ("ACME-0001"): show them as text beside the hex.
        Ok(id) if !id.is_empty() && id.iter().all(|b| b.is_ascii_graphic()) => {
            format!("{} ({})", String::from_utf8_lossy(id), hex::encode_upper(id))
        }
        Ok(id) => hex::encode_upper(id),
        Err(StatusWord::REFERENCED_DATA_NOT_FOUND) => "(none yet: blank card)".to_owned(),
        Err(sw) => absent(sw),
    };
    let life_cycle = match info.life_cycle {
        Ok(code) => format!("{} ({code:02X})", life_cycle_name(code)),
        Err(sw) => absent(&sw),
    };
    let kvn = match info.key_version {
        Ok(kvn) => format!("{kvn:02X}"),
        Err(sw) => absent(&sw),
    };
    let applets = match &info.applets {
        Ok(list) if list.is_empty() => "(none listed)".to_owned(),
        Ok(list) => list
            .iter()
            .map(|a| {
                format!(
                    "\n  {} {} ({}, {:02X})",
                    hex::encode_upper(&a.aid),
                    applet_name(&a.aid),
                    applet_state_name(a.life_cycle),
                    a.life_cycle
                )
            })
            .collect(),
        Err(sw) => absent(sw),
    };
    format!(
        "ATR:             {}\ncard id:         {card_id}\nlife cycle:      {life_cycle}\n\
         SCP03 key set:   version {kvn}\napplets:         {applets}",
        hex::encode_upper(&info.atr)
    )
}

fn machine(info: &Info) -> Value {
    let or_sw = |r: Result<Value, &StatusWord>| match r {
        Ok(v) => v,
        Err(sw) => json!({ "unavailable": sw.to_string() }),
    };
    json!({
        "atr": hex::encode_upper(&info.atr),
        "card_id": or_sw(info.card_id.as_ref().map(|id| json!(hex::encode_upper(id)))),
        "life_cycle": or_sw(info.life_cycle.as_ref().map(|c| json!({
            "name": life_cycle_name(*c), "code": format!("{c:02X}"),
        }))),
        "key_version": or_sw(info.key_version.as_ref().map(|k| json!(format!("{k:02X}")))),
        "applets": or_sw(info.applets.as_ref().map(|list| json!(list.iter().map(|a| json!({
            "aid": hex::encode_upper(&a.aid),
            "name": applet_name(&a.aid),
            "life_cycle": { "name": applet_state_name(a.life_cycle), "code": format!("{:02X}", a.life_cycle) },
        })).collect::<Vec<_>>()))),
    })
}

#[cfg(test)]
mod tests {
    use tessera_card::{Card, CardOptions};
    use tessera_host::InProcessChannel;

    use super::*;

    #[test]
    fn blank_card_reports_op_ready_and_no_id() {
        let mut channel = InProcessChannel::new(Card::in_memory(CardOptions::default()));
        let info = read(&mut channel).unwrap();
        assert_eq!(info.atr, tessera_card::ATR);
        assert_eq!(info.card_id, Err(StatusWord::REFERENCED_DATA_NOT_FOUND));
        assert_eq!(info.life_cycle, Ok(LifeCycle::OpReady.gp_code()));
        let text = human(&info);
        assert!(text.contains("OP_READY"), "{text}");
        assert!(text.contains("blank card"), "{text}");
        assert_eq!(machine(&info)["life_cycle"]["name"], "OP_READY");
        // Every applet this build registers is listed, by name, as selectable.
        let registered = tessera_card::applets::registry(&Default::default());
        let listed = info.applets.as_ref().unwrap();
        for applet in registered.iter().skip(1) {
            let entry = listed.iter().find(|a| a.aid == applet.aid()).expect("applet listed");
            assert_eq!(applet_name(&entry.aid), applet.name());
            assert_eq!(applet_state_name(entry.life_cycle), "SELECTABLE");
        }
    }

    #[test]
    fn tlv_value_reads_one_short_object() {
        assert_eq!(tlv_value(&[0x45, 0x02, 1, 2, 9], &[0x45]), Some(vec![1, 2]));
        assert_eq!(tlv_value(&[0x45, 0x05, 1], &[0x45]), None);
        assert_eq!(tlv_value(&[0x46, 0x01, 1], &[0x45]), None);
    }
}
