#![allow(clippy::unwrap_used)] // tests may unwrap

//! The vault flows end to end in process (two in-memory cards at a time): pair issuance and
//! its variants, backup (resumed after a failure at each step), files in the age format with
//! interoperability against the `age` crate, decryption with the backup card, and recovery
//! onto a new card, interrupted at every file.

use std::path::PathBuf;

use tessera_card::applets::isd;
use tessera_card::{Card, CardOptions, PowerCut, TearDriver};
use tessera_crypto::rng::SeededRng;
use tessera_host::vault::backup;
use tessera_host::vault::files::{self, CardIdentity, FileOutcome};
use tessera_host::vault::issuance::{self, Plan};
use tessera_host::vault::{VaultCard, VaultError};
use tessera_host::{CardChannel, ChannelError, InProcessChannel};
use tessera_proto::vault::{KeyOrigin, Role, Setter};

type Chan = InProcessChannel<Card>;
const PIN: &[u8] = isd::scenarios::PIN;

struct Direct<'a>(&'a mut Card);
impl TearDriver for Direct<'_> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, PowerCut> {
        Ok(self.0.transmit(apdu))
    }
    fn arm(&mut self) {}
}

/// A card with its card-management applet issued (scenario keys, card id, PIN).
fn blank(seed: u64) -> Chan {
    let mut card = Card::in_memory(CardOptions::default().rng(Box::new(SeededRng::from_u64(seed))));
    card.power_on();
    isd::scenarios::personalize(&mut tessera_card::script::Script::new(&mut Direct(&mut card)))
        .unwrap();
    InProcessChannel::new(card)
}

fn holder(plan: &Plan) -> Vec<(u8, [u8; 32])> {
    plan.holder_slots().into_iter().map(|s| (s, [0x70 + s; 32])).collect()
}

fn vault(c: Chan) -> VaultCard<Chan> {
    let mut v = VaultCard::select(c).unwrap();
    v.verify_pin(PIN).unwrap();
    v
}

fn issued_pair(plan: &Plan) -> (VaultCard<Chan>, VaultCard<Chan>) {
    issued_pair_seeded(plan, 1)
}

fn issued_pair_seeded(plan: &Plan, seed: u64) -> (VaultCard<Chan>, VaultCard<Chan>) {
    let (mut m, mut b) = (blank(seed), blank(seed + 1000));
    let keys = isd::scenarios::issued_keys();
    let secrets =
        issuance::issue_pair(&mut m, &keys, &mut b, &keys, plan, &mut SeededRng::from_u64(3))
            .unwrap();
    assert_eq!(secrets.components.len(), plan.issuer_slots.len());
    (vault(m), vault(b))
}

fn backed_up_pair() -> (VaultCard<Chan>, VaultCard<Chan>) {
    let plan = Plan::shared(3, 2).unwrap();
    let (mut m, mut b) = issued_pair(&plan);
    let report = backup::run(&mut m, &mut b, &holder(&plan)).unwrap();
    assert!(report.steps.iter().any(|s| s == "main: backup confirmed"), "{report:?}");
    (m, b)
}

/// A fresh main card (holder sets its one component) with a generated key: the new card.
fn new_card() -> VaultCard<Chan> {
    let plan = Plan::holder_sets_all(1).unwrap();
    let (mut m, _) = issued_pair_seeded(&plan, 50);
    m.put_component(1, &[0x99; 32]).unwrap();
    m.generate().unwrap();
    m
}

