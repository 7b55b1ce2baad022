//! Fuzz target: arbitrary bytes through every parser of `tessera-apdu` (command and response
//! APDUs with re-encode/re-parse checks, BER-TLV, the card-side chain and GET RESPONSE layer, the
//! host exchange loop). The checks live in `tessera_apdu::fuzzing::check`, shared with the
//! stable corpus test.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tessera_apdu::fuzzing::check(data);
});
