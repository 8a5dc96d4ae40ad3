"""A stand-in engine server for container lifecycle tests (podman, Apptainer): python's http.server run inside the
engine image, answering /health, so start, readiness, death and stop can be tested without loading a model."""

import textwrap


def stand_in_server_code(port: int, host: str, *, exit_after_s: float | None = None) -> str:
    """Python source for `python3 -c`: serve /health on host:port; with exit_after_s, die with code 3 after that long,
    like a crashing engine. It prints one line naming the image's ATTNBENCH_ENGINE, so a log shows where it ran."""
    return textwrap.dedent(f"""
        import http.server, threading, os
        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200 if self.path == '/health' else 404); self.end_headers()
        if {exit_after_s!r} is not None:
            threading.Timer({exit_after_s!r}, lambda: os._exit(3)).start()
        print('stand-in server up in', os.environ.get('ATTNBENCH_ENGINE'), flush=True)
        http.server.HTTPServer(({host!r}, {port}), H).serve_forever()
    """)
