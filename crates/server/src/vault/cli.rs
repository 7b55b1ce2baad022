//! `tessera admin vault …`: the key service's admin commands (over the admin HTTP API).
//! `provision` queues a key pair for a card (delivered at its next `tessera sync`), `show`
//! prints its state, `policy` reads or sets the issuer's escrow policy.

use clap::{Subcommand, ValueEnum};
use hyper::Method;
use serde_json::{Value, json};

use crate::cli::{Failure, FailureKind};

/// Escrow switch of `tessera admin vault policy --escrow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    /// Keep delivered private keys sealed under the master key.
    On,
    /// Keep nothing secret after delivery (default policy).
    Off,
}

/// `tessera admin vault …`
#[derive(Debug, Clone, Subcommand)]
pub enum VaultAdminCommand {
    /// Generate a key pair for card CARD (the key service variant, Figs. 28-31): the public key
    /// is recorded now, the private key is delivered sealed to the card at its next
    /// `tessera sync` (or `tessera vault provision --server URL`).
    Provision {
        /// Issuer id.
        issuer: String,
        /// Card id.
        card: String,
    },
    /// A card's provisioned key: public key, state, whether the server holds the private key.
    Show {
        /// Issuer id.
        issuer: String,
        /// Card id.
        card: String,
    },
    /// The issuer's key-service policy; with --escrow, set it (for keys provisioned from now on).
    Policy {
        /// Issuer id.
        issuer: String,
        /// Escrow delivered private keys under the master key (on) or keep nothing (off).
        #[arg(long, value_enum)]
        escrow: Option<Switch>,
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
pub fn request(cmd: &VaultAdminCommand) -> Result<(Method, String, Option<Value>), Failure> {
    Ok(match cmd {
        VaultAdminCommand::Provision { issuer, card } => (
            Method::POST,
            format!("/v1/admin/issuers/{}/cards/{}/vault", seg(issuer)?, seg(card)?),
            None,
        ),
        VaultAdminCommand::Show { issuer, card } => (
            Method::GET,
            format!("/v1/admin/issuers/{}/cards/{}/vault", seg(issuer)?, seg(card)?),
            None,
        ),
        VaultAdminCommand::Policy { issuer, escrow: None } => {
            (Method::GET, format!("/v1/admin/issuers/{}/vault/policy", seg(issuer)?), None)
        }
        VaultAdminCommand::Policy { issuer, escrow: Some(e) } => (
            Method::PUT,
            format!("/v1/admin/issuers/{}/vault/policy", seg(issuer)?),
            Some(json!({ "escrow": *e == Switch::On })),
        ),
    })
}

/// The human form of an answer.
pub fn human(cmd: &VaultAdminCommand, v: &Value) -> String {
    let s = |v: &Value| v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string());
    match cmd {
        VaultAdminCommand::Provision { .. } => format!(
            "vault key for card {} {}: public key {}{}",
            s(&v["card_id"]),
            s(&v["status"]),
            s(&v["public_key"]),
            if v["escrow"] == Value::Bool(true) { " (escrowed)" } else { "" },
        ),
        VaultAdminCommand::Show { .. } => {
            let delivered = if v["delivered_at"].is_null() {
                String::new()
            } else {
                format!(" at {}", v["delivered_at"])
            };
            let note = v["note"].as_str().map(|n| format!(" ({n})")).unwrap_or_default();
            format!(
                "card {}: {}{delivered}{note}\npublic key {}\nescrow {}; private key held by the server: {}",
                s(&v["card_id"]),
                s(&v["status"]),
                s(&v["public_key"]),
                v["escrow"],
                v["private_key_held"],
            )
        }
        VaultAdminCommand::Policy { issuer, .. } => {
            format!("issuer {issuer}: escrow {}", v["escrow"])
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn requests_name_the_right_endpoints() {
        let p = VaultAdminCommand::Provision { issuer: "acme".into(), card: "C1".into() };
        assert_eq!(
            request(&p).unwrap(),
            (Method::POST, "/v1/admin/issuers/acme/cards/C1/vault".into(), None)
        );
        let set = VaultAdminCommand::Policy { issuer: "acme".into(), escrow: Some(Switch::On) };
        let (m, path, body) = request(&set).unwrap();
        assert_eq!((m, path.as_str()), (Method::PUT, "/v1/admin/issuers/acme/vault/policy"));
        assert_eq!(body.unwrap(), json!({"escrow": true}));
        let bad = VaultAdminCommand::Show { issuer: "a/b".into(), card: "C1".into() };
        assert_eq!(request(&bad).unwrap_err().kind, FailureKind::Usage);
    }
}
