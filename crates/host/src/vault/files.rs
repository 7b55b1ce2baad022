//! Files in the age format (age-encryption.org/v1) with a vault card as the key.
//!
//! The card's recipient is age's native tagged P-256 recipient, `age1tag1…` (the compressed
//! public key in Bech32, supported by the `age` crate since 0.12 and by rage 0.12): any age
//! implementation with `p256tag` support encrypts to it without the card. A `p256tag` stanza
//! is `-> p256tag <tag> <enc>` with a 32-byte body; the card opens it (DECRYPT) and answers
//! the 16-byte file key, with which the host verifies the header MAC and decrypts the payload.
//! **What reaches the host during decryption:** the file key of that one file (and nothing
//! else: the card's private key stays in the card). During recovery nothing secret reaches the
//! host: TRANSCRYPT re-wraps the file key for the new card and MACs the new header in the card.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use age::DecryptError;
use age_core::format::{FileKey, Stanza};
use base64::Engine;
use base64::prelude::BASE64_STANDARD_NO_PAD;
use tessera_crypto::age as agec;
use tessera_crypto::ecdsa::PublicKey;
use tessera_crypto::rng::{OsRng, Rng};
use tessera_proto::vault::{self as proto, BODY_LEN, ENC_LEN, MAC_LEN, PUBLIC_KEY_LEN};

use super::{VaultCard, VaultError};
use crate::channel::CardChannel;

/// The Bech32 human-readable part of age's tagged P-256 recipients.
pub const RECIPIENT_HRP: &str = "age1tag";
/// The first line of every age file.
pub const VERSION_LINE: &[u8] = b"age-encryption.org/v1\n";
/// Largest header this module reads (age headers are a few hundred bytes per recipient).
pub const MAX_HEADER_LEN: usize = 1 << 20;

fn file_err(what: impl std::fmt::Display) -> VaultError {
    VaultError::File(what.to_string())
}

/// The `age1tag1…` recipient string of a card's public key (uncompressed SEC1).
pub fn recipient_string(public_key: &[u8; PUBLIC_KEY_LEN]) -> Result<String, VaultError> {
    let pk =
        PublicKey::from_sec1_bytes(public_key).map_err(|_| VaultError::BadAnswer("public key"))?;
    let hrp = bech32::Hrp::parse(RECIPIENT_HRP).map_err(|_| file_err("Bech32 HRP"))?;
    Ok(age_core::primitives::bech32_encode(hrp, &pk.to_sec1_compressed()))
}

/// Parses an `age1tag1…` recipient into its public key.
pub fn parse_recipient(s: &str) -> Result<PublicKey, VaultError> {
    let r: age::tag::Recipient =
        s.trim().parse().map_err(|e| file_err(format!("not an age1tag recipient: {e}")))?;
    let (_, data) = bech32::decode(&r.to_string()).map_err(|_| file_err("Bech32"))?;
    PublicKey::from_sec1_bytes(&data).map_err(|_| file_err("recipient is not a P-256 point"))
}

/// The `(enc, body)` of `stanza` if it is a `p256tag` stanza addressed to `recipient`.
pub fn stanza_for(
    tag: &str,
    args: &[String],
    body: &[u8],
    recipient: &PublicKey,
) -> Option<([u8; ENC_LEN], [u8; BODY_LEN])> {
    if tag != agec::P256TAG_STANZA || args.len() != 2 {
        return None;
    }
    let enc: [u8; ENC_LEN] = BASE64_STANDARD_NO_PAD.decode(&args[1]).ok()?.try_into().ok()?;
    let expected = BASE64_STANDARD_NO_PAD.encode(agec::p256tag_stanza_tag(&enc, recipient));
    if args[0] != expected {
        return None;
    }
    Some((enc, body.try_into().ok()?))
}

/// An age identity whose private key is in a vault card: stanzas addressed to the card are
/// opened by DECRYPT; the first card error is kept for the report.
pub struct CardIdentity<C> {
    card: RefCell<VaultCard<C>>,
    public: PublicKey,
    error: RefCell<Option<VaultError>>,
}

impl<C: CardChannel> CardIdentity<C> {
    /// The identity of `card` (PIN already verified), reading its public key.
    pub fn new(mut card: VaultCard<C>) -> Result<Self, VaultError> {
        let pk = card.public_key()?;
        let public =
            PublicKey::from_sec1_bytes(&pk).map_err(|_| VaultError::BadAnswer("public key"))?;
        Ok(CardIdentity { card: RefCell::new(card), public, error: RefCell::new(None) })
    }

