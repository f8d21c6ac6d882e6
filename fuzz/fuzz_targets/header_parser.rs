//! `header_parser`: see `pixgate::fuzzing::header_parser`, which `tests/fuzz_corpus.rs` also runs on
//! the committed corpus.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pixgate::fuzzing::header_parser(data));
