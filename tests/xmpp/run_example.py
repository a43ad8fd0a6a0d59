"""Run an example client as ``__main__`` against the test server, which DNS and the system CAs do not know.

    PYTHON run_example.py HOST PORT CAFILE EXAMPLE.py [ARGUMENT ...]

Everything the example does is its own; this only points every ``ClientXMPP.connect()`` at HOST:PORT
with STARTTLS verified against CAFILE (what a real account gets from DNS and the system's CAs), then
runs EXAMPLE.py with the remaining arguments as its command line.
"""

from __future__ import annotations

import runpy
import ssl
import sys
from typing import Any, Optional

from slixmpp import ClientXMPP


def main() -> None:
    host, port, cafile, example, *arguments = sys.argv[1:]
    connect = ClientXMPP.connect

    def connect_to_test_server(
        self: ClientXMPP, _host: Optional[str] = None, _port: Optional[int] = None
    ) -> Any:
        self.enable_direct_tls = False
        self.ssl_context = ssl.create_default_context(cafile=cafile)
        return connect(self, host, int(port))

    setattr(ClientXMPP, "connect", connect_to_test_server)  # noqa: B010 - a patch mypy would refuse
    sys.argv = [example, *arguments]
    runpy.run_path(example, run_name="__main__")


if __name__ == "__main__":
    main()
