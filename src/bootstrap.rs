//! Zero-install bootstrap: the helper package travels inside the crate and is sent to the
//! worker over the protocol pipe, so the worker needs nothing but a Python interpreter.
//!
//! The worker is started as `python -u -c LOADER`. With `PIXGATE_BOOTSTRAP=1` in its
//! environment, the loader reads a bundle from descriptor 3 — `b"PXGB"`, a module count,
//! then per module a name and its source, every length a 32-bit big-endian unsigned — and
//! installs a meta-path finder that serves those modules under their own names, ahead of
//! any installed copy (and their sources to tracebacks, through `get_source`). Then it
//! imports `pixgate._worker` and serves. Without the variable
//! it imports the installed package. See `docs/PROTOCOL.md` §2.
//!
//! Compiling the helper from source costs most of a bootstrapped start-up, so the loader
//! keeps the compiled modules in a cache of the user's own (`$XDG_CACHE_HOME/pixgate`,
//! else `~/.cache/pixgate`): a directory of mode 0700 owned by the user (else it is not
//! used), files of mode 0600 named after the module, the interpreter's cache tag and a
//! hash of the source, so a changed source is compiled anew; writing one removes all but
//! the three newest other files of that module and interpreter. The spec key
//! `dont_write_bytecode` turns it off (and sets `PIXGATE_NO_CODE_CACHE` for the worker);
//! `PYTHONDONTWRITEBYTECODE`, which is about `.pyc` files beside sources, does not.

/// The helper's modules, in the order they are sent.
pub(crate) const MODULES: &[(&str, &str)] = &[
    (
        "pixgate",
        include_str!("../python-helper/pixgate/__init__.py"),
    ),
    (
        "pixgate._array",
        include_str!("../python-helper/pixgate/_array.py"),
    ),
    (
        "pixgate._errors",
        include_str!("../python-helper/pixgate/_errors.py"),
    ),
    (
        "pixgate._segment",
        include_str!("../python-helper/pixgate/_segment.py"),
    ),
    (
        "pixgate._transfer",
        include_str!("../python-helper/pixgate/_transfer.py"),
    ),
    (
        "pixgate._wire",
        include_str!("../python-helper/pixgate/_wire.py"),
    ),
    (
        "pixgate._worker",
        include_str!("../python-helper/pixgate/_worker.py"),
    ),
];

/// The program given to `python -c` (`python-helper/bootstrap/loader.py`, sent as it is).
/// Standard library only; kept small. Every interpreter pixgate starts parses it, Python
/// 2.7 and Jython included, which run the one-file helper it holds in a string.
pub(crate) const LOADER: &str = include_str!("../python-helper/bootstrap/loader.py");

/// The helper for interpreters other than CPython 3.9 and newer (CPython 2.7, Jython
/// 2.7, CPython 3.6 to 3.8): one file, sent after the package's modules.
pub(crate) const LEGACY_MODULE: (&str, &str) = (
    "pixgate_legacy",
    include_str!("../python-helper/pixgate_legacy.py"),
);

/// The bundle sent on descriptor 3 when bootstrapping: the package's modules, then the
/// legacy helper. Every loader reads all of it and keeps what its interpreter runs.
pub(crate) fn bundle() -> Vec<u8> {
    let records = || MODULES.iter().chain(std::iter::once(&LEGACY_MODULE));
    let size: usize = records().map(|(n, s)| 8 + n.len() + s.len()).sum();
    let mut out = Vec::with_capacity(8 + size);
    out.extend_from_slice(b"PXGB");
    out.extend_from_slice(&((MODULES.len() + 1) as u32).to_be_bytes());
    for (name, source) in records() {
        out.extend_from_slice(&(name.len() as u32).to_be_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(source.len() as u32).to_be_bytes());
        out.extend_from_slice(source.as_bytes());
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Asserts that `PIXGATE_PYTHON` (else `python3`) compiles `source`, fed on its
    /// stdin; skipped when no interpreter runs, unless `PIXGATE_TEST_STRICT` is set.
    pub(crate) fn assert_compiles(source: &str, file_name: &str) {
        use std::io::Write as _;
        use std::process::{Command, Stdio};
        use std::time::{Duration, Instant};

        let python = std::env::var("PIXGATE_PYTHON").unwrap_or_else(|_| "python3".into());
        let program = "import sys; compile(sys.stdin.buffer.read(), sys.argv[1], 'exec')";
        let child = Command::new(&python)
            .args(["-c", program, file_name])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                let why = format!("{python} does not run: {e}");
                assert!(std::env::var_os("PIXGATE_TEST_STRICT").is_none(), "{why}");
                let _ = writeln!(std::io::stderr(), "skipping the compile check: {why}");
                return;
            }
        };
        child
            .stdin
            .take()
            .unwrap()
            .write_all(source.as_bytes())
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{python} did not compile {file_name} within 60 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{python} does not compile {file_name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn the_loader_compiles() {
        assert_compiles(LOADER, "loader.py");
    }

    #[test]
    fn bundle_holds_every_module_of_the_helper_package() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/python-helper/pixgate");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| {
                let name = e.unwrap().file_name().into_string().unwrap();
                let stem = name.strip_suffix(".py")?.to_string();
                Some(if stem == "__init__" {
                    "pixgate".to_string()
                } else {
                    format!("pixgate.{stem}")
                })
            })
            .collect();
        on_disk.sort();
        let mut bundled: Vec<String> = MODULES.iter().map(|(n, _)| n.to_string()).collect();
        bundled.sort();
        assert_eq!(on_disk, bundled);
    }

    #[test]
    fn bundle_starts_with_magic_and_count() {
        let b = bundle();
        assert_eq!(&b[..4], b"PXGB");
        assert_eq!(
            u32::from_be_bytes(b[4..8].try_into().unwrap()) as usize,
            MODULES.len() + 1
        );
    }

    #[test]
    fn bundle_ends_with_the_legacy_helper() {
        let b = bundle();
        let (name, source) = LEGACY_MODULE;
        let mut tail = Vec::new();
        tail.extend_from_slice(&(name.len() as u32).to_be_bytes());
        tail.extend_from_slice(name.as_bytes());
        tail.extend_from_slice(&(source.len() as u32).to_be_bytes());
        tail.extend_from_slice(source.as_bytes());
        assert!(b.ends_with(&tail));
    }
}
