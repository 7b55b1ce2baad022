//! The backup flow (Figs. 13-15, claim 7): with the main and the backup card both present,
//! the holder's components are written to both (each write confirmed by its check value), the
//! key groups are compared, the main card generates its key pair, exports it wrapped, the
//! backup card imports it and answers its confirmation, and the main card records "backup
//! created". Every step first reads where the cards are, so after a failure at any step the
//! same call continues from there.

use tessera_card::applets::vault::component_check;
use tessera_proto::vault::{COMPONENT_LEN, PUBLIC_KEY_LEN, Role, Status};

use super::{VaultCard, VaultError};
use crate::channel::CardChannel;

/// What the backup flow did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackupReport {
    /// The steps taken, in order, for the user.
    pub steps: Vec<String>,
    /// The key pair's public key (uncompressed SEC1).
    pub public_key: Option<[u8; PUBLIC_KEY_LEN]>,
}

fn state(msg: impl Into<String>) -> VaultError {
    VaultError::State(msg.into())
}

/// Runs (or resumes) the backup. Both cards must have the PIN verified; `holder` holds the
/// holder's `(slot, component)` values for the slots the issuer left empty.
pub fn run<M: CardChannel, B: CardChannel>(
    main: &mut VaultCard<M>,
    backup: &mut VaultCard<B>,
    holder: &[(u8, [u8; COMPONENT_LEN])],
) -> Result<BackupReport, VaultError> {
    let mut report = BackupReport::default();
    let ms = main.status()?;
    let bs = backup.status()?;
    if ms.config.role != Role::Main || bs.config.role != Role::Backup {
        return Err(state("the first card must be a main card and the second a backup card"));
    }
    if ms.config.components != bs.config.components {
        return Err(state("the two cards have different component counts: not a pair"));
    }
    // Before writing anything (components are written once): slots set on both cards must
    // hold the same component, or the cards are not a pair.
    for (slot, (a, b)) in ms.components.iter().zip(&bs.components).enumerate() {
        if let (Some((_, a)), Some((_, b))) = (a, b)
            && a != b
        {
            return Err(state(format!(
                "component {} differs between the two cards: they hold different key groups, not a pair (nothing written)",
                slot + 1
            )));
        }
    }
    // 1. Holder components, on both cards, each write confirmed.
    for (name, card_status, is_main) in [("main", &ms, true), ("backup", &bs, false)] {
        for (slot, value) in holder {
            let expected = component_check(*slot, value);
            match card_status.components.get(usize::from(*slot).wrapping_sub(1)) {
                None => return Err(state(format!("slot {slot} does not exist"))),
                Some(Some((_, check))) if *check == expected => {
                    report.steps.push(format!("{name}: component {slot} already set"));
                }
                Some(Some(_)) => {
                    return Err(state(format!(
                        "{name} card: slot {slot} holds a different component (written once; \
                         check the holder's components or reissue the card)"
                    )));
                }
                Some(None) => {
                    let answer = if is_main {
                        main.put_component(*slot, value)?
                    } else {
                        backup.put_component(*slot, value)?
                    };
                    if answer != expected {
                        return Err(state(format!("{name} card: component {slot} not confirmed")));
                    }
                    report.steps.push(format!("{name}: component {slot} written and confirmed"));
                }
            }
        }
    }
    let ms = main.status()?;
    let bs = backup.status()?;
    let missing = |s: &Status| s.components.iter().position(Option::is_none).map(|i| i + 1);
    if let Some(slot) = missing(&ms).or(missing(&bs)) {
        return Err(state(format!("component {slot} is still empty: the holder must provide it")));
    }
    if ms.group_check.is_none() || ms.group_check != bs.group_check {
        return Err(state("the two cards hold different key groups: not a pair"));
    }
    // 2. The key pair on the main card.
    let public = match ms.key {
        Some(_) => main.public_key()?,
        None => {
            let pk = main.generate()?;
            report.steps.push("main: key pair generated".into());
            pk
        }
    };
    report.public_key = Some(public);
    if bs.key.is_some() && backup.public_key()? != public {
        return Err(state("the backup card holds another key pair"));
    }
    if ms.backup_created {
        if bs.key.is_none() {
            return Err(state("the main card records a backup, but this backup card has no key"));
        }
        report.steps.push("backup already confirmed".into());
        return Ok(report);
    }
    if ms.export_locked {
        return Err(state("export is locked on the main card: no backup can be made"));
    }
    // 3. Move the wrapped key and confirm.
    let blob = main.export()?;
    report.steps.push("main: key exported, wrapped under the key group".into());
    let confirmation = backup.import_wrapped(&blob)?;
    report.steps.push("backup: wrapped key imported".into());
    main.confirm_backup(&confirmation)?;
    report.steps.push("main: backup confirmed".into());
    Ok(report)
}
