"""A real mosquitto broker for tests, configured from `deploy/mosquitto/`.

`MosquittoBroker` renders the production template `deploy/mosquitto/mosquitto.conf` (same
ACL file, same persistence and autosave settings) into a work directory, with a free port on
127.0.0.1, its own password file, persistence directory and log file, and runs
`mosquitto -c` on it. Plain class, no pytest fixtures, so it can also serve scripts.

Behaviour of mosquitto 2.0.11 this helper relies on (checked by
tests/integration/test_broker.py):

* SIGHUP reloads the password file and the ACL file without dropping anyone: clients
  already connected stay connected (a client whose user was *removed* from the password file
  is disconnected, which is how a device is revoked). The reload is asynchronous: the signal
  only sets a flag that the broker's main loop acts on (within milliseconds), so `reload`
  (and `add_user`/`remove_user`, which use it) waits until it has taken effect.
* Persistence: mosquitto writes `mosquitto.db` on a clean shutdown (SIGTERM) and every
  `autosave_interval` seconds (300 in the template, with `autosave_on_changes false`; the
  broker saves once more than that many whole seconds have passed: with 1, every ~2 s). A
  SIGKILL therefore loses whatever changed since the last autosave; a retained message
  survives a SIGKILL once one autosave has completed after it (`wait_for_autosave`).
* ACLs are never checked at SUBSCRIBE time (the default ACL check returns success for
  subscriptions; every SUBACK grants the QoS): read access is checked per message, at
  delivery, against the message's topic. Shared subscriptions (`$share/<group>/<filter>`)
  therefore need no ACL entries of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from shared.broker_address import CONTROL_PLANE_USER
from simulator.swarm.codec import mqtt_string, packet

DEPLOY_DIR = Path(__file__).resolve().parents[1] / "deploy" / "mosquitto"
ACL_TEMPLATE = DEPLOY_DIR / "acl"
DYNSEC_PLUGIN_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib")
# A password-file entry `reload()` rewrites to detect that a SIGHUP has taken effect. It has no
# rights beyond the device patterns for a device of that name.
RELOAD_MARKER_USER = "edgefleet-test-reload-marker"

# Debian/Ubuntu put the broker in /usr/sbin, which is not on a normal user's PATH.
_SEARCH_DIRS = ("/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin", "/opt/homebrew/sbin")


def find_tool(name: str) -> str | None:
    """Path of a mosquitto executable (`mosquitto`, `mosquitto_passwd`), or None."""
    found = shutil.which(name)
    if found:
        return found
    for directory in _SEARCH_DIRS:
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def mosquitto_available() -> bool:
    return find_tool("mosquitto") is not None and find_tool("mosquitto_passwd") is not None


def dynsec_plugin() -> Path | None:
    """The dynamic security plugin shipped with mosquitto (Debian: in the mosquitto package)."""
    for directory in DYNSEC_PLUGIN_DIRS:
        candidate = Path(directory) / "mosquitto_dynamic_security.so"
        if candidate.is_file():
            return candidate
    return None


def render_mosquitto_conf(auth: str, values: dict[str, object]) -> str:
    """``deploy/mosquitto/render.py``'s rendering (that script runs without edgefleet)."""
    spec = importlib.util.spec_from_file_location("edgefleet_render", DEPLOY_DIR / "render.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rendered: str = module.render(auth, values)
    return rendered


def free_port(host: str = "127.0.0.1") -> int:
    """A free port for a server this process starts (``free_ports``)."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct free ports, below the kernel's ephemeral range. A server killed
    and restarted on its port must find it free: in the ephemeral range, an outgoing
    connection may take it meanwhile (a NATS node restarted by broker_cluster.py found its
    route port in use), or a client reconnecting to it get it as its own port and connect
    to itself."""
    low = _ephemeral_range_start()
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        while len(ports) < count:
            port = secrets.choice(range(10_000, low))
            sock = stack.enter_context(socket.socket())
            try:
                sock.bind((host, port))
            except OSError:
                continue  # taken: draw again
            ports.append(port)
        return ports


def _ephemeral_range_start() -> int:
    """Where the kernel's ports for outgoing connections start (Linux; else IANA's 49152)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 49_152


def _require_tool(name: str) -> str:
    path = find_tool(name)
    if path is None:
        raise FileNotFoundError(f"{name} not found (apt-get install mosquitto)")
    return path


def _run_tool(name: str, *args: str) -> None:
    """Run a mosquitto tool; its output in the error when it fails."""
    result = subprocess.run(
        [_require_tool(name), *args], check=False, capture_output=True, text=True, timeout=30
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{name} {args[0]} failed ({result.returncode}): {result.stdout}{result.stderr}"
        )


def connack_code(
    host: str,
    port: int,
    username: str | None,
    password: str | None,
    timeout: float = 2.0,
    client_id: str | None = None,
) -> int:
    """Send a bare MQTT 3.1.1 CONNECT and return the CONNACK return code (0 = accepted,
    5 = not authorised). Raises OSError when the broker does not answer."""
    flags = 0x02  # clean session
    payload = mqtt_string((client_id or f"edgefleet-probe-{secrets.token_hex(4)}").encode())
    if username is not None:
        flags |= 0x80
        payload += mqtt_string(username.encode())
        if password is not None:
            flags |= 0x40
            payload += mqtt_string(password.encode())
    variable_header = mqtt_string(b"MQTT") + bytes([4, flags]) + struct.pack("!H", 10)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(packet(0x10, variable_header + payload))
        answer = b""
        while len(answer) < 4:
            chunk = sock.recv(4 - len(answer))
            if not chunk:
                raise ConnectionError(f"broker closed the connection after {answer!r}")
            answer += chunk
        if answer[0] != 0x20 or answer[1] != 2:
            raise ConnectionError(f"not a CONNACK: {answer!r}")
        code = answer[3]
        if code == 0:
            sock.sendall(b"\xe0\x00")  # DISCONNECT: no will, no "unexpected disconnect" log
        return code


class MosquittoBroker:
    """One mosquitto process configured like production, confined to `workdir`. ``auth``:
    ``passwd`` (a password file and the ACL file, users added here) or ``dynsec`` (the
    dynamic security plugin: the control plane's account is made here, the control plane
    makes every device's); ``tls``: (certfile, keyfile) for a TLS device listener."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        *,
        bind_address: str = "127.0.0.1",
        auth: str = "passwd",
        tls: tuple[Path, Path] | None = None,
        options: dict[str, str] | None = None,
        extra_config: str = "",
    ) -> None:
        """``options``: broker-wide settings that replace the template's (e.g.
        ``{"max_queued_messages": "1000000"}`` for a benchmark that says so);
        ``extra_config``: lines appended at the end (a bridge's ``connection`` section)."""
        self.options = dict(options or {})
        self.extra_config = extra_config
        self.workdir = Path(workdir).resolve()
        if any(ch.isspace() for ch in str(self.workdir)):
            # mosquitto.conf values end at the first blank.
            raise ValueError(f"mosquitto cannot use a path with blanks: {self.workdir}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.bind_address = bind_address
        self.auth = auth
        self.tls = tls
        self.dynsec_file = self.workdir / "dynamic-security.json"
        self._port = port if port is not None else free_port(self.host)
        self._cp_port = free_port("127.0.0.1")
        self.config_path = self.workdir / "mosquitto.conf"
        self.password_file = self.workdir / "passwd"
        self.cp_password_file = self.workdir / "passwd-control-plane"
        self.acl_file = self.workdir / "acl"
        self.persistence_dir = self.workdir / "persist"
        self.log_path = self.workdir / "mosquitto.log"
        self.output_path = self.workdir / "mosquitto.out"  # stdout/stderr of the process
        self._process: subprocess.Popen[bytes] | None = None
        self.persistence_dir.mkdir(exist_ok=True)
        shutil.copyfile(ACL_TEMPLATE, self.acl_file)
        self.config_path.write_text(self.render_config())

    # -- configuration -------------------------------------------------------------------

    def render_config(self) -> str:
        values: dict[str, object] = {
            "port": self._port,
            "bind_address": self.bind_address,
            "password_file": self.password_file,
            "cp_port": self._cp_port,
            "cp_bind_address": "127.0.0.1",
            "cp_password_file": self.cp_password_file,
            "acl_file": self.acl_file,
            "persistence_location": self.persistence_dir,
            "log_dest": f"file {self.log_path}",
            "dynsec_plugin": dynsec_plugin() or "mosquitto_dynamic_security.so",
            "dynsec_file": self.dynsec_file,
        }
        if self.tls is not None:
            values["certfile"], values["keyfile"] = self.tls
        text = render_mosquitto_conf(self.auth, values)
        for name, value in self.options.items():
            line = f"{name} {value}  # replaced by simulator/broker.py"
            text, found = re.subn(rf"(?m)^{re.escape(name)} .*$", line, text)
            if not found:
                text += f"\n{line}\n"
        # Run as root, mosquitto would switch to the "mosquitto" user, which cannot read a
        # pytest tmp_path (mode 0700). Ignored when not running as root.
        user = pwd.getpwuid(os.geteuid()).pw_name
        text += f"\n# Added by simulator/broker.py: keep the current user.\nuser {user}\n"
        return text + self.extra_config

    @property
    def host(self) -> str:
        """Address clients connect to."""
        wildcard = ("0.0.0.0", "", "::")  # noqa: S104  (compared, not bound)
        return "127.0.0.1" if self.bind_address in wildcard else self.bind_address

    @property
    def port(self) -> int:
        return self._port

    @property
    def cp_port(self) -> int:
        """The control plane's listener (its own service account; devices cannot log in)."""
        return self._cp_port

    @property
    def accounts(self) -> str:
        """The control plane's ``broker_accounts`` for this broker: who makes device accounts."""
        return "dynsec" if self.auth == "dynsec" else "manual"

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self._port}"

    def control_plane_url(self, password: str, username: str = CONTROL_PLANE_USER) -> str:
        """What the control plane's ``mqtt_url`` would say."""
        return f"mqtt://{username}:{password}@127.0.0.1:{self._cp_port}"

    def control_plane_env(self, password: str) -> dict[str, str]:
        """The ``EDGEFLEET_*`` settings of a control plane on this broker."""
        return {
            "EDGEFLEET_MQTT_URL": self.control_plane_url(password),
            "EDGEFLEET_BROKER_ACCOUNTS": self.accounts,
        }

    @property
    def persistence_file(self) -> Path:
        return self.persistence_dir / "mosquitto.db"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.running and self._process is not None else None

    def log_text(self) -> str:
        parts = []
        for path in (self.log_path, self.output_path):
            if path.exists():
                parts.append(f"--- {path.name}\n{path.read_text(errors='replace')}")
        return "\n".join(parts)

    # -- users ---------------------------------------------------------------------------

    def add_user(self, username: str, password: str, timeout: float = 10.0) -> None:
        """Add (or re-password) a user with `mosquitto_passwd -b`; if the broker is running,
        reload it (SIGHUP) and return once the reload has taken effect."""
        self._passwd_mode("add_user")
        create = not self.password_file.exists() or self.password_file.stat().st_size == 0
        args = ["-c", "-b"] if create else ["-b"]
        self._passwd(*args, str(self.password_file), username, password)
        if self.running:
            self.reload(timeout)

    def add_control_plane_user(
        self, password: str, username: str = CONTROL_PLANE_USER, timeout: float = 10.0
    ) -> None:
        """A service account on the control plane's listener (not the devices'). With
        ``dynsec``: the plugin's state file with this account as its admin, as
        `mosquitto_ctrl dynsec init` makes it (before the broker starts)."""
        if self.auth == "dynsec":
            if self.running or self.dynsec_file.exists():
                raise RuntimeError("the dynsec account is made once, before the broker starts")
            _run_tool("mosquitto_ctrl", "dynsec", "init", str(self.dynsec_file), username, password)
            return
        create = not self.cp_password_file.exists() or self.cp_password_file.stat().st_size == 0
        args = ["-c", "-b"] if create else ["-b"]
        self._passwd(*args, str(self.cp_password_file), username, password)
        if self.running:
            self.reload(timeout)

    def add_users(self, users: dict[str, str], timeout: float = 30.0) -> None:
        """Many users with one `mosquitto_passwd -U` (hashing a plaintext file in place) and
        one reload (`add_user` runs mosquitto_passwd and a reload per user)."""
        self._passwd_mode("add_users")
        plain = self.workdir / "passwd.batch"
        plain.touch(mode=0o600)
        plain.write_text("".join(f"{user}:{password}\n" for user, password in users.items()))
        try:
            self._passwd("-U", str(plain))
            hashed = plain.read_text()
        finally:
            plain.unlink()
        existing = self.password_file.read_text() if self.password_file.exists() else ""
        if existing and not existing.endswith("\n"):
            existing += "\n"
        self.password_file.write_text(existing + hashed)
        self.reload(timeout=timeout)

    def remove_user(self, username: str, timeout: float = 10.0) -> None:
        """Delete a user (`mosquitto_passwd -D`); if the broker is running, reload it: the
        user's live connections are dropped and it can no longer connect."""
        self._passwd_mode("remove_user")
        self._passwd("-D", str(self.password_file), username)
        if self.running:
            self.reload(timeout)

    def reload(self, timeout: float = 10.0) -> None:
        """SIGHUP: mosquitto rereads the password file, the ACL file and the reloadable
        options. The signal only sets a flag for the broker's main loop, so to know when the
        reload has happened this gives a marker user a new random password first and waits
        until a CONNECT with it is accepted (the whole file is read in one go)."""
        process = self._process
        if process is None or process.poll() is not None:
            raise RuntimeError("mosquitto is not running")
        marker_password = secrets.token_hex(16)
        self._passwd("-b", str(self.password_file), RELOAD_MARKER_USER, marker_password)
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while code := connack_code(self.host, self._port, RELOAD_MARKER_USER, marker_password):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"mosquitto did not reload within {timeout} s (CONNACK {code})\n"
                    f"{self.log_text()}"
                )
            time.sleep(0.01)

    def _passwd_mode(self, what: str) -> None:
        if self.auth != "passwd":
            raise RuntimeError(f"{what}: with dynsec the control plane makes device accounts")

    def _passwd(self, *args: str) -> None:
        _run_tool("mosquitto_passwd", *args)

    # -- process -------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        """Launch mosquitto and wait until its port accepts TCP connections."""
        if self.running:
            raise RuntimeError("mosquitto is already running")
        if self.auth == "dynsec" and not self.dynsec_file.exists():
            raise RuntimeError("add_control_plane_user first: it makes the dynsec state file")
        for path in (self.password_file, self.cp_password_file):
            if not path.exists():
                path.touch(mode=0o600)  # no users yet: nobody can connect
        with self.output_path.open("ab") as output:
            self._process = subprocess.Popen(
                [_require_tool("mosquitto"), "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        deadline = time.monotonic() + timeout
        while True:
            code = self._process.poll()
            if code is not None:
                raise RuntimeError(f"mosquitto exited with {code} on start\n{self.log_text()}")
            try:
                with socket.create_connection((self.host, self._port), timeout=0.5):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(
                    f"mosquitto did not listen on {self.url} within {timeout} s\n{self.log_text()}"
                )
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (mosquitto saves its persistence database on the way out) and wait; SIGKILL
        if it does not exit within `timeout`."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._process = None

    def kill(self) -> None:
        """SIGKILL, as in a crash: nothing is saved beyond the last autosave."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        process.wait()
        self._process = None

    def restart(self, *, kill: bool = False, timeout: float = 10.0) -> None:
        """Stop (or kill) and start again on the same port, with the same persistence."""
        if kill:
            self.kill()
        else:
            self.stop(timeout)
        self.start(timeout)

    def wait_for_autosave(self, timeout: float = 10.0) -> None:
        """Wait until mosquitto has written its persistence database once more: everything
        the broker had processed when this was called is then on disk and survives `kill()`.
        (mosquitto writes mosquitto.db.new and renames it, so a changed stat is a finished
        save.)"""

        def stamp() -> tuple[int, int, int] | None:
            try:
                st = self.persistence_file.stat()
            except FileNotFoundError:
                return None
            return (st.st_ino, st.st_mtime_ns, st.st_size)

        before = stamp()
        deadline = time.monotonic() + timeout
        while stamp() == before:
            if not self.running:
                raise RuntimeError(f"mosquitto is not running\n{self.log_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no autosave within {timeout} s\n{self.log_text()}")
            time.sleep(0.01)

    def __enter__(self) -> MosquittoBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(Exception):
            self.stop()
        self.kill()

    def describe(self) -> str:
        return f"{mosquitto_version()} (private, port {self.port})"

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"<MosquittoBroker {self.url} {state} in {self.workdir}>"


class InProcessBroker:
    """amqtt (an MQTT 3.1.1 broker in Python) on its own thread and event loop in this
    process: what the demo uses on a machine without mosquitto. Anonymous and without ACLs,
    so for the demo only, never for a fleet; ``add_user``/``add_users`` accept and ignore
    credentials to stand in for ``MosquittoBroker``."""

    def __init__(self, port: int | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port if port is not None else free_port(self.host)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker: Any = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def cp_port(self) -> int:
        return self.port  # one listener for everyone

    @property
    def accounts(self) -> str:
        return "manual"  # anonymous: there are none

    def control_plane_url(self, password: str, username: str = CONTROL_PLANE_USER) -> str:
        return f"mqtt://{username}:{password}@{self.host}:{self.port}"

    def describe(self) -> str:
        return f"amqtt (in-process, port {self.port}; mosquitto is not installed)"

    def add_user(self, username: str, password: str) -> None:
        """Anonymous broker: nothing to do."""

    def add_control_plane_user(self, password: str, username: str = CONTROL_PLANE_USER) -> None:
        """Anonymous broker: nothing to do."""

    def add_users(self, users: dict[str, str]) -> None:
        """Anonymous broker: nothing to do."""

    def start(self, timeout: float = 10.0) -> None:
        from amqtt.broker import Broker

        ready = threading.Event()
        loop = asyncio.new_event_loop()

        async def serve() -> None:
            self._broker = Broker(
                {
                    "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
                    "plugins": {
                        "amqtt.plugins.authentication.AnonymousAuthPlugin": {
                            "allow_anonymous": True
                        }
                    },
                }
            )
            await self._broker.start()
            ready.set()

        def main() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(serve())
            loop.run_forever()

        self._loop = loop
        self._thread = threading.Thread(target=main, name="amqtt", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise RuntimeError(f"amqtt did not start on port {self.port} within {timeout} s")

    def stop(self, timeout: float = 10.0) -> None:
        loop, broker = self._loop, self._broker
        if loop is None or self._thread is None:
            return
        if broker is not None:
            with contextlib.suppress(Exception):  # a broker that fails to stop must not block
                asyncio.run_coroutine_threadsafe(broker.shutdown(), loop).result(timeout)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(timeout)
        self._loop = self._thread = self._broker = None


def mosquitto_version() -> str:
    """``mosquitto 2.0.11``-style version of the installed broker, or ``mosquitto``."""
    tool = find_tool("mosquitto")
    if tool is None:
        return "mosquitto"
    result = subprocess.run([tool, "-h"], check=False, capture_output=True, text=True, timeout=10)
    first = (result.stdout or result.stderr).splitlines()[:1]
    return first[0].replace(" version", "") if first else "mosquitto"


def start_broker(workdir: Path) -> MosquittoBroker | InProcessBroker:
    """A private broker: mosquitto (configured like production, on a free port) when it is
    installed, else amqtt in this process. Started; the caller stops it."""
    broker: MosquittoBroker | InProcessBroker
    broker = MosquittoBroker(workdir) if mosquitto_available() else InProcessBroker()
    broker.start()
    return broker
