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

/// The program given to `python -c`. Standard library only; kept small.
pub(crate) const LOADER: &str = r#"import os, sys
def _pixgate_boot():
    if os.environ.pop("PIXGATE_BOOTSTRAP", "") == "1":
        def rd(n):
            b = bytearray()
            while len(b) < n:
                c = os.read(3, n - len(b))
                if not c:
                    os._exit(70)
                b += c
            return bytes(b)
        def rdn():
            return int.from_bytes(rd(4), "big")
        if rd(4) != b"PXGB":
            os._exit(71)
        src = {}
        for _ in range(rdn()):
            name = rd(rdn()).decode()
            src[name] = rd(rdn()).decode()
        from importlib.machinery import ModuleSpec
        class Finder:
            def find_spec(self, name, path=None, target=None):
                if name in src:
                    return ModuleSpec(name, self, origin="<pixgate>", is_package=name == "pixgate")
            def create_module(self, spec):
                return None
            def get_source(self, name):
                return src.get(name)
            def exec_module(self, mod):
                fn = "<pixgate>/" + mod.__name__.replace(".", "/") + ".py"
                exec(compile(src[mod.__name__], fn, "exec"), mod.__dict__)
        sys.meta_path.insert(0, Finder())
    import pixgate._worker
    pixgate._worker.serve(3, 4)
_pixgate_boot()
"#;

/// The bundle sent on descriptor 3 when bootstrapping.
pub(crate) fn bundle() -> Vec<u8> {
    let size: usize = MODULES.iter().map(|(n, s)| 8 + n.len() + s.len()).sum();
    let mut out = Vec::with_capacity(8 + size);
    out.extend_from_slice(b"PXGB");
    out.extend_from_slice(&(MODULES.len() as u32).to_be_bytes());
    for (name, source) in MODULES {
        out.extend_from_slice(&(name.len() as u32).to_be_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(source.len() as u32).to_be_bytes());
        out.extend_from_slice(source.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
            MODULES.len()
        );
    }
}
