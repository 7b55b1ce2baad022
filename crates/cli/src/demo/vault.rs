//! Chapter: card duplication (seed 003). Issue a main card and its backup card, back the key
//! up, encrypt files to the card, "lose" the main card, decrypt with the backup card, and
//! recover the files onto a new card, all on in-memory cards. Then the key-service variant: a
//! server (in process, on SQLite in a temporary directory) generates a new main card's key pair
//! and delivers it sealed through the APDU tunnel; the backup flow moves it to a backup card.

use std::path::PathBuf;

use tessera_card::applets::isd;
use tessera_card::script::Script;
use tessera_card::{Card, CardOptions, PowerCut, TearDriver};
use tessera_crypto::rng::OsRng;
use tessera_host::InProcessChannel;
use tessera_host::vault::files::{self, CardIdentity, FileOutcome};
use tessera_host::vault::issuance::{self, Plan};
use tessera_host::vault::{VaultCard, backup};

use super::{Chapter, Narrator};
use crate::error::{CliError, Exit};

/// The chapter.
pub const CHAPTER: Chapter =
    Chapter { name: "vault", title: "card duplication, files and recovery", run };

type Chan = InProcessChannel<Card>;
/// A decryption's outcome and the card, given back.
type Decrypted = (Result<Vec<u8>, CliError>, VaultCard<Chan>);

struct Direct<'a>(&'a mut Card);
impl TearDriver for Direct<'_> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, PowerCut> {
        Ok(self.0.transmit(apdu))
    }
    fn arm(&mut self) {}
}

fn other(e: impl std::fmt::Display) -> CliError {
    CliError::new(Exit::Other, e.to_string())
}

/// A card with its card-management applet issued (the demo's keys, card id and PIN 1234).
fn issued_card() -> Result<Chan, CliError> {
    let mut card = Card::in_memory(CardOptions::default());
    card.power_on();
    isd::scenarios::personalize(&mut Script::new(&mut Direct(&mut card)))
        .map_err(|e| other(format!("{e:?}")))?;
    Ok(InProcessChannel::new(card))
}

/// Decrypts `path` through `card`; gives the card back with the outcome.
fn decrypt(card: VaultCard<Chan>, path: &PathBuf) -> Result<Decrypted, CliError> {
    let id = CardIdentity::new(card)?;
    let mut out = Vec::new();
    let r = std::fs::File::open(path)
        .map_err(other)
        .and_then(|f| files::decrypt(&id, f, &mut out).map_err(CliError::from))
        .map(|_| out);
    Ok((r, id.into_card()))
}

