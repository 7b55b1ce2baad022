//! The secure note store: a few short notes in numbered slots.
//!
//! Hosted by the pairing applet (see [`super::pairing::service`]); operations are in
//! [`tessera_proto::pairing::notes`]. Notes are readable only through a paired session at
//! level 33, so they are encrypted on the wire both ways.

use serde::{Deserialize, Serialize};
use tessera_apdu::StatusWord;
use tessera_proto::pairing::ServiceId;
use tessera_proto::pairing::notes::{
    MAX_NOTES, OP_DELETE, OP_GET, OP_LIST, OP_PUT, parse_put, parse_slot,
};
use zeroize::Zeroize;

use crate::applet::{Persistent, StateError, decode_state};
use crate::applets::pairing::service::{Caller, Service};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct NotesState {
    slots: Vec<Option<Vec<u8>>>,
}

impl Drop for NotesState {
    fn drop(&mut self) {
        for note in self.slots.iter_mut().flatten() {
            note.zeroize();
        }
    }
}

/// The note store.
#[derive(Debug)]
pub struct Notes {
    state: Persistent<NotesState>,
}

impl Default for Notes {
    fn default() -> Self {
        Notes { state: Persistent::new(NotesState { slots: vec![None; usize::from(MAX_NOTES)] }) }
    }
}

impl Notes {
    /// An empty store.
    pub fn new() -> Notes {
        Notes::default()
    }

    fn slot(&mut self, data: &[u8]) -> Result<&mut Option<Vec<u8>>, StatusWord> {
        let slot = parse_slot(data).map_err(|e| e.status_word())?;
        self.state.slots.get_mut(usize::from(slot)).ok_or(StatusWord::INCORRECT_DATA)
    }
}

impl Service for Notes {
    fn id(&self) -> ServiceId {
        ServiceId::Notes
    }

    fn save(&self) -> Vec<u8> {
        self.state.encode()
    }

    fn load(&mut self, state: &[u8]) -> Result<(), StateError> {
        let decoded: NotesState = decode_state(state)?;
        if decoded.slots.len() != usize::from(MAX_NOTES) {
            return Err(StateError("notes: wrong slot count".into()));
        }
        self.state = Persistent::new(decoded);
        Ok(())
    }

    fn take_changed(&mut self) -> bool {
        self.state.take_changed()
    }

    fn invoke(&mut self, _caller: Caller<'_>, op: u8, data: &[u8]) -> Result<Vec<u8>, StatusWord> {
        match op {
            OP_LIST if data.is_empty() => Ok(self
                .state
                .slots
                .iter()
                .enumerate()
                .filter(|(_, n)| n.is_some())
                .map(|(i, _)| i as u8)
                .collect()),
            OP_LIST => Err(StatusWord::WRONG_LENGTH),
            OP_PUT => {
                let (slot, text) = parse_put(data).map_err(|e| e.status_word())?;
                let entry = self
                    .state
                    .slots
                    .get_mut(usize::from(slot))
                    .ok_or(StatusWord::INCORRECT_DATA)?;
                *entry = Some(text.to_vec());
                Ok(Vec::new())
            }
            OP_GET => self.slot(data)?.clone().ok_or(StatusWord::REFERENCED_DATA_NOT_FOUND),
            OP_DELETE => {
                let entry = self.slot(data)?;
                match entry.take() {
                    Some(mut old) => {
                        old.zeroize();
                        Ok(Vec::new())
                    }
                    None => Err(StatusWord::REFERENCED_DATA_NOT_FOUND),
                }
            }
            _ => Err(StatusWord::INCORRECT_P1P2),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Caller<'static> = Caller { terminal: b"term" };

    #[test]
    fn put_get_list_delete() {
        let mut n = Notes::new();
        assert_eq!(n.invoke(T, OP_GET, &[2]), Err(StatusWord::REFERENCED_DATA_NOT_FOUND));
        n.invoke(T, OP_PUT, b"\x02secret").unwrap();
        n.invoke(T, OP_PUT, b"\x05other").unwrap();
        assert_eq!(n.invoke(T, OP_GET, &[2]), Ok(b"secret".to_vec()));
        assert_eq!(n.invoke(T, OP_LIST, &[]), Ok(vec![2, 5]));
        n.invoke(T, OP_DELETE, &[2]).unwrap();
        assert_eq!(n.invoke(T, OP_DELETE, &[2]), Err(StatusWord::REFERENCED_DATA_NOT_FOUND));
        assert_eq!(n.invoke(T, OP_PUT, b"\x09x"), Err(StatusWord::INCORRECT_DATA));
        assert_eq!(n.invoke(T, OP_GET, &[]), Err(StatusWord::INCORRECT_DATA));
        let mut copy = Notes::new();
        copy.load(&n.save()).unwrap();
        assert_eq!(copy.invoke(T, OP_LIST, &[]), Ok(vec![5]));
        assert!(copy.load(&[1, 0]).is_err());
    }
}
