import os, sys
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
