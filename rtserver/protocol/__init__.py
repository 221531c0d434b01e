"""Sans-I/O client protocol: message values, codes, the JSON and Protobuf codecs.

Nothing here knows about Twisted, clocks or sockets: bytes in, values out.
"""
