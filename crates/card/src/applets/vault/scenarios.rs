//! Issuance helpers and the vault's tear scenarios: every state-changing command.

use tessera_apdu::{Command, Response, StatusWord};
use tessera_crypto::hpke::{self, HpkePublicKey};
use tessera_crypto::rng::SeededRng;
use tessera_proto::vault::{self as proto, COMPONENT_LEN, Config, Role, VaultCommand, WrappedKey};

use super::{AID, backup_confirmation, import_sealed_info, wrap_for_group};
use crate::applet::{TearDriver, TearError, TearScenario};
use crate::applets::isd;
use crate::pin::PinBlock;
use crate::script::Script;

fn unexpected(what: impl Into<String>) -> TearError {
    TearError::Unexpected(what.into())
}

/// The scenarios' test components (slot `i` is `[0x40 + i; 32]`).
pub fn test_components(n: u8) -> Vec<[u8; COMPONENT_LEN]> {
    (1..=n).map(|i| [0x40 + i; COMPONENT_LEN]).collect()
}

/// A fixed private scalar for scenarios that need a key made outside.
pub const TEST_PRIVATE_KEY: [u8; 32] = [0x5A; 32];

/// INSTALL [for personalization] of the vault, then one STORE DATA block per data group, in
/// the ISD session `s` has open.
pub fn personalize_vault(s: &mut Script<'_>, groups: &[(u16, Vec<u8>)]) -> Result<(), TearError> {
    let mut install = vec![0x00, AID.len() as u8];
    install.extend_from_slice(AID);
    install.extend_from_slice(&[0, 0, 0]);
    s.secure(
        &Command::new(0x80, 0xE6, 0x20, 0x00).with_data(install).with_le(256),
        StatusWord::SUCCESS,
    )?;
    for (block, (dgi, value)) in groups.iter().enumerate() {
        let last = block + 1 == groups.len();
        isd::scenarios::store(s, block as u8, last, &[(*dgi, value)])?;
    }
    Ok(())
}

/// The data groups of an issuance: the configuration, the issuer's components (`(slot,
/// value)`) and optionally a key pair made outside.
pub fn issuance_groups(
    config: Config,
    issuer: &[(u8, [u8; COMPONENT_LEN])],
    key: Option<&[u8; 32]>,
) -> Vec<(u16, Vec<u8>)> {
    let mut groups = vec![(proto::DGI_CONFIG, config.to_bytes().to_vec())];
    for (slot, value) in issuer {
        let mut v = vec![*slot];
        v.extend_from_slice(value);
        groups.push((proto::DGI_COMPONENT, v));
    }
    if let Some(k) = key {
        groups.push((proto::DGI_KEY, k.to_vec()));
    }
    groups
}

/// Issues a blank card (ISD personalisation with the scenarios' PIN) and its vault.
pub fn issue(s: &mut Script<'_>, groups: &[(u16, Vec<u8>)]) -> Result<(), TearError> {
    isd::scenarios::personalize(s)?;
    personalize_vault(s, groups)
}

/// SELECT the ISD, VERIFY the scenarios' PIN, SELECT the vault.
pub fn verify_pin(s: &mut Script<'_>) -> Result<(), TearError> {
    s.select(isd::AID)?;
    let block = PinBlock::from_value(isd::scenarios::PIN)
        .map_err(|sw| unexpected(format!("pin block: {sw}")))?;
    s.expect(
        &Command::new(0x00, 0x20, 0x00, 0x81).with_data(block.as_bytes().to_vec()),
        StatusWord::SUCCESS,
    )?;
    s.select(AID)?;
    Ok(())
}

/// Sends a vault command and expects `9000`.
pub fn send(s: &mut Script<'_>, cmd: &VaultCommand) -> Result<Response, TearError> {
    s.expect(&cmd.to_command(), StatusWord::SUCCESS)
}

