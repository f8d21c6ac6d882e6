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

/// The program given to `python -c`. Standard library only; kept small.
pub(crate) const LOADER: &str = r#"import os, sys
def _pixgate_exec(code, namespace):
    exec(code, namespace)
if sys.version_info < (3, 9) or sys.implementation.name not in ("cpython", "pypy"):
    # CPython 2.7, Jython 2.7, CPython and PyPy before 3.9, other implementations: the one-file
    # helper, installed as the module pixgate. Kept in a string, which costs CPython 3
    # nothing to compile; serve() never returns.
    _pixgate_exec(r'''
import struct, types
os.environ.pop("PIXGATE_NO_CODE_CACHE", None)  # no code cache here
if os.environ.pop("PIXGATE_BOOTSTRAP", "") == "1":
    if sys.platform.startswith("java"):
        # Jython's os.read cannot read a pipe; a stream on /dev/fd/3 opens the same.
        import jarray
        from java.io import FileInputStream
        jin, jbuf = FileInputStream("/dev/fd/3"), jarray.zeros(65536, "b")
        read = lambda n: jbuf[:max(0, jin.read(jbuf, 0, min(n, 65536)))].tostring()
    else:
        read = lambda n: os.read(3, n)
    def rd(n):
        b = b""
        while len(b) < n:
            c = read(n - len(b))
            if not c:
                os._exit(70)
            b += c
        return b
    if rd(4) != b"PXGB":
        os._exit(71)
    src = None
    for _ in range(struct.unpack("!I", rd(4))[0]):
        name = rd(struct.unpack("!I", rd(4))[0])
        data = rd(struct.unpack("!I", rd(4))[0])
        if name == b"pixgate_legacy":
            src = data
    mod = types.ModuleType("pixgate")
    mod.__dict__["__pixgate_source__"] = src.decode("utf-8")
    sys.modules["pixgate"] = mod
    _pixgate_exec(compile(src, "<pixgate>/pixgate_legacy.py", "exec", 0, True), mod.__dict__)
else:
    import pixgate_legacy as mod
    sys.modules["pixgate"] = mod
mod.serve(3, 4)
''', {"os": os, "sys": sys, "_pixgate_exec": _pixgate_exec})
def _pixgate_cache():
    # The compiled helper, per user: a directory only this uid can use, never a link.
    if os.environ.pop("PIXGATE_NO_CODE_CACHE", ""):
        return None
    try:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        d = os.path.join(base, "pixgate")
        os.makedirs(d, 0o700, exist_ok=True)
        st = os.lstat(d)
        if st.st_uid != os.geteuid() or st.st_mode & 0o077 or not os.path.isdir(d) or os.path.islink(d):
            return None
        return d
    except (OSError, ValueError):
        return None
def _pixgate_code(cache, source, fn):
    if cache is not None:
        import _imp, marshal
        from importlib._bootstrap_external import MAGIC_NUMBER, _RAW_MAGIC_NUMBER
        data = source.encode()
        key = "%s-%s-%016x.pyc" % (fn[10:-3].replace("/", "."), sys.implementation.cache_tag, int.from_bytes(_imp.source_hash(_RAW_MAGIC_NUMBER, data), "little"))
        path = os.path.join(cache, key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                st = os.fstat(fd)
                blob = os.read(fd, st.st_size + 1) if st.st_uid == os.geteuid() and not st.st_mode & 0o077 else b""
            finally:
                os.close(fd)
            if blob[:4] == MAGIC_NUMBER and len(blob) > 16:
                code = marshal.loads(blob[16:])
                if code.co_filename == fn:
                    return code
        except (OSError, ValueError, EOFError, TypeError):
            pass
        code = compile(source, fn, "exec")
        try:
            tmp = "%s.%d.tmp" % (path, os.getpid())
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, MAGIC_NUMBER + bytes(12) + marshal.dumps(code))
            finally:
                os.close(fd)
            os.replace(tmp, path)
            # Keep the newest few compilations of this module for this interpreter (other
            # helper versions still in use), not every one ever made.
            pre = key[: key.rindex("-") + 1]
            old = [e for e in os.scandir(cache) if e.name.startswith(pre) and e.name.endswith(".pyc") and e.name != key and e.is_file(follow_symlinks=False)]
            old.sort(key=lambda e: e.stat(follow_symlinks=False).st_mtime)
            for e in old[: max(0, len(old) - 3)]:
                os.unlink(e.path)
        except OSError:
            pass
        return code
    return compile(source, fn, "exec")
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
            data = rd(rdn())
            if name != "pixgate_legacy":
                src[name] = data.decode()
        from importlib.machinery import ModuleSpec
        cache = _pixgate_cache()
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
                _pixgate_exec(_pixgate_code(cache, src[mod.__name__], fn), mod.__dict__)
        sys.meta_path.insert(0, Finder())
    import pixgate._worker
    pixgate._worker.serve(3, 4)
_pixgate_boot()
"#;

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
