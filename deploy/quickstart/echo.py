#!/usr/bin/env python3
"""The quick start's upstream app: answers every request with what it received, as JSON:
{"method", "path", "headers"}. Behind Envoy it shows which x-rolegate-* headers an allowed
request reached the app with (and that the credential did not).

    python3 deploy/quickstart/echo.py [PORT]     (default 8000, on 127.0.0.1)
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self):
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        headers = {}
        for name, value in self.headers.items():
            name = name.lower()
            headers[name] = headers[name] + "\n" + value if name in headers else value
        body = json.dumps(
            {"method": self.command, "path": self.path, "headers": headers},
            indent=2,
            sort_keys=True,
        ).encode() + b"\n"
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = answer

    def log_message(self, format, *args):
        pass


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
    server = ThreadingHTTPServer(("127.0.0.1", port), Echo)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
