"""HTTP and WebSocket peers for the end-to-end tests (tests/http.rs).

    peers.py http                   HTTP/1.1 backend (below)
    peers.py ws-echo                WebSocket echo backend
    peers.py ws-client PORT HOST CA WebSocket client: wss://HOST:PORT/ws via 127.0.0.1

Servers bind 127.0.0.1:0 and announce `listening on <proto> <addr>` on stderr, as `sat` does.
The HTTP backend serves:
    GET  /headers       the request headers, one "lower-case-name: value" per line
    GET  /download/N    N random bytes; header X-Sha256 carries their hex sha256
    PUT  /upload        reads the body (Content-Length or chunked) and answers "<sha256> <bytes>"
"""

import asyncio
import hashlib
import http.server
import os
import socketserver
import ssl
import sys

CHUNK = 1 << 20


def announce(proto, sock):
    host, port = sock.getsockname()[:2]
    print(f"listening on {proto} {host}:{port}", file=sys.stderr, flush=True)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        print("backend: " + fmt % args, file=sys.stderr, flush=True)

    def reply(self, status, body, ctype="text/plain", extra=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/headers":
            lines = "".join(f"{k.lower()}: {v}\n" for k, v in self.headers.items())
            self.reply(200, lines.encode())
        elif self.path.startswith("/download/"):
            size = int(self.path.rsplit("/", 1)[1])
            data = os.urandom(size)
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.send_header("X-Sha256", hashlib.sha256(data).hexdigest())
            self.end_headers()
            view = memoryview(data)
            for at in range(0, size, CHUNK):
                self.wfile.write(view[at : at + CHUNK])
        else:
            self.reply(404, b"no such test path\n")

    def do_PUT(self):
        if self.path != "/upload":
            return self.reply(404, b"no such test path\n")
        digest, total = hashlib.sha256(), 0
        for block in self.body():
            digest.update(block)
            total += len(block)
        self.reply(200, f"{digest.hexdigest()} {total}".encode())

    do_POST = do_PUT

    def body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return
                left = size
                while left:
                    block = self.rfile.read(min(left, CHUNK))
                    if not block:
                        raise ConnectionError("body cut short")
                    left -= len(block)
                    yield block
                self.rfile.readline()
        else:
            left = int(self.headers.get("Content-Length", "0"))
            while left:
                block = self.rfile.read(min(left, CHUNK))
                if not block:
                    raise ConnectionError("body cut short")
                left -= len(block)
                yield block


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


def http_backend():
    server = Server(("127.0.0.1", 0), Handler)
    announce("http", server.socket)
    server.serve_forever()


async def ws_echo():
    import websockets

    async def echo(ws):
        async for message in ws:
            await ws.send(message)

    async with websockets.serve(echo, "127.0.0.1", 0, max_size=None) as server:
        announce("ws", next(iter(server.sockets)))
        await asyncio.Future()


async def ws_client(port, host, ca):
    import websockets

    ctx = ssl.create_default_context(cafile=ca)
    messages = ["hello", b"\x00\x01\x02 binary", os.urandom(1 << 20), "x" * 100_000]
    async with websockets.connect(
        f"wss://{host}:{port}/ws",
        host="127.0.0.1",  # the TCP destination; the URI's host name stays in TLS and Host
        port=int(port),
        ssl=ctx,
        max_size=None,
        open_timeout=15,
    ) as ws:
        for message in messages:
            await ws.send(message)
            back = await asyncio.wait_for(ws.recv(), 15)
            if back != message:
                sys.exit(f"echo differs for a {type(message).__name__} of {len(message)}")
    print(f"ok {len(messages)} messages echoed")


def main():
    mode = sys.argv[1]
    if mode == "http":
        http_backend()
    elif mode == "ws-echo":
        asyncio.run(ws_echo())
    elif mode == "ws-client":
        asyncio.run(ws_client(*sys.argv[2:5]))
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
