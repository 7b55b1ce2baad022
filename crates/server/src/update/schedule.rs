//! Scheduled changes of a card's data object (issue 5, ¶0045-0046): "every 30 days, a new
//! 20-character password for `wifi`". The schedule names what to generate; at the card's
//! first sync once the change is due, the server generates the value, seals it to the card
//! and queues it like any update, and forgets the plaintext. The card holder reads the new
//! value with `tessera data read`. Pure logic here (what a generator is, when a change is
//! due); the table and the sync hook are in [`crate::store::update`].

use tessera_crypto::rng::Rng;
use zeroize::Zeroizing;

use super::{UpdateError, UpdateResult};

/// Shortest and longest generated password.
pub const PASSWORD_LEN: core::ops::RangeInclusive<usize> = 8..=64;

/// Shortest period between two changes (one hour).
pub const MIN_EVERY_SECS: i64 = 3600;

/// The characters of a generated password: letters and digits (62, uniformly drawn).
const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// What a schedule generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generator {
    /// A password of `len` letters and digits.
    Password {
        /// Its length ([`PASSWORD_LEN`]).
        len: usize,
    },
}

impl Generator {
    /// Parses `password:N`.
    pub fn parse(text: &str) -> UpdateResult<Generator> {
        let bad = || UpdateError::BadUpdate("generator: password:N with N from 8 to 64");
        let len = text.strip_prefix("password:").ok_or_else(bad)?;
        let len: usize = len.parse().map_err(|_| bad())?;
        if !PASSWORD_LEN.contains(&len) {
            return Err(bad());
        }
        Ok(Generator::Password { len })
    }

    /// The canonical text (`password:N`), as stored.
    pub fn to_text(self) -> String {
        match self {
            Generator::Password { len } => format!("password:{len}"),
        }
    }

    /// A fresh value.
    pub fn generate(self, rng: &mut dyn Rng) -> Zeroizing<Vec<u8>> {
        match self {
            Generator::Password { len } => {
                let mut out = Zeroizing::new(Vec::with_capacity(len));
                let mut byte = [0u8; 1];
                while out.len() < len {
                    rng.fill_random(&mut byte);
                    // Rejection sampling: 248 = 4 × 62, so every character is equally likely.
                    if usize::from(byte[0]) < 4 * ALPHABET.len() {
                        out.push(ALPHABET[usize::from(byte[0]) % ALPHABET.len()]);
                    }
                }
                zeroize::Zeroize::zeroize(&mut byte);
                out
            }
        }
    }
}

/// Parses a period: `30d`, `12h`, `90m`, `3600s` or plain seconds; at least
/// [`MIN_EVERY_SECS`].
pub fn parse_every(text: &str) -> UpdateResult<i64> {
    let bad = || UpdateError::BadUpdate("period: N followed by d, h, m or s, at least 1h");
    let (number, unit) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&text[..i], c),
        _ => (text, 's'),
    };
    let n: i64 = number.parse().map_err(|_| bad())?;
    let unit = match unit {
        'd' => 86_400,
        'h' => 3600,
        'm' => 60,
        's' => 1,
        _ => return Err(bad()),
    };
    let secs = n.checked_mul(unit).ok_or_else(bad)?;
    if secs < MIN_EVERY_SECS {
        return Err(bad());
    }
    Ok(secs)
}

/// When the change after one made at `now` is due.
pub fn next_due(now: i64, every_secs: i64) -> i64 {
    now.saturating_add(every_secs)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tessera_crypto::rng::SeededRng;

    use super::*;

    #[test]
    fn generators_and_periods_parse_strictly() {
        assert_eq!(Generator::parse("password:20").unwrap(), Generator::Password { len: 20 });
        for bad in ["password:7", "password:65", "password:", "pin:6", "password:-1", ""] {
            assert!(Generator::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Generator::parse("password:8").unwrap().to_text(), "password:8");
        assert_eq!(parse_every("30d").unwrap(), 30 * 86_400);
        assert_eq!(parse_every("12h").unwrap(), 12 * 3600);
        assert_eq!(parse_every("90m").unwrap(), 5400);
        assert_eq!(parse_every("7200").unwrap(), 7200);
        for bad in ["59m", "10s", "d", "3w", "-1d", "99999999999999999d", ""] {
            assert!(parse_every(bad).is_err(), "{bad}");
        }
        assert_eq!(next_due(100, 3600), 3700);
    }

    #[test]
    fn passwords_are_letters_and_digits_and_differ() {
        let mut rng = SeededRng::from_u64(5);
        let g = Generator::Password { len: 20 };
        let a = g.generate(&mut rng);
        let b = g.generate(&mut rng);
        assert_eq!(a.len(), 20);
        assert!(a.iter().all(u8::is_ascii_alphanumeric));
        assert_ne!(a, b);
        // Over many draws every character of the alphabet shows up.
        let many = Generator::Password { len: 64 };
        let mut seen = [false; 256];
        for _ in 0..40 {
            for &c in many.generate(&mut rng).iter() {
                seen[usize::from(c)] = true;
            }
        }
        assert!(ALPHABET.iter().all(|&c| seen[usize::from(c)]));
    }
}
