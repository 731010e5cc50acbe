"""The proxy's I/O-free core: HTTP/2 forwarding, routing state and load balancing.

Nothing in this package touches sockets, clocks or the event loop: bytes and
events go in, bytes and decisions come out, and time is passed in.
"""
