def row_hash(plane):
    """P6's per-plane work: a rolling hash of each row, in pure Python (CPU-bound)."""
    out = []
    for row in plane.tolist():
        h = 0
        for v in row:
            h = (h * 31 + v) % 1000003
        out.append(h)
    return out
