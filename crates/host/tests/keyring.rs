#![allow(clippy::unwrap_used)] // tests may unwrap

//! End to end: the server's keyring service drives an in-process card through the terminal
//! (`tessera_host::keyring`): issuance, every renewal form in both modes, the schedule, no key
//! on the wire, power cuts at every write of every renewal form followed by a resynchronising
//! sync, lost responses, a server crash, a rolled-back card image, root compromise.

use tessera_apdu::{Command, Response};
use tessera_card::applets::isd::scenarios as isd;
use tessera_card::applets::keyring::scenarios::personalize_keyring;
use tessera_card::script::Script;
use tessera_card::storage::{MemoryStorage, TearMode, TearingDisk};
use tessera_card::{Card, CardOptions, OpenOptions, PowerCut, TearDriver};
use tessera_crypto::ecdsa::SigningKey;
use tessera_crypto::rng::SeededRng;
use tessera_host::InProcessChannel;
use tessera_host::keyring::KeyringTerminal;
use tessera_proto::keyring::{
    self as proto, KeyKind, KeyringLink, Layout, LinkError, Mode, RenewForm,
};
use tessera_server::keyring::policy::{MONTH, YEAR};
use tessera_server::keyring::{
    KeyringError, KeyringService, KeyringStore, MemoryStore, RenewalPolicy, SyncOutcome,
};

struct Direct<'a>(&'a mut Card);

impl TearDriver for Direct<'_> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, PowerCut> {
        Ok(self.0.transmit(apdu))
    }
    fn arm(&mut self) {}
}

fn service(seed: u64) -> KeyringService<MemoryStore> {
    KeyringService::new(
        MemoryStore::new(),
        RenewalPolicy::default(),
        Box::new(SeededRng::from_u64(seed)),
    )
}

/// Issues `card` (ISD personalisation and the keyring's keys from the service).
fn issue(card: &mut Card, service: &mut KeyringService<MemoryStore>, layout: Layout) {
    card.power_on();
    let groups = service.issue(isd::CARD_ID, layout, 0).unwrap();
    let mut d = Direct(card);
    let mut s = Script::new(&mut d);
    isd::personalize(&mut s).unwrap();
    personalize_keyring(&mut s, &groups).unwrap();
}

fn issued(
    mode: Mode,
    m: u8,
    n: u8,
) -> (KeyringTerminal<InProcessChannel<Card>>, KeyringService<MemoryStore>) {
    let mut card = Card::in_memory(CardOptions::default().rng(Box::new(SeededRng::from_u64(9))));
    let mut svc = service(1);
    issue(&mut card, &mut svc, Layout::new(mode, m, n).unwrap());
    (KeyringTerminal::select(InProcessChannel::new(card)).unwrap(), svc)
}

/// Card and server agree on every slot's version (read from the card directly, and through
/// the server's status).
fn assert_agree(
    terminal: &mut KeyringTerminal<InProcessChannel<Card>>,
    svc: &KeyringService<MemoryStore>,
) {
    let info = terminal.key_info().unwrap();
    let status = svc.status(isd::CARD_ID).unwrap();
    assert_eq!(info.slots.len(), status.len());
    for s in status {
        assert_eq!(info.version(s.kind, s.slot), Some(s.version), "{s:?}");
        assert_eq!(s.pending_version, None);
    }
}

const FORMS: [(RenewForm, (u8, u8)); 7] = [
    (RenewForm::Internal { slot: 4 }, (3, 4)),
    (RenewForm::External { slot: 4 }, (4, 3)),
    (RenewForm::Pair { internal: 4, external: 4 }, (3, 3)),
    (RenewForm::PairSingleRandom { internal: 4, external: 4 }, (3, 3)),
    (RenewForm::InternalFrom { slot: 2 }, (1, 4)),
    (RenewForm::ExternalFrom { slot: 3 }, (4, 2)),
    (RenewForm::BothFrom { internal: 2, external: 2 }, (1, 1)),
];

