//! When keys are renewed, and how: the renewal policy per level and the planner.
//!
//! Level `d` is the pair of internal slot `M - d` and external slot `N - d` (level 0 is the
//! bottom pair used for every session). Renewing level `d` renews every level below it too, in
//! one RENEW of the claim-8 form (or a smaller form when it fits), authenticated with the pair
//! of level `d + 1`, so a key is always renewed from above.

use tessera_proto::keyring::{Layout, RenewForm};

/// Seconds in thirty days.
pub const MONTH: u64 = 30 * 24 * 3600;
/// Seconds in 365 days.
pub const YEAR: u64 = 365 * 24 * 3600;

/// How often each level is renewed; per issuer.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RenewalPolicy {
    /// Interval of level `d` at index `d`, in seconds; `None` (or beyond the list): never by
    /// schedule.
    pub intervals: Vec<Option<u64>>,
    /// Renew a single pair with one random (¶0088) instead of two (symmetric cards only).
    pub single_random: bool,
}

impl Default for RenewalPolicy {
    /// The bottom level monthly, the next yearly, deeper levels never by schedule.
    fn default() -> Self {
        Self { intervals: vec![Some(MONTH), Some(YEAR)], single_random: false }
    }
}

impl RenewalPolicy {
    /// The interval of level `d`.
    pub fn interval(&self, d: u8) -> Option<u64> {
        self.intervals.get(usize::from(d)).copied().flatten()
    }
}

/// One planned RENEW: its form and the pair that authenticates it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The RENEW form.
    pub form: RenewForm,
    /// The authenticating pair `(internal, external)`.
    pub auth: (u8, u8),
}

/// The deepest level with a renewable slot (slot 1 never is).
pub fn top_level(layout: &Layout) -> u8 {
    layout.internal_slots.max(layout.external_slots).saturating_sub(2)
}

/// The internal and external slot of level `d`, when renewable (numbered 2 or more).
pub fn level_slots(layout: &Layout, d: u8) -> (Option<u8>, Option<u8>) {
    let at = |count: u8| count.checked_sub(d).filter(|&s| s >= 2);
    (at(layout.internal_slots), at(layout.external_slots))
}

/// The RENEW that renews every level `0..=d` at once, and its authenticating pair; `None`
/// when nothing is renewable (M = N = 1).
pub fn plan_up_to(layout: &Layout, d: u8, single_random: bool) -> Option<Plan> {
    let d = d.min(top_level(layout));
    let first = |count: u8| -> Option<u8> {
        let lo = count.saturating_sub(d).max(2);
        (lo <= count).then_some(lo)
    };
    let (fi, fe) = (first(layout.internal_slots), first(layout.external_slots));
    let auth = (fi.map_or(1, |s| s - 1), fe.map_or(1, |s| s - 1));
    let form = match (fi, fe) {
        (Some(i), Some(e)) if i == layout.internal_slots && e == layout.external_slots => {
            if single_random && layout.mode == tessera_proto::keyring::Mode::Symmetric {
                RenewForm::PairSingleRandom { internal: i, external: e }
            } else {
                RenewForm::Pair { internal: i, external: e }
            }
        }
        (Some(i), Some(e)) => RenewForm::BothFrom { internal: i, external: e },
        (Some(i), None) if i == layout.internal_slots => RenewForm::Internal { slot: i },
        (Some(i), None) => RenewForm::InternalFrom { slot: i },
        (None, Some(e)) if e == layout.external_slots => RenewForm::External { slot: e },
        (None, Some(e)) => RenewForm::ExternalFrom { slot: e },
        (None, None) => return None,
    };
    Some(Plan { form, auth })
}

/// The renewal due at `now`, given when each level was last renewed (`renewed_at(d)`):
/// everything up to the deepest due level, at once.
pub fn plan_due(
    layout: &Layout,
    policy: &RenewalPolicy,
    now: u64,
    renewed_at: impl Fn(u8) -> u64,
) -> Option<Plan> {
    let due = (0..=top_level(layout))
        .filter(|&d| {
            let (i, e) = level_slots(layout, d);
            (i.is_some() || e.is_some())
                && policy.interval(d).is_some_and(|iv| now >= renewed_at(d).saturating_add(iv))
        })
        .max()?;
    plan_up_to(layout, due, policy.single_random)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use tessera_proto::keyring::{KeyKind, Mode};

    use super::*;

    #[test]
    fn plans_renew_from_above_and_pass_the_card_rules() {
        for (m, n) in [(4, 4), (3, 5), (5, 2), (2, 2), (8, 8)] {
            let layout = Layout::new(Mode::Symmetric, m, n).unwrap();
            for d in 0..=top_level(&layout) {
                let plan = plan_up_to(&layout, d, false).unwrap();
                for (kind, slot) in plan.form.targets(&layout).unwrap() {
                    let upper = if kind == KeyKind::Internal { plan.auth.0 } else { plan.auth.1 };
                    assert!(upper >= 1 && upper < slot && slot >= 2, "{m} {n} {d}: {plan:?}");
                }
            }
        }
        let l = Layout::new(Mode::Symmetric, 4, 4).unwrap();
        assert_eq!(
            plan_up_to(&l, 0, false).unwrap(),
            Plan { form: RenewForm::Pair { internal: 4, external: 4 }, auth: (3, 3) }
        );
        assert_eq!(
            plan_up_to(&l, 0, true).unwrap().form,
            RenewForm::PairSingleRandom { internal: 4, external: 4 }
        );
        assert_eq!(
            plan_up_to(&l, 1, false).unwrap(),
            Plan { form: RenewForm::BothFrom { internal: 3, external: 3 }, auth: (2, 2) }
        );
        assert_eq!(plan_up_to(&Layout::new(Mode::Symmetric, 1, 1).unwrap(), 0, false), None);
    }

    #[test]
    fn bottom_monthly_next_yearly() {
        let l = Layout::new(Mode::Symmetric, 3, 3).unwrap();
        let p = RenewalPolicy::default();
        assert_eq!(plan_due(&l, &p, MONTH - 1, |_| 0), None);
        assert_eq!(plan_due(&l, &p, MONTH, |_| 0).unwrap().auth, (2, 2));
        let yearly = plan_due(&l, &p, YEAR, |_| 0).unwrap();
        assert_eq!(yearly.form, RenewForm::BothFrom { internal: 2, external: 2 });
        assert_eq!(yearly.auth, (1, 1));
        // Deeper levels only when configured.
        let l = Layout::new(Mode::Symmetric, 4, 4).unwrap();
        assert_eq!(plan_due(&l, &p, 100 * YEAR, |_| 0).unwrap().auth, (2, 2));
        let deep = RenewalPolicy { intervals: vec![None, None, Some(1)], single_random: false };
        assert_eq!(plan_due(&l, &deep, 1, |_| 0).unwrap().auth, (1, 1));
    }
}
