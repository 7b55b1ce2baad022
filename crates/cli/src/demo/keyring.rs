//! Chapter: hierarchical authentication-key renewal (issue 4). The server's keyring logic
//! (`tessera_server::keyring`, in this process, no database or service needed) issues a card
//! with three internal and three external key slots, authenticates it with the bottom pair and
//! opens an SCP03 session from it, renews the bottom pair from the pair above, runs a
//! scheduled sync a month later, and shows the versions on both sides.

use tessera_apdu::{Command, Response};
use tessera_card::applets::isd::scenarios as isd;
use tessera_card::applets::keyring::scenarios::personalize_keyring;
use tessera_card::script::Script;
use tessera_card::{Card, CardOptions, PowerCut, TearDriver};
use tessera_crypto::rng::OsRng;
use tessera_host::InProcessChannel;
use tessera_host::keyring::KeyringTerminal;
use tessera_proto::keyring::{KeyInfo, KeyKind, KeyringLink, Layout, LinkError, Mode, RenewForm};
use tessera_server::keyring::policy::MONTH;
use tessera_server::keyring::{
    KeyringService, MemoryStore, RenewalPolicy, SlotStatus, SyncOutcome,
};

use super::{Chapter, Narrator};
use crate::error::{CliError, Exit};

/// The chapter.
pub const CHAPTER: Chapter =
    Chapter { name: "keyring", title: "hierarchical authentication-key renewal", run };

/// The demo's clock: issuance at day 0.
const DAY0: u64 = 1_800_000_000;

fn fail(what: &str, e: impl std::fmt::Display) -> CliError {
    CliError::new(Exit::Other, format!("keyring demo: {what}: {e}"))
}

struct Direct<'a>(&'a mut Card);

impl TearDriver for Direct<'_> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, PowerCut> {
        Ok(self.0.transmit(apdu))
    }
    fn arm(&mut self) {}
}

/// The terminal's link, narrating every APDU the server sends through it.
struct Narrated<'a, 'n> {
    terminal: &'a mut KeyringTerminal<InProcessChannel<Card>>,
    n: &'n mut Narrator,
}

fn meaning(c: &Command) -> &'static str {
    match (c.cla, c.ins) {
        (_, 0x88) => {
            "INTERNAL AUTHENTICATE: the card proves an internal key (cryptogram over the server's challenge)"
        }
        (_, 0x84) => "GET CHALLENGE: the card's challenge for the server",
        (0x00, 0x82) => "EXTERNAL AUTHENTICATE: the server proves an external key",
        (_, 0x82) => "EXTERNAL AUTHENTICATE (SCP03): the session opens at level 33",
        (_, 0xC4) => {
            "RENEW: the card derives the new keys itself and answers key confirmations only"
        }
        (_, 0x50) => "INITIALIZE UPDATE with the session keys derived from the bottom pair",
        (0x00 | 0x80, 0xCA) => "GET DATA key information (public versions, read before a RENEW)",
        (_, 0xCA) => "GET DATA key information, inside the session (wrapped)",
        _ => "keyring command",
    }
}

impl KeyringLink for Narrated<'_, '_> {
    fn exchange(&mut self, command: &Command) -> Result<Response, LinkError> {
        let r = self.terminal.exchange(command)?;
        self.n.exchange(meaning(command), command, &r);
        Ok(r)
    }
}

fn versions_table(server: &[SlotStatus], card: Option<&KeyInfo>) -> String {
    let mut out = String::from("  kind      slot  server  card");
    for s in server {
        let kind = if s.kind == KeyKind::Internal { "internal" } else { "external" };
        let on_card = card
            .and_then(|c| c.version(s.kind, s.slot))
            .map_or_else(|| "-".to_owned(), |v| v.to_string());
        out.push_str(&format!("\n  {kind:<9} {:<5} {:<7} {on_card}", s.slot, s.version));
    }
    out
}

fn run(n: &mut Narrator) -> Result<(), CliError> {
    n.say(
        "The keyring applet holds internal keys (the card proves itself with them) and external \
         keys (the server proves itself) in numbered slots: slot 1 is the root, the highest slot \
         is used for every session. A key is only ever renewed from a slot above it, inside the \
         card, and never leaves the card. Here: symmetric mode, M = N = 3.",
    );
    let layout = Layout::new(Mode::Symmetric, 3, 3).map_err(|e| fail("layout", e))?;
    let mut service =
        KeyringService::new(MemoryStore::new(), RenewalPolicy::default(), Box::new(OsRng));
    let groups = service.issue(isd::CARD_ID, layout, DAY0).map_err(|e| fail("issue", e))?;
    n.say(&format!(
        "Issuance: the server generates six AES-128 keys at version 1, keeps them (sealed under \
         its master key when it runs with a database) and sends them to the card in {} data \
         groups through the card-management applet's SCP03 session (INSTALL [for \
         personalization], then STORE DATA).",
        groups.len()
    ));
    let mut card = Card::in_memory(CardOptions::default());
    card.power_on();
    {
        let mut d = Direct(&mut card);
        let mut s = Script::new(&mut d);
        isd::personalize(&mut s).map_err(|e| fail("personalise", format!("{e:?}")))?;
        personalize_keyring(&mut s, &groups)
            .map_err(|e| fail("personalise keyring", format!("{e:?}")))?;
    }
    card.reset();
    let mut terminal = KeyringTerminal::select(InProcessChannel::new(card))
        .map_err(|e| fail("select keyring", e))?;

    n.say(
        "Authenticate: mutual authentication with the bottom pair (internal 3, external 3); \
         both sides derive SCP03 session keys from it and both challenges, and the rest of the \
         session runs under secure messaging at level 33.",
    );
    let info = {
        let mut link = Narrated { terminal: &mut terminal, n };
        let mut session =
            service.open_session(isd::CARD_ID, &mut link).map_err(|e| fail("session", e))?;
        session.key_info().map_err(|e| fail("key info", e))?
    };
    let status = service.status(isd::CARD_ID).map_err(|e| fail("status", e))?;
    n.say(&format!("Versions after issuance:\n{}", versions_table(&status, Some(&info))));

    n.say(
        "Renew the bottom pair (internal 3 and external 3, one RENEW) after authenticating with \
         the pair above (2, 2). The server keeps the old and the pending keys and commits only \
         when the card's key confirmations verify (two-phase commit).",
    );
    {
        let mut link = Narrated { terminal: &mut terminal, n };
        service
            .renew(
                isd::CARD_ID,
                &mut link,
                RenewForm::Pair { internal: 3, external: 3 },
                (2, 2),
                DAY0 + 60,
            )
            .map_err(|e| fail("renew", e))?;
    }

    n.say(
        "A month later the card syncs: the policy (bottom level monthly, next level yearly) \
         renews the bottom pair again, then the sync opens a session and compares every slot's \
         version and check value with the server's records.",
    );
    let report = {
        let mut link = Narrated { terminal: &mut terminal, n };
        service.sync(isd::CARD_ID, &mut link, DAY0 + MONTH + 60).map_err(|e| fail("sync", e))?
    };
    if report.outcome != SyncOutcome::InAgreement {
        return Err(fail("sync", format!("{:?}", report.outcome)));
    }
    let status = service.status(isd::CARD_ID).map_err(|e| fail("status", e))?;
    n.say(&format!(
        "Card and server agree ({} renewal(s) in this sync). Versions on both sides \
         (`tessera admin keyring status` shows the same from the server's database):\n{}",
        report.renewals.len(),
        versions_table(&status, report.card_keys.as_ref())
    ));
    Ok(())
}
