//! Running a keyring sync through the stateless APDU tunnel by deterministic replay.
//!
//! The tunnel carries one step at a time and any replica may serve the next one, so no process
//! may hold the sync in memory between steps. [`KeyringService::sync`] is written as straight
//! code over a [`KeyringLink`]; this module runs it step by step without changing it:
//!
//! - Everything the sync depends on is fixed when it starts and kept (sealed) in the session:
//!   a 32-byte random seed for its generator, the card's record as it was (the snapshot), the
//!   issuer's policy and the time.
//! - At each step the sync is run again from the snapshot over a [`ReplayLink`] that answers
//!   every command with the card's response recorded for it. When the sync asks for a command
//!   whose response is not known yet, the link stops it: that command is the step's APDU.
//! - Every record the sync saved on the way is returned ([`JournalStore`]); the caller writes
//!   the last one to the database, so phase one of a renewal (the pending keys) is stored in
//!   the same transaction that hands the RENEW to the terminal.
//!
//! The same seed, snapshot, policy, time and responses give the same commands: a replayed
//! command that differs from the one recorded (another build took over mid-sync) stops the sync
//! with an error instead of sending anything. The generator is AES-256 in counter mode keyed by
//! the seed ([`SeededRng`]); the seed comes from the operating system and is sealed under the
//! master key like the keys it produces.

use tessera_apdu::{Command, Response, StatusWord};
use tessera_crypto::rng::SeededRng;
use tessera_proto::keyring::{self as proto, KeyringLink, LinkError};

use super::{
    CardKeys, KeyringError, KeyringService, KeyringStore, RenewalPolicy, SyncOutcome, SyncReport,
};

/// The message of the [`LinkError`] with which [`ReplayLink`] stops a sync that needs a
/// response the card has not given yet.
const AWAITING: &str = "awaiting the card's response (tunnel step)";

/// A [`KeyringStore`] over one card's snapshot that keeps every record saved, in order.
#[derive(Debug)]
pub struct JournalStore {
    current: Option<CardKeys>,
    saved: Vec<CardKeys>,
}

impl JournalStore {
    /// A store holding `snapshot`.
    pub fn new(snapshot: CardKeys) -> Self {
        Self { current: Some(snapshot), saved: Vec::new() }
    }

    /// Every record saved, oldest first.
    pub fn saved(&self) -> &[CardKeys] {
        &self.saved
    }

    /// Every record saved, oldest first, taken out.
    pub fn into_saved(self) -> Vec<CardKeys> {
        self.saved
    }
}

impl KeyringStore for JournalStore {
    fn load(&self, card_id: &[u8]) -> Result<Option<CardKeys>, KeyringError> {
        Ok(self.current.clone().filter(|k| k.card_id == card_id))
    }

    fn save(&mut self, keys: &CardKeys) -> Result<(), KeyringError> {
        if self.current.as_ref().is_some_and(|k| k.card_id != keys.card_id) {
            return Err(KeyringError::Store("one card per sync".into()));
        }
        self.current = Some(keys.clone());
        self.saved.push(keys.clone());
        Ok(())
    }
}

/// A [`KeyringLink`] that answers from a transcript and stops at the first command without a
/// recorded response.
#[derive(Debug)]
pub struct ReplayLink<'a> {
    transcript: &'a [(Vec<u8>, Vec<u8>)],
    position: usize,
    next: Option<Vec<u8>>,
    diverged: bool,
}

impl<'a> ReplayLink<'a> {
    /// A link over `(command, response)` pairs, both encoded APDUs.
    pub fn new(transcript: &'a [(Vec<u8>, Vec<u8>)]) -> Self {
        Self { transcript, position: 0, next: None, diverged: false }
    }
}

impl ReplayLink<'_> {
    /// One command of the transcript: its recorded response, or a stop.
    fn one(&mut self, bytes: Vec<u8>) -> Result<Response, LinkError> {
        match self.transcript.get(self.position) {
            Some((sent, response)) => {
                if *sent != bytes {
                    self.diverged = true;
                    return Err(LinkError(
                        "the replayed sync diverged from the recorded one".into(),
                    ));
                }
                self.position += 1;
                Response::parse(response)
                    .ok_or_else(|| LinkError("response shorter than a status word".into()))
            }
            None => {
                self.next = Some(bytes);
                Err(LinkError(AWAITING.into()))
            }
        }
    }
}

