import socket, sys
channel.send((sys.platform, sys.maxsize > 2**32, sys.version_info >= (3, 9), hasattr(socket, 'send_fds'), sys.implementation.name))