fn every_form(mode: Mode) {
    let (mut terminal, mut svc) = issued(mode, 4, 4);
    let report = svc.sync(isd::CARD_ID, &mut terminal, 0).unwrap();
    assert_eq!(report.outcome, SyncOutcome::InAgreement);
    assert!(report.renewals.is_empty());
    for (form, auth) in FORMS {
        if mode == Mode::Asymmetric && form.single_random() {
            continue;
        }
        let before = svc.status(isd::CARD_ID).unwrap();
        let renewed = svc.renew(isd::CARD_ID, &mut terminal, form, auth, 10).unwrap();
        assert_eq!(renewed.len(), form.targets(&Layout::new(mode, 4, 4).unwrap()).unwrap().len());
        let after = svc.status(isd::CARD_ID).unwrap();
        for k in &renewed {
            let b = before.iter().find(|s| s.kind == k.kind && s.slot == k.slot).unwrap();
            let a = after.iter().find(|s| s.kind == k.kind && s.slot == k.slot).unwrap();
            assert_eq!(a.version, b.version + 1, "{form:?}");
        }
        assert_agree(&mut terminal, &svc);
        // The renewed keys work: a full sync (bottom pair, SCP03 session, secured GET DATA,
        // comparison of every version and KCV) succeeds without any repair.
        let report = svc.sync(isd::CARD_ID, &mut terminal, 10).unwrap();
        assert_eq!(report.outcome, SyncOutcome::InAgreement, "{form:?}");
        assert!(!report.resynchronised, "{form:?}");
    }
}

#[test]
fn every_renewal_form_end_to_end_symmetric() {
    every_form(Mode::Symmetric);
}

#[test]
fn every_renewal_form_end_to_end_asymmetric() {
    every_form(Mode::Asymmetric);
}

#[test]
fn the_schedule_renews_the_bottom_monthly_and_the_next_level_yearly() {
    for mode in [Mode::Symmetric, Mode::Asymmetric] {
        let (mut terminal, mut svc) = issued(mode, 3, 3);
        let r = svc.sync(isd::CARD_ID, &mut terminal, MONTH - 1).unwrap();
        assert!(r.renewals.is_empty());
        let r = svc.sync(isd::CARD_ID, &mut terminal, MONTH).unwrap();
        assert_eq!(r.renewals.len(), 1);
        assert_eq!(r.renewals[0].form, RenewForm::Pair { internal: 3, external: 3 });
        assert_eq!(r.renewals[0].auth, (2, 2));
        assert_eq!(r.card_keys.as_ref().unwrap().version(KeyKind::Internal, 3), Some(2));
        // Nothing more is due a day later.
        assert!(svc.sync(isd::CARD_ID, &mut terminal, MONTH + 86_400).unwrap().renewals.is_empty());
        let r = svc.sync(isd::CARD_ID, &mut terminal, YEAR).unwrap();
        assert_eq!(r.renewals[0].form, RenewForm::BothFrom { internal: 2, external: 2 });
        assert_eq!(r.renewals[0].auth, (1, 1));
        let info = r.card_keys.unwrap();
        assert_eq!(info.version(KeyKind::Internal, 2), Some(2));
        assert_eq!(info.version(KeyKind::Internal, 3), Some(3));
        assert_eq!(info.version(KeyKind::Internal, 1), Some(1), "slot 1 is never renewed");
        assert_agree(&mut terminal, &svc);
    }
}

#[test]
fn single_random_policy_renews_the_bottom_pair_from_one_random() {
    let mut svc = KeyringService::new(
        MemoryStore::new(),
        RenewalPolicy { single_random: true, ..RenewalPolicy::default() },
        Box::new(SeededRng::from_u64(1)),
    );
    let mut fresh = Card::in_memory(CardOptions::default().rng(Box::new(SeededRng::from_u64(9))));
    issue(&mut fresh, &mut svc, Layout::new(Mode::Symmetric, 2, 2).unwrap());
    let mut terminal = KeyringTerminal::select(InProcessChannel::new(fresh)).unwrap();
    let r = svc.sync(isd::CARD_ID, &mut terminal, MONTH).unwrap();
    assert_eq!(r.renewals[0].form, RenewForm::PairSingleRandom { internal: 2, external: 2 });
    assert_eq!(r.outcome, SyncOutcome::InAgreement);
}

