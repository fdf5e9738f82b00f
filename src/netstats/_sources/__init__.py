"""Capture sources: the code that sees bytes move, one module per kind of object watched.

- sockets.py: `socket.socket` while a capture is active (plain TCP, UDP, Unix sockets);
- tls.py: the ssl module's TLS objects (the plaintext) and asyncio's TLS protocol;
- functions.py: module functions that name a connection or move its bytes (getaddrinfo, os.sendfile).

_patch.py installs them; _engine.py handles what they report at the rare moments of a
connection's life. A new source (another event loop, another TLS library) goes here.

The contract of the per-call wrappers, the only netstats code that runs on every read and write:
a wrapper calls the stock method first, then, if the object counts into something
(`self._netstats_counts`, a `_record.Counts`), adds the byte count with `add_read` or
`add_write`. It may not change an argument, a return value or an exception; catch anything;
allocate; take a lock; or look at the payload beyond its length. Anything rarer goes to
_engine, whose entry points never raise.
"""
