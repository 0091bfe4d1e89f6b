"""Private RabbitMQ nodes for tests, speaking AMQP 1.0: the system's 3.x (Debian 12,
rabbitmq_amqp1_0 plugin) or 4.x from a Debian 13 chroot (scripts/rabbitmq4-chroot).

Everything about the node is private to one test session: its name, its ports (AMQP,
Erlang distribution and its own epmd), its data, logs, configuration and Erlang cookie
all live in a temporary directory, and it listens on 127.0.0.1 only. It does not touch
a system RabbitMQ (the Debian package's service) that may run on the same machine.

    node = RabbitNode(tmpdir)
    node.start()                 # returns when `rabbitmqctl await_startup` says so
    node.url()                   # amqp://guest:guest@127.0.0.1:PORT/
    node.ctl("list_queues")      # rabbitmqctl against this node
    node.stop()                  # rabbitmqctl shutdown, then its epmd

A watchdog process ends the node (its process group, then its epmd) if the test process
dies without calling stop().

``guest``/``guest`` may log in from the loopback interface only (RabbitMQ's default),
which is where the tests are.

RabbitMQ 4 (``RabbitNode(tmpdir, root=rabbit.chroot4())``): the node runs from the
chroot (``chroot ROOT env ... rabbitmq-server``), its directory inside the chroot, with
/proc mounted there while any node of this process runs (unmounted by the last stop).
Its ports are private like a 3.x node's, so it never meets the 3.10 node or its epmd.
Nodes made with ``cluster_with`` join the first node's cluster (their own ports, one
Erlang cookie).
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid

RABBIT_BIN = "/usr/lib/rabbitmq/bin"
SERVER = os.path.join(RABBIT_BIN, "rabbitmq-server")
CTL = os.path.join(RABBIT_BIN, "rabbitmqctl")
EPMD = shutil.which("epmd") or "/usr/bin/epmd"

# The RabbitMQ 4 chroot, made by scripts/rabbitmq4-chroot (scripts/setup-env runs it).
CHROOT4 = os.environ.get("FASTAMQP_RABBITMQ4_CHROOT", "/var/lib/fastamqp/rabbitmq4-chroot")
CHROOT4_MARKER = ".fastamqp-rabbitmq4-ready"
CHROOT4_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir,
                              os.pardir, "scripts", "rabbitmq4-chroot")

START_TIMEOUT = 90.0
STOP_TIMEOUT = 60.0

# Run beside every node: if the test process dies without stop() (a crash in an
# extension, SIGKILL), it ends the node's own process group and its epmd, so no node
# outlives its test run.
_WATCHDOG = r"""
import os, signal, subprocess, sys, time
parent, group = int(sys.argv[1]), int(sys.argv[2])
epmd_port, epmd = sys.argv[3], sys.argv[4:]

def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True

def group_alive():
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True

while alive(parent) and group_alive():
    time.sleep(0.5)