/// Every secret the server holds for the card, as byte strings to look for on the wire.
fn secrets(svc: &KeyringService<MemoryStore>) -> Vec<Vec<u8>> {
    let keys = svc.store().load(isd::CARD_ID).unwrap().unwrap();
    let mode = keys.mode().unwrap();
    let mut out = Vec::new();
    for (kind, list) in [(KeyKind::Internal, &keys.internal), (KeyKind::External, &keys.external)] {
        for r in list {
            match (mode, kind) {
                // Asymmetric internal records hold the card's public key: not a secret.
                (Mode::Asymmetric, KeyKind::Internal) => {}
                _ => out.push(r.secret.clone()),
            }
        }
    }
    out
}

#[test]
fn no_apdu_ever_carries_a_key() {
    for mode in [Mode::Symmetric, Mode::Asymmetric] {
        let (mut terminal, mut svc) = issued(mode, 4, 4);
        terminal.record();
        let mut known = secrets(&svc);
        for (form, auth) in FORMS {
            if mode == Mode::Asymmetric && form.single_random() {
                continue;
            }
            svc.renew(isd::CARD_ID, &mut terminal, form, auth, 5).unwrap();
            known.extend(secrets(&svc));
            svc.sync(isd::CARD_ID, &mut terminal, 5).unwrap();
        }
        svc.sync(isd::CARD_ID, &mut terminal, 2 * YEAR).unwrap();
        known.extend(secrets(&svc));
        let exchanges = terminal.recorded();
        assert!(exchanges.len() > 50);
        for (cmd, rsp) in exchanges {
            for secret in &known {
                let contains = |data: &[u8]| data.windows(secret.len()).any(|w| w == &secret[..]);
                assert!(!contains(&rsp.data), "{mode:?}: a response carries a key: {cmd:?}");
                assert!(!contains(&cmd.data), "{mode:?}: a command carries a key: {cmd:?}");
            }
        }
        if mode == Mode::Asymmetric {
            // The card's private keys are known to nobody, so look for them by their public
            // keys: no 32-byte window of any response is the private key of a card key.
            let keys = svc.store().load(isd::CARD_ID).unwrap().unwrap();
            let publics: Vec<[u8; 65]> =
                keys.internal.iter().map(|r| r.secret.as_slice().try_into().unwrap()).collect();
            let mut windows = 0;
            for (cmd, rsp) in exchanges {
                if cmd.ins != proto::INS_RENEW && cmd.ins != proto::INS_INTERNAL_AUTHENTICATE {
                    continue;
                }
                for w in rsp.data.windows(32) {
                    if let Ok(k) = SigningKey::from_bytes(w) {
                        windows += 1;
                        assert!(!publics.contains(&k.public_key().to_sec1_bytes()));
                    }
                }
            }
            assert!(windows > 100);
        }
    }
}

/// A link straight to a card on a tearing disk: arms the disk right before RENEW, reports a
/// power cut as a link failure, and can lose the RENEW response.
struct TearLink<'a> {
    card: &'a mut Card,
    disk: &'a TearingDisk,
    cut_at: Option<u64>,
    lose_renew_response: bool,
}

impl KeyringLink for TearLink<'_> {
    fn exchange(&mut self, command: &Command) -> Result<Response, LinkError> {
        let renew = command.cla == 0x80 && command.ins == proto::INS_RENEW;
        if renew {
            self.disk.arm(self.cut_at);
        }
        let out = self.card.transmit(&command.to_bytes().map_err(|e| LinkError(e.to_string()))?);
        if self.disk.is_cut() {
            return Err(LinkError("power cut".into()));
        }
        if renew && self.lose_renew_response {
            return Err(LinkError("response lost".into()));
        }
        Response::parse(&out).ok_or_else(|| LinkError("short response".into()))
    }
}

