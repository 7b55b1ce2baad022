//! The terminal-side service providers (claims 2, 3), one module-sized type per service
//! behind [`ServiceProvider`]: each turns a command line into a [`ServiceRequest`] and the
//! card's verified answer into text. Adding a service is a provider here and a
//! `tessera_card::applets::pairing::service::Service` on the card.

use tessera_proto::pairing::{ServiceId, ServiceRequest, ledger, notes};

/// A terminal-side service provider.
pub trait ServiceProvider {
    /// The service it talks to.
    fn id(&self) -> ServiceId;
    /// One line per operation, for `tessera service <name> --help`-style listings.
    fn usage(&self) -> &'static str;
    /// Parses an operation and its arguments (e.g. `["credit", "250"]`).
    fn request(&self, args: &[String]) -> Result<ServiceRequest, String>;
    /// Describes the card's answer to `request`.
    fn render(&self, request: &ServiceRequest, answer: &[u8]) -> Result<String, String>;
}

/// Every provider, one line each.
pub fn providers() -> Vec<Box<dyn ServiceProvider>> {
    vec![Box::new(LedgerProvider), Box::new(NotesProvider)]
}

/// The provider for a service name (`ledger`, `notes`).
pub fn provider(name: &str) -> Option<Box<dyn ServiceProvider>> {
    providers().into_iter().find(|p| p.id().name() == name)
}

/// The ledger service's provider.
#[derive(Debug, Clone, Copy, Default)]
pub struct LedgerProvider;

impl LedgerProvider {
    /// BALANCE.
    pub fn balance() -> ServiceRequest {
        ServiceRequest { service: ServiceId::Ledger, op: ledger::OP_BALANCE, data: Vec::new() }
    }
    /// CREDIT `amount`.
    pub fn credit(amount: u64) -> ServiceRequest {
        let data = amount.to_be_bytes().to_vec();
        ServiceRequest { service: ServiceId::Ledger, op: ledger::OP_CREDIT, data }
    }
    /// DEBIT `amount`.
    pub fn debit(amount: u64) -> ServiceRequest {
        let data = amount.to_be_bytes().to_vec();
        ServiceRequest { service: ServiceId::Ledger, op: ledger::OP_DEBIT, data }
    }
    /// HISTORY.
    pub fn history() -> ServiceRequest {
        ServiceRequest { service: ServiceId::Ledger, op: ledger::OP_HISTORY, data: Vec::new() }
    }
}

fn amount(args: &[String]) -> Result<u64, String> {
    match args {
        [a] => a
            .parse::<u64>()
            .ok()
            .filter(|&a| a > 0)
            .ok_or_else(|| format!("amount must be a positive integer, not {a:?}")),
        _ => Err("give one amount".into()),
    }
}

impl ServiceProvider for LedgerProvider {
    fn id(&self) -> ServiceId {
        ServiceId::Ledger
    }

    fn usage(&self) -> &'static str {
        "balance | credit AMOUNT | debit AMOUNT | history"
    }

    fn request(&self, args: &[String]) -> Result<ServiceRequest, String> {
        match args.split_first() {
            Some((op, [])) if op == "balance" => Ok(Self::balance()),
            Some((op, [])) if op == "history" => Ok(Self::history()),
            Some((op, rest)) if op == "credit" => Ok(Self::credit(amount(rest)?)),
            Some((op, rest)) if op == "debit" => Ok(Self::debit(amount(rest)?)),
            _ => Err(format!("ledger: {}", self.usage())),
        }
    }

    fn render(&self, request: &ServiceRequest, answer: &[u8]) -> Result<String, String> {
        if request.op == ledger::OP_HISTORY {
            let entries = ledger::Entry::parse_all(answer).map_err(|e| e.to_string())?;
            return Ok(entries
                .iter()
                .map(|e| {
                    format!(
                        "#{} {} {} -> balance {} (terminal {})",
                        e.seq,
                        if e.credit { "credit" } else { "debit" },
                        e.amount,
                        e.balance,
                        hex::encode_upper(&e.terminal)
                    )
                })
                .collect::<Vec<_>>()
                .join("\n"));
        }
        let balance = ledger::parse_balance(answer).map_err(|e| e.to_string())?;
        Ok(format!("balance {balance}"))
    }
}

