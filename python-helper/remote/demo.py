import time
import numpy as np
import pixgate

for kind, stack in channel:
    t0 = time.perf_counter()
    if kind == "bytes":
        shape = channel.receive()
        stack = np.frombuffer(stack, dtype=np.uint16).reshape(shape)
    t, z, c, y, x = stack.shape
    mip = pixgate.empty((t, c, y, x), "uint16", dims=("t", "c", "y", "x"),
                        meta={"name": "max projection along z"})
    means = pixgate.empty((t, z, c), "float64", dims=("t", "z", "c"),
                          meta={"name": "plane means"})
    t1 = time.perf_counter()
    np.max(stack, axis=1, out=mip)
    np.mean(stack, axis=(3, 4), out=means)
    t2 = time.perf_counter()
    if kind == "bytes":
        channel.send((mip.tobytes(), means.tobytes(), t2 - t1, t2 - t0))
    else:
        channel.send((mip, means, t2 - t1, t2 - t0))
    del stack, mip, means
