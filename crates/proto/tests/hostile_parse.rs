#![allow(clippy::unwrap_used)] // tests may unwrap

//! Hostile input for every public parser of `tessera_proto` (update, vault, pairing, keyring,
//! home, access, proxy, control): on random bytes and on mutated valid encodings (bytes
//! flipped, cut short, appended, inserted, removed) no parser panics, and whatever a parser
//! accepts re-encodes to exactly the bytes it was given, so no parser accepts trailing
//! garbage, a second encoding of the same value, or bytes it ignores. Formats whose every
//! field is delimited (fixed or length-prefixed) must also refuse any proper prefix and any
//! appended byte; formats ending in a free-form field (a name, a value, a nonce) are marked
//! open and rely on the re-encoding check.
//!
//! Commands (`UpdateCommand`, `VaultCommand`, `KeyringCommand`) are checked the same way on
//! their INS, P1, P2 and data: what parses re-encodes with `to_command` to the same fields.
//!
//! Case counts: proptest's default (256), or `PROPTEST_CASES` for a deeper run.

use proptest::collection::vec;
use proptest::prelude::*;
use tessera_apdu::Command;

/// A change to a valid encoding.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(Vec<(usize, u8)>),
    Truncate(usize),
    Append(Vec<u8>),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => vec((any::<usize>(), 1u8..=255), 1..4).prop_map(Mutation::Flip),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => vec(any::<u8>(), 1..8).prop_map(Mutation::Append),
        1 => (any::<usize>(), vec(any::<u8>(), 1..8)).prop_map(|(a, b)| Mutation::Insert(a, b)),
        1 => (any::<usize>(), 1usize..8).prop_map(|(a, n)| Mutation::Remove(a, n)),
    ]
}

fn mutate(m: &Mutation, bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    match m {
        Mutation::Flip(flips) => {
            if !out.is_empty() {
                let len = out.len();
                for (at, x) in flips {
                    out[at % len] ^= x;
                }
            }
        }
        Mutation::Truncate(n) => out.truncate(n % (bytes.len() + 1)),
        Mutation::Append(more) => out.extend_from_slice(more),
        Mutation::Insert(at, more) => {
            let at = at % (out.len() + 1);
            out.splice(at..at, more.iter().copied());
        }
        Mutation::Remove(at, n) => {
            let at = at % (out.len() + 1);
            let end = (at + n).min(out.len());
            out.drain(at..end);
        }
    }
    out
}

fn arr<const N: usize>() -> impl Strategy<Value = [u8; N]> {
    vec(any::<u8>(), N).prop_map(|v| v.try_into().unwrap())
}

fn bytes(range: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), range)
}

