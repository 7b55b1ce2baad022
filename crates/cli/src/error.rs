//! Errors of the command-line tool and the exit codes they map to.

use std::fmt;
use std::process::ExitCode;

use tessera_apdu::StatusWord;
use tessera_card::CardError;
use tessera_host::ChannelError;

/// What went wrong, as the exit status reports it.
///
/// | code | meaning |
/// |------|---------|
/// | 0 | success |
/// | 1 | the card answered, and said no (a status word other than `9000` or `61xx`) |
/// | 2 | usage: bad arguments or malformed input (clap's own usage errors are 2 too) |
/// | 3 | transport: pcscd not running, no reader, no card, vpcd unreachable |
/// | 4 | card image: missing, corrupt, locked by another process, wrong passphrase |
/// | 5 | a local file or tool other than the image failed (I/O, a benchmark's helper) |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The card refused.
    CardSaidNo = 1,
    /// Bad arguments or input.
    Usage = 2,
    /// PC/SC, reader or vpcd trouble.
    Transport = 3,
    /// The card image could not be used.
    Image = 4,
    /// Anything else local.
    Other = 5,
}

/// An error to report on stderr before exiting with its code.
#[derive(Debug)]
pub struct CliError {
    /// Exit status class.
    pub exit: Exit,
    /// The message, which says what to do where it can.
    pub message: String,
}

impl CliError {
    /// An error of class `exit`.
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        Self { exit, message: message.into() }
    }

    /// A usage error.
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(Exit::Usage, message)
    }

    /// The card answered `sw` to `what`.
    pub fn card_said_no(what: &str, sw: StatusWord) -> Self {
        Self::new(Exit::CardSaidNo, format!("{what}: the card answered {sw} ({})", sw_meaning(sw)))
    }

    /// The process exit code.
    pub fn code(&self) -> ExitCode {
        ExitCode::from(self.exit as u8)
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<ChannelError> for CliError {
    fn from(err: ChannelError) -> Self {
        match err {
            ChannelError::Command(_) => Self::usage(err.to_string()),
            _ => Self::new(Exit::Transport, err.to_string()),
        }
    }
}

impl From<CardError> for CliError {
    fn from(err: CardError) -> Self {
        Self::new(Exit::Image, err.to_string())
    }
}

/// A short English meaning of common status words.
pub fn sw_meaning(sw: StatusWord) -> &'static str {
    match sw.0 {
        0x9000 => "success",
        0x6100..=0x61FF => "success, more data waiting for GET RESPONSE",
        0x6C00..=0x6CFF => "wrong Le; the last byte is the length available",
        0x6200..=0x62FF => "warning: state unchanged",
        0x6300..=0x63BF | 0x63D0..=0x63FF => "warning: state changed",
        0x63C0..=0x63CF => "verification failed, tries left in the last digit",
        0x6581 => "memory failure",
        0x6700 => "wrong length",
        0x6881 => "logical channel not supported",
        0x6882 => "secure messaging not supported",
        0x6883 => "last command of the chain expected",
        0x6884 => "command chaining not supported",
        0x6982 => "security status not satisfied",
        0x6983 => "authentication method blocked",
        0x6984 => "reference data not usable",
        0x6985 => "conditions of use not satisfied",
        0x6987 | 0x6988 => "secure messaging data objects missing or incorrect",
        0x6A80 => "incorrect data",
        0x6A81 => "function not supported",
        0x6A82 => "application or file not found",
        0x6A84 => "not enough memory",
        0x6A86 => "incorrect P1-P2",
        0x6A88 => "referenced data not found",
        0x6A89 => "already exists",
        0x6B00 => "wrong P1-P2",
        0x6D00 => "instruction not supported",
        0x6E00 => "class not supported",
        0x6F00 => "no precise diagnosis",
        _ => "see ISO/IEC 7816-4",
    }
}
