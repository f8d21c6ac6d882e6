import os
_n = os.open(os.devnull, os.O_RDONLY)
if _n != 0:
    os.dup2(_n, 0)
    os.close(_n)
for _k, _v in [
    # @env@
]:
    if _v is None:
        os.environ.pop(_k, None)
    else:
        os.environ[_k] = _v
# @chdir@
# @nice@
del _n, _k, _v
