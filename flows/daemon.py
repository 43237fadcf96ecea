"""`vitsflow daemon`: a warm stage server for one checkout, and the client side of every stage command.

`dvc repro` runs each stage as its own process, and each pays the same start before any work: Python
and Prefect imports, then torch, the G2P dictionaries, the BERT model and the spec worker
processes. In a full run that is noise; in a re-run after adding a few utterances it is most of the
time (about 2 s of imports per stage plus 1-3 s of loading, in a 30 s re-run).

`vitsflow daemon`, started in the repo root, imports all of that once and keeps what the stages
load (frontends, BERT models, spec workers, Prefect's client). A stage command started in that
folder hands its arguments and its stdout and stderr (the file descriptors themselves, over a Unix
socket) to the daemon, which runs the command exactly as the command line would and sends back the
exit status. DVC sees the same command, output and exit status; dvc.yaml does not change.

The daemon runs a command only if a fresh process would do the same:
- the command is a preprocessing stage (FORWARDED); training and evaluation always run on their own;
- the client runs in the daemon's folder, with the same Python, and the same values of the
  environment variables that steer the pipeline (ENV_PREFIXES: Prefect's server, AWS settings,
  offline switches, thread counts), compared by hash so no value leaves the client;
- no file of the code it imported (flows/, tasks/, model/) and no installed package changed since.
  If one did, the daemon restarts itself, and the command meanwhile runs on its own.
In every other case the client runs the command itself, as without a daemon. VITSFLOW_DAEMON=off
skips the daemon.

One command at a time: DVC runs stages one after another, and a second client waits. A client that
dies (Ctrl-C, SIGKILL) interrupts its command in the daemon, which then serves the next; the stage's
cache keeps what was finished, as it does for a killed process.

The socket lives in a folder only this user can enter ($XDG_RUNTIME_DIR or the temp dir, then
`vitsflow-<uid>/`, mode 0700) and is named by a hash of the repo path; each side also checks the
other's uid (SO_PEERCRED) before handing over anything.
"""
from __future__ import annotations

import gc
import hashlib
import json
import os
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

# Stage commands a daemon may run: short, CPU, one after another in `dvc repro`. Not train/evaluate
# (minutes to days, GPUs, torchrun) nor anything interactive.
FORWARDED = frozenset({"demo", "fingerprint", "ingest", "text", "bert", "spec", "stats"})
ENV_PREFIXES = ("PREFECT_", "VITSFLOW_", "AWS_", "HF_", "TRANSFORMERS_", "TOKENIZERS_", "TORCH", "CUDA_", "OMP_",
                "MKL_", "PYTHONPATH", "PYTHONHASHSEED")
CODE_PACKAGES = ("flows", "tasks", "model")
MAX_HEADER = 1 << 16


class DaemonError(RuntimeError):
    pass


def socket_path(root: Path) -> Path:
    base = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()) / f"vitsflow-{os.getuid()}"
    return base / (hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16] + ".sock")


def env_digest(environ: dict[str, str]) -> str:
    steering = sorted((k, v) for k, v in environ.items() if k.startswith(ENV_PREFIXES))
    return hashlib.sha256(json.dumps(steering).encode()).hexdigest()


def _private(folder: Path) -> bool:
    st = folder.stat()
    return st.st_uid == os.getuid() and not st.st_mode & 0o077


def _peer_uid(conn: socket.socket) -> Optional[int]:
    if not hasattr(socket, "SO_PEERCRED"):
        return None
    _pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return uid


def _connect(root: Path) -> Optional[socket.socket]:
    """A connection to this folder's daemon, or None (none running, or a socket that is not ours)."""
    path = socket_path(root)
    try:
        if not _private(path.parent):
            return None  # someone else's folder: never hand it our output
    except FileNotFoundError:
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(path))
        if _peer_uid(conn) == os.getuid():
            return conn
    except OSError:
        pass
    conn.close()
    return None


