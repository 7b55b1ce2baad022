//! The ledger service: a balance with credit and debit, and the history of who changed it.
//!
//! Hosted by the pairing applet (see [`super::pairing::service`]); operations are in
//! [`tessera_proto::pairing::ledger`].

use serde::{Deserialize, Serialize};
use tessera_apdu::StatusWord;
use tessera_proto::pairing::ServiceId;
use tessera_proto::pairing::ledger::{
    Entry, MAX_ENTRIES, OP_BALANCE, OP_CREDIT, OP_DEBIT, OP_HISTORY, parse_amount,
};

use crate::applet::{Persistent, StateError};
use crate::applets::pairing::service::{Caller, Service};

/// One entry as stored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct StoredEntry {
    seq: u32,
    credit: bool,
    amount: u64,
    balance: u64,
    terminal: Vec<u8>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct LedgerState {
    balance: u64,
    next_seq: u32,
    entries: Vec<StoredEntry>,
}

/// The ledger service.
#[derive(Debug, Default)]
pub struct Ledger {
    state: Persistent<LedgerState>,
}

impl Ledger {
    /// An empty ledger (balance 0).
    pub fn new() -> Ledger {
        Ledger::default()
    }

    fn record(&mut self, caller: Caller<'_>, credit: bool, amount: u64, balance: u64) {
        let state = &mut *self.state;
        state.next_seq = state.next_seq.saturating_add(1);
        state.balance = balance;
        state.entries.push(StoredEntry {
            seq: state.next_seq,
            credit,
            amount,
            balance,
            terminal: caller.terminal.to_vec(),
        });
        if state.entries.len() > MAX_ENTRIES {
            state.entries.remove(0);
        }
    }
}

impl Service for Ledger {
    fn id(&self) -> ServiceId {
        ServiceId::Ledger
    }

    fn save(&self) -> Vec<u8> {
        self.state.encode()
    }

    fn load(&mut self, state: &[u8]) -> Result<(), StateError> {
        self.state.load(state)
    }

    fn take_changed(&mut self) -> bool {
        self.state.take_changed()
    }

    fn invoke(&mut self, caller: Caller<'_>, op: u8, data: &[u8]) -> Result<Vec<u8>, StatusWord> {
        let amount = || parse_amount(data).map_err(|e| e.status_word());
        match op {
            OP_BALANCE if data.is_empty() => Ok(self.state.balance.to_be_bytes().to_vec()),
            OP_CREDIT => {
                let amount = amount()?;
                let balance = self
                    .state
                    .balance
                    .checked_add(amount)
                    .ok_or(StatusWord::CONDITIONS_NOT_SATISFIED)?;
                self.record(caller, true, amount, balance);
                Ok(balance.to_be_bytes().to_vec())
            }
            OP_DEBIT => {
                let amount = amount()?;
                let balance = self
                    .state
                    .balance
                    .checked_sub(amount)
                    .ok_or(StatusWord::CONDITIONS_NOT_SATISFIED)?;
                self.record(caller, false, amount, balance);
                Ok(balance.to_be_bytes().to_vec())
            }
            OP_HISTORY if data.is_empty() => Ok(self
                .state
                .entries
                .iter()
                .flat_map(|e| {
                    Entry {
                        seq: e.seq,
                        credit: e.credit,
                        amount: e.amount,
                        balance: e.balance,
                        terminal: e.terminal.clone(),
                    }
                    .to_bytes()
                })
                .collect()),
            OP_BALANCE | OP_HISTORY => Err(StatusWord::WRONG_LENGTH),
            _ => Err(StatusWord::INCORRECT_P1P2),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Caller<'static> = Caller { terminal: b"term" };

    #[test]
    fn credit_debit_history_and_refusals() {
        let mut l = Ledger::new();
        assert_eq!(
            l.invoke(T, OP_CREDIT, &100u64.to_be_bytes()),
            Ok(100u64.to_be_bytes().to_vec())
        );
        assert_eq!(l.invoke(T, OP_DEBIT, &30u64.to_be_bytes()), Ok(70u64.to_be_bytes().to_vec()));
        assert_eq!(
            l.invoke(T, OP_DEBIT, &71u64.to_be_bytes()),
            Err(StatusWord::CONDITIONS_NOT_SATISFIED)
        );
        assert_eq!(l.invoke(T, OP_CREDIT, &[1]), Err(StatusWord::INCORRECT_DATA));
        assert_eq!(l.invoke(T, OP_BALANCE, &[1]), Err(StatusWord::WRONG_LENGTH));
        assert_eq!(l.invoke(T, 0x77, &[]), Err(StatusWord::INCORRECT_P1P2));
        let history = Entry::parse_all(&l.invoke(T, OP_HISTORY, &[]).unwrap()).unwrap();
        assert_eq!(history.len(), 2);
        assert_eq!((history[1].seq, history[1].credit, history[1].balance), (2, false, 70));
        assert_eq!(history[0].terminal, b"term");
        let mut copy = Ledger::new();
        copy.load(&l.save()).unwrap();
        assert_eq!(copy.invoke(T, OP_BALANCE, &[]), Ok(70u64.to_be_bytes().to_vec()));
    }

    #[test]
    fn history_keeps_the_newest_entries() {
        let mut l = Ledger::new();
        for _ in 0..MAX_ENTRIES + 3 {
            l.invoke(T, OP_CREDIT, &1u64.to_be_bytes()).unwrap();
        }
        let history = Entry::parse_all(&l.invoke(T, OP_HISTORY, &[]).unwrap()).unwrap();
        assert_eq!(history.len(), MAX_ENTRIES);
        assert_eq!(history.last().map(|e| e.seq), Some((MAX_ENTRIES + 3) as u32));
    }
}