#[test]
fn issuance_variants_tag_the_setters() {
    for (plan, issuer) in [
        (Plan::shared(4, 2).unwrap(), vec![1, 2]),
        (Plan::issuer_sets_all(3).unwrap(), vec![1, 2, 3]),
        (Plan::holder_sets_all(2).unwrap(), vec![]),
    ] {
        let (mut m, mut b) = issued_pair(&plan);
        for card in [&mut m, &mut b] {
            let st = card.status().unwrap();
            for (i, slot) in st.components.iter().enumerate() {
                let s = i as u8 + 1;
                assert_eq!(slot.map(|c| c.0), issuer.contains(&s).then_some(Setter::Issuer));
            }
        }
        assert_eq!(m.status().unwrap().config.role, Role::Main);
        assert_eq!(b.status().unwrap().config.role, Role::Backup);
    }
    // Keys at issuance: both cards hold the same key pair from the start.
    let plan = Plan::issuer_sets_all(2).unwrap().with_key_at_issuance();
    let (mut m, mut b) = issued_pair(&plan);
    assert_eq!(m.status().unwrap().key, Some(KeyOrigin::Issued));
    assert_eq!(m.public_key().unwrap(), b.public_key().unwrap());
    assert_eq!(m.status().unwrap().group_check, b.status().unwrap().group_check);
}

/// A channel that fails after `budget` APDUs (a reader unplugged mid-flow).
struct Flaky<'a> {
    inner: &'a mut Chan,
    budget: usize,
}
impl CardChannel for Flaky<'_> {
    fn transmit_raw(&mut self, command: &[u8]) -> Result<Vec<u8>, ChannelError> {
        if self.budget == 0 {
            return Err(ChannelError::CardRemoved);
        }
        self.budget -= 1;
        self.inner.transmit_raw(command)
    }
    fn reset(&mut self) -> Result<Vec<u8>, ChannelError> {
        self.inner.reset()
    }
    fn atr(&mut self) -> Result<Vec<u8>, ChannelError> {
        self.inner.atr()
    }
}

#[test]
fn backup_resumes_after_a_failure_at_every_step() {
    let plan = Plan::shared(3, 1).unwrap();
    let mut budget = 0;
    loop {
        let (m, b) = issued_pair(&plan);
        let (mut m, mut b) = (m.into_channel(), b.into_channel());
        // The failing run: the backup card's reader fails after `budget` APDUs.
        let first = VaultCard::select(Flaky { inner: &mut b, budget }).and_then(|mut fb| {
            let mut fm = VaultCard::select(&mut m)?;
            backup::run(&mut fm, &mut fb, &holder(&plan))
        });
        // PIN state survives (no reset): run again to completion.
        let mut vm = VaultCard::select(&mut m).unwrap();
        let mut vb = VaultCard::select(&mut b).unwrap();
        vm.verify_pin(PIN).unwrap();
        vb.verify_pin(PIN).unwrap();
        let second = backup::run(&mut vm, &mut vb, &holder(&plan)).unwrap();
        let (ms, bs) = (vm.status().unwrap(), vb.status().unwrap());
        assert!(ms.backup_created, "budget {budget}: {second:?}");
        assert_eq!(bs.key, Some(KeyOrigin::Wrapped));
        assert_eq!(vm.public_key().unwrap(), vb.public_key().unwrap());
        if first.is_ok() {
            break;
        }
        budget += 1;
        assert!(budget < 40, "the backup never completes");
    }
    assert!(budget > 5, "the failure was injected at several steps ({budget})");
}

#[test]
fn backup_refuses_cards_of_another_pair_or_wrong_holder_components() {
    let plan = Plan::shared(2, 1).unwrap();
    let (mut m, mut own_backup) = issued_pair(&plan);
    let (_, mut other_backup) = {
        // Another pair: different issuer components.
        let (mut a, mut b) = (blank(5), blank(6));
        let keys = isd::scenarios::issued_keys();
        issuance::issue_pair(&mut a, &keys, &mut b, &keys, &plan, &mut SeededRng::from_u64(77))
            .unwrap();
        (vault(a), vault(b))
    };
    let err = backup::run(&mut m, &mut other_backup, &holder(&plan)).unwrap_err();
    assert!(err.to_string().contains("different key groups"), "{err}");
    assert!(!m.status().unwrap().export_pending, "nothing exported");
    // Nothing was written to either card: the holder's slot is still empty on both.
    assert_eq!(m.status().unwrap().components[1], None);
    assert_eq!(other_backup.status().unwrap().components[1], None);
    // With its own backup card: a first run writes the holder's component; a re-run with
    // another value is refused (written once) and changes nothing.
    backup::run(&mut m, &mut own_backup, &holder(&plan)).unwrap();
    let before = (m.status().unwrap(), own_backup.status().unwrap());
    let wrong = vec![(2u8, [0x01; 32])];
    let err = backup::run(&mut m, &mut own_backup, &wrong).unwrap_err();
    assert!(err.to_string().contains("different component"), "{err}");
    assert_eq!((m.status().unwrap(), own_backup.status().unwrap()), before);
}