/// A card with `n` components, the issuer's odd slots set at issuance, the holder's even
/// slots set (PIN verified, vault selected), unless `holder` is false.
pub fn issued(s: &mut Script<'_>, role: Role, n: u8, holder: bool) -> Result<(), TearError> {
    let all = test_components(n);
    let issuer: Vec<(u8, [u8; 32])> =
        (1..=n).filter(|i| i % 2 == 1).map(|i| (i, all[usize::from(i - 1)])).collect();
    let config = Config::new(role, n).map_err(|e| unexpected(e.to_string()))?;
    issue(s, &issuance_groups(config, &issuer, None))?;
    verify_pin(s)?;
    if holder {
        for i in (1..=n).filter(|i| i % 2 == 0) {
            send(s, &VaultCommand::PutComponent { slot: i, component: all[usize::from(i - 1)] })?;
        }
    }
    Ok(())
}

fn personalisation(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    isd::scenarios::personalize(&mut s)?;
    s.arm();
    let config = Config::new(Role::Main, 2).map_err(|e| unexpected(e.to_string()))?;
    personalize_vault(
        &mut s,
        &issuance_groups(config, &[(1, test_components(2)[0])], Some(&TEST_PRIVATE_KEY)),
    )
}

fn put_component(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    issued(&mut s, Role::Main, 2, false)?;
    s.arm();
    send(&mut s, &VaultCommand::PutComponent { slot: 2, component: test_components(2)[1] })?;
    Ok(())
}

fn generate(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    issued(&mut s, Role::Main, 2, true)?;
    s.arm();
    send(&mut s, &VaultCommand::Generate)?;
    Ok(())
}

fn export(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    issued(&mut s, Role::Main, 3, true)?;
    send(&mut s, &VaultCommand::Generate)?;
    s.arm();
    send(&mut s, &VaultCommand::Export)?;
    Ok(())
}

fn confirm(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    issued(&mut s, Role::Main, 2, true)?;
    send(&mut s, &VaultCommand::Generate)?;
    let r = send(&mut s, &VaultCommand::Export)?;
    let blob = WrappedKey::parse(&r.data).map_err(|e| unexpected(e.to_string()))?;
    let c = backup_confirmation(&test_components(2), &blob)
        .ok_or_else(|| unexpected("confirmation"))?;
    s.arm();
    send(&mut s, &VaultCommand::ConfirmBackup(c))?;
    Ok(())
}

fn import_wrapped(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    issued(&mut s, Role::Backup, 2, true)?;
    let blob = wrap_for_group(
        &mut SeededRng::from_u64(3),
        &test_components(2),
        &TEST_PRIVATE_KEY,
        [7; 16],
    )
    .ok_or_else(|| unexpected("wrap"))?;
    s.arm();
    send(&mut s, &VaultCommand::ImportWrapped(blob))?;
    Ok(())
}

fn lock_export(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    issued(&mut s, Role::Main, 1, true)?;
    s.arm();
    send(&mut s, &VaultCommand::LockExport)?;
    Ok(())
}

fn import_sealed(d: &mut dyn TearDriver) -> Result<(), TearError> {
    let mut s = Script::new(d);
    issued(&mut s, Role::Main, 1, true)?;
    let r = send(&mut s, &VaultCommand::GetData(proto::TAG_TRANSPORT_KEY))?;
    let pk = HpkePublicKey::from_bytes(&r.data).map_err(|e| unexpected(e.to_string()))?;
    let sealed = hpke::seal_with_rng(
        &mut SeededRng::from_u64(9),
        &pk,
        &import_sealed_info(isd::scenarios::CARD_ID),
        AID,
        &TEST_PRIVATE_KEY,
    )
    .map_err(|e| unexpected(e.to_string()))?;
    s.arm();
    send(&mut s, &VaultCommand::ImportSealed(sealed))?;
    Ok(())
}

/// Every state-changing vault command under the tearing test.
pub fn all() -> Vec<TearScenario> {
    vec![
        TearScenario {
            name: "vault personalisation (config, issuer component, key)",
            script: personalisation,
        },
        TearScenario { name: "vault PUT COMPONENT", script: put_component },
        TearScenario { name: "vault GENERATE", script: generate },
        TearScenario { name: "vault EXPORT", script: export },
        TearScenario { name: "vault CONFIRM BACKUP", script: confirm },
        TearScenario { name: "vault IMPORT WRAPPED", script: import_wrapped },
        TearScenario { name: "vault IMPORT SEALED", script: import_sealed },
        TearScenario { name: "vault LOCK EXPORT", script: lock_export },
    ]
}
