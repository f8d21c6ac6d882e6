//! `frame_decoder`: see `pixgate::fuzzing::frame_decoder`, which `tests/fuzz_corpus.rs` also runs on
//! the committed corpus.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pixgate::fuzzing::frame_decoder(data));
