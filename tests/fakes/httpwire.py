"""HTTP/1.1 on the wire for the fakes: read one request from a stream, reset a connection."""
import socket
import struct


async def read_request(reader):
    """Reads one request from an asyncio stream: (method, target, headers with lower-case
    names, body), or None at the end of the stream or on a request line that is not one."""
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