    /// The card's public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// Takes the first card error met while unwrapping.
    pub fn take_error(&self) -> Option<VaultError> {
        self.error.borrow_mut().take()
    }

    /// Returns the card.
    pub fn into_card(self) -> VaultCard<C> {
        self.card.into_inner()
    }

    /// Unwraps the file key of one stanza (`None`: not addressed to this card).
    pub fn unwrap(
        &self,
        tag: &str,
        args: &[String],
        body: &[u8],
    ) -> Option<Result<agec::FileKey, VaultError>> {
        let (enc, body) = stanza_for(tag, args, body, &self.public)?;
        Some(self.card.borrow_mut().decrypt(&enc, &body))
    }
}

impl<C: CardChannel> age::Identity for CardIdentity<C> {
    fn unwrap_stanza(&self, stanza: &Stanza) -> Option<Result<FileKey, DecryptError>> {
        match self.unwrap(&stanza.tag, &stanza.args, &stanza.body)? {
            Ok(key) => Some(Ok(FileKey::new(Box::new(*key)))),
            Err(e) => {
                self.error.borrow_mut().get_or_insert(e);
                Some(Err(DecryptError::DecryptionFailed))
            }
        }
    }
}

/// Encrypts `input` to the `p256tag` recipients (uncompressed public keys) into `output`: an
/// age v1 file whose file key each recipient's stanza wraps (HPKE in `tessera_crypto`), with
/// the payload's STREAM chunks sealed on every core.
pub fn encrypt(
    recipients: &[[u8; PUBLIC_KEY_LEN]],
    mut input: impl Read,
    mut output: impl Write,
) -> Result<(), VaultError> {
    if recipients.is_empty() {
        return Err(file_err("no recipient"));
    }
    let mut file_key = agec::FileKey::new([0u8; agec::FILE_KEY_LEN]);
    OsRng.fill_random(file_key.as_mut_slice());
    let mut header = VERSION_LINE.to_vec();
    for pk in recipients {
        let pk = PublicKey::from_sec1_bytes(pk)
            .map_err(|_| file_err("recipient is not a P-256 point"))?;
        let stanza = agec::p256tag_seal(&pk, &file_key).map_err(file_err)?;
        let tag = agec::p256tag_stanza_tag(&stanza.enc, &pk);
        header.extend_from_slice(&proto::p256tag_stanza_text(&tag, &stanza.enc, &stanza.body));
    }
    header.extend_from_slice(b"---");
    let mac = agec::header_mac(&file_key, &header);
    let mut header = with_mac(header, &mac);
    let mut nonce = [0u8; agec::PAYLOAD_NONCE_LEN];
    OsRng.fill_random(&mut nonce);
    header.extend_from_slice(&nonce);
    output.write_all(&header).map_err(file_err)?;
    let key = agec::PayloadKey::new(&file_key, &nonce);
    seal_payload(&key, &mut input, &mut output).map_err(file_err)?;
    output.flush().map_err(file_err)
}

/// A sealed chunk's length in the file.
const SEALED_CHUNK: usize = agec::CHUNK_LEN + agec::CHUNK_TAG_LEN;

/// One STREAM chunk on its way through [`seal_payload`]: a buffer of [`SEALED_CHUNK`] bytes
/// holding `len` plaintext bytes, then (once sealed) the ciphertext and its tag.
struct Chunk {
    buf: Vec<u8>,
    len: usize,
    index: u64,
    last: bool,
}

impl Chunk {
    fn seal(&mut self, key: &agec::PayloadKey) -> io::Result<()> {
        let (data, tag) = self.buf.split_at_mut(self.len);
        let t = key
            .seal_chunk(self.index, self.last, data)
            .map_err(|e| io::Error::other(e.to_string()))?;
        tag[..agec::CHUNK_TAG_LEN].copy_from_slice(&t);
        Ok(())
    }

    fn sealed(&self) -> &[u8] {
        &self.buf[..self.len + agec::CHUNK_TAG_LEN]
    }
}

