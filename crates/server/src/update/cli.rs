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
    /// Queue one update per line of a CSV file `card,object,value` (the value is the rest of
    /// the line, as text; a first line `card,object,value` is a header). Every line is checked
    /// before anything is sent; the first refusal stops the batch (the lines before it stay
    /// queued). Progress on standard error when it is a terminal.
    PutCsv {
        /// Issuer id.
        issuer: String,
        /// The CSV file.
        file: PathBuf,
        /// Store every value sealed on the card.
        #[arg(long)]
        sealed: bool,
        /// Anyone may read the objects (default: only after the PIN).
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
    /// Change OBJECT of CARD periodically: at the card's first sync once a change is due, the
    /// server generates a new value (`--generate password:20`), seals it to the card, queues
    /// and delivers it; it keeps no plaintext. The holder reads it with `tessera data read`.
    Schedule {
        /// Issuer id.
        issuer: String,
        /// Card id.
        card: String,
        /// The data object's name.
        object: String,
        /// The period: `30d`, `12h`, `90m` or seconds (at least 1h).
        #[arg(long, value_name = "PERIOD")]
        every: String,
        /// What to generate: `password:N` (N letters and digits, 8 to 64).
        #[arg(long, value_name = "GENERATOR")]
        generate: String,
        /// Store the values sealed on the card, decrypted on every read.
        #[arg(long)]
        sealed: bool,
        /// Anyone may read the object (default: only after the PIN).
        #[arg(long)]
        free_read: bool,
        /// When the first change is due (Unix seconds; default: at the card's next sync).
        #[arg(long, value_name = "UNIX")]
        first_due: Option<i64>,
    },
    /// A card's schedules: object, period, generator, next due time, changes so far.
    Schedules {
        /// Issuer id.
        issuer: String,
        /// Card id.
        card: String,
    },
    /// Register the static authenticator personalised into a legacy card (claim 10), so that
    /// `tessera sync --legacy-static-auth` can authenticate it; `--clear` removes it. The
    /// value is replayable by whoever sees it once: for legacy cards only.
    LegacyStatic {
        /// Issuer id.
        issuer: String,
        /// Card id.
        card: String,
        /// File holding the authenticator: 16 bytes, or 32 hex digits.
        #[arg(long, conflicts_with = "clear", required_unless_present = "clear")]
        file: Option<PathBuf>,
        /// Remove the card's static authenticator.
        #[arg(long)]
        clear: bool,
    },
    /// Stop changing OBJECT of CARD (a change already queued is still delivered).
    Unschedule {
        /// Issuer id.
        issuer: String,
        /// Card id.
        card: String,
        /// The data object's name.
        object: String,
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
        UpdateAdminCommand::PutCsv { .. } => {
            return Err(Failure {
                kind: FailureKind::Usage,
                message: "put-csv sends one request per line (see update::cli::put_csv)".into(),
            });
        }
        UpdateAdminCommand::List { issuer, card } => (
            Method::GET,
            format!("/v1/admin/issuers/{}/cards/{}/updates", seg(issuer)?, seg(card)?),
            None,
        ),
        UpdateAdminCommand::Schedule {
            issuer,
            card,
            object,
            every,
            generate,
            sealed,
            free_read,
            first_due,
        } => {
            let usage = |e: super::UpdateError| Failure {
                kind: FailureKind::Usage,
                message: e.to_string(),
            };
            let every_secs = super::schedule::parse_every(every).map_err(usage)?;
            super::schedule::Generator::parse(generate).map_err(usage)?;
            (
                Method::POST,
                format!("/v1/admin/issuers/{}/cards/{}/update-schedules", seg(issuer)?, seg(card)?),
                Some(json!({
                    "object": object, "every_secs": every_secs, "generate": generate,
                    "sealed": sealed, "free_read": free_read, "first_due": first_due,
                })),
            )
        }
        UpdateAdminCommand::LegacyStatic { issuer, card, file, clear } => {
            let value = match (file, clear) {
                (Some(path), false) => {
                    let raw = read_value(path)?;
                    let text = std::str::from_utf8(&raw).map(str::trim).unwrap_or("");
                    let bytes = match hex::decode(text) {
                        Ok(b) if b.len() == tessera_proto::update::STATIC_AUTH_LEN => b,
                        _ => raw.to_vec(),
                    };
                    if bytes.len() != tessera_proto::update::STATIC_AUTH_LEN {
                        return Err(Failure {
                            kind: FailureKind::Usage,
                            message: format!(
                                "{}: the static authenticator is 16 bytes (or 32 hex digits)",
                                path.display()
                            ),
                        });
                    }
                    Some(hex::encode(bytes))
                }
                _ => None,
            };
            (
                Method::PUT,
                format!(
                    "/v1/admin/issuers/{}/cards/{}/update-legacy-static",
                    seg(issuer)?,
                    seg(card)?
                ),
                Some(json!({ "value_hex": value })),
            )
        }
        UpdateAdminCommand::Schedules { issuer, card } => (
            Method::GET,
            format!("/v1/admin/issuers/{}/cards/{}/update-schedules", seg(issuer)?, seg(card)?),
            None,
        ),
        UpdateAdminCommand::Unschedule { issuer, card, object } => (
            Method::DELETE,
            format!(
                "/v1/admin/issuers/{}/cards/{}/update-schedules/{}",
                seg(issuer)?,
                seg(card)?,
                seg(object)?
            ),
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

/// One line of a `put-csv` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvUpdate {
    /// Line number in the file, from 1.
    pub line: usize,
    /// Card id.
    pub card: String,
    /// Object name.
    pub object: String,
    /// The value (text).
    pub value: zeroize::Zeroizing<String>,
}

/// Parses a `put-csv` file: `card,object,value` per line (the value is the rest of the line);
/// blank lines skipped, a first line `card,object,value` taken as a header. Every line is
/// checked (ids, name 1 to 32 bytes, value at most 64 KiB) before anything is sent.
pub fn parse_csv(text: &str) -> Result<Vec<CsvUpdate>, Failure> {
    let usage = |line: usize, m: &str| Failure {
        kind: FailureKind::Usage,
        message: format!("line {line}: {m}"),
    };
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let raw = raw.trim_end_matches('\r');
        if raw.trim().is_empty() || (line == 1 && raw.trim() == "card,object,value") {
            continue;
        }
        let mut fields = raw.splitn(3, ',');
        let (Some(card), Some(object), Some(value)) = (fields.next(), fields.next(), fields.next())
        else {
            return Err(usage(line, "expected card,object,value"));
        };
        seg(card).map_err(|_| usage(line, "not a valid card id"))?;
        if object.is_empty() || object.len() > tessera_proto::update::MAX_NAME_LEN {
            return Err(usage(line, "object name: 1 to 32 bytes"));
        }
        if value.len() as u64 > MAX_VALUE {
            return Err(usage(line, "value above 64 KiB"));
        }
        out.push(CsvUpdate {
            line,
            card: card.to_owned(),
            object: object.to_owned(),
            value: zeroize::Zeroizing::new(value.to_owned()),
        });
    }
    if out.is_empty() {
        return Err(usage(0, "no updates in the file"));
    }
    Ok(out)
}

/// Runs `put-csv`: one `POST …/updates` per line in order, `progress(done, total)` after
/// each. Stops at the first refusal, naming its line; returns the answers.
pub async fn put_csv(
    client: &crate::client::ApiClient,
    cmd: &UpdateAdminCommand,
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<Value>, Failure> {
    let UpdateAdminCommand::PutCsv { issuer, file, sealed, free_read } = cmd else {
        return Err(Failure { kind: FailureKind::Usage, message: "not put-csv".into() });
    };
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(file).map_err(|e| Failure {
        kind: FailureKind::Local,
        message: format!("{}: {e}", file.display()),
    })?);
    let rows = parse_csv(&text)?;
    let issuer = seg(issuer)?;
    let mut answers = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let body = json!({
            "object": row.object, "value_hex": hex::encode(row.value.as_bytes()),
            "sealed": sealed, "free_read": free_read,
        });
        let path = format!("/v1/admin/issuers/{issuer}/cards/{}/updates", row.card);
        let (status, value) = client.request(Method::POST, &path, Some(&body)).await?;
        if !status.is_success() {
            let msg =
                value["message"].as_str().map(str::to_owned).unwrap_or_else(|| value.to_string());
            return Err(Failure {
                kind: FailureKind::Refused,
                message: format!(
                    "line {} (card {}): server answered {status}: {msg}; the {i} line(s) before it are queued",
                    row.line, row.card
                ),
            });
        }
        answers.push(value);
        progress(i + 1, rows.len());
    }
    Ok(answers)
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
        UpdateAdminCommand::PutCsv { .. } => v
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|q| {
                format!(
                    "{}\t{}\t{}\t{}",
                    s(&q["card_id"]),
                    s(&q["object"]),
                    q["sequence"],
                    s(&q["mode"])
                )
            })
            .collect::<Vec<_>>()
            .join("\n"),
        UpdateAdminCommand::Schedule { .. } => format!(
            "card {}: {} every {}s ({}), next change due at {}",
            s(&v["card_id"]),
            s(&v["object"]),
            v["every_secs"],
            s(&v["generate"]),
            v["next_due"],
        ),
        UpdateAdminCommand::Schedules { .. } => {
            let mut out = String::from("object\tevery\tgenerate\tnext due\tchanges");
            for e in v.as_array().map(Vec::as_slice).unwrap_or_default() {
                out.push_str(&format!(
                    "\n{}\t{}s\t{}\t{}\t{}",
                    s(&e["object"]),
                    e["every_secs"],
                    s(&e["generate"]),
                    e["next_due"],
                    e["runs"]
                ));
            }
            out
        }
        UpdateAdminCommand::LegacyStatic { card, clear, .. } => {
            if *clear {
                format!("card {card}: no legacy static authenticator")
            } else {
                format!(
                    "card {card}: legacy static authenticator registered (replayable: \
                     tessera sync --legacy-static-auth only)"
                )
            }
        }
        UpdateAdminCommand::Unschedule { card, object, .. } => {
            format!("card {card}: {object} is no longer changed periodically")
        }
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
    fn csv_lines_are_checked_before_anything_is_sent() {
        let rows =
            parse_csv("card,object,value\nC-1,wifi,pw,with,commas\r\n\nC-2,sso,t\n").unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[0].line, rows[0].card.as_str(), rows[0].value.as_str()),
            (2, "C-1", "pw,with,commas")
        );
        assert_eq!((rows[1].line, rows[1].object.as_str()), (4, "sso"));
        for bad in ["C-1,wifi", "a/b,wifi,v", "C-1,,v", "", "card,object,value\n"] {
            assert_eq!(parse_csv(bad).unwrap_err().kind, FailureKind::Usage, "{bad:?}");
        }
        let long = format!("C-1,{},v", "n".repeat(33));
        assert!(parse_csv(&long).unwrap_err().message.starts_with("line 1:"));
    }

    #[test]
    fn schedule_checks_period_and_generator_locally() {
        let cmd = |every: &str, generate: &str| UpdateAdminCommand::Schedule {
            issuer: "acme".into(),
            card: "C-1".into(),
            object: "wifi".into(),
            every: every.into(),
            generate: generate.into(),
            sealed: false,
            free_read: false,
            first_due: None,
        };
        let (m, path, body) = request(&cmd("30d", "password:20")).unwrap();
        assert_eq!(
            (m, path.as_str()),
            (Method::POST, "/v1/admin/issuers/acme/cards/C-1/update-schedules")
        );
        assert_eq!(body.unwrap()["every_secs"], 30 * 86_400);
        assert_eq!(request(&cmd("10m", "password:20")).unwrap_err().kind, FailureKind::Usage);
        assert_eq!(request(&cmd("30d", "password:3")).unwrap_err().kind, FailureKind::Usage);
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