/// Printable ASCII without control characters, `range` bytes long.
fn text(range: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = String> {
    vec(0x20u8..0x7F, range).prop_map(|v| String::from_utf8(v).unwrap())
}

/// The checks on one byte format: `value` is a valid value, `enc` its encoder, `parse` the
/// parser under test; `closed` when the format must refuse any prefix and any appended byte.
#[allow(clippy::too_many_arguments)]
fn check_format<T, E: std::fmt::Debug>(
    value: &T,
    enc: impl Fn(&T) -> Vec<u8>,
    parse: impl Fn(&[u8]) -> Result<T, E>,
    closed: bool,
    m: &Mutation,
    garbage: &[u8],
    cut: usize,
    noise: &[u8],
) -> Result<(), TestCaseError> {
    let valid = enc(value);
    match parse(&valid) {
        Ok(back) => prop_assert_eq!(enc(&back), valid.clone(), "round trip"),
        Err(e) => prop_assert!(false, "a valid encoding is refused: {e:?}: {}", hex(&valid)),
    }
    if closed {
        let longer = [&valid[..], garbage].concat();
        prop_assert!(parse(&longer).is_err(), "trailing garbage accepted: {}", hex(&longer));
        if !valid.is_empty() {
            let prefix = &valid[..cut % valid.len()];
            prop_assert!(parse(prefix).is_err(), "a proper prefix accepted: {}", hex(prefix));
        }
    }
    for input in [mutate(m, &valid), noise.to_vec()] {
        if let Ok(w) = parse(&input) {
            prop_assert_eq!(enc(&w), input.clone(), "accepted bytes that do not re-encode");
        }
    }
    Ok(())
}

/// The checks on a command type: `to_command` of a valid value parses back; a command with
/// P1/P2 or data changed parses only if it re-encodes to the same INS, P1, P2 and data.
fn check_command<T, E: std::fmt::Debug>(
    value: &T,
    to_command: impl Fn(&T) -> Command,
    parse: impl Fn(&Command) -> Result<T, E>,
    params: Option<(u8, u8)>,
    m: &Mutation,
) -> Result<(), TestCaseError> {
    let fields = |c: &Command| (c.ins, c.p1, c.p2, c.data.clone());
    let cmd = to_command(value);
    match parse(&cmd) {
        Ok(back) => prop_assert_eq!(fields(&to_command(&back)), fields(&cmd), "round trip"),
        Err(e) => prop_assert!(false, "a valid command is refused: {e:?}: {cmd:?}"),
    }
    let mut hostile = cmd.clone();
    hostile.data = mutate(m, &cmd.data);
    if let Some((p1, p2)) = params {
        hostile.p1 = p1;
        hostile.p2 = p2;
    }
    if let Ok(w) = parse(&hostile) {
        prop_assert_eq!(
            fields(&to_command(&w)),
            fields(&hostile),
            "accepted a non-canonical command"
        );
    }
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One proptest per byte format.
macro_rules! formats {
    ($($name:ident: $strategy:expr, $enc:expr, $parse:expr, closed = $closed:expr;)*) => {
        proptest! {
            #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]
            $(
                #[test]
                fn $name(
                    value in $strategy,
                    m in mutation(),
                    garbage in bytes(1..=8),
                    cut in any::<usize>(),
                    noise in bytes(0..=300),
                ) {
                    check_format(&value, $enc, $parse, $closed, &m, &garbage, cut, &noise)?;
                }
            )*
        }
    };
}

/// One proptest per command type.
macro_rules! commands {
    ($($name:ident: $strategy:expr, $parse:expr;)*) => {
        proptest! {
            #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]
            $(
                #[test]
                fn $name(
                    value in $strategy,
                    m in mutation(),
                    params in prop::option::weighted(0.3, (any::<u8>(), any::<u8>())),
                ) {
                    check_command(&value, |v| v.to_command(), $parse, params, &m)?;
                }
            )*
        }
    };
}

// ------------------------------------------------------------------------------------------
// update
// ------------------------------------------------------------------------------------------

mod update {
    use super::*;
    use tessera_proto::update::*;

    fn rule() -> impl Strategy<Value = ReadRule> {
        prop_oneof![Just(ReadRule::Free), Just(ReadRule::Pin)]
    }
    fn mode() -> impl Strategy<Value = Mode> {
        prop_oneof![Just(Mode::Apply), Just(Mode::Sealed)]
    }
    fn challenge() -> impl Strategy<Value = Challenge> {
        (arr::<NONCE_LEN>(), any::<u64>()).prop_map(|(nonce, expires)| Challenge { nonce, expires })
    }
    fn auth() -> impl Strategy<Value = DeviceAuthResponse> {
        (any::<u64>(), arr::<SIGNATURE_LEN>())
            .prop_map(|(last_sequence, signature)| DeviceAuthResponse { last_sequence, signature })
    }
    fn package() -> impl Strategy<Value = Package> {
        (
            bytes(1..=MAX_CARD_ID_LEN),
            any::<u64>(),
            mode(),
            rule(),
            bytes(1..=MAX_NAME_LEN),
            bytes(65 + 16..=200),
            arr::<SIGNATURE_LEN>(),
        )
            .prop_map(|(card_id, sequence, mode, rule, name, sealed, signature)| Package {
                card_id,
                sequence,
                mode,
                rule,
                name,
                sealed,
                signature,
            })
    }
    fn command() -> impl Strategy<Value = UpdateCommand> {
        prop_oneof![
            any::<u16>().prop_map(UpdateCommand::GetData),
            challenge().prop_map(|c| UpdateCommand::DeviceAuthenticate {
                mode: AuthMode::Plain,
                challenge: Some(c)
            }),
            (challenge(), arr::<PUBLIC_KEY_LEN>()).prop_map(|(c, server_key)| {
                UpdateCommand::DeviceAuthenticate {
                    mode: AuthMode::Private { server_key },
                    challenge: Some(c),
                }
            }),
            Just(UpdateCommand::DeviceAuthenticate {
                mode: AuthMode::LegacyStatic,
                challenge: None
            }),
            (any::<u8>(), any::<bool>(), bytes(1..=300)).prop_map(|(segment, last, data)| {
                UpdateCommand::LoadPackage { segment, last, data }
            }),
            bytes(1..=MAX_NAME_LEN).prop_map(UpdateCommand::ReadObject),
        ]
    }

    formats! {
        challenge_format: challenge(), |v: &Challenge| v.to_bytes().to_vec(), Challenge::parse, closed = true;
        device_auth_response: auth(), DeviceAuthResponse::to_bytes, DeviceAuthResponse::parse, closed = true;
        sealed_identity: (bytes(1..=MAX_CARD_ID_LEN), auth())
            .prop_map(|(card_id, auth)| SealedIdentity { card_id, auth }),
            SealedIdentity::to_bytes, SealedIdentity::parse, closed = true;
        package_format: package(), Package::to_bytes, Package::parse, closed = true;
        receipt: (prop_oneof![Just(Outcome::Applied), Just(Outcome::AlreadyApplied)], any::<u64>(),
                  arr::<DIGEST_LEN>(), arr::<SIGNATURE_LEN>())
            .prop_map(|(outcome, sequence, digest, signature)| Receipt { outcome, sequence, digest, signature }),
            Receipt::to_bytes, Receipt::parse, closed = true;
        object_definition: (rule(), bytes(1..=MAX_NAME_LEN), bytes(0..=100))
            .prop_map(|(rule, name, value)| ObjectDefinition { rule, name, value }),
            ObjectDefinition::to_bytes, ObjectDefinition::parse, closed = false;
        status: (any::<u64>(), any::<bool>(), any::<bool>(), any::<u16>())
            .prop_map(|(last_sequence, has_key, legacy_static, objects)| Status { last_sequence, has_key, legacy_static, objects }),
            |v: &Status| v.to_bytes().to_vec(), Status::parse, closed = true;
        issuer_list: (any::<u64>(), vec((text(1..=64), bytes(1..=80)), 0..4), arr::<SIGNATURE_LEN>())
            .prop_map(|(version, issuers, signature)| IssuerList { version, issuers, signature }),
            IssuerList::to_bytes, IssuerList::parse, closed = true;
    }

    commands! {
        update_command: command(), UpdateCommand::parse;
    }
}

// ------------------------------------------------------------------------------------------
// vault
// ------------------------------------------------------------------------------------------

mod vault {
    use super::*;
    use tessera_proto::vault::*;

    fn role() -> impl Strategy<Value = Role> {
        prop_oneof![Just(Role::Main), Just(Role::Backup)]
    }
    fn setter() -> impl Strategy<Value = Setter> {
        prop_oneof![Just(Setter::Issuer), Just(Setter::Holder)]
    }
    fn origin() -> impl Strategy<Value = KeyOrigin> {
        prop_oneof![
            Just(KeyOrigin::Generated),
            Just(KeyOrigin::Issued),
            Just(KeyOrigin::Sealed),
            Just(KeyOrigin::Wrapped)
        ]
    }
    fn config() -> impl Strategy<Value = Config> {
        (role(), 1..=MAX_COMPONENTS).prop_map(|(role, n)| Config::new(role, n).unwrap())
    }
    fn status() -> impl Strategy<Value = Status> {
        config().prop_flat_map(|config| {
            (
                vec(
                    prop::option::of((setter(), arr::<COMPONENT_CHECK_LEN>())),
                    usize::from(config.components),
                ),
                prop::option::of(arr::<GROUP_CHECK_LEN>()),
                prop::option::of(origin()),
                any::<(bool, bool, bool)>(),
            )
                .prop_map(move |(components, group_check, key, (p, b, l))| Status {
                    config,
                    components,
                    group_check,
                    key,
                    export_pending: p,
                    backup_created: b,
                    export_locked: l,
                })
        })
    }
    fn wrapped() -> impl Strategy<Value = WrappedKey> {
        (
            any::<u8>(),
            any::<u8>(),
            arr::<GROUP_CHECK_LEN>(),
            arr::<PUBLIC_KEY_LEN>(),
            arr::<NONCE_LEN>(),
            bytes(1..=256),
        )
            .prop_map(|(key_type, role, group_check, public_key, nonce, wrapped)| {
                WrappedKey { key_type, role, group_check, public_key, nonce, wrapped }
            })
    }
    fn transcrypt() -> impl Strategy<Value = TranscryptRequest> {
        (
            arr::<ENC_LEN>(),
            arr::<BODY_LEN>(),
            arr::<PUBLIC_KEY_LEN>(),
            arr::<MAC_LEN>(),
            bytes(0..=60),
            bytes(0..=60),
            bytes(0..=60),
        )
            .prop_map(
                |(enc, body, recipient, old_mac, old_header, new_prefix, new_suffix)| {
                    TranscryptRequest {
                        enc,
                        body,
                        recipient,
                        old_mac,
                        old_header,
                        new_prefix,
                        new_suffix,
                    }
                },
            )
    }
    fn command() -> impl Strategy<Value = VaultCommand> {
        prop_oneof![
            (any::<u8>(), arr::<COMPONENT_LEN>())
                .prop_map(|(slot, component)| VaultCommand::PutComponent { slot, component }),
            Just(VaultCommand::Generate),
            bytes(ENC_LEN + PRIVATE_KEY_LEN + 16..=200).prop_map(VaultCommand::ImportSealed),
            Just(VaultCommand::Export),
            wrapped().prop_map(VaultCommand::ImportWrapped),
            arr::<CONFIRMATION_LEN>().prop_map(VaultCommand::ConfirmBackup),
            Just(VaultCommand::LockExport),
            (arr::<ENC_LEN>(), arr::<BODY_LEN>())
                .prop_map(|(enc, body)| VaultCommand::Decrypt { enc, body }),
            arr::<FILE_KEY_LEN>().prop_map(VaultCommand::Encrypt),
            transcrypt().prop_map(|t| VaultCommand::Transcrypt(Box::new(t))),
            bytes(ATTEST_NONCE_MIN..=ATTEST_NONCE_MAX).prop_map(VaultCommand::Attest),
            any::<u16>().prop_map(VaultCommand::GetData),
        ]
    }

    formats! {
        config_format: config(), |c: &Config| c.to_bytes().to_vec(), Config::parse, closed = true;
        status_format: status(), Status::to_bytes, Status::parse, closed = true;
        wrapped_key: wrapped(), WrappedKey::to_bytes, WrappedKey::parse, closed = false;
        attestation: (role(), arr::<PUBLIC_KEY_LEN>(), prop::option::of(arr::<PUBLIC_KEY_LEN>()), arr::<SIGNATURE_LEN>())
            .prop_map(|(role, transport_key, public_key, signature)| Attestation { role, transport_key, public_key, signature }),
            Attestation::to_bytes, Attestation::parse, closed = true;
        transcrypt_request: transcrypt(), TranscryptRequest::to_bytes, TranscryptRequest::parse, closed = true;
        transcrypt_response: (arr::<ENC_LEN>(), arr::<BODY_LEN>(), arr::<MAC_LEN>())
            .prop_map(|(enc, body, mac)| TranscryptResponse { enc, body, mac }),
            TranscryptResponse::to_bytes, TranscryptResponse::parse, closed = true;
    }

    commands! {
        vault_command: command(), VaultCommand::parse;
    }
}

// ------------------------------------------------------------------------------------------
// pairing
// ------------------------------------------------------------------------------------------

mod pairing {
    use super::*;
    use tessera_proto::pairing::*;

    formats! {
        enrolment_proof: (arr::<PUBLIC_KEY_LEN>(), arr::<SIGNATURE_LEN>())
            .prop_map(|(public_key, signature)| EnrolmentProof { public_key, signature }),
            EnrolmentProof::to_bytes, EnrolmentProof::parse, closed = true;
        pair_begin: (arr::<NONCE_LEN>(), arr::<PUBLIC_KEY_LEN>(), bytes(1..=300))
            .prop_map(|(nonce, ephemeral, certificate)| PairBegin { nonce, ephemeral, certificate }),
            PairBegin::to_bytes, PairBegin::parse, closed = false;
        pair_begin_response: (arr::<NONCE_LEN>(), arr::<PUBLIC_KEY_LEN>(), arr::<SIGNATURE_LEN>(), arr::<CONFIRMATION_LEN>(), bytes(1..=300))
            .prop_map(|(nonce, ephemeral, signature, confirmation, certificate)| PairBeginResponse { nonce, ephemeral, signature, confirmation, certificate }),
            PairBeginResponse::to_bytes, PairBeginResponse::parse, closed = false;
        pair_confirm: (arr::<SIGNATURE_LEN>(), arr::<CONFIRMATION_LEN>())
            .prop_map(|(signature, confirmation)| PairConfirm { signature, confirmation }),
            PairConfirm::to_bytes, PairConfirm::parse, closed = true;
        status: (any::<bool>(), any::<i64>(), any::<u8>(), any::<u8>())
            .prop_map(|(enrolled, time_floor, committed, staged)| Status { enrolled, time_floor, committed, staged }),
            Status::to_bytes, Status::parse, closed = true;
        ledger_entries: vec((any::<u32>(), any::<bool>(), any::<u64>(), any::<u64>(), bytes(0..=MAX_KEY_ID_LEN)), 0..4)
            .prop_map(|v| v.into_iter().map(|(seq, credit, amount, balance, terminal)| ledger::Entry { seq, credit, amount, balance, terminal }).collect::<Vec<_>>()),
            |v: &Vec<ledger::Entry>| v.iter().flat_map(ledger::Entry::to_bytes).collect(),
            ledger::Entry::parse_all, closed = false;
    }
}

// ------------------------------------------------------------------------------------------
// keyring
// ------------------------------------------------------------------------------------------

mod keyring {
    use super::*;
    use tessera_proto::keyring::*;

    fn mode() -> impl Strategy<Value = Mode> {
        prop_oneof![Just(Mode::Symmetric), Just(Mode::Asymmetric)]
    }
    fn layout() -> impl Strategy<Value = Layout> {
        (mode(), 1..=MAX_SLOTS, 1..=MAX_SLOTS)
            .prop_map(|(mode, m, n)| Layout::new(mode, m, n).unwrap())
    }

    formats! {
        layout_config: layout(), |l: &Layout| l.to_config().to_vec(), Layout::from_config, closed = true;
        security_status: (any::<u16>(), any::<u16>(), prop::option::of((1u8..=255, any::<u8>())), any::<u8>())
            .prop_map(|(proven_internal, proven_external, authenticated, session_level)| SecurityStatus { proven_internal, proven_external, authenticated, session_level }),
            SecurityStatus::to_bytes, SecurityStatus::parse, closed = true;
    }

    proptest! {
        #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

        /// KEY INFO as the card answers it: a layout and one entry per slot. (The list is open:
        /// a host reads the slots listed, so a list cut at an entry boundary is another value.)
        #[test]
        fn key_info(layout in layout(), versions in vec((any::<u32>(), arr::<KCV_LEN>()), 16), m in mutation(), garbage in bytes(1..=8), cut in any::<usize>(), noise in bytes(0..=300)) {
            let mut slots = Vec::new();
            for (kind, n) in [(KeyKind::Internal, layout.internal_slots), (KeyKind::External, layout.external_slots)] {
                for slot in 1..=n {
                    let (version, kcv) = versions[usize::from(slot) % versions.len()];
                    slots.push(SlotInfo { kind, slot, version, kcv });
                }
            }
            let info = KeyInfo { layout, slots };
            check_format(&info, KeyInfo::to_bytes, KeyInfo::parse, false, &m, &garbage, cut, &noise)?;
        }

        /// The responses parsed per mode, and the key data group, on random and mutated bytes.
        #[test]
        fn responses_and_key_dgi(mode in mode(), version in any::<u32>(), ephemeral in prop::option::of(arr::<PUBLIC_KEY_LEN>()), proof in bytes(16..=64), m in mutation(), noise in bytes(0..=300)) {
            let ephemeral = if mode == Mode::Asymmetric { ephemeral.or(Some([4; PUBLIC_KEY_LEN])) } else { None };
            let response = InternalAuthResponse { version, ephemeral, proof };
            let parse = |b: &[u8]| InternalAuthResponse::parse(b, mode);
            let valid = response.to_bytes();
            if let Ok(back) = parse(&valid) {
                prop_assert_eq!(back.to_bytes(), valid.clone());
            }
            for input in [mutate(&m, &valid), noise.clone()] {
                if let Ok(w) = parse(&input) { prop_assert_eq!(w.to_bytes(), input.clone()); }
                if let Ok(w) = RenewResponse::parse(&input, mode) { prop_assert_eq!(w.to_bytes(), input.clone()); }
                if let Ok((kind, version, key)) = parse_key_dgi(&input) {
                    prop_assert_eq!([&[kind][..], &version.to_be_bytes(), key].concat(), input.clone());
                }
            }
        }

        /// Commands of every INS the keyring knows, with random P1/P2 and data, for every layout.
        #[test]
        fn keyring_commands(layout in layout(), ins in prop::sample::select(vec![0x88u8, 0x82, 0xC6, 0xCA, 0x84, 0x00]), p1 in any::<u8>(), p2 in any::<u8>(), data in bytes(0..=400)) {
            let cmd = Command::new(0x80, ins, p1, p2).with_data(data);
            if let Ok(KeyringCommand::Renew(renew)) = KeyringCommand::parse(&cmd, &layout) {
                let again = renew.to_command();
                prop_assert_eq!((again.p1, again.p2, &again.data), (cmd.p1, cmd.p2, &cmd.data));
            }
            let _ = RenewForm::parse(p1, &cmd.data);
        }
    }
}

// ------------------------------------------------------------------------------------------
// home
// ------------------------------------------------------------------------------------------

mod home {
    use super::*;
    use tessera_proto::home::*;

    fn id() -> impl Strategy<Value = Vec<u8>> {
        bytes(1..=MAX_ID_LEN)
    }
    fn phase() -> impl Strategy<Value = Phase> {
        prop_oneof![Just(Phase::Prohibited), Just(Phase::RemoteWait), Just(Phase::Enabled)]
    }
    fn signed<M: Message + std::fmt::Debug + Clone>(
        m: impl Strategy<Value = M>,
    ) -> impl Strategy<Value = Signed<M>> {
        (m, arr::<SIGNATURE_LEN>()).prop_map(|(message, signature)| Signed { message, signature })
    }
    fn entry() -> impl Strategy<Value = LogEntry> {
        (
            any::<u64>(),
            prop_oneof![
                Just(EntryKind::Payment),
                Just(EntryKind::Refill),
                Just(EntryKind::Cancellation)
            ],
            any::<bool>(),
            any::<u64>(),
            any::<i64>(),
            id(),
            id(),
        )
            .prop_map(|(counter, kind, cancelled, amount, time, party, reference)| {
                LogEntry { counter, kind, cancelled, amount, time, party, reference }
            })
    }

    formats! {
        status: (phase(), 0u8..=PIN_TRIES, 0u8..=PIN_TRIES, 0u8..=PIN_TRIES, any::<(bool, bool, bool, bool)>())
            .prop_map(|(phase, pin1_tries, pin2_tries, puk_tries, (pins_set, ca, tls_certificate, payment_certificate))| Status {
                phase, pin1_tries, pin2_tries, puk_tries, pins_set, ca, tls_certificate, payment_certificate,
            }),
            Status::to_bytes, Status::parse, closed = true;
        wallet_info: (arr::<3>(), any::<u64>(), any::<u64>(), any::<u16>(), any::<u64>())
            .prop_map(|(currency, balance, next_counter, entries, oldest_counter)| WalletInfo { currency, balance, next_counter, entries, oldest_counter }),
            WalletInfo::to_bytes, WalletInfo::parse, closed = true;
        charge_notice: signed((id(), id(), arr::<3>(), any::<u64>(), any::<i64>(), id(), arr::<PAY_CHALLENGE_LEN>())
            .prop_map(|(market, order, currency, amount, time, card, challenge)| ChargeNotice { market, order, currency, amount, time, card, challenge })),
            Signed::to_bytes, Signed::parse, closed = true;
        payment_token: signed((id(), any::<u64>(), arr::<3>(), any::<u64>(), id(), id(), any::<i64>())
            .prop_map(|(card, counter, currency, amount, order, market, time)| PaymentToken { card, counter, currency, amount, order, market, time })),
            Signed::to_bytes, Signed::parse, closed = true;
        refill_voucher: signed((id(), id(), any::<u64>(), arr::<3>(), any::<u64>(), any::<i64>())
            .prop_map(|(bank, card, sequence, currency, amount, time)| RefillVoucher { bank, card, sequence, currency, amount, time })),
            Signed::to_bytes, Signed::parse, closed = true;
        refill_ack: signed((id(), id(), any::<u64>(), any::<u64>(), any::<u64>())
            .prop_map(|(card, bank, sequence, amount, counter)| RefillAck { card, bank, sequence, amount, counter })),
            Signed::to_bytes, Signed::parse, closed = true;
        cancel_confirmation: signed((id(), id(), any::<u64>(), id(), any::<u64>(), any::<i64>())
            .prop_map(|(market, card, counter, order, amount, time)| CancelConfirmation { market, card, counter, order, amount, time })),
            Signed::to_bytes, Signed::parse, closed = true;
        settlement: signed((id(), id(), any::<u64>(), id(), any::<u64>(), any::<i64>())
            .prop_map(|(market, card, counter, order, amount, time)| Settlement { market, card, counter, order, amount, time })),
            Signed::to_bytes, Signed::parse, closed = true;
        cancel_receipt: signed((id(), id(), any::<u64>(), any::<u64>(), any::<u64>())
            .prop_map(|(card, market, payment_counter, counter, amount)| CancelReceipt { card, market, payment_counter, counter, amount })),
            Signed::to_bytes, Signed::parse, closed = true;
        cancel_challenge: (id(), id(), arr::<CANCEL_CHALLENGE_LEN>())
            .prop_map(|(market, order, challenge)| CancelChallenge { market, order, challenge }),
            CancelChallenge::to_bytes, CancelChallenge::parse, closed = true;
        cancel_request: signed((id(), any::<u64>(), id(), id(), any::<u64>(), arr::<CANCEL_CHALLENGE_LEN>())
            .prop_map(|(card, counter, market, order, amount, challenge)| CancelRequest { card, counter, market, order, amount, challenge })),
            Signed::to_bytes, Signed::parse, closed = true;
        log_page: (any::<bool>(), vec(entry(), 0..4))
            .prop_map(|(more, entries)| LogPage { more, entries }),
            LogPage::to_bytes, LogPage::parse, closed = true;
    }
}

// ------------------------------------------------------------------------------------------
// access
// ------------------------------------------------------------------------------------------

mod access {
    use super::*;
    use tessera_proto::access::*;

    formats! {
        home_server: (arr::<32>(), text(1..=MAX_ADDRESS_LEN))
            .prop_map(|(spki_sha256, address)| HomeServer { spki_sha256, address }),
            HomeServer::to_bytes, HomeServer::parse, closed = false;
        // Profile names are unique.
        profiles: prop::collection::btree_map(text(1..=MAX_NAME_LEN), (text(1..=MAX_NAME_LEN), text(1..=MAX_NAME_LEN)), 0..=MAX_PROFILES)
            .prop_map(|v| Profiles(v.into_iter().map(|(name, (screen, input))| TerminalProfile { name, screen, input }).collect())),
            Profiles::to_bytes, Profiles::parse, closed = true;
        status: (any::<bool>(), 0u8..=PIN_TRIES, 0u8..=PIN_TRIES, any::<(bool, bool, bool, bool)>())
            .prop_map(|(accessible, pin_tries, puk_tries, (pins_set, ca, certificate, home_server))| Status {
                accessible, pin_tries, puk_tries, pins_set, ca, certificate, home_server,
            }),
            Status::to_bytes, Status::parse, closed = true;
    }
}

// ------------------------------------------------------------------------------------------
// proxy and control
// ------------------------------------------------------------------------------------------

mod proxy {
    use super::*;
    use tessera_proto::control::{
        ErrorCode, Frame, MAX_HOST_LEN, MAX_MESSAGE_LEN, MAX_PIN_LEN, Mode, frame_len,
    };
    use tessera_proto::proxy::*;

    /// A frame's type and body (what [`Frame::parse`] reads), after checking its length prefix.
    fn frame_body(f: &Frame) -> Vec<u8> {
        let wire = f.encode().unwrap();
        let prefix: [u8; 4] = wire[..4].try_into().unwrap();
        assert_eq!(frame_len(prefix).unwrap(), wire.len() - 4);
        wire[4..].to_vec()
    }

    fn host() -> impl Strategy<Value = String> {
        vec(prop::sample::select(b"abcz09.-:_".to_vec()), 1..=MAX_HOST_LEN)
            .prop_map(|v| String::from_utf8(v).unwrap())
    }

    pub(super) fn keys() -> impl Strategy<Value = TrafficKeys> {
        (
            prop::sample::select(vec![
                CipherSuite::Tls13Aes128GcmSha256,
                CipherSuite::Tls13Aes256GcmSha384,
                CipherSuite::Tls12EcdheEcdsaAes128GcmSha256,
                CipherSuite::Tls12EcdheEcdsaAes256GcmSha384,
            ]),
            arr::<32>(),
            arr::<32>(),
            arr::<IV_LEN>(),
            arr::<IV_LEN>(),
            any::<u64>(),
            any::<u64>(),
        )
            .prop_map(|(suite, ck, sk, civ, siv, cseq, sseq)| {
                let n = suite.aead().key_len();
                TrafficKeys::new(
                    suite.version(),
                    suite,
                    DirectionKeys::new(&ck[..n], civ, cseq).unwrap(),
                    DirectionKeys::new(&sk[..n], siv, sseq).unwrap(),
                )
                .unwrap()
            })
    }

    fn error_code() -> impl Strategy<Value = ErrorCode> {
        prop_oneof![
            Just(ErrorCode::Protocol),
            (0u8..=15).prop_map(ErrorCode::Pin2Wrong),
            Just(ErrorCode::Blocked),
            Just(ErrorCode::Locked),
            Just(ErrorCode::MarketUnreachable),
            Just(ErrorCode::MarketHandshake),
            Just(ErrorCode::MarketClosed),
            Just(ErrorCode::UnknownSession),
            Just(ErrorCode::Unsupported),
            Just(ErrorCode::Internal),
        ]
    }

    fn frame() -> impl Strategy<Value = Frame> {
        let mode = prop_oneof![Just(Mode::Handover), Just(Mode::Relay), Just(Mode::Partial)];
        prop_oneof![
            (1u32.., host(), any::<u16>(), mode, any::<bool>()).prop_map(
                |(session, host, port, mode, cache_allowed)| Frame::OpenMarket {
                    session,
                    host,
                    port,
                    mode,
                    cache_allowed
                }
            ),
            (1u32.., bytes(1..=200))
                .prop_map(|(session, certificate)| Frame::Opened { session, certificate }),
            (1u32.., keys()).prop_map(|(session, keys)| Frame::HandedOver { session, keys }),
            (1u32.., bytes(0..=200)).prop_map(|(session, bytes)| Frame::Data { session, bytes }),
            (1u32.., bytes(0..=200))
                .prop_map(|(session, bytes)| Frame::PostHandshake { session, bytes }),
            (1u32.., keys(), any::<bool>())
                .prop_map(|(session, keys, respond)| Frame::KeysUpdated { session, keys, respond }),
            (1u32.., arr::<32>()).prop_map(|(session, transcript_hash)| Frame::SignRequest {
                session,
                transcript_hash
            }),
            (1u32.., bytes(1..=80))
                .prop_map(|(session, signature)| Frame::SignResponse { session, signature }),
            bytes(1..=MAX_PIN_LEN).prop_map(|pin| Frame::Pin2 { pin }),
            Just(Frame::Unlocked),
            bytes(0..=200).prop_map(|body| Frame::Wallet { body }),
            bytes(0..=200).prop_map(|body| Frame::WalletReply { body }),
            any::<u32>().prop_map(|session| Frame::End { session }),
            (any::<u32>(), error_code(), text(0..=MAX_MESSAGE_LEN.min(100)))
                .prop_map(|(session, code, message)| Frame::Error { session, code, message }),
        ]
    }

    formats! {
        traffic_keys: keys(), TrafficKeys::to_bytes, TrafficKeys::parse, closed = true;
        control_frame: frame(), frame_body, Frame::parse, closed = true;
    }

    proptest! {
        /// Any length prefix gives a length within the limits or an error.
        #[test]
        fn frame_prefix(prefix in any::<[u8; 4]>()) {
            if let Ok(n) = frame_len(prefix) {
                prop_assert!((1..=tessera_proto::control::MAX_FRAME_LEN).contains(&n));
                prop_assert_eq!(n as u32, u32::from_be_bytes(prefix));
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// scalar arguments and one-byte codes
// ------------------------------------------------------------------------------------------

mod scalars {
    use super::*;
    use tessera_proto::pairing::{ServiceId, ledger, notes};

    proptest! {
        #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

        /// The ledger and notes arguments: accepted only in their one encoding.
        #[test]
        fn service_arguments(value in any::<u64>(), slot in any::<u8>(), text in bytes(0..=210), m in mutation(), noise in bytes(0..=20)) {
            for input in [mutate(&m, &value.to_be_bytes()), noise.clone()] {
                if let Ok(a) = ledger::parse_amount(&input) {
                    prop_assert!(a != 0);
                    prop_assert_eq!(a.to_be_bytes().to_vec(), input.clone());
                }
                if let Ok(b) = ledger::parse_balance(&input) {
                    prop_assert_eq!(b.to_be_bytes().to_vec(), input.clone());
                }
                if let Ok(s) = notes::parse_slot(&input) {
                    prop_assert_eq!(vec![s], input.clone());
                }
            }
            let put = [&[slot][..], &text].concat();
            for input in [put.clone(), mutate(&m, &put)] {
                if let Ok((s, t)) = notes::parse_put(&input) {
                    prop_assert!(s < notes::MAX_NOTES && !t.is_empty() && t.len() <= notes::MAX_NOTE_LEN);
                    prop_assert_eq!([&[s][..], t].concat(), input.clone());
                }
            }
        }
    }

    /// Every one-byte code decodes to a value that encodes back to it, or is refused.
    #[test]
    fn codes_decode_only_to_themselves() {
        use tessera_proto::{home, keyring, update, vault};
        let mut accepted = 0;
        for c in 0..=u8::MAX {
            let mut ok = |yes: bool| accepted += usize::from(yes);
            if let Some(s) = ServiceId::from_code(c) {
                assert_eq!(s.code(), c);
                ok(true);
            }
            if let Ok(m) = keyring::Mode::from_code(c) {
                assert_eq!(m.code(), c);
                ok(true);
            }
            if let Ok(k) = keyring::KeyKind::from_code(c) {
                assert_eq!(k.code(), c);
                ok(true);
            }
            if let Ok(r) = update::ReadRule::from_code(c) {
                assert_eq!(r.code(), c);
                ok(true);
            }
            if let Ok(m) = update::Mode::from_code(c) {
                assert_eq!(m.code(), c);
                ok(true);
            }
            if let Ok(r) = vault::Role::from_code(c) {
                assert_eq!(r.code(), c);
                ok(true);
            }
            if let Ok(s) = vault::Setter::from_code(c) {
                assert_eq!(s.code(), c);
                ok(true);
            }
            if let Ok(o) = vault::KeyOrigin::from_code(c) {
                assert_eq!(o.code(), c);
                ok(true);
            }
            if let Some(p) = home::Phase::from_code(c) {
                assert_eq!(p.code(), c);
                ok(true);
            }
            if let Some(e) = home::EntryKind::from_code(c) {
                assert_eq!(e.code(), c);
                ok(true);
            }
        }
        // 2 services, 2 modes, 2 kinds, 2 rules, 2 modes, 2 roles, 2 setters, 4 origins,
        // 3 phases, 3 entry kinds.
        assert_eq!(accepted, 24);
    }

    /// The TLS version and cipher-suite codes of the key handover, over every `u16`.
    #[test]
    fn tls_codes_decode_only_to_themselves() {
        use tessera_proto::proxy::{CipherSuite, TlsVersion};
        let (mut versions, mut suites) = (0, 0);
        for c in 0..=u16::MAX {
            if let Some(v) = TlsVersion::from_u16(c) {
                assert_eq!(v.to_u16(), c);
                versions += 1;
            }
            if let Some(s) = CipherSuite::from_u16(c) {
                assert_eq!(s.to_u16(), c);
                suites += 1;
            }
        }
        assert_eq!((versions, suites), (2, 4));
    }
}

// ------------------------------------------------------------------------------------------
// regressions found by the tests above
// ------------------------------------------------------------------------------------------

/// KEYRING security status: "no authenticated pair" is `00 00`; `00 e` (an external slot
/// without an internal one) used to parse as "none", ignoring the external byte.
#[test]
fn keyring_security_status_refuses_an_external_slot_without_an_internal_one() {
    use tessera_proto::keyring::SecurityStatus;
    assert!(SecurityStatus::parse(&[0, 0, 0, 0, 0, 1, 0]).is_err());
    let none = SecurityStatus::parse(&[0, 0, 0, 0, 0, 0, 0x33]).unwrap();
    assert_eq!(none.authenticated, None);
    assert_eq!(SecurityStatus::parse(&[0, 0, 0, 0, 2, 1, 0]).unwrap().authenticated, Some((2, 1)));
}

/// Ledger HISTORY entries: the terminal id is zero padded to its 20 bytes; non-zero padding
/// used to be ignored (two encodings of one entry).
#[test]
fn ledger_history_refuses_non_zero_padding() {
    use tessera_proto::pairing::ledger::Entry;
    let entry = Entry { seq: 1, credit: true, amount: 5, balance: 5, terminal: vec![7; 3] };
    let mut bytes = entry.to_bytes();
    assert_eq!(Entry::parse_all(&bytes), Ok(vec![entry]));
    *bytes.last_mut().unwrap() = 1;
    assert!(Entry::parse_all(&bytes).is_err());
}
