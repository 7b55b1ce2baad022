//! APDU tracing with secrets redacted.
//!
//! Every APDU a [`crate::CardChannel`] exchanges is logged at `TRACE` level under the target
//! [`TARGET`] (`tessera --trace` turns it on). Commands whose data carries PINs or key material
//! are logged with their header only: which instructions those are is the table [`RULES`], the
//! single place to extend when an applet adds such a command. Bodies protected by SCP03
//! C-DECRYPTION are ciphertext anyway; the table still applies to them.

use std::fmt::Write as _;

/// The `tracing` target of APDU logs.
pub const TARGET: &str = "tessera::apdu";

/// What the trace may show of a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Redaction {
    /// Header and body are shown.
    None,
    /// Only the header is shown; the body (Lc, data, Le) is replaced by its length.
    Body,
}

/// One instruction the trace knows: its INS byte, its name, and what may be shown.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    /// Instruction byte.
    pub ins: u8,
    /// Name for the log.
    pub name: &'static str,
    /// What the log may show of its body.
    pub redaction: Redaction,
}

const fn rule(ins: u8, name: &'static str, redaction: Redaction) -> Rule {
    Rule { ins, name, redaction }
}

/// Instructions by INS byte (regardless of CLA: an unknown proprietary command that reuses a
/// sensitive INS is redacted too, which errs on the safe side).
pub const RULES: &[Rule] = &[
    rule(0x20, "VERIFY", Redaction::Body),
    rule(0x24, "CHANGE REFERENCE DATA", Redaction::Body),
    rule(0x2C, "RESET RETRY COUNTER", Redaction::Body),
    rule(0xD8, "PUT KEY", Redaction::Body),
    rule(0xE2, "STORE DATA", Redaction::Body),
    rule(0xA4, "SELECT", Redaction::None),
    rule(0x84, "GET CHALLENGE", Redaction::None),
    rule(0xC0, "GET RESPONSE", Redaction::None),
    rule(0xCA, "GET DATA", Redaction::None),
    rule(0xCB, "GET DATA", Redaction::None),
    rule(0x50, "INITIALIZE UPDATE", Redaction::None),
    rule(0x82, "EXTERNAL AUTHENTICATE", Redaction::None),
    rule(0x88, "INTERNAL AUTHENTICATE", Redaction::None),
    rule(0xF0, "SET STATUS", Redaction::None),
    rule(0xF2, "GET STATUS", Redaction::None),
    rule(0xB0, "READ BINARY", Redaction::None),
    rule(0xB2, "READ RECORD", Redaction::None),
];

/// The rule for an instruction byte, if the table has one.
pub fn rule_for(ins: u8) -> Option<&'static Rule> {
    RULES.iter().find(|r| r.ins == ins)
}

/// A one-line, redacted rendering of a command APDU: `>> SELECT 00A40400 08A000000151000000`.
///
/// Works on any bytes, well-formed or not: a redacted body is never shown, whatever its shape.
pub fn describe_command(command: &[u8]) -> String {
    let mut out = String::with_capacity(16 + 2 * command.len());
    out.push_str(">> ");
    let Some((header, body)) = command.split_first_chunk::<4>() else {
        let _ = write!(out, "(short) {}", hex::encode_upper(command));
        return out;
    };
    let rule = rule_for(header[1]);
    out.push_str(rule.map_or("?", |r| r.name));
    let _ = write!(out, " {}", hex::encode_upper(header));
    if !body.is_empty() {
        match rule.map_or(Redaction::None, |r| r.redaction) {
            Redaction::None => {
                let _ = write!(out, " {}", hex::encode_upper(body));
            }
            Redaction::Body => {
                let _ = write!(out, " <{} bytes redacted>", body.len());
            }
        }
    }
    out
}

/// A one-line rendering of a response APDU: `<< 9000` or `<< 0102…(8 bytes) 9000`.
pub fn describe_response(response: &[u8]) -> String {
    match response.split_last_chunk::<2>() {
        Some(([], sw)) => format!("<< {}", hex::encode_upper(sw)),
        Some((data, sw)) => format!("<< {} {}", hex::encode_upper(data), hex::encode_upper(sw)),
        None => format!("<< (short) {}", hex::encode_upper(response)),
    }
}

/// Runs one exchange, tracing the command before and the response (or failure) after.
pub fn traced<E: std::fmt::Display>(
    command: &[u8],
    exchange: impl FnOnce(&[u8]) -> Result<Vec<u8>, E>,
) -> Result<Vec<u8>, E> {
    let enabled = tracing::enabled!(target: TARGET, tracing::Level::TRACE);
    if enabled {
        tracing::trace!(target: TARGET, "{}", describe_command(command));
    }
    let result = exchange(command);
    if enabled {
        match &result {
            Ok(response) => tracing::trace!(target: TARGET, "{}", describe_response(response)),
            Err(err) => tracing::trace!(target: TARGET, "<< transport error: {err}"),
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_pin_is_redacted() {
        // VERIFY PIN reference 80 with "123456" padded with FF.
        let cmd = hex::decode("0020008008313233343536FFFF").unwrap();
        let line = describe_command(&cmd);
        assert_eq!(line, ">> VERIFY 00200080 <9 bytes redacted>");
        assert!(!line.contains("313233"));
    }

    #[test]
    fn every_secret_bearing_instruction_hides_its_body() {
        let secret = "DEADBEEFCAFEBABE0011223344556677";
        for (cla, ins) in [(0x00, 0x20), (0x00, 0x24), (0x00, 0x2C), (0x84, 0xD8), (0x84, 0xE2)] {
            let mut cmd = vec![cla, ins, 0x00, 0x81, 16];
            cmd.extend(hex::decode(secret).unwrap());
            let line = describe_command(&cmd);
            assert!(!line.contains(secret), "{line}");
            assert!(line.contains("<17 bytes redacted>"), "{line}");
        }
    }

    #[test]
    fn malformed_sensitive_command_is_still_redacted() {
        // Lc says 2 but 5 bytes follow: not a valid APDU, still never shown.
        let cmd = hex::decode("00200080023132333435").unwrap();
        assert_eq!(describe_command(&cmd), ">> VERIFY 00200080 <6 bytes redacted>");
    }

    #[test]
    fn public_commands_are_shown_in_full() {
        let select = hex::decode("00A4040008A000000151000000").unwrap();
        assert_eq!(describe_command(&select), ">> SELECT 00A40400 08A000000151000000");
        assert_eq!(
            describe_command(&[0x00, 0x84, 0x00, 0x00, 0x08]),
            ">> GET CHALLENGE 00840000 08"
        );
        assert_eq!(describe_command(&[0x80, 0x99, 0x01, 0x02]), ">> ? 80990102");
        assert_eq!(describe_command(&[0x00, 0x20]), ">> (short) 0020");
    }

    #[test]
    fn responses_show_data_and_status() {
        assert_eq!(describe_response(&[0x90, 0x00]), "<< 9000");
        assert_eq!(describe_response(&[0x01, 0x02, 0x63, 0xC2]), "<< 0102 63C2");
        assert_eq!(describe_response(&[0x6F]), "<< (short) 6F");
    }

    #[test]
    fn table_has_no_duplicate_instructions() {
        for (i, a) in RULES.iter().enumerate() {
            assert!(RULES[i + 1..].iter().all(|b| b.ins != a.ins), "duplicate INS {:02X}", a.ins);
        }
    }
}