fn select(card: &mut Card) {
    let apdu = [&[0x00, 0xA4, 0x04, 0x0C, proto::AID.len() as u8][..], proto::AID].concat();
    let r = card.transmit(&apdu);
    assert_eq!(&r[r.len() - 2..], &[0x90, 0x00]);
}

/// A card on a tearing disk, issued, with its service.
fn torn_setup(mode: Mode, seed: u64) -> (Card, TearingDisk, KeyringService<MemoryStore>) {
    let disk = TearingDisk::new(Vec::new(), None, TearMode::ReorderUnflushed { seed });
    let mut card = Card::create_on(
        Box::new(disk.storage()),
        CardOptions::default().rng(Box::new(SeededRng::from_u64(seed))),
    )
    .unwrap();
    let mut svc = service(seed);
    issue(&mut card, &mut svc, Layout::new(mode, 4, 4).unwrap());
    select(&mut card);
    (card, disk, svc)
}

#[test]
fn a_power_cut_at_every_write_of_every_renewal_form_is_repaired_by_the_next_sync() {
    let mut cuts = 0;
    let (mut kept_old, mut holds_new) = (0, 0);
    for mode in [Mode::Symmetric, Mode::Asymmetric] {
        for (form, auth) in FORMS {
            if mode == Mode::Asymmetric && form.single_random() {
                continue;
            }
            let mut k = 1;
            loop {
                let (mut card, disk, mut svc) = torn_setup(mode, k);
                let mut link = TearLink {
                    card: &mut card,
                    disk: &disk,
                    cut_at: Some(k),
                    lose_renew_response: false,
                };
                let result = svc.renew(isd::CARD_ID, &mut link, form, auth, 5);
                if !disk.is_cut() {
                    result.unwrap();
                    break;
                }
                assert!(matches!(result, Err(KeyringError::Link(_))), "{result:?}");
                let status = svc.status(isd::CARD_ID).unwrap();
                assert!(status.iter().any(|s| s.pending_version.is_some()), "pending kept");
                // Power comes back: the image holds the old keys or the new ones.
                let mut card = Card::open_on(
                    Box::new(MemoryStorage::from_bytes(disk.platter())),
                    OpenOptions::default(),
                )
                .unwrap();
                card.power_on();
                let mut terminal = KeyringTerminal::select(InProcessChannel::new(card)).unwrap();
                let (kind, slot) = form.targets(&Layout::new(mode, 4, 4).unwrap()).unwrap()[0];
                match terminal.key_info().unwrap().version(kind, slot) {
                    Some(1) => kept_old += 1,
                    Some(2) => holds_new += 1,
                    other => panic!("version {other:?}"),
                }
                let report = svc.sync(isd::CARD_ID, &mut terminal, 6).unwrap();
                let what = format!("{mode:?} {form:?} cut at {k}");
                assert_eq!(report.outcome, SyncOutcome::InAgreement, "{what}");
                assert!(report.resynchronised, "{what}");
                assert_agree(&mut terminal, &svc);
                cuts += 1;
                k += 1;
            }
        }
    }
    eprintln!(
        "{cuts} power cuts during renewals ({kept_old} kept the old keys, {holds_new} the new), \
         each repaired by the next sync"
    );
    // A cut before the commit's last write keeps the old keys; the card-committed, server-unaware
    // case (the response lost after the commit) is the next test's.
    assert_eq!(kept_old + holds_new, cuts);
    assert!(kept_old > 0);
    assert!(cuts >= 30, "only {cuts} cuts");
}

