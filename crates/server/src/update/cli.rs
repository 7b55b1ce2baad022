//! `tessera admin update …`: queue an update for a card, list a card's queue (over the admin
//! HTTP API). The value is read here (from `--file` or `--value`) and sent hex in the body;
//! the server seals it at once and keeps no plaintext.

use std::path::PathBuf;

use clap::Subcommand;
use hyper::Method;
use serde_json::{Value, json};

use crate::cli::{Failure, FailureKind};

/// `tessera admin update …`
#[derive(Debug, Clone, Subcommand)]
pub enum UpdateAdminCommand {
    /// Queue an update of data object OBJECT for card CARD: sealed to the card's update key
    /// and signed now, delivered at the card's next `tessera sync`.
    Put {
        /// Issuer id.
        issuer: String,
        /// Card id.
        card: String,
        /// The data object's name (1 to 32 bytes).
        object: String,
        /// Read the value from this file (at most 64 KiB).
        #[arg(long, conflicts_with = "value", required_unless_present = "value")]
        file: Option<PathBuf>,
        /// The value as text.
        #[arg(long)]
        value: Option<String>,
        /// Store it sealed on the card, decrypted on every read, instead of applying it.
        #[arg(long)]
        sealed: bool,
        /// Anyone may read the object (default: only after the PIN).
        #[arg(long)]
        free_read: bool,
    },
    /// A card's update queue: sequence, object, mode, queued and delivered times.
    List {
        /// Issuer id.
        issuer: String,
        /// Card id.
        card: String,
    },
}

fn seg(s: &str) -> Result<&str, Failure> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic() && !b"/?#%".contains(&b)) {
        Ok(s)
    } else {
        Err(Failure { kind: FailureKind::Usage, message: format!("not a valid id: {s:?}") })
    }
}

/// Most bytes of a value (the card's object limit).
const MAX_VALUE: u64 = tessera_proto::update::MAX_OBJECT_LEN as u64;

/// The HTTP request of a command (reads `--file`).
pub fn request(cmd: &UpdateAdminCommand) -> Result<(Method, String, Option<Value>), Failure> {
    Ok(match cmd {
        UpdateAdminCommand::Put { issuer, card, object, file, value, sealed, free_read } => {
            let bytes = match (file, value) {
                (Some(path), None) => read_value(path)?,
                (None, Some(v)) => zeroize::Zeroizing::new(v.as_bytes().to_vec()),
                _ => {
                    return Err(Failure {
                        kind: FailureKind::Usage,
                        message: "give exactly one of --file or --value".into(),
                    });
                }
            };
            (
                Method::POST,
                format!("/v1/admin/issuers/{}/cards/{}/updates", seg(issuer)?, seg(card)?),
                Some(json!({
                    "object": object, "value_hex": hex::encode(&*bytes),
                    "sealed": sealed, "free_read": free_read,
                })),
            )
        }
        UpdateAdminCommand::List { issuer, card } => (
            Method::GET,
            format!("/v1/admin/issuers/{}/cards/{}/updates", seg(issuer)?, seg(card)?),
            None,
        ),
    })
}

fn read_value(path: &std::path::Path) -> Result<zeroize::Zeroizing<Vec<u8>>, Failure> {
    use std::io::Read;
    let local = |e: std::io::Error| Failure {
        kind: FailureKind::Local,
        message: format!("{}: {e}", path.display()),
    };
    let mut out = zeroize::Zeroizing::new(Vec::new());
    std::fs::File::open(path)
        .map_err(local)?
        .take(MAX_VALUE + 1)
        .read_to_end(&mut out)
        .map_err(local)?;
    if out.len() as u64 > MAX_VALUE {
        return Err(Failure {
            kind: FailureKind::Usage,
            message: format!("{}: above 64 KiB, the card's object limit", path.display()),
        });
    }
    Ok(out)
}

/// The text output of a command's answer.
pub fn human(cmd: &UpdateAdminCommand, v: &Value) -> String {
    let s = |v: &Value| v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string());
    match cmd {
        UpdateAdminCommand::Put { .. } => format!(
            "queued {} for card {} as sequence {} ({})",
            s(&v["object"]),
            s(&v["card_id"]),
            v["sequence"],
            s(&v["mode"]),
        ),
        UpdateAdminCommand::List { .. } => {
            let mut out = String::from("sequence\tobject\tmode\tqueued\tdelivered");
            for e in v.as_array().map(Vec::as_slice).unwrap_or_default() {
                let delivered = if e["delivered_at"].is_null() {
                    "-".into()
                } else {
                    e["delivered_at"].to_string()
                };
                out.push_str(&format!(
                    "\n{}\t{}\t{}\t{}\t{}",
                    e["sequence"],
                    s(&e["object"]),
                    s(&e["mode"]),
                    e["queued_at"],
                    delivered
                ));
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn put(file: Option<PathBuf>, value: Option<&str>) -> UpdateAdminCommand {
        UpdateAdminCommand::Put {
            issuer: "acme".into(),
            card: "C-1".into(),
            object: "wifi".into(),
            file,
            value: value.map(Into::into),
            sealed: true,
            free_read: false,
        }
    }

    #[test]
    fn put_sends_the_value_hex_from_value_or_file() {
        let (m, path, body) = request(&put(None, Some("pw"))).unwrap();
        assert_eq!((m, path.as_str()), (Method::POST, "/v1/admin/issuers/acme/cards/C-1/updates"));
        assert_eq!(
            body.unwrap(),
            json!({"object": "wifi", "value_hex": "7077", "sealed": true, "free_read": false})
        );
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("v");
        std::fs::write(&f, [0u8, 0xFF]).unwrap();
        let (_, _, body) = request(&put(Some(f.clone()), None)).unwrap();
        assert_eq!(body.unwrap()["value_hex"], "00ff");
        std::fs::write(&f, vec![0u8; 65537]).unwrap();
        assert_eq!(request(&put(Some(f), None)).unwrap_err().kind, FailureKind::Usage);
        let missing = dir.path().join("missing");
        assert_eq!(request(&put(Some(missing), None)).unwrap_err().kind, FailureKind::Local);
        assert_eq!(request(&put(None, None)).unwrap_err().kind, FailureKind::Usage);
    }

    #[test]
    fn list_table() {
        let cmd = UpdateAdminCommand::List { issuer: "acme".into(), card: "C-1".into() };
        let v = json!([{"sequence": 1, "object": "wifi", "mode": "apply", "queued_at": 5, "delivered_at": null}]);
        assert_eq!(
            human(&cmd, &v),
            "sequence\tobject\tmode\tqueued\tdelivered\n1\twifi\tapply\t5\t-"
        );
    }
}