def _send(conn: socket.socket, message: dict[str, Any], fds: tuple[int, ...] = ()) -> None:
    data = json.dumps(message).encode() + b"\n"
    if fds:
        sent = socket.send_fds(conn, [data], list(fds))
        data = data[sent:]
    if data:  # an empty send to a daemon that has already answered and closed is EPIPE
        conn.sendall(data)


def _read_line(reader) -> Optional[dict[str, Any]]:
    line = reader.readline(MAX_HEADER)
    return json.loads(line) if line.endswith(b"\n") else None


# ---- client: every `vitsflow` invocation goes through here first (flows/cli.py main) ----

def forward(argv: list[str]) -> Optional[int]:
    """Run a stage command in this folder's daemon and return its exit status; None: run it here."""
    if (not argv or argv[0] not in FORWARDED or "--help" in argv
            or os.environ.get("VITSFLOW_DAEMON", "").lower() in ("off", "0", "false", "no")):
        return None
    cwd = os.getcwd()
    conn = _connect(Path(cwd))
    if conn is None:
        return None
    with conn:
        try:
            _send(conn, {"argv": argv, "cwd": cwd, "python": sys.executable, "env": env_digest(dict(os.environ))},
                  fds=(1, 2))
            reader = conn.makefile("rb")
            reply = _read_line(reader)
        except OSError as err:  # the daemon went away before taking the command
            print(f"vitsflow: daemon: connection lost ({err}); running the command here", file=sys.stderr)
            return None
        if reply is None or not reply.get("accepted"):
            why = "it closed the connection without an answer" if reply is None else reply.get("reason")
            print(f"vitsflow: daemon: {why}; running the command here", file=sys.stderr)
            return None
        try:
            result = _read_line(reader)
        except KeyboardInterrupt:  # closing the socket interrupts the command in the daemon
            return 130
        except OSError:
            result = None
    if result is None:
        print("vitsflow: the daemon stopped during the command", file=sys.stderr)
        return 1
    return int(result["exit"])


def control(root: Path, command: str) -> Optional[dict[str, Any]]:
    """Ask this folder's daemon for `status` or to `stop`; None when none is running."""
    conn = _connect(root)
    if conn is None:
        return None
    with conn:
        _send(conn, {"control": command})
        return _read_line(conn.makefile("rb"))


# ---- server ----

class CodeState:
    """(mtime, size) of every file of the imported packages, and the site-packages folders' mtimes
    (pip adds or removes a dist-info folder there): what the daemon's imported code was made of."""

    def __init__(self) -> None:
        import sysconfig

        self.folders = [Path(sys.modules[name].__file__).parent for name in CODE_PACKAGES if name in sys.modules]
        self.folders += sorted({Path(sysconfig.get_paths()[k]) for k in ("purelib", "platlib")})
        self.stamp = self._scan()

    def _scan(self) -> dict[str, tuple[int, int]]:
        stamp = {}
        for folder in self.folders:
            if folder.name.endswith("-packages"):
                st = folder.stat()
                stamp[str(folder)] = (st.st_mtime_ns, st.st_size)
                continue
            for path in folder.rglob("*"):
                if "__pycache__" not in path.parts and path.is_file():
                    st = path.stat()
                    stamp[str(path)] = (st.st_mtime_ns, st.st_size)
        return stamp

    def changed(self) -> Optional[str]:
        now = self._scan()
        return next((p for p in sorted(now.keys() | self.stamp.keys()) if now.get(p) != self.stamp.get(p)), None)


def _preload() -> None:
    """What the stages import: Prefect, torch, transformers, the stage modules (about 4 s, once)."""
    import importlib

    for name in ("torch", "transformers", "flows.cli", "flows.stages", "tasks.ingest", "tasks.text", "tasks.bert",
                 "tasks.spec", "tasks.stats"):
        importlib.import_module(name)