/// Seals `input` as age's STREAM into `output`: the first [`SEQUENTIAL_CHUNKS`] chunks one at a
/// time on the calling thread, then on every core: the calling thread reads a round of
/// [`CHUNKS_PER_THREAD`] chunks per thread, seals the first group and hands the others to
/// worker threads (started once), then writes the round in order. A full chunk is the last
/// only if nothing follows it, so one chunk is read ahead. Buffers are reused from round to
/// round: every page touched is a page fault, which costs a small file more than its
/// encryption.
fn seal_payload(
    key: &agec::PayloadKey,
    input: &mut impl Read,
    output: &mut impl Write,
) -> io::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    let mut ahead = vec![0u8; SEALED_CHUNK];
    let mut ahead_len = read_full(input, &mut ahead[..agec::CHUNK_LEN])?;
    let mut spare: Vec<Vec<u8>> = Vec::new();
    let mut index = 0u64;
    std::thread::scope(|scope| {
        let spawn_worker = || {
            let (to_worker, jobs) = std::sync::mpsc::channel::<Vec<Chunk>>();
            let (to_caller, results) = std::sync::mpsc::channel::<io::Result<Vec<Chunk>>>();
            scope.spawn(move || {
                for mut group in jobs {
                    let sealed = group.iter_mut().try_for_each(|c| c.seal(key)).map(|()| group);
                    if to_caller.send(sealed).is_err() {
                        return;
                    }
                }
            });
            (to_worker, results)
        };
        let mut workers = Vec::new();
        let gone = || io::Error::other("a sealing thread stopped");
        loop {
            // Past the first chunks, the workers start: a small file is sealed here alone.
            if workers.is_empty() && cores > 1 && index >= SEQUENTIAL_CHUNKS {
                workers = (1..cores).map(|_| spawn_worker()).collect();
            }
            let threads = workers.len() + 1;
            let per = if workers.is_empty() { 1 } else { CHUNKS_PER_THREAD };
            // Read a round: up to `per` chunks for each thread, in file order.
            let mut round = Vec::with_capacity(threads * per);
            let mut last = false;
            while round.len() < threads * per && !last {
                let fresh = spare.pop().unwrap_or_else(|| vec![0u8; SEALED_CHUNK]);
                let buf = std::mem::replace(&mut ahead, fresh);
                let len = ahead_len;
                last = len < agec::CHUNK_LEN || {
                    ahead_len = read_full(input, &mut ahead[..agec::CHUNK_LEN])?;
                    ahead_len == 0
                };
                round.push(Chunk { buf, len, index, last });
                index += 1;
            }
            // The first group is sealed here, the others on the workers.
            let share = round.len().div_ceil(threads);
            let mut groups = Vec::with_capacity(threads);
            while round.len() > share {
                groups.push(round.split_off(round.len() - share));
            }
            groups.reverse();
            let handed = groups.len();
            for (group, (to_worker, _)) in groups.into_iter().zip(workers.iter()) {
                to_worker.send(group).map_err(|_| gone())?;
            }
            round.iter_mut().try_for_each(|c| c.seal(key))?;
            for (_, results) in workers.iter().take(handed) {
                round.extend(results.recv().map_err(|_| gone())??);
            }
            for chunk in round {
                output.write_all(chunk.sealed())?;
                spare.push(chunk.buf);
            }
            if last {
                return Ok(());
            }
        }
    })
}

/// Chunks each thread seals per round of [`seal_payload`] once the workers run: fewer means
/// more hand-overs between threads, more means more memory touched.
const CHUNKS_PER_THREAD: usize = 4;

/// Chunks [`seal_payload`] seals alone before it starts workers (2 MiB): for a small file, the
/// pages of the workers' buffers and stacks (each first touch a page fault) cost more than the
/// second core saves.
const SEQUENTIAL_CHUNKS: u64 = 32;

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// An age header up to `---`, completed with its MAC line.
fn with_mac(mut header: Vec<u8>, mac: &[u8; MAC_LEN]) -> Vec<u8> {
    header.push(b' ');
    header.extend_from_slice(BASE64_STANDARD_NO_PAD.encode(mac).as_bytes());
    header.push(b'\n');
    header
}

/// Decrypts an age file through the card.
pub fn decrypt<C: CardChannel>(
    identity: &CardIdentity<C>,
    input: impl Read,
    mut output: impl Write,
) -> Result<u64, VaultError> {
    let decryptor = age::Decryptor::new_buffered(BufReader::new(input))
        .map_err(|e| file_err(format!("not an age file: {e}")))?;
    let mut reader = match decryptor.decrypt(std::iter::once(identity as &dyn age::Identity)) {
        Ok(r) => r,
        Err(DecryptError::NoMatchingKeys) => {
            return Err(file_err("the file is not encrypted to this card"));
        }
        Err(e) => {
            return Err(identity.take_error().unwrap_or_else(|| file_err(format!("age: {e}"))));
        }
    };
    copy_chunks(&mut reader, &mut output).map_err(|e| file_err(format!("age payload: {e}")))
}

