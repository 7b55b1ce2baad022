//! `tessera admin keyring …`: a card's key versions on both sides, a key reported
//! compromised, the issuer's keyring policy (over the admin HTTP API).

use clap::Subcommand;
use hyper::Method;
use serde_json::{Value, json};

use crate::cli::{Failure, FailureKind};

/// `tessera admin keyring …`
#[derive(Debug, Clone, Subcommand)]
pub enum KeyringCommand {
    /// Versions per slot on both sides: the server's from its database, the card's as it
    /// reported them at its last completed sync.
    Status {
        /// Issuer id.
        issuer: String,
        /// Card id.
        card: String,
    },
    /// Report a key compromised: slot 1 means re-issue; any other slot's level and every level
    /// below it are renewed at the card's next sync.
    Compromised {
        /// Issuer id.
        issuer: String,
        /// Card id.
        card: String,
        /// `internal` or `external`.
        kind: String,
        /// The slot.
        slot: u8,
    },
    /// Approve resynchronising a suspended card known to be genuine (a restored old image) at
    /// its next sync.
    Resync {
        /// Issuer id.
        issuer: String,
        /// Card id.
        card: String,
    },
    /// Show the issuer's keyring policy, or replace it with `--set JSON`.
    Policy {
        /// Issuer id.
        issuer: String,
        /// The new policy, e.g. `{"intervals":[2592000,31536000],"layout":{"mode":"symmetric","internal_slots":3,"external_slots":3}}`.
        #[arg(long)]
        set: Option<String>,
    },
}

fn seg(s: &str) -> Result<&str, Failure> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic() && !b"/?#%".contains(&b)) {
        Ok(s)
    } else {
        Err(Failure { kind: FailureKind::Usage, message: format!("not a valid id: {s:?}") })
    }
}

/// The HTTP request of a command.
pub fn request(cmd: &KeyringCommand) -> Result<(Method, String, Option<Value>), Failure> {
    Ok(match cmd {
        KeyringCommand::Status { issuer, card } => (
            Method::GET,
            format!("/v1/admin/issuers/{}/cards/{}/keyring", seg(issuer)?, seg(card)?),
            None,
        ),
        KeyringCommand::Compromised { issuer, card, kind, slot } => (
            Method::POST,
            format!("/v1/admin/issuers/{}/cards/{}/keyring/compromised", seg(issuer)?, seg(card)?),
            Some(json!({"kind": kind, "slot": slot})),
        ),
        KeyringCommand::Resync { issuer, card } => (
            Method::POST,
            format!("/v1/admin/issuers/{}/cards/{}/keyring/resync", seg(issuer)?, seg(card)?),
            None,
        ),
        KeyringCommand::Policy { issuer, set: None } => {
            (Method::GET, format!("/v1/admin/issuers/{}/keyring-policy", seg(issuer)?), None)
        }
        KeyringCommand::Policy { issuer, set: Some(policy) } => {
            let body: Value = serde_json::from_str(policy).map_err(|e| Failure {
                kind: FailureKind::Usage,
                message: format!("--set: not JSON: {e}"),
            })?;
            (Method::PUT, format!("/v1/admin/issuers/{}/keyring-policy", seg(issuer)?), Some(body))
        }
    })
}

/// The text output of a command's answer.
pub fn human(cmd: &KeyringCommand, v: &Value) -> String {
    match cmd {
        KeyringCommand::Status { .. }
        | KeyringCommand::Compromised { .. }
        | KeyringCommand::Resync { .. } => status_table(v),
        KeyringCommand::Policy { .. } => {
            serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
        }
    }
}

/// `kind slot server card pending` per slot, under a header line.
pub fn status_table(v: &Value) -> String {
    let s = |v: &Value| v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string());
    let opt = |v: &Value| if v.is_null() { "-".to_owned() } else { v.to_string() };
    let mut out = format!(
        "card {} ({}, {}): {}\nkind\tslot\tserver\tcard\tpending",
        s(&v["card_id"]),
        s(&v["issuer"]),
        s(&v["mode"]),
        s(&v["state"]),
    );
    for slot in v["slots"].as_array().map(Vec::as_slice).unwrap_or_default() {
        out.push_str(&format!(
            "\n{}\t{}\t{}\t{}\t{}",
            s(&slot["kind"]),
            slot["slot"],
            slot["server_version"],
            opt(&slot["card_version"]),
            opt(&slot["pending_version"]),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_table() {
        let status = KeyringCommand::Status { issuer: "acme".into(), card: "C-1".into() };
        let (m, path, body) = request(&status).unwrap();
        assert_eq!(
            (m, path.as_str(), body),
            (Method::GET, "/v1/admin/issuers/acme/cards/C-1/keyring", None)
        );
        let bad = KeyringCommand::Status { issuer: "acme".into(), card: "a/b".into() };
        assert_eq!(request(&bad).unwrap_err().kind, FailureKind::Usage);
        let policy = KeyringCommand::Policy { issuer: "acme".into(), set: Some("{".into()) };
        assert_eq!(request(&policy).unwrap_err().kind, FailureKind::Usage);
        let v = json!({"card_id": "C-1", "issuer": "acme", "mode": "symmetric", "state": "ok",
            "slots": [{"kind": "internal", "slot": 2, "server_version": 3, "card_version": 3, "pending_version": null}]});
        assert_eq!(
            status_table(&v),
            "card C-1 (acme, symmetric): ok\nkind\tslot\tserver\tcard\tpending\ninternal\t2\t3\t3\t-"
        );
    }
}
