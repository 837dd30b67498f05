"""HTTP/1.1 on the wire for the fakes: the requests of a connection, a reset, and serving
a handler (in a thread of the test's process, or as a fake's own process)."""
import asyncio
import socket
import ssl
import struct
import sys
import threading


class ServerThread:
    """handle(reader, writer) served on a free loopback port by an event loop in a thread of
    its own: .loop, .server, .port, .url. stop() ends the loop; close() then frees it."""

    def __init__(self, handle, backlog=100):
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run():
            asyncio.set_event_loop(self.loop)
            self.server = self.loop.run_until_complete(
                asyncio.start_server(handle, "127.0.0.1", 0, backlog=backlog))
            self.port = self.server.sockets[0].getsockname()[1]
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(10)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def close(self):
        self.server.close()
        self.loop.close()


def serve_main(handle, port, tls_cert=None, tls_key=None, alpn=None, backlog=100):
    """A fake's process: serves handle on port (0: a free one), over TLS with tls_cert and
    tls_key (and alpn's protocols), prints "listening <url>" for the test that started it,
    and serves until interrupted."""
    async def serve():
        ctx = None
        if tls_cert:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(tls_cert, tls_key)
            if alpn:
                ctx.set_alpn_protocols(alpn)
        server = await asyncio.start_server(handle, "127.0.0.1", port, ssl=ctx, backlog=backlog)
        print(f"listening {'https' if ctx else 'http'}://127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
        async with server:
            await server.serve_forever()
    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        sys.exit(0)


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