/// Size of the buffers between files and age's STREAM when decrypting (one 64 KiB age chunk): `io::copy`'s
/// 8 KiB buffer cost eight system calls per chunk.
pub const IO_BUFFER: usize = 64 * 1024;

/// Copies `reader` to `writer` through one [`IO_BUFFER`]; returns the bytes copied.
fn copy_chunks(reader: &mut impl Read, writer: &mut impl Write) -> io::Result<u64> {
    let mut buf = vec![0u8; IO_BUFFER];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        writer.write_all(&buf[..n])?;
        total += n as u64;
    }
}

/// One stanza of a parsed header, with its exact text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderStanza {
    /// The stanza's bytes in the header, from `->` to the end of its body's last line.
    pub text: Vec<u8>,
    /// Its type.
    pub tag: String,
    /// Its further arguments.
    pub args: Vec<String>,
    /// Its decoded body.
    pub body: Vec<u8>,
}

/// A parsed age header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The stanzas, in order.
    pub stanzas: Vec<HeaderStanza>,
    /// The header MAC.
    pub mac: [u8; MAC_LEN],
    /// Length of the MAC input (through `---`).
    pub mac_input_len: usize,
    /// Length of the whole header (through the MAC line's newline); the payload follows.
    pub len: usize,
}

/// Parses the header at the start of `bytes` (which may continue with the payload).
pub fn parse_header(bytes: &[u8]) -> Result<Header, VaultError> {
    let bad = |what: &str| file_err(format!("malformed age header: {what}"));
    if !bytes.starts_with(VERSION_LINE) {
        return Err(bad("no age-encryption.org/v1 line"));
    }
    let mut pos = VERSION_LINE.len();
    let line_at = |pos: usize| -> Result<&[u8], VaultError> {
        let rest = bytes.get(pos..).ok_or_else(|| bad("truncated"))?;
        let end = rest.iter().position(|&b| b == b'\n').ok_or_else(|| bad("truncated"))?;
        Ok(&rest[..end])
    };
    let mut stanzas = Vec::new();
    loop {
        let line = line_at(pos)?;
        if let Some(mac) = line.strip_prefix(b"--- ") {
            let mac: [u8; MAC_LEN] = BASE64_STANDARD_NO_PAD
                .decode(mac)
                .ok()
                .and_then(|m| m.try_into().ok())
                .ok_or_else(|| bad("MAC"))?;
            return Ok(Header { stanzas, mac, mac_input_len: pos + 3, len: pos + line.len() + 1 });
        }
        let args_line = line.strip_prefix(b"-> ").ok_or_else(|| bad("expected a stanza"))?;
        let start = pos;
        let text = std::str::from_utf8(args_line).map_err(|_| bad("stanza arguments"))?;
        let mut words = text.split(' ').map(str::to_owned);
        let tag = words.next().filter(|t| !t.is_empty()).ok_or_else(|| bad("stanza type"))?;
        let args: Vec<String> = words.collect();
        pos += line.len() + 1;
        let mut b64 = Vec::new();
        loop {
            let body_line = line_at(pos)?;
            if body_line.len() > 64 {
                return Err(bad("stanza body line too long"));
            }
            b64.extend_from_slice(body_line);
            pos += body_line.len() + 1;
            if body_line.len() < 64 {
                break;
            }
        }
        let body = BASE64_STANDARD_NO_PAD.decode(&b64).map_err(|_| bad("stanza body"))?;
        stanzas.push(HeaderStanza { text: bytes[start..pos].to_vec(), tag, args, body });
        if pos > MAX_HEADER_LEN {
            return Err(bad("header too long"));
        }
    }
}

