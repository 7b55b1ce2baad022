//! The error the applet protocols' parsers return.

use tessera_apdu::StatusWord;

/// What can be wrong with the data of an applet command or response ([`keyring`](crate::keyring),
/// [`update`](crate::update), [`vault`](crate::vault)): the variant says what kind of fault, its
/// text which field. Callers add which protocol it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// The data has the wrong length for this command or response.
    #[error("wrong length ({0})")]
    Length(&'static str),
    /// A field has a value outside its range.
    #[error("bad value ({0})")]
    Value(&'static str),
    /// P1 or P2 is not one this command takes.
    #[error("bad P1/P2 ({0})")]
    Parameters(&'static str),
    /// The instruction is not one of this applet's commands.
    #[error("unknown instruction {0:02X}")]
    Instruction(u8),
}

impl ProtoError {
    /// The ISO status word a card answers for this error.
    pub fn status_word(&self) -> StatusWord {
        match self {
            ProtoError::Length(_) => StatusWord::WRONG_LENGTH,
            ProtoError::Value(_) => StatusWord::INCORRECT_DATA,
            ProtoError::Parameters(_) => StatusWord::INCORRECT_P1P2,
            ProtoError::Instruction(_) => StatusWord::INS_NOT_SUPPORTED,
        }
    }
}

/// Result of parsing applet protocol data.
pub type Result<T> = core::result::Result<T, ProtoError>;