/// The note store's provider.
#[derive(Debug, Clone, Copy, Default)]
pub struct NotesProvider;

impl NotesProvider {
    /// PUT `text` into `slot`.
    pub fn put(slot: u8, text: &[u8]) -> ServiceRequest {
        let mut data = vec![slot];
        data.extend_from_slice(text);
        ServiceRequest { service: ServiceId::Notes, op: notes::OP_PUT, data }
    }
    /// GET `slot`.
    pub fn get(slot: u8) -> ServiceRequest {
        ServiceRequest { service: ServiceId::Notes, op: notes::OP_GET, data: vec![slot] }
    }
    /// DELETE `slot`.
    pub fn delete(slot: u8) -> ServiceRequest {
        ServiceRequest { service: ServiceId::Notes, op: notes::OP_DELETE, data: vec![slot] }
    }
    /// LIST.
    pub fn list() -> ServiceRequest {
        ServiceRequest { service: ServiceId::Notes, op: notes::OP_LIST, data: Vec::new() }
    }
}

fn slot(s: &str) -> Result<u8, String> {
    s.parse::<u8>()
        .ok()
        .filter(|&n| n < notes::MAX_NOTES)
        .ok_or_else(|| format!("slot must be 0 to {}, not {s:?}", notes::MAX_NOTES - 1))
}

impl ServiceProvider for NotesProvider {
    fn id(&self) -> ServiceId {
        ServiceId::Notes
    }

    fn usage(&self) -> &'static str {
        "list | put SLOT TEXT | get SLOT | delete SLOT"
    }

    fn request(&self, args: &[String]) -> Result<ServiceRequest, String> {
        match args {
            [op] if op == "list" => Ok(Self::list()),
            [op, s, text] if op == "put" => {
                if text.is_empty() || text.len() > notes::MAX_NOTE_LEN {
                    return Err(format!("a note is 1 to {} bytes", notes::MAX_NOTE_LEN));
                }
                Ok(Self::put(slot(s)?, text.as_bytes()))
            }
            [op, s] if op == "get" => Ok(Self::get(slot(s)?)),
            [op, s] if op == "delete" => Ok(Self::delete(slot(s)?)),
            _ => Err(format!("notes: {}", self.usage())),
        }
    }

    fn render(&self, request: &ServiceRequest, answer: &[u8]) -> Result<String, String> {
        Ok(match request.op {
            notes::OP_LIST => {
                let slots: Vec<String> = answer.iter().map(|s| s.to_string()).collect();
                format!(
                    "notes in slots: {}",
                    if slots.is_empty() { "none".into() } else { slots.join(", ") }
                )
            }
            notes::OP_GET => String::from_utf8_lossy(answer).into_owned(),
            _ => "done".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn command_lines_parse_and_bad_ones_are_refused() {
        let l = provider("ledger").unwrap();
        assert_eq!(l.request(&args("credit 25")).unwrap(), LedgerProvider::credit(25));
        assert!(l.request(&args("credit 0")).is_err());
        assert!(l.request(&args("credit -3")).is_err());
        assert!(l.request(&args("steal 5")).is_err());
        let n = provider("notes").unwrap();
        assert_eq!(n.request(&args("get 3")).unwrap(), NotesProvider::get(3));
        assert!(n.request(&args("get 8")).is_err());
        assert_eq!(n.render(&NotesProvider::list(), &[1, 4]).unwrap(), "notes in slots: 1, 4");
        assert!(provider("bank").is_none());
    }
}