fn run(n: &mut Narrator) -> Result<(), CliError> {
    let pin = isd::scenarios::PIN;
    n.say(
        "Two cards are issued together: a main card and its backup card. Both receive the same \
         key group of 3 components; the issuer sets component 1 at issuance (generated here, \
         never written anywhere), the holder sets components 2 and 3 later. Each component is \
         written once and tagged with who set it.",
    );
    let keys = isd::scenarios::issued_keys();
    let (mut m, mut b) = (issued_card()?, issued_card()?);
    let plan = Plan::shared(3, 1).map_err(other)?;
    issuance::issue_pair(&mut m, &keys, &mut b, &keys, &plan, &mut OsRng)?;
    let mut main = VaultCard::select(m)?;
    let mut backup_card = VaultCard::select(b)?;
    main.verify_pin(pin)?;
    backup_card.verify_pin(pin)?;

    n.say(
        "Backup (`tessera vault backup --main-image … --backup-image …`): the holder's \
         components go to both cards, each write confirmed by its check value; the main card \
         generates its key pair, exports the private key wrapped under a key derived from all \
         components (AES-256-GCM, bound to key type, role and key-group check value), the backup \
         card unwraps it and answers a confirmation only a card of this key group can make; only \
         then does the main card record \"backup created\". A second export is refused.",
    );
    let holder: Vec<(u8, [u8; 32])> = plan
        .holder_slots()
        .into_iter()
        .map(|s| {
            let mut c = [0u8; 32];
            tessera_crypto::rng::Rng::fill_random(&mut OsRng, &mut c);
            (s, c)
        })
        .collect();
    let report = backup::run(&mut main, &mut backup_card, &holder)?;
    for step in &report.steps {
        n.say(&format!("  {step}"));
    }
    let st = main.status()?;
    n.say(&format!(
        "Main card: backup created = {}, export pending = {}; export now answers: {}",
        st.backup_created,
        st.export_pending,
        main.export().map(|_| "exported?!".to_owned()).unwrap_or_else(|e| e.to_string())
    ));

    let recipient = files::recipient_string(&main.public_key()?)?;
    n.say(&format!(
        "The card's age recipient is the native tagged P-256 form: {recipient}. Anyone encrypts \
         to it without the card (`rage -r {recipient}` works too)."
    ));
    let dir = std::env::temp_dir().join(format!("tessera-demo-vault-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(other)?;
    let mut paths = Vec::new();
    let pk = main.public_key()?;
    for (i, text) in ["the first file", "a second one", "and a third"].iter().enumerate() {
        let p = dir.join(format!("note{i}.age"));
        let mut out = Vec::new();
        files::encrypt(&[pk], text.as_bytes(), &mut out)?;
        std::fs::write(&p, &out).map_err(other)?;
        paths.push((p, *text));
    }
    n.say(&format!("Encrypted {} files into {}.", paths.len(), dir.display()));
    let (r, _main) = decrypt(main, &paths[0].0)?;
    n.say(&format!(
        "The main card decrypts note0: {:?}. Only the file key (16 bytes) reaches the host; the \
         private key stays in the card.",
        String::from_utf8_lossy(&r?)
    ));

    n.say("The main card is lost. The backup card holds the same key and decrypts the same files.");
    let (r, backup_card) = decrypt(backup_card, &paths[1].0)?;
    n.say(&format!("Backup card decrypts note1: {:?}", String::from_utf8_lossy(&r?)));

    n.say(
        "Recovery onto a new card (`tessera vault recover --backup … --new … FILES…`): for each \
         file the backup card opens its stanza, re-wraps the file key to the new card's key and \
         computes the new header MAC itself (TRANSCRYPT), so no file key reaches the host. Only \
         headers change; each file is replaced crash-safely (new file, fsync, rename).",
    );
    let new_plan = Plan::holder_sets_all(1).map_err(other)?;
    let (mut nm, mut nb) = (issued_card()?, issued_card()?);
    issuance::issue_pair(&mut nm, &keys, &mut nb, &keys, &new_plan, &mut OsRng)?;
    let mut new = VaultCard::select(nm)?;
    new.verify_pin(pin)?;
    let mut c = [0u8; 32];
    tessera_crypto::rng::Rng::fill_random(&mut OsRng, &mut c);
    new.put_component(1, &c)?;
    let new_pk = new.generate()?;
    let mut backup_card = backup_card;
    let list: Vec<PathBuf> = paths.iter().map(|(p, _)| p.clone()).collect();
    let reports = files::recover(&mut backup_card, &new_pk, &list, 64, &mut |_| {})?;
    for r in &reports {
        let what = match &r.outcome {
            FileOutcome::Recovered => "recovered".to_owned(),
            other => format!("{other:?}"),
        };
        n.say(&format!("  {}: {what}", r.path.display()));
    }
    let mut new = new;
    for (p, text) in &paths {
        let (r, card) = decrypt(new, p)?;
        new = card;
        let got = r?;
        if got != text.as_bytes() {
            return Err(other("recovered file does not decrypt to its text"));
        }
    }
    let (r, _) = decrypt(backup_card, &paths[2].0)?;
    n.say(&format!(
        "The new card decrypts all {} files; the backup card's stanza was replaced ({}).",
        paths.len(),
        match r {
            Ok(_) => "it still decrypts?!".to_owned(),
            Err(e) => e.to_string(),
        }
    ));
    let _ = std::fs::remove_dir_all(&dir);
    key_service(n)
}

/// Relays one tunnel step's APDUs to the card.
fn relay(card: &mut Chan, apdus: &[String]) -> Result<Vec<String>, CliError> {
    use tessera_host::CardChannel;
    apdus
        .iter()
        .map(|a| {
            let bytes = hex::decode(a).map_err(other)?;
            Ok(hex::encode_upper(card.transmit_raw(&bytes).map_err(other)?))
        })
        .collect()
}

/// Runs a tunnel session to its end; returns its outcome's result and message.
async fn drive(
    store: &tessera_server::Store,
    card: &mut Chan,
    mut step: tessera_server::store::sessions::TunnelStep,
) -> Result<(String, String), CliError> {
    use tessera_server::store::sessions::Exchange;
    while !step.done {
        let responses = relay(card, &step.apdus)?;
        step = store
            .exchange(&step.session_id, &Exchange { step: step.step, responses })
            .await
            .map_err(other)?;
    }
    let o = step.outcome.ok_or_else(|| other("session without outcome"))?;
    Ok((o.result, o.message))
}

/// The key-service variant (Figs. 28-31, claims 3, 10, 13).
fn key_service(n: &mut Narrator) -> Result<(), CliError> {
    use tessera_card::applets::vault::scenarios::{
        issuance_groups, issue, personalize_vault, test_components,
    };
    use tessera_proto::vault::{Config, Role};
    use tessera_server::db::{Db, DbLocation};
    use tessera_server::primitives::MasterKey;
    use tessera_server::store::auth::Principal;
    use tessera_server::store::issuance::StartIssuance;
    use tessera_server::store::sessions::CreateSession;
    use tessera_server::{Store, StoreConfig};

    n.say(
        "Key-service variant (`tessera admin vault provision ISSUER CARD`, then `tessera sync`): \
         the issuer's server generates the main card's key pair and delivers the private key \
         sealed (HPKE) to the card's transport key. The card first attests, with the device key \
         its issuer certified, which transport key it has and that it holds no key yet, so a \
         relaying terminal cannot substitute its own. Without an escrow policy the server keeps \
         only the public key once the card attests it holds the key.",
    );
    let dir = std::env::temp_dir().join(format!("tessera-demo-keyservice-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(other)?;
    let groups = |role| -> Result<Vec<(u16, Vec<u8>)>, CliError> {
        let issuer: Vec<(u8, [u8; 32])> =
            test_components(2).into_iter().zip(1u8..).map(|(c, i)| (i, c)).collect();
        Ok(issuance_groups(Config::new(role, 2).map_err(other)?, &issuer, None))
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(other)?;
    let result = rt.block_on(async {
        let db = Db::open(&DbLocation::Sqlite(dir.join("server.db"))).await.map_err(other)?;
        let store =
            Store::open(db, MasterKey::generate(), StoreConfig::default()).await.map_err(other)?;
        let root = Principal::system();
        store.create_issuer(&root, "demo", "Demo Issuer").await.map_err(other)?;
        // A blank card whose vault the issuer configured (main role, both components), issued
        // through the tunnel: the server makes its keys, PIN and device certificate.
        let mut card = Card::in_memory(CardOptions::default());
        card.power_on();
        {
            let mut driver = Direct(&mut card);
            let mut s = Script::new(&mut driver);
            let e = |e: tessera_card::TearError| other(format!("{e:?}"));
            isd::scenarios::open_initial(&mut s).map_err(e)?;
            personalize_vault(&mut s, &groups(Role::Main)?).map_err(e)?;
        }
        let mut main = InProcessChannel::new(card);
        let start = StartIssuance { card_id: "DEMO-MAIN".into(), legacy_static_auth: false };
        let issuance = store.start_issuance(&root, "demo", &start).await.map_err(other)?;
        let (result, _) = drive(&store, &mut main, issuance.session.clone()).await?;
        n.say(&format!("Card DEMO-MAIN issued through the tunnel: {result}."));
        let info = store.provision_vault_key(&root, "demo", "DEMO-MAIN").await.map_err(other)?;
        let pk: [u8; 65] = hex::decode(&info.public_key)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| other("public key"))?;
        n.say(&format!(
            "Provisioned: {} (recipient {}), private key held by the server until delivery.",
            info.status,
            files::recipient_string(&pk)?
        ));
        let mut v = VaultCard::select(main)?;
        v.verify_pin(issuance.initial_pin.as_bytes())?;
        let mut main = v.into_channel();
        let session =
            store.create_session("demo", &CreateSession::default()).await.map_err(other)?;
        let (result, message) = drive(&store, &mut main, session).await?;
        n.say(&format!("The card's sync: {result}: {message}"));
        let after = store.vault_key(&root, "demo", "DEMO-MAIN").await.map_err(other)?;
        n.say(&format!(
            "Server: {}, private key held: {} (no escrow policy).",
            after.status, after.private_key_held
        ));
        Ok::<_, CliError>((main, pk, issuance.initial_pin))
    });
    let _ = std::fs::remove_dir_all(&dir);
    let (main, pk, main_pin) = result?;

    let mut backup_card = Card::in_memory(CardOptions::default());
    backup_card.power_on();
    issue(&mut Script::new(&mut Direct(&mut backup_card)), &groups(Role::Backup)?)
        .map_err(|e| other(format!("{e:?}")))?;
    let mut main = VaultCard::select(main)?;
    main.verify_pin(main_pin.as_bytes())?;
    let mut backup_card = VaultCard::select(InProcessChannel::new(backup_card))?;
    backup_card.verify_pin(isd::scenarios::PIN)?;
    let report = backup::run(&mut main, &mut backup_card, &[])?;
    for step in &report.steps {
        n.say(&format!("  {step}"));
    }
    if backup_card.public_key()? != pk {
        return Err(other("the backup card holds another key"));
    }
    n.say(
        "The backup flow moved the delivered key to the backup card, exactly as for a key the \
         main card generated: both cards now decrypt files encrypted to the provisioned recipient.",
    );
    Ok(())
}