/// Reads the header bytes (and possibly some payload) from the start of `file`.
fn read_header(file: &mut File) -> Result<(Vec<u8>, Header), VaultError> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 4096];
    loop {
        // The header ends at the first "\n--- " line's newline.
        if let Some(i) = find(&buf, b"\n--- ")
            && buf[i + 1..].contains(&b'\n')
        {
            let header = parse_header(&buf)?;
            return Ok((buf, header));
        }
        if buf.len() > MAX_HEADER_LEN {
            return Err(file_err("not an age file (no header end in the first MiB)"));
        }
        let n = file.read(&mut chunk).map_err(file_err)?;
        if n == 0 {
            return Err(file_err("not an age file (truncated header)"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// What recovery did with one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileOutcome {
    /// The header now opens with the new card (the old stanza replaced).
    Recovered,
    /// The file already opens with the new card and not the old one (an earlier run).
    AlreadyRecovered,
    /// No stanza in the file is addressed to the backup card's key.
    NotForThisCard,
    /// Nothing changed: the reason.
    Failed(String),
}

/// One file's line in the recovery report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileReport {
    /// The file.
    pub path: PathBuf,
    /// What happened.
    pub outcome: FileOutcome,
}

/// The temporary file next to `path` that recovery writes before renaming.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tessera-recover.tmp"))
}

/// The second name recovery gives an original just before replacing it (removed once the
/// batch is done; a stale one, after a crash, by the next run).
pub fn old_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tessera-recover.old"))
}

/// Re-wraps each file's key from the backup card to `new_recipient`, rewriting only headers.
///
/// Two threads in a pipeline: this one reads each header and has the card TRANSCRYPT it (the
/// card is the slow part), while an I/O thread has the previous files written: a copy of the
/// whole original with the new header written over the old one, into a temporary file next to
/// it, its write-back started at once. At the end of each batch of `batch` files the I/O thread
/// flushes the batch's new files together (`fsync`, concurrently), renames each over its
/// original, then flushes the directories, while the card already works on the next batch. A crash leaves every path with either its old or its
/// new content (the backup card opens the old, the new card the new); stale temporary files
/// are replaced by the next run. If the backup card goes away, the batches before the failure
/// are completed, the failing batch's temporary files removed and its originals left as they
/// were. `progress` is called once per file.
pub fn recover<C: CardChannel>(
    backup: &mut VaultCard<C>,
    new_recipient: &[u8; PUBLIC_KEY_LEN],
    files: &[PathBuf],
    batch: usize,
    progress: &mut dyn FnMut(&FileReport),
) -> Result<Vec<FileReport>, VaultError> {
    let old = PublicKey::from_sec1_bytes(&backup.public_key()?)
        .map_err(|_| VaultError::BadAnswer("public key"))?;
    let new = PublicKey::from_sec1_bytes(new_recipient)
        .map_err(|_| file_err("the new card's public key is not a P-256 point"))?;
    if old == new {
        return Err(VaultError::State("the new card holds the backup card's own key".into()));
    }
    let mut reports: Vec<FileReport> = Vec::with_capacity(files.len());
    let mut seen = BTreeSet::new();
    let (jobs, job_rx) = std::sync::mpsc::sync_channel::<Job>(PIPELINE_DEPTH);
    let (done_tx, done) = std::sync::mpsc::channel::<(usize, FileOutcome)>();
    std::thread::scope(|scope| {
        let worker = scope.spawn(move || io_worker(job_rx, done_tx));
        fn apply(
            reports: &mut [FileReport],
            progress: &mut dyn FnMut(&FileReport),
            (i, outcome): (usize, FileOutcome),
        ) {
            if let Some(r) = reports.get_mut(i) {
                r.outcome = outcome;
                progress(r);
            }
        }
        let mut failure = None;
        'batches: for chunk in files.chunks(batch.max(1)) {
            for path in chunk {
                let index = reports.len();
                let report = |outcome| FileReport { path: path.clone(), outcome };
                if !seen.insert(path.clone()) {
                    reports.push(report(FileOutcome::Failed("listed twice".into())));
                    progress(&reports[index]);
                    continue;
                }
                match prepare_one(backup, &old, &new, path) {
                    Ok(Some(rewrite)) => {
                        // Its final outcome comes from the I/O thread.
                        reports.push(report(FileOutcome::Recovered));
                        if jobs.send(Job::Write { index, rewrite }).is_err() {
                            failure = Some(file_err("the writing thread stopped"));
                            break 'batches;
                        }
                    }
                    Ok(None) => {
                        let outcome = if is_recovered(path, &old, &new) {
                            // A crash after the rename may have left the old file's name.
                            let _ = fs::remove_file(old_path(path));
                            FileOutcome::AlreadyRecovered
                        } else {
                            FileOutcome::NotForThisCard
                        };
                        reports.push(report(outcome));
                        progress(&reports[index]);
                    }
                    Err(VaultError::Channel(e)) => {
                        // The backup card is gone: this batch is dropped (its temporary files
                        // removed, its originals untouched); the earlier ones complete.
                        let _ = jobs.send(Job::Abort);
                        failure = Some(VaultError::Channel(e));
                        break 'batches;
                    }
                    Err(e) => {
                        reports.push(report(FileOutcome::Failed(e.to_string())));
                        progress(&reports[index]);
                    }
                }
                for d in done.try_iter() {
                    apply(&mut reports, progress, d);
                }
            }
            if jobs.send(Job::EndBatch).is_err() {
                failure = Some(file_err("the writing thread stopped"));
                break;
            }
        }
        drop(jobs);
        if worker.join().is_err() {
            failure.get_or_insert(file_err("the writing thread failed"));
        }
        for d in done.try_iter() {
            apply(&mut reports, progress, d);
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(reports),
        }
    })
}

