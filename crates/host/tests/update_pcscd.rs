//! A remote update session through a real pcscd: an issued card image is served into vpcd's
//! first slot; the terminal runs the whole chain over `PcscChannel` and delivers a 64 KiB
//! object (LOAD PACKAGE segments as extended APDUs) and a small one, then reads the large one
//! back. Skipped with a notice when pcscd or the vpcd driver is missing (fails under
//! `CI=true`), like `tests/pcscd.rs`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tessera_apdu::Command;
use tessera_card::applets::isd::scenarios::{self as isd_sc, CARD_ID, PKI_T0};
use tessera_card::applets::update::scenarios::{self as sc, KEY_NONCE};
use tessera_card::script::Script;
use tessera_card::{Card, CardOptions, OpenOptions, PowerCut, TearDriver};
use tessera_crypto::hpke::HpkePrivateKey;
use tessera_crypto::rng::SeededRng;
use tessera_crypto::x509::Certificate;
use tessera_host::pcscd::{self, Pcscd};
use tessera_host::update::{
    Identification, TrustedIssuers, UpdateServer, UpdateTerminal, run_session,
};
use tessera_host::vpcd::{BridgeConfig, DEFAULT_PORT, VpcdBridge};
use tessera_host::{CardChannel, InProcessChannel, PcscChannel};
use tessera_proto::update::{self as proto, Challenge, IssuerList, Mode, ReadRule, UpdateCommand};
use tessera_server::update::{AuthenticatedCard, IssuerKeys, MemoryUpdateStore, UpdateService};

const SLOT_0: &str = "Virtual PCD 00 00";
const NOW: u64 = PKI_T0 as u64 + 1000;

struct Plain<'a>(&'a mut Card);
impl TearDriver for Plain<'_> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, PowerCut> {
        Ok(self.0.transmit(apdu))
    }
    fn arm(&mut self) {}
}

struct Server {
    service: UpdateService<MemoryUpdateStore>,
    rng: SeededRng,
}

impl UpdateServer for Server {
    type Session = AuthenticatedCard;
    fn challenge(&mut self) -> Result<Challenge, String> {
        Ok(self.service.challenge(&mut self.rng, NOW))
    }
    fn identity_key(&mut self) -> Result<[u8; 65], String> {
        Ok(self.service.identity_public_key().to_bytes())
    }
    fn authenticate(
        &mut self,
        card_id: Option<&[u8]>,
        challenge: &Challenge,
        answer: &[u8],
    ) -> Result<AuthenticatedCard, String> {
        match card_id {
            Some(id) => self.service.authenticate(id, challenge, answer, NOW),
            None => self.service.authenticate_private(challenge, answer, NOW),
        }
        .map_err(|e| e.to_string())
    }
    fn pending(&mut self, s: &AuthenticatedCard) -> Result<Vec<(u64, Vec<u8>)>, String> {
        self.service.deliverable(&mut self.rng, s).map_err(|e| e.to_string())
    }
    fn receipt(&mut self, s: &AuthenticatedCard, receipt: &[u8]) -> Result<(), String> {
        self.service.accept_receipt(s, receipt).map(|_| ()).map_err(|e| e.to_string())
    }
}

#[test]
fn an_update_session_through_pcscd() {
    let Some(_daemon) = Pcscd::start_for_test(&[]) else { return };
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("card.img");

    let mut service = UpdateService::new(
        MemoryUpdateStore::default(),
        HpkePrivateKey::generate(&mut SeededRng::from_u64(0x5E)),
    );
    let (_, ca, _) = isd_sc::issuer_pki().unwrap();
    service.add_issuer(IssuerKeys {
        id: "test".into(),
        ca: ca.clone(),
        package_signer: Box::new(sc::package_signer()),
    });
    {
        let mut card = Card::create(&image, CardOptions::default()).unwrap();
        card.power_on();
        sc::issue(&mut Script::new(&mut Plain(&mut card)), CARD_ID, &[], false).unwrap();
        let mut ch = InProcessChannel::new(card);
        let select = |aid: &[u8]| Command::new(0x00, 0xA4, 0x04, 0x00).with_data(aid.to_vec());
        ch.transmit(&select(tessera_card::applets::isd::AID)).unwrap();
        let cert = ch.transmit(&Command::new(0x80, 0xCA, 0x7F, 0x21).with_le(65536)).unwrap().data;
        let cert = Certificate::from_der(cert[5..].to_vec()).unwrap();
        ch.transmit(&select(proto::AID)).unwrap();
        let key =
            ch.transmit(&UpdateCommand::GetData(proto::TAG_UPDATE_KEY).to_command()).unwrap().data;
        service.register_card("test", CARD_ID, cert, &KEY_NONCE, &key, NOW as i64).unwrap();
    }
    let mut server = Server { service, rng: SeededRng::from_u64(9) };
    let big: Vec<u8> = (0..proto::MAX_OBJECT_LEN).map(|i| (i % 253) as u8).collect();
    let Server { service, rng } = &mut server;
    service.queue(rng, CARD_ID, b"cert", &big, Mode::Sealed, ReadRule::Pin).unwrap();
    service.queue(rng, CARD_ID, b"wifi", b"over-pcsc", Mode::Apply, ReadRule::Pin).unwrap();

    let publisher = tessera_crypto::ecdsa::SigningKey::generate(&mut SeededRng::from_u64(1));
    let mut list = IssuerList {
        version: 1,
        issuers: vec![("test".into(), ca.der().to_vec())],
        signature: [0; 64],
    };
    list.signature = publisher.sign(&list.signed_message()).to_bytes();
    let mut trusted = TrustedIssuers::new(publisher.public_key());
    trusted.install(&list.to_bytes()).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let served = std::thread::spawn(move || {
        let card = Card::open(&image, OpenOptions::default()).unwrap();
        let mut bridge =
            VpcdBridge::new(card, BridgeConfig { port: DEFAULT_PORT, ..Default::default() });
        bridge.run(&flag).unwrap();
    });
    assert!(
        pcscd::wait_until(Duration::from_secs(15), || pcscd::card_present(SLOT_0)),
        "timed out waiting for the card in slot 0"
    );

    let mut terminal = UpdateTerminal::new(PcscChannel::connect(Some(SLOT_0)).unwrap());
    let report =
        run_session(&mut terminal, &trusted, isd_sc::PIN, Identification::Plain, &mut server)
            .unwrap();
    assert_eq!(report.delivered, vec![1, 2]);
    assert_eq!(terminal.read(b"wifi").unwrap(), b"over-pcsc");
    assert_eq!(terminal.read(b"cert").unwrap(), big);
    drop(terminal);

    stop.store(true, Ordering::Relaxed);
    served.join().unwrap();
}
