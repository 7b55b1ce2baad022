//! The update step of issuance, for [`crate::issuance`] to call (one line, as the keyring
//! step does): the commands that make the card generate its update key inside the issuance's
//! SCP03 session, after the device identity and before PERSONALIZED, and the check of the key
//! the card then reports, which registers the card with the update service.
//!
//! | command | APDU (before wrapping) |
//! |---|---|
//! | INSTALL [for personalization] | `80 E6 20 00 Lc 00 L AID 00 00 00 00`: STORE DATA now goes to the update applet |
//! | STORE DATA | `80 E2 88 00 Lc 0501 L nonce`: generate the update key; the device key signs it with `nonce` |
//! | (after PERSONALIZED, no session) SELECT update, GET DATA `0102` | `public key (65) ‖ proof (64)`, for [`super::UpdateService::register_card`] |

use tessera_apdu::Command;
use tessera_proto::update::{
    AID, DGI_GENERATE_KEY, DGI_LEGACY_STATIC, POP_NONCE_RANGE, STATIC_AUTH_LEN, TAG_UPDATE_KEY,
    UpdateCommand,
};

use super::{UpdateError, UpdateResult};

/// The personalisation commands that generate the update key, vouched for over `nonce`
/// (16 to 64 bytes, fresh per card; keep it for [`super::UpdateService::register_card`]).
pub fn personalisation_commands(nonce: &[u8]) -> UpdateResult<Vec<Command>> {
    personalisation_commands_with(nonce, None)
}

/// [`personalisation_commands`], and for a legacy card the static authenticator of claim 10
/// (DGI `0503` in the same STORE DATA; register the same value with
/// `Store::update_set_legacy_static`); issuance calls it for `tessera issue --legacy-static-auth`.
pub fn personalisation_commands_with(
    nonce: &[u8],
    legacy_static: Option<&[u8; STATIC_AUTH_LEN]>,
) -> UpdateResult<Vec<Command>> {
    if !POP_NONCE_RANGE.contains(&nonce.len()) {
        return Err(UpdateError::BadUpdate("update key nonce: 16 to 64 bytes"));
    }
    let mut install = vec![0x00, AID.len() as u8];
    install.extend_from_slice(AID);
    install.extend_from_slice(&[0x00, 0x00, 0x00]);
    let mut data = DGI_GENERATE_KEY.to_be_bytes().to_vec();
    data.push(nonce.len() as u8);
    data.extend_from_slice(nonce);
    if let Some(value) = legacy_static {
        data.extend_from_slice(&DGI_LEGACY_STATIC.to_be_bytes());
        data.push(STATIC_AUTH_LEN as u8);
        data.extend_from_slice(value);
    }
    Ok(vec![
        Command::new(0x80, 0xE6, 0x20, 0x00).with_data(install).with_le(256),
        Command::new(0x80, 0xE2, 0x88, 0x00).with_data(data),
    ])
}

