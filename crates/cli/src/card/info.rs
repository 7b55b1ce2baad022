//! `tessera card info`: what the card says about itself.
//!
//! Selects the card-management applet and reads, with GET DATA (`80 CA P1 P2`): the card id
//! (tag `0045`), the life cycle (`9F70`), and the key information template (`00E0`). Each item
//! the card does not answer is reported as absent, with its status word, instead of failing
//! the command: a blank card has no id yet, another vendor's card may refuse some tags.

use serde_json::{Value, json};
use tessera_apdu::{Command, Response, StatusWord};
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
}

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
    Ok(Info { atr, card_id, life_cycle, key_version })
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
    format!(
        "ATR:             {}\ncard id:         {card_id}\nlife cycle:      {life_cycle}\n\
         SCP03 key set:   version {kvn}\napplets:         card management (A000000151000000)",
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
        "applets": [{ "name": "card management", "aid": hex::encode_upper(ISD_AID) }],
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
    }

    #[test]
    fn tlv_value_reads_one_short_object() {
        assert_eq!(tlv_value(&[0x45, 0x02, 1, 2, 9], &[0x45]), Some(vec![1, 2]));
        assert_eq!(tlv_value(&[0x45, 0x05, 1], &[0x45]), None);
        assert_eq!(tlv_value(&[0x46, 0x01, 1], &[0x45]), None);
    }
}