/// Most `61xx` rounds one command may take (a keyring response is at most a few hundred
/// bytes; this only bounds a misbehaving card).
const MAX_GET_RESPONSE: usize = 64;

impl KeyringLink for ReplayLink<'_> {
    /// Resolves `61xx` (GET RESPONSE, one tunnel step each) and `6Cxx` (the command again
    /// with that Le) as the [`KeyringLink`] contract asks.
    fn exchange(&mut self, command: &Command) -> Result<Response, LinkError> {
        if self.next.is_some() || self.diverged {
            return Err(LinkError(AWAITING.into()));
        }
        let encode = |c: &Command| c.to_bytes().map_err(|e| LinkError(format!("command: {e}")));
        let mut r = self.one(encode(command)?)?;
        if r.sw.0 >> 8 == 0x6C {
            let le = usize::from(r.sw.0 as u8);
            r = self.one(encode(&command.clone().with_le(if le == 0 { 256 } else { le }))?)?;
        }
        let mut data = Vec::new();
        let mut rounds = 0;
        while r.sw.0 >> 8 == 0x61 {
            rounds += 1;
            if rounds > MAX_GET_RESPONSE {
                return Err(LinkError("the card kept answering 61xx".into()));
            }
            data.extend_from_slice(&r.data);
            let le = usize::from(r.sw.0 as u8);
            let get = Command::new(0x00, 0xC0, 0x00, 0x00).with_le(if le == 0 { 256 } else { le });
            r = self.one(encode(&get)?)?;
        }
        if data.is_empty() {
            return Ok(r);
        }
        data.extend_from_slice(&r.data);
        Ok(Response { data, sw: r.sw })
    }
}

/// Where a replayed sync stopped.
#[derive(Debug)]
pub enum Replayed {
    /// It needs the card's response to this command (an encoded APDU).
    Next(Vec<u8>),
    /// It ended.
    Done(Result<SyncReport, KeyringError>),
}

/// The result of one replay: where it stopped and every record it saved.
#[derive(Debug)]
pub struct Replay {
    /// Where the sync stopped.
    pub stopped: Replayed,
    /// The records saved, oldest first (the last one is the card's record now).
    pub saved: Vec<CardKeys>,
}

/// The command that opens a keyring sync: SELECT the keyring applet.
pub fn select_command() -> Command {
    Command::new(0x00, 0xA4, 0x04, 0x00).with_data(proto::AID.to_vec())
}

/// Runs the sync of `snapshot`'s card from the start over `transcript` (see the module
/// documentation): SELECT the keyring applet, then [`KeyringService::sync`], or
/// [`KeyringService::resynchronise`] for a suspended card an administrator approved.
pub fn replay_sync(
    seed: [u8; 32],
    snapshot: CardKeys,
    policy: RenewalPolicy,
    now: u64,
    transcript: &[(Vec<u8>, Vec<u8>)],
) -> Replay {
    let card_id = snapshot.card_id.clone();
    let approved = snapshot.suspended && snapshot.resync_approved;
    let mut service = KeyringService::new(
        JournalStore::new(snapshot),
        policy,
        Box::new(SeededRng::from_seed(seed)),
    );
    let mut link = ReplayLink::new(transcript);
    let result = match link.exchange(&select_command()) {
        Ok(r) if r.sw == StatusWord::SUCCESS && approved => {
            service.resynchronise(&card_id, &mut link, now)
        }
        Ok(r) if r.sw == StatusWord::SUCCESS => service.sync(&card_id, &mut link, now),
        Ok(r) => Err(KeyringError::Refused { what: "SELECT keyring", sw: r.sw }),
        Err(e) => Err(KeyringError::Link(e)),
    };
    let stopped = match (link.next.take(), link.diverged) {
        (Some(next), false) => Replayed::Next(next),
        _ => Replayed::Done(result),
    };
    Replay { stopped, saved: service.into_store().into_saved() }
}

