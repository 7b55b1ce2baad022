//! The access applet against a card in memory: Fig. 7 states, PIN blocking, the access key,
//! and the settings' write rules.

#![allow(clippy::unwrap_used)]

use tessera_apdu::StatusWord;
use tessera_crypto::ecdsa::Signature;
use tessera_crypto::rng::SeededRng;
use tessera_crypto::tls::certificate_verify::tls13_client_content;
use tessera_crypto::x509::{Certificate, Role};
use tessera_proto::access::{
    self as proto, DATA_ACCESS_CERTIFICATE, DATA_HOME_SERVER, DATA_PROFILES, DATA_STATUS,
    HomeServer, Profiles, Status,
};

use super::scenarios::*;
use crate::applet::{PowerCut, TearDriver};
use crate::applets::home::scenarios::block;
use crate::applets::isd;
use crate::applets::pairing::scenarios::TestCa;
use crate::script::Script;
use crate::{Card, CardOptions};

struct Plain(Card);

impl TearDriver for Plain {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, PowerCut> {
        Ok(self.0.transmit(apdu))
    }
    fn arm(&mut self) {}
}

fn card() -> Plain {
    let mut c = Card::in_memory(CardOptions::default().rng(Box::new(SeededRng::from_u64(11))));
    c.power_on();
    Plain(c)
}

fn status(s: &mut Script<'_>) -> Status {
    let r = s.expect(&proto::get_data_command(DATA_STATUS), StatusWord::SUCCESS).unwrap();
    Status::parse(&r.data).unwrap()
}

#[test]
fn fig7_states_blocking_and_relock() {
    let mut d = card();
    let mut s = Script::new(&mut d);
    s.select(super::AID).unwrap();
    s.expect(&proto::verify_command(&block(PIN).unwrap()), StatusWord::CONDITIONS_NOT_SATISFIED)
        .unwrap();
    s.expect(
        &proto::set_pins_command(&block(PIN).unwrap(), &block(PUK).unwrap()),
        StatusWord::SUCCESS,
    )
    .unwrap();
    assert!(!status(&mut s).accessible);
    s.expect(&proto::get_data_command(DATA_PROFILES), StatusWord::SECURITY_STATUS_NOT_SATISFIED)
        .unwrap();
    unlock(&mut s).unwrap();
    assert!(status(&mut s).accessible);
    s.expect(&proto::relock_command(), StatusWord::SUCCESS).unwrap();
    assert!(!status(&mut s).accessible);
    for left in [2, 1, 0] {
        s.expect(&proto::verify_command(&block(b"0000").unwrap()), StatusWord::tries_left(left))
            .unwrap();
    }
    s.expect(&proto::verify_command(&block(PIN).unwrap()), StatusWord::AUTH_METHOD_BLOCKED)
        .unwrap();
    s.expect(
        &proto::unblock_command(&block(PUK).unwrap(), &block(b"7777").unwrap()),
        StatusWord::SUCCESS,
    )
    .unwrap();
    s.expect(&proto::verify_command(&block(b"7777").unwrap()), StatusWord::SUCCESS).unwrap();
    // Another applet's selection relocks.
    s.select(isd::AID).unwrap();
    s.select(super::AID).unwrap();
    assert!(!status(&mut s).accessible);
}

#[test]
fn the_access_key_signs_cv_contents_when_accessible() {
    let mut d = card();
    let mut s = Script::new(&mut d);
    let mut ca = TestCa::new("access CA", 3).unwrap();
    enrolled(&mut s, &mut ca).unwrap();
    let r =
        s.expect(&proto::get_data_command(DATA_ACCESS_CERTIFICATE), StatusWord::SUCCESS).unwrap();
    let info = Certificate::from_der(r.data).unwrap().info().unwrap();
    assert!(info.roles.contains(&Role::Access));
    let r = s.expect(&proto::sign_tls13_command(&[7; 32]), StatusWord::SUCCESS).unwrap();
    info.public_key
        .verify(&tls13_client_content(&[7; 32]), &Signature::from_der(&r.data).unwrap())
        .unwrap();
    s.expect(&proto::sign_tls12_command(b"not a handshake"), StatusWord::INCORRECT_DATA).unwrap();
    s.expect(&proto::generate_key_command(&[5; 16]), StatusWord::CONDITIONS_NOT_SATISFIED).unwrap();
    s.expect(&proto::relock_command(), StatusWord::SUCCESS).unwrap();
    s.expect(&proto::sign_tls13_command(&[7; 32]), StatusWord::SECURITY_STATUS_NOT_SATISFIED)
        .unwrap();
}

