import pixgate

def _pixgate_map_planes(channel, source, func, axis, start, stop):
    inp, out = channel.receive()
    try:
        name = "<map_planes source>"
        import linecache
        linecache.cache[name] = (len(source), None, source.splitlines(True), name)
        ns = {"__name__": "__pixgate_map__"}
        exec(compile(source, name, "exec"), ns)
        f = ns.get(func)
        if not callable(f):
            raise NameError(f"the map source defines no function {func!r}")
        head = (slice(None),) * axis
        mine = out[head + (slice(start, stop),)]
        for k in range(stop - start):
            if channel.is_cancelled():
                raise pixgate.Cancelled(f"cancelled before plane {start + k}")
            try:
                mine[head + (k,)] = f(inp[head + (start + k,)])
            except Exception as exc:
                if hasattr(exc, "add_note"):
                    exc.add_note(f"in plane {start + k} along axis {axis}")
                raise
        del mine
    finally:
        pixgate.release(inp)
        pixgate.release(out)
    channel.send(stop - start)