fn write(dir: &tempfile::TempDir, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, data).unwrap();
    p
}

fn decrypt_with(
    card: VaultCard<Chan>,
    path: &PathBuf,
) -> (Result<Vec<u8>, VaultError>, VaultCard<Chan>) {
    let id = CardIdentity::new(card).unwrap();
    let mut out = Vec::new();
    let r = files::decrypt(&id, std::fs::File::open(path).unwrap(), &mut out).map(|_| out);
    (r, id.into_card())
}

#[test]
fn files_encrypted_by_the_age_crate_open_with_main_and_backup_and_recover_onto_a_new_card() {
    let (mut main, backup_card) = backed_up_pair();
    let recipient = files::recipient_string(&main.public_key().unwrap()).unwrap();
    assert!(recipient.starts_with("age1tag1"), "{recipient}");
    let dir = tempfile::tempdir().unwrap();
    // One file made by the age crate itself (native p256tag recipient, plus an X25519
    // recipient a peer holds), others by our encrypt.
    let peer = age::x25519::Identity::generate();
    let tag: age::tag::Recipient = recipient.parse().unwrap();
    let plain: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 1000 + 70_000 * usize::from(i)]).collect();
    let mut paths = Vec::new();
    {
        let e = age::Encryptor::with_recipients(
            [&tag as &dyn age::Recipient, &peer.to_public() as &dyn age::Recipient].into_iter(),
        )
        .unwrap();
        let mut out = Vec::new();
        let mut w = e.wrap_output(&mut out).unwrap();
        std::io::Write::write_all(&mut w, &plain[0]).unwrap();
        w.finish().unwrap();
        paths.push(write(&dir, "f0.age", &out));
    }
    let pk = main.public_key().unwrap();
    for (i, p) in plain.iter().enumerate().skip(1) {
        let mut out = Vec::new();
        files::encrypt(&[pk], p.as_slice(), &mut out).unwrap();
        paths.push(write(&dir, &format!("f{i}.age"), &out));
    }
    // Main and backup both decrypt every file.
    let mut backup_card = backup_card;
    for (p, expected) in paths.iter().zip(&plain) {
        let (r, m) = decrypt_with(main, p);
        main = m;
        assert!(&r.unwrap() == expected);
        let (r, b) = decrypt_with(backup_card, p);
        backup_card = b;
        assert!(&r.unwrap() == expected);
    }
    // A card that does not hold the key cannot.
    let new = new_card();
    let (r, mut new) = decrypt_with(new, &paths[1]);
    assert!(r.unwrap_err().to_string().contains("not encrypted to this card"));

    // The main card is lost: recover onto the new card with the backup card.
    let new_pk = new.public_key().unwrap();
    let bodies_before: Vec<Vec<u8>> = paths.iter().map(body_of).collect();
    let mut seen = 0;
    let unrelated = write(&dir, "plain.txt", b"not age");
    let mut all = paths.clone();
    all.push(unrelated.clone());
    let reports = files::recover(&mut backup_card, &new_pk, &all, 2, &mut |_| seen += 1).unwrap();
    assert_eq!(seen, all.len());
    for r in &reports[..paths.len()] {
        assert_eq!(r.outcome, FileOutcome::Recovered, "{r:?}");
    }
    assert!(matches!(reports[paths.len()].outcome, FileOutcome::Failed(_)));
    // Bodies untouched; the new card decrypts (age verifies the card's header MAC); the
    // backup no longer does; the peer's X25519 stanza still works with the age crate alone.
    for ((p, expected), body) in paths.iter().zip(&plain).zip(&bodies_before) {
        assert_eq!(&body_of(p), body, "payload rewritten");
        let (r, n) = decrypt_with(new, p);
        new = n;
        assert!(&r.unwrap() == expected);
        let (r, b) = decrypt_with(backup_card, p);
        backup_card = b;
        assert!(r.is_err());
        assert!(!files::temp_path(p).exists());
        // Every batch's replaced originals are gone by the time recover returns.
        assert!(!files::old_path(p).exists(), "{}: the old file's second name stayed", p.display());
    }
    let d = age::Decryptor::new(std::fs::File::open(&paths[0]).unwrap()).unwrap();
    let mut out = Vec::new();
    std::io::Read::read_to_end(
        &mut d.decrypt(std::iter::once(&peer as &dyn age::Identity)).unwrap(),
        &mut out,
    )
    .unwrap();
    assert_eq!(out, plain[0]);
    // Running again reports the files as already recovered and changes nothing.
    let again = files::recover(&mut backup_card, &new_pk, &paths, 8, &mut |_| {}).unwrap();
    assert!(again.iter().all(|r| r.outcome == FileOutcome::AlreadyRecovered), "{again:?}");
}

