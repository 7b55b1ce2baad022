//! Runs the committed fuzz corpus (`fuzz/corpus/apdu/`) through the fuzz harness body on stable
//! Rust, so CI exercises every seed (and every crash input added there) without cargo-fuzz.

use std::path::Path;

#[test]
fn fuzz_corpus_passes_the_harness() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/apdu");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if !path.is_file() {
            continue;
        }
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| tessera_apdu::fuzzing::check(&data));
        assert!(outcome.is_ok(), "harness failed on {}", path.display());
        count += 1;
    }
    assert!(count >= 40, "corpus at {} has only {count} files", dir.display());
}

#[test]
fn corpus_seeds_mean_what_their_names_say() {
    use tessera_apdu::{ApduError, Command, Tlv, TlvError};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/apdu");
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    for name in ["case1_get_challenge_header", "case4s_select_aid", "case2e_le_0000", "case3e_300"]
    {
        assert!(Command::parse(&read(name)).is_ok(), "{name}");
    }
    for name in ["b1_zero_len2", "extended_lc_zero", "extended_lc_zero_le", "short_lc_truncated"] {
        assert_eq!(Command::parse(&read(name)), Err(ApduError::WrongLength), "{name}");
    }
    assert_eq!(Command::parse(&read("cla_ff_pps")), Err(ApduError::InvalidClass));
    assert!(Tlv::parse_exact(&read("tlv_ppse_fci")).is_ok());
    assert_eq!(Tlv::parse(&read("tlv_indefinite")).map(|_| ()), Err(TlvError::IndefiniteLength));
}
