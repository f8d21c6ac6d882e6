//! `value_decoder`: see `pixgate::fuzzing::value_decoder`, which `tests/fuzz_corpus.rs` also runs on
//! the committed corpus.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pixgate::fuzzing::value_decoder(data));
