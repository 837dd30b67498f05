"""HTTP/1.1 on the wire for the fakes: the requests of a connection, a reset."""
import socket
import struct


async def requests(reader):
    """Yields the requests read from an asyncio stream, each as (method, target, headers
    with lower-case names, body), until the end of the stream or a line that is not a
    request line."""
    while True:
        request = await read_request(reader)
        if request is None:
            return
        yield request


async def read_request(reader):
    """Reads one request from an asyncio stream, or None (see requests)."""
    line = await reader.readline()
    if not line:
        return None
    try:
        method, target, _ = line.decode("latin-1").split(" ", 2)
    except ValueError:
        return None
    headers = {}
    while True:
        h = await reader.readline()
        if h in (b"\r\n", b"\n", b""):
            break
        name, _, value = h.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = b""
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    return method, target, headers, body


def reset(writer):
    """Ends the connection with a TCP reset rather than an orderly close."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
