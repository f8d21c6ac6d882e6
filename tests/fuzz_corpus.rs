//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the bodies of the
//! fuzz targets, so that every `cargo test` runs the seeds and every input the fuzzer
//! once found a bug with, without a nightly toolchain or cargo-fuzz.

use std::path::PathBuf;

fn replay(target: &str, body: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no corpus", dir.display());
    for path in files {
        let data = std::fs::read(&path).expect("corpus file");
        let outcome = std::panic::catch_unwind(|| body(&data));
        assert!(outcome.is_ok(), "{target} fails on {}", path.display());
    }
}

#[test]
fn frame_decoder_corpus_passes() {
    replay("frame_decoder", pixgate::fuzzing::frame_decoder);
}

#[test]
fn value_decoder_corpus_passes() {
    replay("value_decoder", pixgate::fuzzing::value_decoder);
}

#[test]
fn header_parser_corpus_passes() {
    replay("header_parser", pixgate::fuzzing::header_parser);
}