if group_alive():
    os.killpg(group, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while group_alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    if group_alive():
        os.killpg(group, signal.SIGKILL)
    subprocess.run(epmd + ["-port", epmd_port, "-kill"], capture_output=True, timeout=30)
"""


def installed():
    """None when a node can be started here, else why not."""
    if not (os.access(SERVER, os.X_OK) and os.access(CTL, os.X_OK)):
        return (f"RabbitMQ is not installed ({SERVER} is missing): "
                f"`apt-get install rabbitmq-server` (scripts/setup-env does it)")
    return None


def chroot4_missing():
    """None when the RabbitMQ 4 chroot is there and usable, else why not."""
    if not os.path.isfile(os.path.join(CHROOT4, CHROOT4_MARKER)):
        return (f"no RabbitMQ 4 chroot at {CHROOT4}: run scripts/rabbitmq4-chroot "
                f"(scripts/setup-env does it; about 2 minutes, as root)")
    if os.geteuid() != 0:
        return "running a node from the RabbitMQ 4 chroot needs root (chroot)"
    return None


def chroot4_version():
    with open(os.path.join(CHROOT4, CHROOT4_MARKER)) as f:
        return f.read().strip()


# /proc inside the chroot, mounted while any node of this process runs from it.
_proc_lock = threading.Lock()
_proc_users = {}


def _proc_mount(root, add):
    proc = os.path.join(root, "proc")
    with _proc_lock:
        users = _proc_users.get(root, 0) + (1 if add else -1)
        _proc_users[root] = max(users, 0)
        mounted = os.path.ismount(proc)
        if add and users == 1 and not mounted:
            subprocess.run(["mount", "-t", "proc", "proc", proc], check=True,
                           capture_output=True, timeout=30)
        elif not add and users <= 0 and mounted:
            subprocess.run(["umount", "-l", proc], capture_output=True, timeout=30)


def _free_port(below=None):
    """A TCP port nobody listens on right now (below ``below`` if given)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if below is None or port < below:
            return port
    # The kernel's ephemeral range is all above ``below``: probe a fixed range.
    for port in range(20000, below):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free TCP port")


class RabbitNode:
    """One private RabbitMQ node (see the module docstring)."""

    def __init__(self, base_dir, user="guest", password="guest", tls=None, root=None,
                 cluster_with=None, config=""):
        """``tls``: (CA file, certificate file, key file) for a TLS listener on
        ``tls_port`` as well (AMQP 0-9-1 and 1.0, as on the plain port). ``root``: a
        RabbitMQ 4 chroot to run from (chroot4_missing()). ``cluster_with``: a node
        (of the same root) whose cluster this one joins when started. ``config``:
        more rabbitmq.conf lines."""
        self.root = root
        self.name = f"fastamqp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        if root:
            # The node sees only the chroot: its directory lives in there.
            self.host_dir = os.path.join(root, "tmp", "fastamqp-nodes", self.name)
            self.base_dir = self.host_dir[len(root.rstrip("/")):]
        else:
            self.host_dir = self.base_dir = str(base_dir)
        self.user = user
        self.password = password
        self.port = _free_port()
        self.tls = tls
        self.tls_port = _free_port() if tls else None
        # rabbitmqctl picks its own distribution port at dist_port + 10000 .. + 10010,
        # which must stay a valid port number.
        self.dist_port = _free_port(below=55000)
        self.cluster_with = cluster_with
        # Nodes of one cluster find each other through one epmd.
        self.epmd_port = cluster_with.epmd_port if cluster_with else _free_port()
        self.nodename = f"{self.name}@localhost"
        self.config = config
        self.process = None
        self._watchdog = None
        self.startup_seconds = None
        self._log = None
        self._proc_mounted = False

    # ---- environment -------------------------------------------------------------
    def _path(self, *parts):
        """A path as the node sees it."""
        return os.path.join(self.base_dir, *parts)

    def _host_path(self, *parts):
        return os.path.join(self.host_dir, *parts)

    def _cmd(self, *argv):
        return (["chroot", self.root] if self.root else []) + list(argv)

    def _epmd(self):
        return self._cmd("/usr/bin/epmd" if self.root else EPMD)

    def _env(self):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RABBITMQ_", "ERL_"))}
        if self.root:
            # The chroot's own programs, never the host's virtualenv or tools.
            env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
                   "LC_ALL": "C.UTF-8"}
        env.update({
            # The Erlang cookie is $HOME/.erlang.cookie: private to this node.
            "HOME": self._path("home"),
            "RABBITMQ_CONF_ENV_FILE": self._path("rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": self._path("rabbitmq.conf"),
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_MNESIA_BASE": self._path("mnesia"),
            "RABBITMQ_LOG_BASE": self._path("log"),
            "RABBITMQ_PID_FILE": self._path("rabbit.pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": self._path("enabled_plugins"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS":
                "-kernel inet_dist_use_interface {127,0,0,1}",
        })
        return env

    def _write_files(self):
        for sub in ("home", "mnesia", "log"):
            os.makedirs(self._host_path(sub), exist_ok=True)
        cookie = self._host_path("home", ".erlang.cookie")
        if not os.path.exists(cookie):
            # One cookie per cluster (the first node's), else one per node.
            value = (self.cluster_with.cookie if self.cluster_with
                     else uuid.uuid4().hex.upper())
            with open(os.open(cookie, os.O_WRONLY | os.O_CREAT, 0o400), "w") as f:
                f.write(value)
        with open(cookie) as f:
            self.cookie = f.read().strip()
        with open(self._host_path("rabbitmq-env.conf"), "w"):
            pass   # not the system's /etc/rabbitmq/rabbitmq-env.conf
        with open(self._host_path("enabled_plugins"), "w") as f:
            # RabbitMQ 4 speaks AMQP 1.0 without a plugin.
            f.write("[].\n" if self.root else "[rabbitmq_amqp1_0].\n")
        with open(self._host_path("rabbitmq.conf"), "w") as f:
            f.write("loopback_users.guest = true\n"
                    # A test machine's disk may be nearly full: do not block publishers.
                    "disk_free_limit.absolute = 1MB\n")
            if self.tls:
                ca, cert, key = self.tls
                f.write(f"listeners.ssl.1 = 127.0.0.1:{self.tls_port}\n"
                        f"ssl_options.cacertfile = {ca}\n"
                        f"ssl_options.certfile = {cert}\n"
                        f"ssl_options.keyfile = {key}\n"
                        "ssl_options.verify = verify_none\n"
                        "ssl_options.fail_if_no_peer_cert = false\n")
            if self.config:
                f.write(self.config.rstrip("\n") + "\n")

    # ---- control -----------------------------------------------------------------
    def ctl(self, *args, timeout=60, check=True):
        """Run rabbitmqctl against this node; its stdout."""
        result = subprocess.run(self._cmd(CTL, "-n", self.nodename, *args),
                                env=self._env(), capture_output=True, text=True,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed "
                               f"({result.returncode}): {result.stderr.strip()}"
                               f"{result.stdout.strip()}")
        return result.stdout

    def log_tail(self, lines=40):
        """The end of the server's console output, for error messages."""
        try:
            with open(self._host_path("server.out"), errors="replace") as f:
                return "\n".join(f.read().splitlines()[-lines:])
        except OSError:
            return ""

    def log_text(self):
        """The node's log files, all of them."""
        text = []
        for name in sorted(os.listdir(self._host_path("log"))):
            if name.endswith(".log"):
                with open(self._host_path("log", name), errors="replace") as f:
                    text.append(f.read())
        return "\n".join(text)

    def _port_open(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def start(self, timeout=START_TIMEOUT):
        os.makedirs(self.host_dir, exist_ok=True)
        self._write_files()
        if self.root and not self._proc_mounted:
            _proc_mount(self.root, True)
            self._proc_mounted = True
        started = time.monotonic()
        self._log = open(self._host_path("server.out"), "ab")
        # Its own session: a Ctrl-C in the test run does not hit the node first, and
        # stop() can end exactly the processes this node started.
        self.process = subprocess.Popen(
            self._cmd(SERVER), env=self._env(), stdout=self._log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            cwd=self.host_dir)
        self._watchdog = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(self.process.pid),
             str(self.epmd_port), *self._epmd()],
            env=self._env(), start_new_session=True, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = started + timeout
        # The AMQP listener opens at the end of the boot; polling it is cheap, unlike
        # rabbitmqctl (an Erlang VM per call).
        while not self._port_open():
            if self.process.poll() is not None:
                self._cleanup_after_failure()
                raise RuntimeError(f"rabbitmq-server exited ({self.process.returncode}) "
                                   f"while starting:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"RabbitMQ did not open port {self.port} within "
                                   f"{timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.2)
        left = int(max(1, deadline - time.monotonic()))
        self.ctl("await_startup", "--timeout", str(left))
        if self.cluster_with is not None and not getattr(self, "joined", False):
            self.ctl("stop_app")
            self.ctl("join_cluster", self.cluster_with.nodename)
            self.ctl("start_app")
            self.ctl("await_startup", "--timeout", str(left))
            self.joined = True
        self.startup_seconds = time.monotonic() - started
        return self

    def url(self, user=None, password=None, vhost="", tls=False):
        user = self.user if user is None else user
        password = self.password if password is None else password
        port = self.tls_port if tls else self.port
        return f"amqp://{user}:{password}@127.0.0.1:{port}/{vhost}"

    def queues(self, vhost="/"):
        """{queue name: {"messages", "messages_persistent", "consumers",
        "auto_delete", "exclusive", "durable", "policy", "arguments"}} of ``vhost``."""
        out = self.ctl("list_queues", "-q", "-p", vhost, "--formatter", "json", "name",
                       "messages", "messages_persistent", "consumers", "auto_delete",
                       "exclusive", "durable", "policy", "arguments")
        queues = {}
        for q in json.loads(out):
            # [[name, type, value], ...] (an empty list: [] or {} by version)
            q["arguments"] = {a[0]: a[-1] for a in q.get("arguments") or []}
            queues[q.pop("name")] = q
        return queues

    def bindings(self, vhost="/"):
        """[(source, destination, routing key)] of ``vhost``."""
        out = self.ctl("list_bindings", "-q", "-p", vhost, "--formatter", "json",
                       "source_name", "destination_name", "routing_key")
        return [(b["source_name"], b["destination_name"], b["routing_key"])
                for b in json.loads(out)]

    def kill(self):
        """SIGKILL the node (its process group; a cluster's shared epmd lives on)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, 9)
            self.process.wait(30)

    def stop(self, keep_epmd=False):
        if self.process is None:
            return
        try:
            if self.process.poll() is None:
                try:
                    self.ctl("shutdown", timeout=STOP_TIMEOUT, check=False)
                except subprocess.TimeoutExpired:
                    pass
                try:
                    self.process.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    # Only the processes of this node: its own session.
                    os.killpg(self.process.pid, 9)
                    self.process.wait(10)
        finally:
            self._cleanup_after_failure(keep_epmd)

    def remove(self):
        """Stop, and delete the node's directory (a chroot node's lives in the chroot)."""
        self.stop()
        if self.root:
            shutil.rmtree(self.host_dir, ignore_errors=True)

    def _cleanup_after_failure(self, keep_epmd=False):
        if self._watchdog is not None:
            self._watchdog.terminate()
            self._watchdog.wait(10)
            self._watchdog = None
        # The node started its own epmd on a private port; it outlives the node.
        if not keep_epmd:
            subprocess.run(self._epmd() + ["-port", str(self.epmd_port), "-kill"],
                           env=self._env(), capture_output=True, timeout=30)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._proc_mounted:
            self._proc_mounted = False
            _proc_mount(self.root, False)