/// Jobs queued between the card thread and the I/O thread (each holds an open file).
const PIPELINE_DEPTH: usize = 64;

/// A header rewritten by the card, ready to be written with the old payload.
struct Rewrite {
    /// The original file.
    path: PathBuf,
    /// The original, open.
    source: File,
    /// Where its payload starts (the length of its header).
    payload_at: u64,
    /// The new header, MAC line included.
    header: Vec<u8>,
}

/// What the card thread asks of the I/O thread.
enum Job {
    /// Write the new file of report `index` to its temporary path.
    Write { index: usize, rewrite: Rewrite },
    /// Flush the batch's new files, rename each over its original, flush the directories.
    EndBatch,
    /// Drop the batch: remove its temporary files, leave its originals.
    Abort,
}

/// The I/O thread: has the batch's new files written by [`WRITERS`] writer threads (the copy
/// is the kernel's work, about as much CPU as the card's), then, at the batch's end, flushes
/// and renames them and has the replaced originals removed on other threads while it goes on;
/// sends each written file's final outcome.
fn io_worker(
    jobs: std::sync::mpsc::Receiver<Job>,
    done: std::sync::mpsc::Sender<(usize, FileOutcome)>,
) {
    type Written = (usize, PathBuf, Result<(PathBuf, File), VaultError>);
    std::thread::scope(|scope| {
        let (results_tx, results) = std::sync::mpsc::channel::<Written>();
        let writers: Vec<_> = (0..WRITERS)
            .map(|_| {
                let (to_writer, work) = std::sync::mpsc::channel::<(usize, Rewrite)>();
                let results_tx = results_tx.clone();
                scope.spawn(move || {
                    for (index, rewrite) in work {
                        let path = rewrite.path.clone();
                        if results_tx.send((index, path, write_temp(rewrite))).is_err() {
                            return;
                        }
                    }
                });
                to_writer
            })
            .collect();
        drop(results_tx);
        let mut written: Vec<(usize, PathBuf, PathBuf, File)> = Vec::new();
        let mut pending = 0usize;
        // Removes the previous batch's replaced originals while the next batch is written.
        let mut remover: Option<std::thread::ScopedJoinHandle<'_, ()>> = None;
        // Waits for every file handed to the writers.
        let collect = |pending: &mut usize, written: &mut Vec<_>| {
            while *pending > 0 {
                let Ok((index, path, result)) = results.recv() else { break };
                *pending -= 1;
                match result {
                    Ok((tmp, file)) => written.push((index, path, tmp, file)),
                    Err(e) => {
                        let _ = done.send((index, FileOutcome::Failed(e.to_string())));
                    }
                }
            }
        };
        for (n, job) in jobs.into_iter().enumerate() {
            match job {
                Job::Write { index, rewrite } => {
                    if writers[n % WRITERS].send((index, rewrite)).is_ok() {
                        pending += 1;
                    } else {
                        let stopped = FileOutcome::Failed("the writing thread stopped".into());
                        let _ = done.send((index, stopped));
                    }
                }
                Job::EndBatch => {
                    collect(&mut pending, &mut written);
                    let (outcomes, aside) = finish_batch(std::mem::take(&mut written));
                    for (index, outcome) in outcomes {
                        let _ = done.send((index, outcome));
                    }
                    if let Some(previous) = remover.take() {
                        let _ = previous.join();
                    }
                    remover = Some(scope.spawn(move || remove_all(&aside)));
                }
                Job::Abort => {
                    collect(&mut pending, &mut written);
                    for (_, _, tmp, file) in written.drain(..) {
                        drop(file);
                        let _ = fs::remove_file(&tmp);
                    }
                }
            }
        }
        if let Some(previous) = remover {
            let _ = previous.join();
        }
        // Closed without the batch's end (the card thread stopped): its files are not renamed.
        collect(&mut pending, &mut written);
        for (_, _, tmp, file) in written {
            drop(file);
            let _ = fs::remove_file(&tmp);
        }
    });
}