#[test]
fn our_encryption_opens_in_the_age_crate_at_every_chunk_boundary_and_for_every_recipient() {
    // The age crate's decryptor checks the header MAC and every STREAM chunk (the last-chunk
    // flag included), so these sizes pin the rounds of chunks and the read-ahead of `files::encrypt`.
    let (mut main, _backup) = backed_up_pair();
    let mut other = new_card();
    let recipients = [main.public_key().unwrap(), other.public_key().unwrap()];
    let dir = tempfile::tempdir().unwrap();
    let chunk = tessera_crypto::age::CHUNK_LEN;
    // Sealed alone up to 32 chunks, then in rounds on every core.
    let sizes = [0, 1, chunk - 1, chunk, chunk + 1, 32 * chunk, 32 * chunk + 1, 41 * chunk + 5];
    for len in sizes {
        let plain: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut out = Vec::new();
        files::encrypt(&recipients, plain.as_slice(), &mut out).unwrap();
        let sealed_chunks = len.div_ceil(chunk).max(1);
        let header = files::parse_header(&out).unwrap();
        assert_eq!(header.stanzas.len(), 2);
        assert_eq!(out.len(), header.len + 16 + len + 16 * sealed_chunks, "length {len}");
        let p = write(&dir, &format!("{len}.age"), &out);
        for card in [&mut main, &mut other] {
            let taken = std::mem::replace(card, new_card());
            let (r, back) = decrypt_with(taken, &p);
            *card = back;
            assert!(r.unwrap() == plain, "length {len}");
        }
        // A payload cut at a chunk boundary (its last chunk gone) does not open.
        if len > chunk {
            let cut = header.len + 16 + (chunk + 16);
            let p = write(&dir, &format!("{len}.cut.age"), &out[..cut]);
            let (r, back) = decrypt_with(std::mem::replace(&mut main, new_card()), &p);
            main = back;
            assert!(r.is_err(), "truncated file of length {len} opened");
        }
    }
    assert!(files::encrypt(&[], &b"x"[..], &mut Vec::new()).is_err());
}

/// Everything after the header.
fn body_of(p: &PathBuf) -> Vec<u8> {
    let bytes = std::fs::read(p).unwrap();
    let h = files::parse_header(&bytes).unwrap();
    bytes[h.len..].to_vec()
}

