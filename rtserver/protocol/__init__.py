"""Sans-I/O client protocol: message values, codes and the JSON codec.

Nothing here knows about Twisted, clocks or sockets: bytes in, values out.
"""