/// Threads writing recovered files (each copy is a `copy_file_range` of a whole file).
const WRITERS: usize = 2;

/// Phase 2 of a batch: flush every written file, concurrently (the file system commits
/// concurrent flushes together), rename each flushed one over its original; phase 3: flush
/// the directories. Returns each file's outcome and the second names to remove.
///
/// Before each rename the original gets a second name ([`old_path`]), so the rename only
/// swaps a directory entry: freeing a replaced file's blocks costs milliseconds on ext4
/// (more with `discard`), and one after another that was half of recovery's time. The caller
/// removes the old names ([`remove_all`]) while the next batch is written. A crash in between
/// leaves a stale old name, which the next run removes; the path itself always holds the old
/// or the new file.
fn finish_batch(
    written: Vec<(usize, PathBuf, PathBuf, File)>,
) -> (Vec<(usize, FileOutcome)>, Vec<PathBuf>) {
    let files: Vec<&File> = written.iter().map(|(_, _, _, f)| f).collect();
    let flushed = flush_all(&files);
    let mut dirs = BTreeSet::new();
    let mut aside = Vec::new();
    let mut out = Vec::with_capacity(written.len());
    for ((index, path, tmp, _), flushed) in written.iter().zip(flushed) {
        let old = old_path(path);
        let _ = fs::remove_file(&old);
        let linked = flushed.is_ok() && fs::hard_link(path, &old).is_ok();
        let done = flushed.and_then(|()| fs::rename(tmp, path));
        if let Err(e) = done {
            let _ = fs::remove_file(tmp);
            if linked {
                let _ = fs::remove_file(&old);
            }
            out.push((*index, FileOutcome::Failed(format!("writing: {e}"))));
            continue;
        }
        if linked {
            aside.push(old);
        }
        dirs.insert(path.parent().map(Path::to_path_buf).unwrap_or_default());
        out.push((*index, FileOutcome::Recovered));
    }
    drop(written);
    for dir in dirs {
        let dir = if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir };
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
    }
    (out, aside)
}

/// Removes `paths` (the replaced originals' second names) on up to [`FLUSH_THREADS`]
/// threads; a failure leaves a stale name for the next run.
fn remove_all(paths: &[PathBuf]) {
    if paths.is_empty() {
        return;
    }
    let per_thread = paths.len().div_ceil(FLUSH_THREADS);
    std::thread::scope(|scope| {
        for chunk in paths.chunks(per_thread) {
            scope.spawn(move || {
                for p in chunk {
                    let _ = fs::remove_file(p);
                }
            });
        }
    });
}

/// Most flushes in flight at once.
const FLUSH_THREADS: usize = 16;