/// A one-line, human description of a finished sync.
pub fn describe(report: &SyncReport) -> String {
    let renewed: usize = report.renewals.len();
    match report.outcome {
        SyncOutcome::InAgreement => format!(
            "keyring: card and server agree{}{}",
            if renewed > 0 { format!("; {renewed} renewal(s) run") } else { String::new() },
            if report.resynchronised { "; resynchronised after an interruption" } else { "" }
        ),
        SyncOutcome::NeedsReissue => {
            "keyring: the root key is compromised or nothing authenticates: re-issue the card"
                .into()
        }
        SyncOutcome::Suspended => "keyring: the card holds other keys than the records and no \
             interrupted renewal explains it (old image or copy): suspended until an \
             administrator acts"
            .into(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use tessera_crypto::rng::SeededRng;
    use tessera_proto::keyring::{Layout, Mode};

    use super::*;
    use crate::keyring::MemoryStore;

    fn snapshot() -> CardKeys {
        let mut svc = KeyringService::new(
            MemoryStore::new(),
            RenewalPolicy::default(),
            Box::new(SeededRng::from_u64(3)),
        );
        svc.issue(b"CARD", Layout::new(Mode::Symmetric, 2, 2).unwrap(), 0).unwrap();
        svc.store().load(b"CARD").unwrap().unwrap()
    }

    fn run(transcript: &[(Vec<u8>, Vec<u8>)]) -> Replay {
        replay_sync([7; 32], snapshot(), RenewalPolicy::default(), 10, transcript)
    }

    fn next(r: &Replay) -> Vec<u8> {
        match &r.stopped {
            Replayed::Next(c) => c.clone(),
            Replayed::Done(d) => panic!("done: {d:?}"),
        }
    }

    #[test]
    fn steps_are_deterministic_and_start_with_select() {
        let select = select_command().to_bytes().unwrap();
        assert_eq!(next(&run(&[])), select);
        let ok = vec![0x90, 0x00];
        let a = next(&run(&[(select.clone(), ok.clone())]));
        let b = next(&run(&[(select.clone(), ok.clone())]));
        assert_eq!(a, b, "same seed and responses, same command");
        assert_eq!(&a[..4], &[0x00, 0x88, 0x00, 0x02], "INTERNAL AUTHENTICATE, bottom slot");
        let other = replay_sync([8; 32], snapshot(), RenewalPolicy::default(), 10, &[(select, ok)]);
        assert_ne!(next(&other), a, "another seed, another challenge");
        assert!(run(&[]).saved.is_empty());
    }

    #[test]
    fn a_diverging_transcript_stops_without_a_command() {
        let mut select = select_command().to_bytes().unwrap();
        select[2] ^= 1;
        let r = run(&[(select, vec![0x90, 0x00])]);
        match r.stopped {
            Replayed::Done(Err(KeyringError::Link(e))) => assert!(e.0.contains("diverged")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn get_response_and_wrong_le_are_resolved_one_step_each() {
        let select = select_command().to_bytes().unwrap();
        let r = run(&[(select.clone(), vec![0x61, 0x02])]);
        assert_eq!(next(&r), vec![0x00, 0xC0, 0x00, 0x00, 0x02]);
        let r = run(&[
            (select.clone(), vec![0x61, 0x02]),
            (vec![0x00, 0xC0, 0x00, 0x00, 0x02], vec![0xAA, 0xBB, 0x90, 0x00]),
        ]);
        assert_eq!(&next(&r)[..2], &[0x00, 0x88]);
        let r = run(&[(select.clone(), vec![0x6C, 0x05])]);
        let again = select_command().with_le(5).to_bytes().unwrap();
        assert_eq!(next(&r), again);
        // A card that refuses SELECT ends the sync; a short answer is a link error.
        let r = run(&[(select.clone(), vec![0x6A, 0x82])]);
        assert!(matches!(r.stopped, Replayed::Done(Err(KeyringError::Refused { .. }))));
        let r = run(&[(select, vec![0x90])]);
        assert!(matches!(r.stopped, Replayed::Done(Err(KeyringError::Link(_)))));
    }
}