#[test]
fn recovery_interrupted_at_every_file_leaves_every_file_readable() {
    let (main, backup_card) = backed_up_pair();
    let pk = {
        let mut m = main;
        m.public_key().unwrap()
    };
    let mut new = new_card();
    let new_pk = new.public_key().unwrap();
    let mut backup_chan = backup_card.into_channel();
    for cut in 0..4usize {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = (0..3)
            .map(|i| {
                let mut out = Vec::new();
                files::encrypt(&[pk], vec![i as u8; 5000].as_slice(), &mut out).unwrap();
                write(&dir, &format!("{i}.age"), &out)
            })
            .collect();
        // The backup card disappears after `cut` TRANSCRYPTs (plus the public key read).
        let flaky = Flaky { inner: &mut backup_chan, budget: 2 + cut };
        let mut v = VaultCard::select(flaky).unwrap();
        let r = files::recover(&mut v, &new_pk, &paths, 1, &mut |_| {});
        assert_eq!(r.is_err(), cut < 3, "cut {cut}");
        for p in &paths {
            assert!(!files::temp_path(p).exists(), "cut {cut}: stale temporary file");
        }
        // Each file opens with the backup card or with the new card.
        let mut backup_v = VaultCard::select(&mut backup_chan).unwrap();
        backup_v.verify_pin(PIN).unwrap();
        let backup_id = CardIdentity::new(backup_v).unwrap();
        for (i, p) in paths.iter().enumerate() {
            let mut out = Vec::new();
            let by_backup = files::decrypt(&backup_id, std::fs::File::open(p).unwrap(), &mut out);
            let id = CardIdentity::new(new).unwrap();
            let mut out2 = Vec::new();
            let by_new = files::decrypt(&id, std::fs::File::open(p).unwrap(), &mut out2);
            new = id.into_card();
            assert!(by_backup.is_ok() ^ by_new.is_ok(), "cut {cut} file {i}");
            assert_eq!(by_new.is_ok(), i < cut, "cut {cut} file {i}");
            assert!(out == vec![i as u8; 5000] || out2 == vec![i as u8; 5000]);
        }
        // Re-running finishes the job.
        let mut backup_v = backup_id.into_card();
        let done = files::recover(&mut backup_v, &new_pk, &paths, 1, &mut |_| {}).unwrap();
        for (i, r) in done.iter().enumerate() {
            let expected =
                if i < cut { FileOutcome::AlreadyRecovered } else { FileOutcome::Recovered };
            assert_eq!(r.outcome, expected);
        }
    }
}

#[test]
fn key_service_variant_seals_the_key_to_the_main_card_then_backup_moves_it() {
    // Figs. 28-31: the service generates the key pair; only the main card can open it.
    let plan = Plan::issuer_sets_all(2).unwrap();
    let (mut m, mut b) = issued_pair(&plan);
    let service_key = tessera_crypto::ecdsa::SigningKey::generate(&mut SeededRng::from_u64(42));
    let transport = m.transport_key().unwrap();
    let sealed = tessera_server::vault::seal_key_for_card(
        &mut SeededRng::from_u64(1),
        &transport,
        isd::scenarios::CARD_ID,
        service_key.to_bytes().as_slice(),
    )
    .unwrap();
    // The backup card (another transport key) cannot open what was sealed to the main card.
    let err = b.import_sealed(sealed.clone()).unwrap_err();
    assert!(err.to_string().contains("6A80"), "{err}");
    let pk = m.import_sealed(sealed).unwrap();
    assert_eq!(pk, service_key.public_key().to_sec1_bytes());
    assert_eq!(m.status().unwrap().key, Some(KeyOrigin::Sealed));
    let report = backup::run(&mut m, &mut b, &[]).unwrap();
    assert!(!report.steps.iter().any(|s| s.contains("generated")), "{report:?}");
    assert_eq!(b.public_key().unwrap(), pk);
    assert_eq!(b.status().unwrap().key, Some(KeyOrigin::Wrapped));
    assert!(m.status().unwrap().backup_created);
}