def _start_prefect_client() -> None:
    """One API call: checks the server, and without PREFECT_API_URL starts Prefect's temporary one."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        failure = client.api_healthcheck()
    if failure is not None:
        raise DaemonError(f"the Prefect API does not answer: {failure}")


class _Stdio:
    """The client's stdout and stderr as this process's fds 1 and 2 while its command runs."""

    def __init__(self, out_fd: int, err_fd: int):
        self.fds = (out_fd, err_fd)

    def __enter__(self) -> None:
        sys.stdout.flush(), sys.stderr.flush()
        self.saved = (os.dup(1), os.dup(2))
        os.dup2(self.fds[0], 1), os.dup2(self.fds[1], 2)

    def __exit__(self, *exc: Any) -> None:
        try:
            sys.stdout.flush(), sys.stderr.flush()
        except OSError:  # the client's pipe is gone
            pass
        os.dup2(self.saved[0], 1), os.dup2(self.saved[1], 2)
        for fd in (*self.saved, *self.fds):
            os.close(fd)


class Daemon:
    def __init__(self, root: Path):
        self.root = root.resolve()
        self.path = socket_path(self.root)
        # The environment as started: a command's view of it, restored after each one (libraries set
        # variables as they go, e.g. torch's TORCHINDUCTOR_CACHE_DIR), and what a restart runs with.
        self.environ = dict(os.environ)
        self.env = env_digest(self.environ)
        self.started, self.served = time.time(), 0
        self.lock = threading.Lock()
        self.running = False  # a command is running (the watcher may interrupt it)
        self.client_gone = False
        self.stopping = False

    def log(self, message: str) -> None:
        print(f"vitsflow daemon: {message}", file=sys.stderr, flush=True)

    def listen(self) -> socket.socket:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not _private(self.path.parent):
            raise DaemonError(f"{self.path.parent}: must be owned by this user and closed to others (mode 0700)")
        if self.path.exists():
            probe = _connect(self.root)
            if probe is not None:
                probe.close()
                raise DaemonError(f"a daemon already serves {self.root} (socket {self.path})")
            self.path.unlink()  # left by a daemon that was killed
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(self.path))
        os.chmod(self.path, 0o600)
        server.listen(16)
        return server

    def serve(self) -> None:
        from tasks import spec

        os.chdir(self.root)
        server = self.listen()  # first: a second daemon for this folder stops here, before the imports
        restart = False
        try:
            _preload()
            # Long-lived children start now, with the daemon's stdout and stderr: started during a
            # command they would hold its client's pipes open (a caller reading them to the end would hang).
            spec.keep_worker_processes()
            _start_prefect_client()
            self.code = CodeState()
            # The imports' ~400k objects live as long as the daemon: frozen, the collections a command
            # triggers stop walking them (bert with nothing new at 10.9k utterances: 0.7-0.9 s, frozen 0.55 s).
            gc.freeze()
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
            signal.signal(signal.SIGINT, self._on_sigint)
            self.log(f"serving {self.root} (pid {os.getpid()}, socket {self.path}); stop with Ctrl-C or "
                     "`vitsflow daemon --stop`")
            while not self.stopping and not restart:
                conn, _ = server.accept()
                with conn:
                    try:
                        restart = self.handle(conn)
                        conn.shutdown(socket.SHUT_RDWR)  # wakes the watcher thread
                    except OSError as err:  # a client gone mid-exchange costs it its answer, nothing more
                        self.log(f"connection lost: {err}")
        except KeyboardInterrupt:
            pass
        finally:
            server.close()
            self.path.unlink(missing_ok=True)
            spec.release_worker_processes()
        if restart:
            self.log("code changed: restarting")
            import atexit

            atexit._run_exitfuncs()  # Prefect's log and event flushes, as a normal exit would
            os.execve(sys.executable, sys.orig_argv, self.environ)
        self.log("stopped")

    def handle(self, conn: socket.socket) -> bool:
        """Serve one connection; True when the daemon must restart (its code changed)."""
        if _peer_uid(conn) != os.getuid():
            return False
        data, fds, _flags, _addr = socket.recv_fds(conn, MAX_HEADER, 2)
        try:
            reader = conn.makefile("rb")
            if not data.endswith(b"\n"):
                data += reader.readline(MAX_HEADER)
            request = json.loads(data)
            if not isinstance(request, dict):
                raise ValueError(f"a JSON {type(request).__name__}, not an object")
        except (ValueError, OSError) as err:
            for fd in fds:
                os.close(fd)
            self.log(f"dropped a request that is not a JSON object on one line: {err}")
            return False
        if "control" in request:
            if request["control"] == "stop":
                self.stopping = True
            _send(conn, {"pid": os.getpid(), "root": str(self.root), "served": self.served,
                         "uptime_s": round(time.time() - self.started, 1), "stopping": self.stopping})
            return False
        reason = self.refusal(request, len(fds))
        if reason:
            for fd in fds:
                os.close(fd)
            argv = request.get("argv")
            self.log(f"{argv[0] if isinstance(argv, list) and argv else 'a request'}: refused ({reason})")
            _send(conn, {"accepted": False, "reason": reason})
            return reason.startswith("code changed")
        _send(conn, {"accepted": True})
        started = time.perf_counter()
        code = self.run(conn, request["argv"], fds)
        self.served += 1
        self.log(f"{' '.join(request['argv'][:1])}: exit {code}, {time.perf_counter() - started:.1f} s")
        _send(conn, {"exit": code})
        return False

    def refusal(self, request: dict[str, Any], n_fds: int) -> Optional[str]:
        argv = request.get("argv") or []
        if (n_fds != 2 or not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv)
                or argv[0] not in FORWARDED):
            return "not a stage command"
        if not isinstance(request.get("cwd"), str) or Path(request["cwd"]).resolve() != self.root:
            return f"it serves {self.root}, not {request.get('cwd')}"
        if request.get("python") != sys.executable:
            return f"it runs {sys.executable}, not {request.get('python')}"
        if request.get("env") != self.env:
            return (f"the environment differs from the daemon's (variables starting with {', '.join(ENV_PREFIXES)}); "
                    "restart the daemon in this environment")
        changed = self.code.changed()
        if changed:
            return f"code changed since it started ({changed})"
        return None

    def run(self, conn: socket.socket, argv: list[str], fds: list[int]) -> int:
        """The command, as `vitsflow <argv>` would run it, with the client's stdout and stderr."""
        from flows.cli import app

        self.client_gone = False
        with self.lock:
            self.running = True
        threading.Thread(target=self._watch, args=(conn,), daemon=True).start()
        try:
            with _Stdio(*fds):
                try:
                    app(args=argv, prog_name="vitsflow")
                    code = 0
                except SystemExit as done:
                    code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
                except KeyboardInterrupt:
                    print("interrupted", file=sys.stderr)
                    code = 130
                except BaseException:  # noqa: B036 - the client gets the traceback, the daemon goes on
                    import traceback

                    traceback.print_exc()
                    code = 1
                finally:
                    with self.lock:
                        self.running = False
        except KeyboardInterrupt:  # an interrupt that landed just after the command ended
            code = 130
        _restore(os.environ, self.environ)
        return code

    def _on_sigint(self, *_: Any) -> None:
        if not self.client_gone:
            self.stopping = True  # Ctrl-C in the daemon's own terminal, not a client gone
        raise KeyboardInterrupt

    def _watch(self, conn: socket.socket) -> None:
        """Interrupt the running command when its client goes away (it sends nothing after the request)."""
        import _thread

        try:
            while conn.recv(1):
                pass
        except OSError:
            pass
        with self.lock:
            if self.running:
                self.client_gone = True
                _thread.interrupt_main()


def _restore(environ, saved: dict[str, str]) -> None:
    for key in set(environ) - set(saved):
        del environ[key]
    for key, value in saved.items():
        if environ.get(key) != value:
            environ[key] = value


def serve(root: Path) -> None:
    Daemon(root).serve()