#[test]
fn a_lost_renew_response_and_a_server_crash_are_repaired_by_the_next_sync() {
    for mode in [Mode::Symmetric, Mode::Asymmetric] {
        // Lost response: the card committed, the server never heard.
        let (mut card, disk, mut svc) = torn_setup(mode, 1);
        let mut link =
            TearLink { card: &mut card, disk: &disk, cut_at: None, lose_renew_response: true };
        let r = svc.renew(
            isd::CARD_ID,
            &mut link,
            RenewForm::Pair { internal: 4, external: 4 },
            (3, 3),
            5,
        );
        assert!(matches!(r, Err(KeyringError::Link(_))));
        let mut terminal = KeyringTerminal::select(InProcessChannel::new(card)).unwrap();
        let info = terminal.key_info().unwrap();
        assert_eq!(info.version(KeyKind::Internal, 4), Some(2), "the card did renew");
        let report = svc.sync(isd::CARD_ID, &mut terminal, 6).unwrap();
        assert_eq!(report.outcome, SyncOutcome::InAgreement);
        assert!(report.resynchronised);
        assert_agree(&mut terminal, &svc);

        // Server crash between the card's commit and the server's: the second save fails.
        let (card, _disk, mut svc) = torn_setup(mode, 2);
        let mut terminal = KeyringTerminal::select(InProcessChannel::new(card)).unwrap();
        svc.store_mut().fail_after(Some(1));
        let r = svc.renew(isd::CARD_ID, &mut terminal, RenewForm::External { slot: 4 }, (4, 3), 5);
        assert!(matches!(r, Err(KeyringError::Store(_))), "{r:?}");
        svc.store_mut().fail_after(None);
        let report = svc.sync(isd::CARD_ID, &mut terminal, 6).unwrap();
        assert_eq!(report.outcome, SyncOutcome::InAgreement);
        assert!(report.resynchronised);
        assert_agree(&mut terminal, &svc);
    }
}

#[test]
fn a_rolled_back_card_image_is_suspended_then_resynchronised_from_the_next_upper_level() {
    let disk = TearingDisk::new(Vec::new(), None, TearMode::DropUnflushed);
    let mut card = Card::create_on(Box::new(disk.storage()), CardOptions::default()).unwrap();
    let mut svc = service(3);
    issue(&mut card, &mut svc, Layout::new(Mode::Symmetric, 3, 3).unwrap());
    let old_image = disk.platter();
    let mut terminal = KeyringTerminal::select(InProcessChannel::new(card)).unwrap();
    let r = svc.sync(isd::CARD_ID, &mut terminal, MONTH).unwrap();
    assert_eq!(r.renewals.len(), 1);
    // The holder restores the old image: its bottom keys are the old ones.
    let mut card =
        Card::open_on(Box::new(MemoryStorage::from_bytes(old_image)), OpenOptions::default())
            .unwrap();
    card.power_on();
    let mut terminal = KeyringTerminal::select(InProcessChannel::new(card)).unwrap();
    // Nothing interrupted explains it: the card is suspended (it could be a copy), and stays
    // so, until an administrator resynchronises it.
    let r = svc.sync(isd::CARD_ID, &mut terminal, MONTH + 1).unwrap();
    assert_eq!(r.outcome, SyncOutcome::Suspended);
    assert!(r.renewals.is_empty());
    assert_eq!(
        svc.sync(isd::CARD_ID, &mut terminal, MONTH + 2).unwrap().outcome,
        SyncOutcome::Suspended
    );
    assert!(matches!(
        svc.renew(isd::CARD_ID, &mut terminal, RenewForm::Internal { slot: 3 }, (2, 3), 1),
        Err(KeyringError::Suspended)
    ));
    let r = svc.resynchronise(isd::CARD_ID, &mut terminal, MONTH + 3).unwrap();
    assert_eq!(r.outcome, SyncOutcome::InAgreement);
    assert!(r.resynchronised);
    assert_eq!(r.renewals[0].auth, (2, 2), "repaired from the next upper level");
    assert_agree(&mut terminal, &svc);
    let r = svc.sync(isd::CARD_ID, &mut terminal, MONTH + 4).unwrap();
    assert_eq!(r.outcome, SyncOutcome::InAgreement);
    assert!(!r.resynchronised);
}