/// `sync_all` of every written file, on up to [`FLUSH_THREADS`] threads; results in order.
fn flush_all(written: &[&File]) -> Vec<io::Result<()>> {
    if written.len() <= 1 {
        return written.iter().map(|f| f.sync_all()).collect();
    }
    let per_thread = written.len().div_ceil(FLUSH_THREADS);
    std::thread::scope(|scope| {
        let handles: Vec<_> = written
            .chunks(per_thread)
            .map(|chunk| {
                let handle =
                    scope.spawn(move || chunk.iter().map(|f| f.sync_all()).collect::<Vec<_>>());
                (chunk.len(), handle)
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|(n, h)| {
                h.join().unwrap_or_else(|_| {
                    (0..n).map(|_| Err(io::Error::other("flush thread failed"))).collect()
                })
            })
            .collect()
    })
}

fn is_recovered(path: &Path, old: &PublicKey, new: &PublicKey) -> bool {
    let Ok(mut f) = File::open(path) else { return false };
    let Ok((_, header)) = read_header(&mut f) else { return false };
    let for_key =
        |k| header.stanzas.iter().any(|s| stanza_for(&s.tag, &s.args, &s.body, k).is_some());
    for_key(new) && !for_key(old)
}

/// Has the card re-wrap the file's key and MAC its new header; `None` when no stanza is for
/// `old`.
fn prepare_one<C: CardChannel>(
    backup: &mut VaultCard<C>,
    old: &PublicKey,
    new: &PublicKey,
    path: &Path,
) -> Result<Option<Rewrite>, VaultError> {
    let mut file = File::open(path).map_err(|e| file_err(format!("opening: {e}")))?;
    let (bytes, header) = read_header(&mut file)?;
    let Some((index, enc, body)) = header
        .stanzas
        .iter()
        .enumerate()
        .find_map(|(i, s)| stanza_for(&s.tag, &s.args, &s.body, old).map(|(e, b)| (i, e, b)))
    else {
        return Ok(None);
    };
    let mut prefix = VERSION_LINE.to_vec();
    for s in &header.stanzas[..index] {
        prefix.extend_from_slice(&s.text);
    }
    let mut suffix = Vec::new();
    for s in &header.stanzas[index + 1..] {
        suffix.extend_from_slice(&s.text);
    }
    suffix.extend_from_slice(b"---");
    let answer = backup.transcrypt(proto::TranscryptRequest {
        enc,
        body,
        recipient: new.to_sec1_bytes(),
        old_mac: header.mac,
        old_header: bytes[..header.mac_input_len].to_vec(),
        new_prefix: prefix.clone(),
        new_suffix: suffix.clone(),
    })?;
    let tag = agec::p256tag_stanza_tag(&answer.enc, new);
    let mut out = prefix;
    out.extend_from_slice(&proto::p256tag_stanza_text(&tag, &answer.enc, &answer.body));
    out.extend_from_slice(&suffix);
    Ok(Some(Rewrite {
        path: path.to_path_buf(),
        source: file,
        payload_at: header.len as u64,
        header: with_mac(out, &answer.mac),
    }))
}

/// Writes a recovered file to its temporary path: a copy of the whole original with the new
/// header written over the old one (a `p256tag` stanza re-wrapped by the card has the same
/// length as the one it replaces, so the payload stays where it was). The copy is one
/// `copy_file_range` of the whole file, which filesystems that share blocks (XFS, btrfs)
/// perform as a clone: there the payload is not written again, only the header's block.
fn write_temp(rewrite: Rewrite) -> Result<(PathBuf, File), VaultError> {
    use std::os::unix::fs::FileExt;
    let Rewrite { path, mut source, payload_at, header } = rewrite;
    if header.len() as u64 != payload_at {
        return Err(file_err("the re-wrapped header differs in length from the original"));
    }
    let tmp = temp_path(&path);
    let _ = fs::remove_file(&tmp);
    let mut w = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| file_err(format!("creating {}: {e}", tmp.display())))?;
    let copy = (|| -> io::Result<()> {
        source.seek(SeekFrom::Start(0))?;
        io::copy(&mut source, &mut w)?;
        w.write_all_at(&header, 0)?;
        if let Ok(meta) = fs::metadata(&path) {
            w.set_permissions(meta.permissions())?;
        }
        // Starts the copy's write-back now (POSIX_FADV_DONTNEED writes dirty pages without
        // waiting, and drops none that are dirty), so the disk works while the card re-wraps
        // the next files instead of all at the batch's flush. Only advice: a failure is ignored.
        #[cfg(target_os = "linux")]
        let _ = rustix::fs::fadvise(&w, 0, None, rustix::fs::Advice::DontNeed);
        Ok(())
    })();
    if let Err(e) = copy {
        let _ = fs::remove_file(&tmp);
        return Err(file_err(format!("writing {}: {e}", tmp.display())));
    }
    Ok((tmp, w))
}

/// Lines of peers' recipient lists (age `-R` files, configuration) naming `old_recipient`:
/// `(file, line number)`, so their owners can be told the new recipient.
pub fn peers_naming(old_recipient: &str, lists: &[PathBuf]) -> Vec<(PathBuf, usize)> {
    let mut out = Vec::new();
    for path in lists {
        let Ok(text) = fs::read_to_string(path) else { continue };
        for (n, line) in text.lines().enumerate() {
            if line.contains(old_recipient) {
                out.push((path.clone(), n + 1));
            }
        }
    }
    out
}
