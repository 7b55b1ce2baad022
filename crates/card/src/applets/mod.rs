//! The applets of the card, and their registration.
//!
//! Adding an applet: write its module here (persistent and volatile state, a typed command
//! enum parsed at its edge, an [`Applet`] implementation with its tear scenarios) and add one
//! line to [`registry`]. Registered applets are selectable by AID, stored in the image, and
//! run by the tearing test automatically.

use tessera_crypto::scp03::StaticKeys;

use crate::applet::{Applet, TearScenario};

pub mod access;
pub mod home;
pub mod isd;
pub mod keyring;
pub mod ledger;
pub mod notes;
pub mod pairing;
pub mod update;
pub mod vault;

/// What the applets of a blank card start with.
#[derive(Debug, Clone)]
pub struct Provisioning {
    /// The card-management applet's initial SCP03 key set (default: the GlobalPlatform test
    /// keys `40..4F`, key version [`isd::INITIAL_KVN`]); issuance replaces it with PUT KEY.
    pub isd_keys: StaticKeys,
}

impl Default for Provisioning {
    fn default() -> Self {
        Self { isd_keys: StaticKeys::gp_test_keys(isd::INITIAL_KVN) }
    }
}

/// Every applet of the card, in SELECT occurrence order. The card-management applet is first:
/// the runtime relies on it being at index 0 (default selection, life-cycle gate).
pub fn registry(provisioning: &Provisioning) -> Vec<Box<dyn Applet>> {
    vec![
        Box::new(isd::Isd::new(provisioning)),
        Box::new(keyring::Keyring::new()),
        Box::new(pairing::PairingApplet::new()),
        Box::new(vault::Vault::new()),
        Box::new(update::UpdateApplet::new()),
        Box::new(home::HomeApplet::new()),
        Box::new(access::AccessApplet::new()),
        // One line per applet; later issues add `update`, `keyring`, `pairing`, ...
    ]
}

/// Every registered applet's tear scenarios, with the applet's name.
pub fn tear_scenarios() -> Vec<(&'static str, TearScenario)> {
    registry(&Provisioning::default())
        .iter()
        .flat_map(|applet| applet.tear_scenarios().into_iter().map(|s| (applet.name(), s)))
        .collect()
}