/// The plain commands that read the update key once the card is PERSONALIZED: SELECT the
/// update applet, GET DATA `0102`. The answer of the second goes to `register_card`.
pub fn read_key_commands() -> Vec<Command> {
    vec![
        Command::new(0x00, 0xA4, 0x04, 0x00).with_data(AID.to_vec()).with_le(256),
        UpdateCommand::GetData(TAG_UPDATE_KEY).to_command(),
    ]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tessera_apdu::{Response, StatusWord};
    use tessera_card::applets::isd::scenarios::{self as isd_sc, CARD_ID, PKI_T0};
    use tessera_card::script::Script;
    use tessera_card::{Card, CardOptions, PowerCut, TearDriver};
    use tessera_crypto::hpke::HpkePrivateKey;
    use tessera_crypto::rng::SeededRng;
    use tessera_crypto::x509::Certificate;

    use super::*;
    use crate::update::{IssuerKeys, MemoryUpdateStore, UpdateService};

    struct Plain<'a>(&'a mut Card);
    impl TearDriver for Plain<'_> {
        fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, PowerCut> {
            Ok(self.0.transmit(apdu))
        }
        fn arm(&mut self) {}
    }

    #[test]
    fn the_issuance_step_generates_a_key_the_service_registers() {
        assert!(personalisation_commands(&[0; 15]).is_err());
        let nonce = [0x3C; 32];
        let mut card =
            Card::in_memory(CardOptions::default().rng(Box::new(SeededRng::from_u64(1))));
        card.power_on();
        {
            // As issuance does: card id and device identity, then this step, in one SCP03
            // session.
            let mut plain = Plain(&mut card);
            let mut s = Script::new(&mut plain);
            isd_sc::open_initial(&mut s).unwrap();
            isd_sc::store(&mut s, 0, true, &[(0x0101, CARD_ID)]).unwrap();
            isd_sc::install_device_identity(&mut s, 0).unwrap();
            for cmd in personalisation_commands(&nonce).unwrap() {
                s.secure(&cmd, StatusWord::SUCCESS).unwrap();
            }
        }
        let answers: Vec<Response> = read_key_commands()
            .iter()
            .map(|c| Response::parse(&card.transmit(&c.to_bytes().unwrap())).unwrap())
            .collect();
        assert!(answers.iter().all(|r| r.sw == StatusWord::SUCCESS));
        // The device certificate, as issuance recorded it.
        let select_isd = Command::new(0x00, 0xA4, 0x04, 0x00)
            .with_data(tessera_card::applets::isd::AID.to_vec())
            .with_le(256);
        card.transmit(&select_isd.to_bytes().unwrap());
        let cert =
            card.transmit(&Command::new(0x80, 0xCA, 0x7F, 0x21).with_le(65536).to_bytes().unwrap());
        let cert = Certificate::from_der(cert[5..cert.len() - 2].to_vec()).unwrap();

        let mut service = UpdateService::new(
            MemoryUpdateStore::default(),
            HpkePrivateKey::generate(&mut SeededRng::from_u64(2)),
        );
        let (_, ca, _) = isd_sc::issuer_pki().unwrap();
        service.add_issuer(IssuerKeys {
            id: "test".into(),
            ca,
            package_signer: Box::new(tessera_card::applets::update::scenarios::package_signer()),
        });
        let now = PKI_T0 + 100;
        assert_eq!(
            service.register_card("test", CARD_ID, cert.clone(), &[0; 32], &answers[1].data, now),
            Err(UpdateError::UpdateKeyProof)
        );
        service.register_card("test", CARD_ID, cert, &nonce, &answers[1].data, now).unwrap();
    }

    #[test]
    fn a_legacy_card_gets_its_static_authenticator_in_the_same_store_data() {
        let plain_cmds = personalisation_commands(&[7; 32]).unwrap();
        let legacy_cmds = personalisation_commands_with(&[7; 32], Some(&[0x42; 16])).unwrap();
        assert_eq!(plain_cmds[0], legacy_cmds[0]);
        assert_eq!(
            legacy_cmds[1].data,
            [&plain_cmds[1].data[..], &[0x05, 0x03, 16], &[0x42; 16]].concat()
        );
        let mut card =
            Card::in_memory(CardOptions::default().rng(Box::new(SeededRng::from_u64(3))));
        card.power_on();
        {
            let mut plain = Plain(&mut card);
            let mut s = Script::new(&mut plain);
            isd_sc::open_initial(&mut s).unwrap();
            isd_sc::store(&mut s, 0, true, &[(0x0101, CARD_ID)]).unwrap();
            isd_sc::install_device_identity(&mut s, 0).unwrap();
            for cmd in &legacy_cmds {
                s.secure(cmd, StatusWord::SUCCESS).unwrap();
            }
        }
        let select = &read_key_commands()[0];
        card.transmit(&select.to_bytes().unwrap());
        let status = UpdateCommand::GetData(tessera_proto::update::TAG_STATUS).to_command();
        let r = Response::parse(&card.transmit(&status.to_bytes().unwrap())).unwrap();
        let status = tessera_proto::update::Status::parse(&r.data).unwrap();
        assert!(status.has_key && status.legacy_static);
    }
}
