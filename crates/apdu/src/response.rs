//! Response APDUs.

use crate::StatusWord;

/// A response APDU: response data followed by the status word.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Response {
    /// Response data.
    pub data: Vec<u8>,
    /// Status word.
    pub sw: StatusWord,
}

impl Response {
    /// A `9000` response carrying `data`.
    pub fn ok(data: impl Into<Vec<u8>>) -> Self {
        Self { data: data.into(), sw: StatusWord::SUCCESS }
    }

    /// A response with no data.
    pub fn status(sw: StatusWord) -> Self {
        Self { data: Vec::new(), sw }
    }

    /// Splits a received response into data and status word; `None` when shorter than two bytes.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let (data, sw) = bytes.split_last_chunk::<2>()?;
        Some(Self { data: data.to_vec(), sw: StatusWord::from_bytes(sw[0], sw[1]) })
    }

    /// Data followed by SW1 SW2.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.data.len() + 2);
        out.extend_from_slice(&self.data);
        out.extend_from_slice(&self.sw.to_bytes());
        out
    }
}