#[test]
fn the_home_server_is_pinned_once_and_replaced_only_with_the_puk() {
    let mut d = card();
    let mut s = Script::new(&mut d);
    blank_with_pins(&mut s).unwrap();
    s.expect(
        &proto::put_home_server_command(&home_server(1)),
        StatusWord::SECURITY_STATUS_NOT_SATISFIED,
    )
    .unwrap();
    unlock(&mut s).unwrap();
    s.expect(&proto::get_data_command(DATA_HOME_SERVER), StatusWord::REFERENCED_DATA_NOT_FOUND)
        .unwrap();
    s.expect(&proto::put_home_server_command(&home_server(1)), StatusWord::SUCCESS).unwrap();
    s.expect(
        &proto::put_home_server_command(&home_server(2)),
        StatusWord::CONDITIONS_NOT_SATISFIED,
    )
    .unwrap();
    let wrong = proto::replace_home_server_command(&block(b"00000000").unwrap(), &home_server(2));
    s.expect(&wrong, StatusWord::tries_left(2)).unwrap();
    let r = s.expect(&proto::get_data_command(DATA_HOME_SERVER), StatusWord::SUCCESS).unwrap();
    assert_eq!(HomeServer::parse(&r.data).unwrap(), home_server(1));
    let right = proto::replace_home_server_command(&block(PUK).unwrap(), &home_server(2));
    s.expect(&right, StatusWord::SUCCESS).unwrap();
    let r = s.expect(&proto::get_data_command(DATA_HOME_SERVER), StatusWord::SUCCESS).unwrap();
    assert_eq!(HomeServer::parse(&r.data).unwrap(), home_server(2));
    // Malformed settings change nothing.
    let bad = proto::put_profiles_command(&profiles()).with_data(vec![1, 0]);
    s.expect(&bad, StatusWord::INCORRECT_DATA).unwrap();
    let r = s.expect(&proto::get_data_command(DATA_PROFILES), StatusWord::SUCCESS).unwrap();
    assert_eq!(Profiles::parse(&r.data).unwrap(), Profiles::default());
    s.expect(&proto::put_profiles_command(&profiles()), StatusWord::SUCCESS).unwrap();
    let r = s.expect(&proto::get_data_command(DATA_PROFILES), StatusWord::SUCCESS).unwrap();
    assert_eq!(Profiles::parse(&r.data).unwrap(), profiles());
}

#[test]
fn the_issuer_re_pins_the_home_server() {
    let mut d = card();
    let mut s = Script::new(&mut d);
    blank_with_pins(&mut s).unwrap();
    unlock(&mut s).unwrap();
    s.expect(&proto::put_home_server_command(&home_server(1)), StatusWord::SUCCESS).unwrap();
    let bad = [0u8; 10];
    let store = crate::applets::home::scenarios::issuer_store;
    assert!(store(&mut s, super::AID, &[(proto::DGI_HOME_SERVER, &bad)], false).is_err());
    let server = home_server(4).to_bytes();
    store(&mut s, super::AID, &[(proto::DGI_HOME_SERVER, &server)], false).unwrap();
    s.select(super::AID).unwrap();
    unlock(&mut s).unwrap();
    let r = s.expect(&proto::get_data_command(DATA_HOME_SERVER), StatusWord::SUCCESS).unwrap();
    assert_eq!(HomeServer::parse(&r.data).unwrap(), home_server(4));
    let pins = [block(b"1212").unwrap(), block(b"34343434").unwrap()].concat();
    store(&mut s, super::AID, &[(proto::DGI_PINS, &pins)], false).unwrap();
    s.select(super::AID).unwrap();
    s.expect(&proto::verify_command(&block(PIN).unwrap()), StatusWord::tries_left(2)).unwrap();
    s.expect(&proto::verify_command(&block(b"1212").unwrap()), StatusWord::SUCCESS).unwrap();
}
