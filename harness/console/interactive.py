"""`harness boot --interactive`: the guest's console is the user's terminal.

The terminal goes into raw mode (every key, Ctrl-C included, goes to the guest's UART as typed);
the guest's output is echoed as it comes (harness.console.stream). The escape byte (Ctrl-], as in
telnet and virsh console) detaches: the guest is stopped and the terminal restored, whatever state
the guest or the harness is in (restored in `close`, which the caller runs in a finally). Milestones,
failures and gaps are matched and recorded as in any boot; once the outcome is decided the console
stays attached until the escape or the guest's end.
"""
from __future__ import annotations

import os
import select
import sys
import termios
import threading
import tty
from typing import Any, Callable

ESCAPE = b"\x1d"            # Ctrl-]
ESCAPE_NAME = "Ctrl-]"
_POLL_S = 0.1


class InteractiveConsole:
    def __init__(self, stdin_fd: int = 0, escape: bytes = ESCAPE,
                 notify: Callable[[str], None] | None = None) -> None:
        self.fd = stdin_fd
        self.escape = escape
        self.notify = notify or (lambda line: os.write(sys.stderr.fileno(), (line + "\r\n").encode()))
        self.detached = threading.Event()
        self._closed = threading.Event()
        self._saved: list[Any] | None = None
        self._thread: threading.Thread | None = None

    def attach(self, session: Any) -> None:
        """Raw mode on, and a thread that types what the user types into the guest."""
        if os.isatty(self.fd):
            self._saved = termios.tcgetattr(self.fd)
            tty.setraw(self.fd, termios.TCSANOW)
        self.notify(f"[interactive console: {ESCAPE_NAME} detaches and stops the guest]")
        self._thread = threading.Thread(target=self._forward, args=(session,), name="interactive", daemon=True)
        self._thread.start()

    def hold(self, session: Any) -> None:
        """After the outcome: keep the console attached until the escape or the guest's end."""
        while not self.detached.is_set() and session.poll_exit() is None:
            self.detached.wait(_POLL_S)

    def close(self) -> None:
        """Stop forwarding and give the terminal back as it was (safe to call more than once)."""
        self._closed.set()
        if self._thread is not None:
            self._thread.join(1.0)
        if self._saved is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            self._saved = None

    def _forward(self, session: Any) -> None:
        while not self._closed.is_set():
            try:
                ready, _, _ = select.select([self.fd], [], [], _POLL_S)
                if not ready:
                    continue
                data = os.read(self.fd, 1024)
            except OSError:
                return
            if not data:          # stdin closed: nothing more to type, the guest goes on
                return
            before, hit, _ = data.partition(self.escape)
            if before:
                session.send(before)
            if hit:
                self.detached.set()
                self.notify("\r\n[detached]")
                return
