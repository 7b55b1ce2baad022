//! Card-wide persistent data: the card life cycle (GlobalPlatform), the card id and the
//! device identity.

use serde::{Deserialize, Serialize};

/// The card life cycle, after GlobalPlatform Card Specification v2.3 section 5.1.1.
///
/// Transitions only move forward, except LOCKED back to PERSONALIZED (unlock):
///
/// ```text
/// OP_READY --> PERSONALIZED <--> LOCKED
///     \_____________\______________\______> TERMINATED (irreversible)
/// ```
///
/// GET DATA `9F7F`-style codes are GlobalPlatform's life-cycle bytes: OP_READY `01`,
/// PERSONALIZED is GP's SECURED `0F` (GP's INITIALIZED `07` is not used), LOCKED is
/// CARD_LOCKED `7F`, TERMINATED `FF`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LifeCycle {
    /// Blank: personalisation commands accepted inside an SCP03 session.
    OpReady,
    /// Issued: keys and data set; applets usable.
    Personalized,
    /// Locked by the issuer: only the card-management applet is selectable.
    Locked,
    /// Terminated for good: only GET DATA answers.
    Terminated,
}

impl LifeCycle {
    /// The GlobalPlatform card life-cycle byte.
    pub fn gp_code(self) -> u8 {
        match self {
            LifeCycle::OpReady => 0x01,
            LifeCycle::Personalized => 0x0F,
            LifeCycle::Locked => 0x7F,
            LifeCycle::Terminated => 0xFF,
        }
    }

    /// The life cycle named by a GlobalPlatform life-cycle byte, if it is one we use.
    pub fn from_gp_code(code: u8) -> Option<LifeCycle> {
        match code {
            0x01 => Some(LifeCycle::OpReady),
            0x0F => Some(LifeCycle::Personalized),
            0x7F => Some(LifeCycle::Locked),
            0xFF => Some(LifeCycle::Terminated),
            _ => None,
        }
    }

    /// True when the card may move from `self` to `next`.
    pub fn may_become(self, next: LifeCycle) -> bool {
        use LifeCycle::*;
        matches!(
            (self, next),
            (OpReady, Personalized)
                | (Personalized, Locked)
                | (Locked, Personalized)
                | (OpReady | Personalized | Locked, Terminated)
        )
    }

    /// True when applets other than the card-management applet may be selected.
    pub fn applets_selectable(self) -> bool {
        matches!(self, LifeCycle::OpReady | LifeCycle::Personalized)
    }
}

/// Card-wide persistent data, committed with every applet's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardData {
    /// The card life cycle.
    pub life_cycle: LifeCycle,
    /// The card id set at personalisation (STORE DATA), empty on a blank card.
    pub card_id: Vec<u8>,
    /// The device key pair, device certificate and issuer trust anchors installed at
    /// personalisation (empty on a blank card); read-only for applets other than the
    /// card-management applet.
    pub device: crate::device::DeviceIdentity,
}

impl Default for CardData {
    fn default() -> Self {
        Self {
            life_cycle: LifeCycle::OpReady,
            card_id: Vec::new(),
            device: crate::device::DeviceIdentity::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions() {
        use LifeCycle::*;
        let all = [OpReady, Personalized, Locked, Terminated];
        let allowed: Vec<_> = all
            .iter()
            .flat_map(|&a| all.iter().map(move |&b| (a, b)))
            .filter(|&(a, b)| a.may_become(b))
            .collect();
        assert_eq!(
            allowed,
            [
                (OpReady, Personalized),
                (OpReady, Terminated),
                (Personalized, Locked),
                (Personalized, Terminated),
                (Locked, Personalized),
                (Locked, Terminated)
            ]
        );
        for lc in all {
            assert_eq!(LifeCycle::from_gp_code(lc.gp_code()), Some(lc));
        }
        assert_eq!(LifeCycle::from_gp_code(0x07), None);
    }
}