#[test]
fn compromise_renews_from_above_and_a_compromised_root_needs_re_issue() {
    let (mut terminal, mut svc) = issued(Mode::Symmetric, 4, 4);
    svc.mark_compromised(isd::CARD_ID, KeyKind::External, 2).unwrap();
    let r = svc.sync(isd::CARD_ID, &mut terminal, 1).unwrap();
    assert_eq!(r.renewals[0].form, RenewForm::BothFrom { internal: 2, external: 2 });
    assert_eq!(r.renewals[0].auth, (1, 1));
    assert!(svc.sync(isd::CARD_ID, &mut terminal, 2).unwrap().renewals.is_empty());
    svc.mark_compromised(isd::CARD_ID, KeyKind::Internal, 1).unwrap();
    let r = svc.sync(isd::CARD_ID, &mut terminal, 3).unwrap();
    assert_eq!(r.outcome, SyncOutcome::NeedsReissue);
    assert!(matches!(
        svc.renew(isd::CARD_ID, &mut terminal, RenewForm::Internal { slot: 4 }, (3, 4), 3),
        Err(KeyringError::NeedsReissue)
    ));
}

#[test]
fn a_card_with_foreign_keys_needs_re_issue() {
    // The server's record belongs to another issuance: no level authenticates.
    let (mut terminal, _svc) = issued(Mode::Symmetric, 3, 3);
    let mut other = service(77);
    let mut scratch = Card::in_memory(CardOptions::default());
    issue(&mut scratch, &mut other, Layout::new(Mode::Symmetric, 3, 3).unwrap());
    let r = other.sync(isd::CARD_ID, &mut terminal, 0).unwrap();
    assert_eq!(r.outcome, SyncOutcome::Suspended);
    let r = other.resynchronise(isd::CARD_ID, &mut terminal, 0).unwrap();
    assert_eq!(r.outcome, SyncOutcome::NeedsReissue);
    assert!(other.store().load(isd::CARD_ID).unwrap().unwrap().needs_reissue);
}

#[test]
fn the_server_session_runs_secured_commands_at_level_33() {
    for mode in [Mode::Symmetric, Mode::Asymmetric] {
        let (mut terminal, mut svc) = issued(mode, 2, 3);
        let mut session = svc.open_session(isd::CARD_ID, &mut terminal).unwrap();
        let info = session.key_info().unwrap();
        assert_eq!(info.layout, Layout::new(mode, 2, 3).unwrap());
        let r = session.transmit(&proto::get_data(proto::TAG_SECURITY_STATUS)).unwrap();
        let st = proto::SecurityStatus::parse(&r.data).unwrap();
        assert_eq!(st.session_level, 0x33);
        assert_eq!(st.authenticated, Some((2, 3)));
        drop(session);
        // On the wire the session's responses are encrypted: the plain status is not there.
        terminal.record();
        let mut session = svc.open_session(isd::CARD_ID, &mut terminal).unwrap();
        session.transmit(&proto::get_data(proto::TAG_SECURITY_STATUS)).unwrap();
        drop(session);
        let (_, last) = terminal.recorded().last().unwrap();
        assert!(!last.data.windows(7).any(|w| w == st.to_bytes().as_slice()));
    }
}

#[test]
fn the_server_refuses_to_send_a_renewal_the_rules_forbid() {
    let (mut terminal, mut svc) = issued(Mode::Symmetric, 3, 3);
    terminal.record();
    for (form, auth) in [
        (RenewForm::Internal { slot: 3 }, (3, 1)),
        (RenewForm::External { slot: 2 }, (1, 3)),
        (RenewForm::Internal { slot: 1 }, (1, 1)),
    ] {
        let r = svc.renew(isd::CARD_ID, &mut terminal, form, auth, 1);
        assert!(matches!(r, Err(KeyringError::Refused { .. })), "{form:?} {auth:?}: {r:?}");
    }
    assert!(terminal.recorded().is_empty(), "nothing reached the card");
}

