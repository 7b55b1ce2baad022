//! Chapter 1, the card platform: a blank card, its card-management applet, and a
//! GlobalPlatform SCP03 session that personalises it.

use tessera_apdu::{Command, StatusWord};
use tessera_card::{Card, CardOptions};
use tessera_crypto::scp03::{SecurityLevel, StaticKeys};
use tessera_host::{CardChannel, InProcessChannel, SecureChannel};

use super::{Chapter, Narrator};
use crate::card::info::ISD_AID;
use crate::error::{CliError, Exit};

/// The chapter.
pub const CHAPTER: Chapter = Chapter { name: "platform", title: "the card platform", run };

/// Key version of a blank card's initial SCP03 key set.
const INITIAL_KVN: u8 = 0x30;

fn run(n: &mut Narrator) -> Result<(), CliError> {
    n.say(
        "A tessera card is software: the card runtime answers ISO/IEC 7816-4 APDUs and keeps its \
         state in a card image. Here the image lives in memory; `tessera card new` makes one on \
         disk and `tessera card serve` puts it into a PC/SC reader.",
    );
    let mut card = InProcessChannel::new(Card::in_memory(CardOptions::default()));
    let atr = card.atr()?;
    n.say(&format!("Power on. The card answers to reset with its ATR: {}", hex::encode_upper(atr)));

    let select = Command::new(0x00, 0xA4, 0x04, 0x00).with_data(ISD_AID).with_le(256);
    let rsp = card.transmit(&select)?;
    n.exchange(
        "SELECT the card-management applet (GlobalPlatform issuer security domain)",
        &select,
        &rsp,
    );
    expect_ok("SELECT", rsp.sw)?;

    let get_lc = Command::new(0x80, 0xCA, 0x9F, 0x70).with_le(256);
    let rsp = card.transmit(&get_lc)?;
    n.exchange("GET DATA life cycle (tag 9F70): 01 = OP_READY, a blank card", &get_lc, &rsp);

    let challenge = Command::new(0x00, 0x84, 0x00, 0x00).with_le(8);
    let rsp = card.transmit(&challenge)?;
    n.exchange("GET CHALLENGE: eight random bytes from the card", &challenge, &rsp);

    let store_id = store_card_id(b"DEMO0001");
    let rsp = card.transmit(&store_id)?;
    n.exchange(
        "STORE DATA (card id) in the clear: refused, personalisation needs a secure channel",
        &store_id,
        &rsp,
    );

    n.say(
        "Open a GlobalPlatform SCP03 session with the blank card's initial key set (the \
         GlobalPlatform test keys 40..4F, key version 30) at security level 03: every command \
         carries a C-MAC and its data is encrypted. INITIALIZE UPDATE sends a host challenge; the \
         card answers with its challenge and a cryptogram proving it holds the keys; EXTERNAL \
         AUTHENTICATE proves the host does.",
    );
    let keys = StaticKeys::gp_test_keys(INITIAL_KVN);
    let (mut session, handshake) =
        SecureChannel::open(card, &keys, SecurityLevel::CMacCDec, &ISD_AID)
            .map_err(|e| CliError::new(Exit::Other, format!("demo: {e}")))?;
    n.exchange(
        "INITIALIZE UPDATE (key version 30, host challenge)",
        &handshake.initialize_update,
        &handshake.initialize_update_response,
    );
    n.exchange(
        "EXTERNAL AUTHENTICATE (host cryptogram + C-MAC, level 03)",
        &handshake.external_authenticate,
        &handshake.external_authenticate_response,
    );

    let (wire, _, plain) = session
        .transmit_shown(&store_id)
        .map_err(|e| CliError::new(Exit::Other, format!("demo: {e}")))?;
    n.exchange(
        "STORE DATA (card id) inside the session: CLA 84 marks secure messaging; the data is \
         encrypted and MACed, so the trace shows it only as its length",
        &wire,
        &plain,
    );
    expect_ok("STORE DATA", plain.sw)?;

    let card = session.inner_mut();
    let get_id = Command::new(0x80, 0xCA, 0x00, 0x45).with_le(256);
    let rsp = card.transmit(&get_id)?;
    n.exchange("GET DATA card id (tag 45): now set, \"DEMO0001\"", &get_id, &rsp);
    expect_ok("GET DATA card id", rsp.sw)?;

    let atr = card.reset()?;
    n.say(&format!(
        "Reset (ATR {}). The session keys were volatile state: they are gone, while the card id \
         written inside the session is persistent.",
        hex::encode_upper(atr)
    ));
    let rsp = card.transmit(&select)?;
    n.exchange("SELECT card management again", &select, &rsp);
    let (wire, rsp, _) = session
        .transmit_shown(&store_card_id(b"DEMO0002"))
        .map_err(|e| CliError::new(Exit::Other, format!("demo: {e}")))?;
    n.exchange("STORE DATA with the old session's MAC: refused, no session any more", &wire, &rsp);
    let rsp = session.inner_mut().transmit(&get_id)?;
    n.exchange("GET DATA card id: still \"DEMO0001\"", &get_id, &rsp);

    n.say(
        "Issuance goes on the same way: PUT KEY replaces the test keys (key data encrypted under \
         the DEK), STORE DATA sets PIN and PUK, SET STATUS moves the card to PERSONALIZED.",
    );
    Ok(())
}

/// STORE DATA, last block 0, DGI format: DGI 0101 (card id).
fn store_card_id(id: &[u8]) -> Command {
    let mut data = vec![0x01, 0x01, id.len() as u8];
    data.extend_from_slice(id);
    Command::new(0x80, 0xE2, 0x88, 0x00).with_data(data)
}

fn expect_ok(what: &str, sw: StatusWord) -> Result<(), CliError> {
    if sw == StatusWord::SUCCESS {
        Ok(())
    } else {
        Err(CliError::card_said_no(&format!("demo: {what}"), sw))
    }
}
