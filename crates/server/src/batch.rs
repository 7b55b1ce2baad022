//! Batch issuance: `tessera issue --count N` personalises N blank cards one after the other,
//! with card ids made from a prefix (`<prefix>-0001`, `<prefix>-0002`, …). The binary supplies
//! each card (a new virtual card image per id) and shows progress; this module does the ids,
//! the order, and the report.
//!
//! Cards are issued one at a time, each in its own issuance session. The first failure stops
//! the batch: the cards issued before it stay issued (their records and PIN mailers are in
//! the report), the failing card's id is named, and nothing after it is started.

use serde_json::{Value, json};

use crate::cli::{Failure, FailureKind, IssueArgs, Report, issue};
use crate::tunnel::valid_card_id;

/// Most cards one batch issues.
pub const MAX_BATCH: u32 = 100_000;

/// A card's command channel as the batch sees it: one command APDU in, the response out.
pub type Transmit<'a> = Box<dyn FnMut(&[u8]) -> Result<Vec<u8>, String> + 'a>;

/// The card ids of a batch: `<prefix>-<n>` for n = 1..=count, zero-padded to at least four
/// digits (all the same width). Refuses a count of 0 or over [`MAX_BATCH`], and a prefix that
/// would make an invalid card id.
pub fn batch_ids(prefix: &str, count: u32) -> Result<Vec<String>, Failure> {
    let usage = |m: String| Failure { kind: FailureKind::Usage, message: m };
    if count == 0 || count > MAX_BATCH {
        return Err(usage(format!("--count: 1 to {MAX_BATCH} cards")));
    }
    let width = count.to_string().len().max(4);
    let ids: Vec<String> = (1..=count).map(|n| format!("{prefix}-{n:0width$}")).collect();
    match ids.last() {
        Some(last) if valid_card_id(last) => Ok(ids),
        _ => Err(usage(format!(
            "card id prefix {prefix:?}: the ids ({prefix}-{:0width$}…) must be 1 to 32 printable \
             ASCII characters without '/'",
            1
        ))),
    }
}

/// The outcome of a batch that stopped early: what was issued, and why it stopped.
#[derive(Debug)]
pub struct BatchStopped {
    /// The report of the cards issued before the failure.
    pub issued: Report,
    /// The card id that failed.
    pub card_id: String,
    /// The failure.
    pub failure: Failure,
}

/// Issues one card per id in `ids` (see [`batch_ids`]): `open_card(id)` supplies the blank
/// card for that id, `progress(done, id)` is called after each card. Returns the batch report
/// (text: one line per card with its PIN and PUK; JSON: `{"cards": [{card_id, outcome,
/// initial_pin, puk}…]}`), or where it stopped.
pub async fn issue_batch<'a>(
    args: &IssueArgs,
    ids: &[String],
    mut open_card: impl FnMut(&str) -> Result<Transmit<'a>, Failure>,
    mut progress: impl FnMut(usize, &str),
) -> Result<Report, Box<BatchStopped>> {
    let mut cards: Vec<Value> = Vec::with_capacity(ids.len());
    let mut lines: Vec<String> = Vec::with_capacity(ids.len() + 1);
    let summary = |cards: &[Value], lines: &[String]| Report {
        human: lines.join("\n"),
        json: json!({ "cards": cards }),
    };
    for (i, id) in ids.iter().enumerate() {
        let mut one = args.clone();
        one.card_id = id.clone();
        let result = match open_card(id) {
            Ok(transmit) => issue(&one, transmit).await,
            Err(f) => Err(f),
        };
        match result {
            Ok(report) => {
                lines.push(format!(
                    "{id}\tinitial PIN {}\tPUK {}",
                    report.json["initial_pin"].as_str().unwrap_or("?"),
                    report.json["puk"].as_str().unwrap_or("?"),
                ));
                let mut card = report.json;
                card["card_id"] = json!(id);
                cards.push(card);
                progress(i + 1, id);
            }
            Err(failure) => {
                return Err(Box::new(BatchStopped {
                    issued: summary(&cards, &lines),
                    card_id: id.clone(),
                    failure,
                }));
            }
        }
    }
    lines.push(format!("{} cards issued (PINs and PUKs shown once)", ids.len()));
    Ok(summary(&cards, &lines))
}

/// [`issue_batch`] for a synchronous caller (the `tessera` binary).
pub fn run_issue_batch<'a>(
    args: &IssueArgs,
    ids: &[String],
    open_card: impl FnMut(&str) -> Result<Transmit<'a>, Failure>,
    progress: impl FnMut(usize, &str),
) -> Result<Report, Box<BatchStopped>> {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| {
            Box::new(BatchStopped {
                issued: Report { human: String::new(), json: json!({ "cards": [] }) },
                card_id: ids.first().cloned().unwrap_or_default(),
                failure: Failure {
                    kind: FailureKind::Local,
                    message: format!("cannot start the async runtime: {e}"),
                },
            })
        })?;
    runtime.block_on(issue_batch(args, ids, open_card, progress))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_numbered_from_the_prefix_with_one_width() {
        assert_eq!(batch_ids("ACME", 3).unwrap(), ["ACME-0001", "ACME-0002", "ACME-0003"]);
        let many = batch_ids("B", 12_345).unwrap();
        assert_eq!((many[0].as_str(), many[12_344].as_str()), ("B-00001", "B-12345"));
        assert!(batch_ids("A", 0).is_err());
        assert!(batch_ids("A", MAX_BATCH + 1).is_err());
        assert!(batch_ids(&"X".repeat(27), 2).is_ok(), "27 + 5 = 32 characters");
        assert!(batch_ids(&"X".repeat(28), 2).is_err());
        assert!(batch_ids("a/b", 2).is_err());
        assert!(batch_ids("a b", 2).is_err());
    }
}