/// A link that answers every INTERNAL AUTHENTICATE with slot `slot` by replaying the card's
/// answer recorded in an earlier session.
struct ReplayLink<'a> {
    inner: &'a mut KeyringTerminal<InProcessChannel<Card>>,
    slot: u8,
    recorded: Option<Response>,
    replaying: bool,
}

impl KeyringLink for ReplayLink<'_> {
    fn exchange(&mut self, command: &Command) -> Result<Response, LinkError> {
        let r = self.inner.exchange(command)?;
        if command.ins == proto::INS_INTERNAL_AUTHENTICATE && command.p2 == self.slot {
            if self.replaying {
                return Ok(self.recorded.clone().unwrap());
            }
            self.recorded = Some(r.clone());
        }
        Ok(r)
    }
}

#[test]
fn a_replayed_card_answer_never_authenticates() {
    let (mut terminal, mut svc) = issued(Mode::Symmetric, 3, 3);
    let mut link = ReplayLink { inner: &mut terminal, slot: 3, recorded: None, replaying: false };
    assert_eq!(svc.sync(isd::CARD_ID, &mut link, 0).unwrap().outcome, SyncOutcome::InAgreement);
    link.replaying = true;
    // The old answer does not verify against the new server challenge: no session, and the
    // card is suspended (nothing interrupted explains a wrong answer).
    let r = svc.sync(isd::CARD_ID, &mut link, 1).unwrap();
    assert_eq!(r.outcome, SyncOutcome::Suspended);
    assert_eq!(terminal.security_status().unwrap().session_level, 0);
    // Without the replaying man in the middle, the administrator's resynchronisation finds
    // the card genuine at the next level up, and everything agrees.
    let r = svc.resynchronise(isd::CARD_ID, &mut terminal, 2).unwrap();
    assert_eq!(r.outcome, SyncOutcome::InAgreement);
    assert_agree(&mut terminal, &svc);
}

#[test]
fn the_terminal_flow_hands_the_server_a_link_and_gives_the_channel_back() {
    let mut card = Card::in_memory(CardOptions::default().rng(Box::new(SeededRng::from_u64(4))));
    let mut svc = service(4);
    issue(&mut card, &mut svc, Layout::new(Mode::Asymmetric, 2, 2).unwrap());
    let channel = InProcessChannel::new(card);
    let (channel, report) =
        tessera_host::keyring::run(channel, |link| svc.sync(isd::CARD_ID, link, MONTH)).unwrap();
    let report = report.unwrap();
    assert_eq!(report.outcome, SyncOutcome::InAgreement);
    assert_eq!(report.renewals.len(), 1);
    // The card keeps the renewed keys: a second terminal session agrees without renewing.
    let (_, report) =
        tessera_host::keyring::run(channel, |link| svc.sync(isd::CARD_ID, link, MONTH + 1))
            .unwrap();
    assert_eq!(report.unwrap().renewals, vec![]);
}

#[test]
fn eight_slots_and_unequal_counts_work_end_to_end() {
    for mode in [Mode::Symmetric, Mode::Asymmetric] {
        for (m, n) in [(8, 8), (3, 5), (5, 2)] {
            let (mut terminal, mut svc) = issued(mode, m, n);
            // Everything renewable at once (RENEW and its answer exceed short APDUs at 8).
            let renewed = svc
                .renew(
                    isd::CARD_ID,
                    &mut terminal,
                    RenewForm::BothFrom { internal: 2, external: 2 },
                    (1, 1),
                    1,
                )
                .unwrap();
            assert_eq!(renewed.len(), usize::from(m + n - 2));
            // The default schedule over three years: the two lowest levels renewed each year.
            for year in 1..=3 {
                let r = svc.sync(isd::CARD_ID, &mut terminal, year * YEAR).unwrap();
                assert_eq!(r.outcome, SyncOutcome::InAgreement, "{mode:?} {m} {n}");
                assert_eq!(r.renewals.len(), 1, "{mode:?} {m} {n}");
            }
            assert_agree(&mut terminal, &svc);
        }
    }
}