#[test]
fn pipelined_recovery_in_batches_completes_only_whole_batches_when_interrupted() {
    // The card works on the next file while the I/O thread writes the previous ones; a batch is
    // renamed only once all its files are written and flushed. Cut after every TRANSCRYPT with
    // batches of 2 over 5 files: the whole batches before the cut are recovered, the rest
    // untouched, and a re-run completes.
    let (main, backup_card) = backed_up_pair();
    let pk = {
        let mut m = main;
        m.public_key().unwrap()
    };
    let mut new = new_card();
    let new_pk = new.public_key().unwrap();
    let mut backup_chan = backup_card.into_channel();
    let (n, batch) = (5usize, 2usize);
    for cut in 0..=n {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = (0..n)
            .map(|i| {
                let mut out = Vec::new();
                files::encrypt(&[pk], vec![i as u8; 70_000].as_slice(), &mut out).unwrap();
                write(&dir, &format!("{i}.age"), &out)
            })
            .collect();
        let flaky = Flaky { inner: &mut backup_chan, budget: 2 + cut };
        let mut v = VaultCard::select(flaky).unwrap();
        let mut progressed = 0;
        let r = files::recover(&mut v, &new_pk, &paths, batch, &mut |_| progressed += 1);
        assert_eq!(r.is_err(), cut < n, "cut {cut}");
        if let Ok(reports) = &r {
            assert_eq!(progressed, n);
            assert!(reports.iter().all(|r| r.outcome == FileOutcome::Recovered), "{reports:?}");
        }
        let recovered = if cut < n { cut / batch * batch } else { n };
        for (i, p) in paths.iter().enumerate() {
            assert!(!files::temp_path(p).exists(), "cut {cut}: stale temporary file");
            assert!(!files::old_path(p).exists(), "cut {cut}: the old file's name stayed");
            let id = CardIdentity::new(new).unwrap();
            let mut out = Vec::new();
            let by_new = files::decrypt(&id, std::fs::File::open(p).unwrap(), &mut out);
            new = id.into_card();
            assert_eq!(by_new.is_ok(), i < recovered, "cut {cut} file {i}");
            if by_new.is_ok() {
                assert_eq!(out, vec![i as u8; 70_000]);
            }
        }
        let mut backup_v = VaultCard::select(&mut backup_chan).unwrap();
        backup_v.verify_pin(PIN).unwrap();
        let done = files::recover(&mut backup_v, &new_pk, &paths, batch, &mut |_| {}).unwrap();
        for (i, r) in done.iter().enumerate() {
            let expected =
                if i < recovered { FileOutcome::AlreadyRecovered } else { FileOutcome::Recovered };
            assert_eq!(r.outcome, expected, "cut {cut} file {i}");
        }
    }
    // A file listed twice and a file that is not age are reported, the others recovered.
    let dir = tempfile::tempdir().unwrap();
    let mut out = Vec::new();
    files::encrypt(&[pk], &b"once"[..], &mut out).unwrap();
    let good = write(&dir, "good.age", &out);
    let junk = write(&dir, "junk.age", b"not an age file");
    let mut backup_v = VaultCard::select(&mut backup_chan).unwrap();
    backup_v.verify_pin(PIN).unwrap();
    let list = [good.clone(), junk, good];
    let done = files::recover(&mut backup_v, &new_pk, &list, 8, &mut |_| {}).unwrap();
    assert_eq!(done[0].outcome, FileOutcome::Recovered);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "only the two files remain");
    assert!(matches!(&done[1].outcome, FileOutcome::Failed(m) if m.contains("age")), "{done:?}");
    assert!(matches!(&done[2].outcome, FileOutcome::Failed(m) if m.contains("twice")), "{done:?}");
    // A crash between a rename and the removal of the old name leaves that name: the next
    // run removes it.
    std::fs::write(files::old_path(&list[0]), b"old content").unwrap();
    let done = files::recover(&mut backup_v, &new_pk, &list[..1], 8, &mut |_| {}).unwrap();
    assert_eq!(done[0].outcome, FileOutcome::AlreadyRecovered);
    assert!(!files::old_path(&list[0]).exists());
}
