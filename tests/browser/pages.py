"""Static page servers for the browser tests: fixed routes, loopback, a free port."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness import NODE_MODULES

PAGE_DIR = Path(__file__).resolve().parent / "page"
CENTRIFUGE_BROWSER_BUILD = NODE_MODULES / "centrifuge" / "dist" / "centrifuge.js"
JS = "text/javascript; charset=utf-8"
HTML = "text/html; charset=utf-8"

Routes = dict[str, tuple[Path, str]]


def _handler(routes: Routes) -> type[http.server.BaseHTTPRequestHandler]:
    class PageHandler(http.server.BaseHTTPRequestHandler):
        """Serves ``routes`` (path -> file, content type); 404 for anything else."""

        def do_GET(self) -> None:
            route = routes.get(self.path.split("?", 1)[0])
            if route is None:
                self.send_error(404)
                return
            path, content_type = route
            body = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return PageHandler


@contextmanager
def serve_pages(routes: Routes) -> Iterator[str]:
    """Serve ``routes`` on 127.0.0.1; yields the origin ``http://127.0.0.1:<port>``."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(routes))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, name="page-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
