"""Runs one untrusted Python program (a HumanEval or MBPP completion with its tests) and reports
how it ended.

`run_python` runs a program in a fresh `python -I -S -B` interpreter and returns an
`ExecutionResult`: "passed" (the program ran to its end, then exited with status 0), "failed"
(another exit status: an exception, a failed assert), "exited_early" (status 0 without running to
its end: sys.exit, os._exit, SystemExit, an exit from a thread, an atexit or exception hook),
"timeout" (the wall-clock or CPU time limit), "killed" (a signal, such as the kernel's
out-of-memory killer) or "denied" (the program attempted an operation the sandbox forbids; it is
ended at once). `run_many` runs many programs on worker threads and returns results in order.

Layers, from the kernel up:

- A process per program, in its own session and process group: on the wall-clock limit the whole
  group is killed (SIGKILL), and nothing the program started outlives it.
- Resource limits set in the child before the program runs: CPU seconds (RLIMIT_CPU), address
  space (RLIMIT_AS: a huge allocation is a MemoryError), file size (RLIMIT_FSIZE), no core dumps,
  and a process count (RLIMIT_NPROC) as a backstop to the audit hook's ban on fork.
- Network namespaces: where `unshare --user --net` works (`namespaces_available()`), the child
  runs in new user, network and IPC namespaces, with no network interface but a loopback that is
  down, so no connection can be made even by code that escapes the interpreter.
- A fresh temporary directory is the child's working directory, HOME and TMPDIR, and the only
  place it may write; it is removed afterwards. The environment holds PATH, HOME, TMPDIR and LANG
  only, stdin is /dev/null and no other file descriptor is inherited.
- An audit hook (PEP 578) installed in the child before the program runs, enforcing the policy
  that llama_jax/eval/sandbox_policy.py states in one place (every denied event, module and
  replaced function, with the reason). It denies: sockets of
  any kind, running programs (os.system, subprocess, os.exec*, os.spawn*, os.posix_spawn), fork
  (beyond `max_processes`), signals to other processes, ctypes and cffi (foreign code could
  switch the hook off: audit hooks cannot be removed from Python, but native code can do
  anything), native modules outside the standard library, fresh copies of the built-in modules
  whose functions the sandbox replaced (the import machinery's `_imp.create_builtin`, which raises
  no event, is replaced by a stand-in that asks the hook), code objects from anything but source
  (code objects built by hand, marshal, frozen modules given bytes: bytecode is not memory-safe;
  imports compile the standard library from source, since no .pyc is read), walking the garbage
  collector's objects (they lead to the hook's own state), trace and profile functions, replacing
  a function's code, sqlite3 (ATTACH and VACUUM INTO write files anywhere, without events),
  scheduling calls (priority, CPU affinity, which can name another process), changing resource
  limits, writing, creating, removing or re-permissioning any file
  outside the temporary directory (/dev/null aside), links of any kind, changing directory, and
  reading anything under the project's repository, the caller's working directory or the
  caller's home, or another process's /proc entry. A denial writes "sandbox: denied ..." to
  stderr and ends the process at once with exit status `DENIED_EXIT_CODE`: an exception could be
  caught by the program, so none is raised. The hook resolves symlinks itself with functions it
  captured before the program ran, so a program that rebinds `os.path` or builtins does not
  change its answers. The interpreter never finalizes (it exits with os._exit), since audit
  hooks are cleared during finalization and objects' `__del__` methods could run after that.

Guaranteed: the program cannot outlive its time limits, cannot leave processes behind (besides
the process group, processes whose working directory is the temporary one are killed), cannot
use more memory than its address-space limit, and cannot make a network connection where
namespaces are available. Where they are not (some containers and CI machines forbid
unprivileged user namespaces), the audit hook still denies every socket, so the sandbox fails
closed; what is lost is the protection against code that gets around the hook. Each file the
program writes is at most file_size_mb, but not their number: total disk use is bounded only by
what can be written before the time limit.

Not guaranteed: this is not a security boundary against a determined attacker. The audit hook is a
check inside the attacker's own interpreter: Python objects can be introspected in many ways
(frames, closures of functions the program can reach), the program shares its namespace and builtins
with the tests it is checked by unless they run apart, and a kernel exploit defeats every layer.
Reads outside the protected directories are allowed (the standard library, /etc, /usr). RLIMIT_NPROC
is not enforced by the kernel for root or for processes with CAP_SYS_RESOURCE or CAP_SYS_ADMIN, so
there it is the audit hook alone that stops a fork bomb.

"Ran to its end" cannot be claimed by the program: the parent gives the child a random secret
through a pipe that the audit hook reads and closes before the program runs, keeping the secret only
in its own closure; when the program's code returns normally, the runner raises an audit event, and
the hook writes the secret to a second pipe only if that event comes from the runner called at the
top of the stack (a program that calls the runner, or raises the event itself, is denied). The
parent compares what the pipe holds. Trace and profile functions (which could skip the tests' lines
or rebind their `check`) and swapping a function's code are denied.

Tests apart (`tests=`): the tests run after the program in a namespace the audit hook builds: the
builtins as they were before the program ran, and only the program's names that the tests use,
its functions wrapped so that a result must be plain data (None, bool, numbers, str, bytes and
lists, tuples, sets and dicts of them, exact types): a completion that rebinds a builtin or a
name the tests use, or returns an object whose `__eq__` says yes to anything, does not pass. While
the tests run, frames cannot be reached (sys._getframe, tracebacks', generators' and coroutines'
frames), so code the program left behind cannot find the tests' namespace. The program's modules
are shared with the tests (a program could still change a function of `math` that the tests call).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import tqdm

from llama_jax.eval import sandbox_policy

STATUSES = ("passed", "failed", "timeout", "killed", "denied", "exited_early")
DENIED_EXIT_CODE = 113  # the child's exit status after a denial
OUTPUT_CHARS = 2000  # the end of stdout and stderr kept in `ExecutionResult.output`
REPO_ROOT = Path(__file__).resolve().parents[2]

# Tasks (processes and threads) allowed beyond those the user already runs: a few threads for the
# program, and room for the user's other processes that start while the child counts them.
_NPROC_MARGIN = 4
_POLL_S = 0.02  # how often the child is polled where pidfds are unavailable
_DRAIN_S = 1.0  # how long output is still read after the child has gone
_ENV_PATH = "/usr/bin:/bin"


@dataclasses.dataclass(frozen=True)
class ExecutionResult:
  """How one program ended."""

  status: str  # one of STATUSES
  returncode: int | None  # the exit status, or minus the signal that ended it; None if unknown
  output: str  # the last OUTPUT_CHARS characters of stdout and stderr together, for logs
  seconds: float  # wall-clock time from start to exit

  @property
  def passed(self) -> bool:
    return self.status == "passed"


def run_python(program: str, *, tests: str | None = None, timeout_s: float = 10.0,
               memory_mb: int = 1024, max_processes: int = 0, file_size_mb: int = 64,
               namespaces: bool = True) -> ExecutionResult:
  """Runs `program` (Python source) in the sandbox described in the module docstring.

  tests: Python source run after the program in a namespace of its own (see "Tests apart" in the
    module docstring); it passes only if both run to their end.
  timeout_s: wall-clock limit; the CPU limit is one second more, rounded up.
  memory_mb: address-space limit of the interpreter.
  max_processes: how many times the program may fork (each child stays under the same rules and
    may not fork again); 0 denies fork.
  file_size_mb: the largest file the program may write in its directory.
  namespaces: run in new user and network namespaces where the kernel allows (False: the audit
    hook alone keeps the network out).
  """
  if not isinstance(program, str):
    raise TypeError(f"run_python takes the program's source as a str, not {type(program).__name__}")
  if not timeout_s > 0:
    raise ValueError(f"timeout_s must be positive, got {timeout_s}")
  if memory_mb < 16:
    raise ValueError(f"memory_mb={memory_mb} is too little for a Python interpreter; "
                     "give 16 or more")
  if max_processes < 0 or file_size_mb < 0:
    raise ValueError(f"max_processes ({max_processes}) and file_size_mb ({file_size_mb}) must be "
                     "zero or more")
  python = _python_executable()
  prefix = _namespace_command(python) if namespaces else ()
  workdir = os.path.realpath(tempfile.mkdtemp(prefix="llama_jax_sandbox_"))
  try:
    program_path = os.path.join(workdir, "program.py")
    with open(program_path, "w", encoding="utf-8") as f:
      f.write(program)
    tests_path = None
    if tests is not None:
      tests_path = os.path.join(workdir, "tests.py")
      with open(tests_path, "w", encoding="utf-8") as f:
        f.write(tests)
    cpu_s = math.ceil(timeout_s) + 1
    # The verdict: a secret the child's audit hook reads from a pipe before the program runs and
    # writes back only when the runner reports that the program ran to its end.
    secret = secrets.token_hex(16).encode()
    secret_read, secret_write = os.pipe()
    verdict_read, verdict_write = os.pipe()
    os.write(secret_write, secret)
    os.close(secret_write)
    config = {
        "program": program_path,
        "tests": tests_path,
        "workdir": workdir,
        "protected": _protected_roots(),
        "cpu_s": cpu_s,
        "memory_bytes": memory_mb << 20,
        "file_bytes": file_size_mb << 20,
        "max_processes": max_processes,
        "nproc_margin": _NPROC_MARGIN,
        "denied_code": DENIED_EXIT_CODE,
        "secret_fd": secret_read,
        "verdict_fd": verdict_write,
        "policy": sandbox_policy.as_config(),
    }
    # The configuration goes in as a Python literal, which spares the child importing json.
    command = [*prefix, python, "-I", "-S", "-B", "-u", "-c",
               f"{_bootstrap_source()}\n\n_child_main({config!r})\n"]
    env = {"PATH": _ENV_PATH, "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8"}
    try:
      returncode, timed_out, cpu_used, output, seconds = _supervise(
          command, workdir, env, timeout_s, (secret_read, verdict_write))
    finally:
      os.close(secret_read)
      os.close(verdict_write)
    completed = _read_all(verdict_read) == secret
  finally:
    os.close(verdict_read)
    _remove_tree(workdir)
  return ExecutionResult(status=_status(returncode, timed_out, cpu_used, cpu_s, completed),
                         returncode=returncode, output=output, seconds=seconds)


def run_many(programs: Sequence[str], *, tests: Sequence[str] | None = None,
             workers: int | None = None, timeout_s: float = 10.0, progress: bool = False,
             **limits) -> list[ExecutionResult]:
  """Runs `programs` in parallel, each through `run_python` with its `tests` (if given),
  `timeout_s` and `limits` (its other keywords), on `workers` threads (default: one per CPU);
  returns results in input order. `progress` shows a tqdm progress bar."""
  programs = list(programs)
  tests = [None] * len(programs) if tests is None else list(tests)
  if len(tests) != len(programs):
    raise ValueError(f"{len(tests)} tests for {len(programs)} programs")
  workers = workers if workers is not None else (os.cpu_count() or 1)
  if workers < 1:
    raise ValueError(f"workers must be at least 1, got {workers}")
  if limits.get("namespaces", True):
    namespaces_available()  # probe once here rather than in several threads at once
  results: list[ExecutionResult | None] = [None] * len(programs)
  with ThreadPoolExecutor(max_workers=min(workers, max(len(programs), 1))) as pool, \
       tqdm.tqdm(total=len(programs), disable=not progress, desc="sandbox", unit="program") as bar:
    futures = {pool.submit(run_python, program, tests=test, timeout_s=timeout_s, **limits): i
               for i, (program, test) in enumerate(zip(programs, tests, strict=True))}
    for future in as_completed(futures):
      results[futures[future]] = future.result()
      bar.update()
  return results  # type: ignore[return-value]  # every slot is filled above


def namespaces_available() -> bool:
  """Whether this machine lets the sandbox run programs in new user and network namespaces."""
  return bool(_namespace_command(_python_executable()))


# Parent side.


def _python_executable() -> str:
  # The base interpreter, not a virtual environment's: with -S it sees the standard library only,
  # so nothing under the project (where the environment often lives) needs to be readable.
  return getattr(sys, "_base_executable", None) or sys.executable


@functools.cache
def _namespace_command(python: str) -> tuple[str, ...]:
  """The `unshare` prefix that puts the child in new namespaces, or () where the kernel or the
  container refuses them. The probe checks that the child sees no interface but loopback."""
  unshare = shutil.which("unshare", path="/usr/bin:/bin:/usr/sbin:/sbin")
  if unshare is None:
    return ()
  probe = ("import socket, sys\n"
           "sys.exit(0 if [name for _, name in socket.if_nameindex()] == ['lo'] else 1)")
  # --map-current-user leaves an unprivileged user without capabilities in the namespace; util-
  # linux before 2.38 lacks it, and --map-root-user is the fallback.
  for mapping in ("--map-current-user", "--map-root-user"):
    command = (unshare, "--user", "--net", "--ipc", mapping, "--")
    try:
      probed = subprocess.run([*command, python, "-I", "-S", "-c", probe], stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=30, env={"PATH": _ENV_PATH})
    except (OSError, subprocess.TimeoutExpired):
      continue
    if probed.returncode == 0:
      return command
  return ()


def _protected_roots() -> list[str]:
  """Directories the program may not read from: the project, the caller's working directory and
  home. "/" is left out: it would deny the whole file system, the standard library included."""
  roots = {os.path.realpath(p) for p in (REPO_ROOT, os.getcwd(), os.path.expanduser("~"))}
  return sorted(root for root in roots if root != "/")


@functools.cache
def _bootstrap_source() -> str:
  """The code the child runs before (and around) the program: the `_child_*` functions below,
  sent as source so that the child need not import this package."""
  functions = (_child_main, _child_set_limits, _child_count_tasks, _child_disarm,
               _child_audit_hook, _child_run, _child_exit_code)
  return "\n\n".join(inspect.getsource(f) for f in functions)


class _Tail:
  """The last bytes of a stream, and how many came in all."""

  def __init__(self, keep: int):
    self.keep = keep
    self.data = bytearray()
    self.total = 0

  def add(self, chunk: bytes) -> None:
    self.total += len(chunk)
    self.data += chunk
    if len(self.data) > self.keep:
      del self.data[:-self.keep]

  def text(self, chars: int) -> str:
    text = self.data.decode("utf-8", errors="replace")
    if len(text) <= chars and self.total == len(self.data):
      return text
    return f"[... {self.total} bytes of output; the last {chars} characters:]\n" + text[-chars:]


def _read_all(fd: int) -> bytes:
  """What a pipe holds now, without waiting (a process the program forked could still hold its
  other end open)."""
  os.set_blocking(fd, False)
  chunks = []
  try:
    while chunk := os.read(fd, 4096):
      chunks.append(chunk)
  except BlockingIOError:
    pass
  return b"".join(chunks)


def _supervise(command: list[str], workdir: str, env: dict[str, str], timeout_s: float,
               pass_fds: tuple[int, ...]) -> tuple[int, bool, float, str, float]:
  """Runs the child to its end or its wall-clock limit, then kills its process group; returns
  (returncode, timed out, CPU seconds used, output, wall seconds)."""
  tail = _Tail(4 * OUTPUT_CHARS)  # bytes enough for OUTPUT_CHARS characters of UTF-8
  start = time.monotonic()
  proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, cwd=workdir, env=env, close_fds=True,
                          pass_fds=pass_fds, start_new_session=True)
  out = proc.stdout.fileno()
  timed_out, reading = False, True
  try:
    os.set_blocking(out, False)
    timed_out, reading = _wait(proc.pid, out, start + timeout_s, tail)
    seconds = time.monotonic() - start
  finally:
    # The group leader is not reaped yet (waitid's WNOWAIT), so its pid, which names the group,
    # cannot have been reused by an unrelated process.
    _kill_group(proc.pid)
    _kill_processes_in(workdir)
    try:
      if reading:
        _drain(out, tail)
    finally:
      proc.stdout.close()
      _, status, usage = os.wait4(proc.pid, 0)
      proc.returncode = os.waitstatus_to_exitcode(status)
  return (proc.returncode, timed_out, usage.ru_utime + usage.ru_stime,
          tail.text(OUTPUT_CHARS), seconds)


def _wait(pid: int, out: int, deadline: float, tail: _Tail) -> tuple[bool, bool]:
  """Reads the child's output until it exits or `deadline` passes; returns (timed out, whether the
  output is still open)."""
  try:
    pidfd = os.pidfd_open(pid)
  except (AttributeError, OSError):  # not Linux 5.3 or later: poll instead
    pidfd = None
  # poll, not select: select fails on descriptors above 1023, which a busy parent reaches.
  poller = select.poll()
  poller.register(out, select.POLLIN)
  if pidfd is not None:
    poller.register(pidfd, select.POLLIN)
  reading = True
  try:
    while not _exited(pid):
      remaining = deadline - time.monotonic()
      if remaining <= 0:
        return True, reading
      wait_s = remaining if pidfd is not None else min(remaining, _POLL_S)
      ready = {fd for fd, _ in poller.poll(math.ceil(wait_s * 1000))}
      if out in ready:
        reading = _read(out, tail)
        if not reading:
          poller.unregister(out)
    return False, reading
  finally:
    if pidfd is not None:
      os.close(pidfd)


def _exited(pid: int) -> bool:
  try:
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
  except ChildProcessError:
    return True


def _read(fd: int, tail: _Tail) -> bool:
  """Reads what is there; False at end of file."""
  try:
    chunk = os.read(fd, 1 << 16)
  except BlockingIOError:
    return True
  if not chunk:
    return False
  tail.add(chunk)
  return True


def _drain(fd: int, tail: _Tail) -> None:
  """Reads output still in the pipe, for at most _DRAIN_S."""
  poller = select.poll()
  poller.register(fd, select.POLLIN)
  deadline = time.monotonic() + _DRAIN_S
  while (remaining := deadline - time.monotonic()) > 0:
    if not poller.poll(math.ceil(remaining * 1000)) or not _read(fd, tail):
      return


def _kill_group(pgid: int) -> None:
  try:
    os.killpg(pgid, signal.SIGKILL)
  except (ProcessLookupError, PermissionError):
    pass


def _kill_processes_in(workdir: str) -> None:
  """Kills processes whose working directory is `workdir`: one that left the process group (the
  audit hook denies that, and fork, but this holds if it was got around). os.chdir raises its
  audit event from C, which the hook denies, so no Python code can have moved them."""
  for name in os.listdir("/proc"):
    if not name.isdigit():
      continue
    try:
      cwd = os.readlink(f"/proc/{name}/cwd")
      if cwd == workdir or cwd.startswith(workdir + "/"):
        os.kill(int(name), signal.SIGKILL)
    except OSError:  # gone meanwhile, or another user's
      continue


def _remove_tree(path: str) -> None:
  # The program may have taken write or search permission off its own directories (top-down, a
  # directory is made searchable before os.walk enters it).
  def make_usable(name: str) -> None:
    try:
      if not os.path.islink(name):
        os.chmod(name, 0o700)
    except OSError:
      pass

  make_usable(path)
  for root, dirs, _ in os.walk(path):
    for name in dirs:
      make_usable(os.path.join(root, name))
  shutil.rmtree(path, ignore_errors=True)


def _status(returncode: int, timed_out: bool, cpu_used: float, cpu_limit: int,
            completed: bool) -> str:
  """completed: the audit hook wrote the secret back, so the program ran to its end."""
  if timed_out:
    return "timeout"
  if returncode == 0:
    return "passed" if completed else "exited_early"
  if returncode == DENIED_EXIT_CODE:
    return "denied"
  if returncode < 0:
    # RLIMIT_CPU sends SIGXCPU at the soft limit and SIGKILL at the hard one.
    if -returncode == signal.SIGXCPU or (-returncode == signal.SIGKILL and cpu_used >= cpu_limit):
      return "timeout"
    return "killed"
  return "failed"


# Child side. These functions run in the sandboxed interpreter, sent as source by
# `_bootstrap_source`: they may use only what they import themselves and each other.


def _child_main(config: dict) -> None:
  """Sets the limits, installs the audit hook and runs the program; always ends with os._exit,
  so that the interpreter never finalizes (audit hooks are cleared during finalization, and
  objects' __del__ methods would then run unchecked)."""
  import posix
  import sys

  exit_code = 1
  try:
    _child_set_limits(config)
    _child_disarm(config["policy"]["disarmed"])
    with open(config["program"], encoding="utf-8") as f:
      source = f.read()
    tests = None
    if config["tests"] is not None:
      with open(config["tests"], encoding="utf-8") as f:
        tests = f.read()
    sys.argv = [config["program"]]
    # No bytecode is read: imports compile the standard library from source (where nothing
    # unmarshals bytes), so the hook can deny marshal, the one way to turn bytes into code.
    sys.pycache_prefix = config["workdir"] + "/.no-bytecode"
    sys.addaudithook(_child_audit_hook(config))
    exit_code = _child_run(source, config["program"], tests)
  except BaseException:
    import traceback

    traceback.print_exc()
    posix.write(2, b"sandbox: the sandbox itself failed before or after the program\n")
  finally:
    posix._exit(exit_code)


def _child_set_limits(config: dict) -> None:
  import resource

  def limit(which: int, soft: int, hard: int) -> None:
    _, current_hard = resource.getrlimit(which)
    if current_hard != resource.RLIM_INFINITY:
      soft, hard = min(soft, current_hard), min(hard, current_hard)
    resource.setrlimit(which, (soft, hard))

  limit(resource.RLIMIT_CORE, 0, 0)
  limit(resource.RLIMIT_CPU, config["cpu_s"], config["cpu_s"] + 1)
  limit(resource.RLIMIT_AS, config["memory_bytes"], config["memory_bytes"])
  limit(resource.RLIMIT_FSIZE, config["file_bytes"], config["file_bytes"])
  # RLIMIT_NPROC counts every task (process or thread) of the real user, not this process's
  # children, so a limit of max_processes alone would stop the child at once wherever the user
  # runs anything else. Counted in the child's user namespace, which the kernel counts in too.
  # The kernel ignores this limit for root and for holders of CAP_SYS_RESOURCE or CAP_SYS_ADMIN;
  # the audit hook's ban on fork is what holds there.
  tasks = _child_count_tasks() + config["max_processes"] + config["nproc_margin"]
  limit(resource.RLIMIT_NPROC, tasks, tasks)


def _child_count_tasks() -> int:
  """Tasks of this process's real user in its user namespace, threads included."""
  import posix

  uid = posix.getuid()
  try:
    namespace = posix.readlink("/proc/self/ns/user")
  except OSError:
    namespace = None
  tasks = 0
  for name in posix.listdir("/proc"):
    if not name.isdigit():
      continue
    try:
      # Cheap tests first: the namespace, then the owner of the /proc entry (the effective user).
      if namespace is not None and posix.readlink(f"/proc/{name}/ns/user") != namespace:
        continue
      if posix.stat(f"/proc/{name}").st_uid != uid:
        continue
      with open(f"/proc/{name}/status", encoding="utf-8") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
      if int(fields["Uid"].split()[0]) != uid:
        continue
      tasks += int(fields["Threads"])
    except (OSError, KeyError, ValueError):  # exited meanwhile, or not ours to read
      continue
  return max(tasks, 1)


def _child_disarm(disarmed: dict) -> None:
  """Replaces functions that raise no audit event (so the hook cannot see them) with ones that
  raise a "sandbox.*" event, which the hook denies: making FIFOs and device nodes, chroot, pidfds
  (a way to signal another process), leaving the process group, and the fork-and-exec behind
  subprocess and multiprocessing. They are looked up on each call, so replacing them suffices;
  re-importing these modules is denied by the hook. os and signal copy their functions from
  posix and _signal when first imported, so they are patched only if imported already."""
  import _posixsubprocess
  import _signal
  import posix
  import sys

  def denied(name: str):
    def stub(*args, **kwargs):
      sys.audit("sandbox." + name)

    return stub

  loaded = {"posix": posix, "_signal": _signal, "_posixsubprocess": _posixsubprocess}
  for module_name, names in disarmed.items():
    module = loaded.get(module_name) or sys.modules.get(module_name)
    for name in names:
      if module is not None and hasattr(module, name):
        setattr(module, name, denied(f"{module.__name__}.{name}"))


def _child_audit_hook(config: dict):
  """The audit hook (see the module docstring for what it denies)."""
  import posix
  import sys

  # Everything the hook uses is bound here, before the program runs: the program can rebind
  # builtins and module attributes (os.path.realpath, builtins.open), but nothing it can reach
  # holds this closure, and the garbage collector's object walks are denied.
  write, exit_now, lstat, stat, readlink, getpid = (
      posix.write, posix._exit, posix.lstat, posix.stat, posix.readlink, posix.getpid)
  str_, bytes_, int_, type_, repr_ = str, bytes, int, type, repr
  base_exception, os_error, type_error = BaseException, OSError, TypeError
  encoding = sys.getfilesystemencoding()
  workdir = config["workdir"]
  protected = tuple(config["protected"])
  denied_code = config["denied_code"]
  forks_left = [config["max_processes"]]
  main_pid = getpid()
  # The verdict's secret lives only in this closure, which nothing the program can reach holds;
  # the hook writes it to verdict_fd once, when the runner reports that the program ran to its
  # end, and only if the report comes from the runner called by _child_main at the top of the
  # stack (not from a copy the program calls, nor from a code object swapped in).
  secret = b""
  while chunk := posix.read(config["secret_fd"], 64):
    secret += chunk
  posix.close(config["secret_fd"])
  verdict_fd = config["verdict_fd"]
  getframe = sys._getframe
  runner_code, main_code = _child_run.__code__, _child_main.__code__
  reported = [False]
  # The import machinery's ways to make a module or code object without an audit event: a
  # fresh copy of a built-in module (posix, _signal, with the functions _child_disarm replaced),
  # or a "frozen" module unmarshalled from bytes the caller gives. The originals stay in this
  # closure; the machinery calls stand-ins that ask the hook (llama_jax.sandbox.make_module).
  import _imp

  audit = sys.audit
  create_builtin, get_frozen_object = _imp.create_builtin, _imp.get_frozen_object

  def made(kind, *args):
    box = []
    audit("llama_jax.sandbox.make_module", kind, args, box)
    return box[0]

  _imp.create_builtin = lambda spec: made("builtin", spec)
  _imp.get_frozen_object = lambda name, data=None: made("frozen", name, data)

  # Tests apart (run_python's `tests`): the tests run in a namespace the hook builds, with the
  # builtins as they were before the program ran, and only the program's names that the tests
  # use; its functions return through a guard that lets only plain data out (an object whose
  # __eq__ says yes to anything is refused). While they run no frame can be reached, so nothing
  # the program left behind can find the tests' namespace. Everything used here is bound now.
  import _thread
  import builtins

  dict_, list_, tuple_, set_, frozenset_ = dict, list, tuple, set, frozenset
  pristine_builtins = dict_(builtins.__dict__)
  plain_types = frozenset_((bool, int, float, complex, str_, bytes_, type_(None), list_, tuple_,
                            dict_, set_, frozenset_))
  function_type, code_type = type_(made), type_(made.__code__)
  frame_attributes = frozenset_(config["policy"]["frame_attributes"])
  get_ident, testing, checking = _thread.get_ident, [False], [None]

  def plain(value):
    pending, seen = [value], 0
    while pending:
      item = list_.pop(pending)
      kind = type_(item)
      seen += 1
      if kind not in plain_types or seen > 10**7:
        return False
      if kind is dict_:
        list_.extend(pending, dict_.keys(item))
        list_.extend(pending, dict_.values(item))
      elif kind is list_ or kind is tuple_ or kind is set_ or kind is frozenset_:
        list_.extend(pending, item)
    return True

  def guard(function):
    def guarded(*args, **kwargs):
      result = function(*args, **kwargs)
      audit("llama_jax.sandbox.result", result)
      return result

    return guarded

  def tests_namespace(tests_code, program_namespace):
    names, codes = set_(), [tests_code]
    while codes:
      code = list_.pop(codes)
      set_.update(names, code.co_names)
      list_.extend(codes, [c for c in code.co_consts if type_(c) is code_type])
    program_names = {key: value for key, value in dict_.items(program_namespace)
                     if type_(key) is str_}
    namespace = {"__name__": "__main__", "__builtins__": dict_(pristine_builtins)}
    for name in names:
      if name in program_names and name not in pristine_builtins:
        value = program_names[name]
        namespace[name] = guard(value) if type_(value) is function_type else value
    return namespace

  def from_runner():
    """Whether the event being checked was raised by the runner that _child_main called."""
    checking[0] = get_ident()  # the frame walk below is the hook's own
    try:
      caller = getframe(3)  # 0: here, 1: verdict, 2: hook, 3: who raised the event
      outer = caller.f_back
      return (caller.f_code is runner_code and outer is not None and outer.f_code is main_code
              and outer.f_back is not None and outer.f_back.f_back is None)
    finally:
      checking[0] = None
  write_flags = posix.O_WRONLY | posix.O_RDWR | posix.O_CREAT | posix.O_TRUNC | posix.O_APPEND
  link_mode, directory_mode, file_type = 0o120000, 0o040000, 0o170000

  # The tables of llama_jax/eval/sandbox_policy.py, copied: the program can reach the
  # configuration (through _child_main's frame), not these copies. The rules below that need a
  # path or a process are the hook's own.
  policy = config["policy"]
  denied_events, denied_modules = dict(policy["events"]), dict(policy["modules"])
  denied_prefixes = tuple(policy["event_prefixes"].items())
  write_events, read_events = frozenset(policy["write_events"]), frozenset(policy["read_events"])
  shutdown_events = frozenset(policy["shutdown_events"])

  def inside(path, root):
    return path == root or str_.startswith(path, root + "/")

  def resolve(path):
    """`path` made absolute with every symlink followed, as the kernel would; components that do
    not exist are kept as written."""
    if not str_.startswith(path, "/"):
      path = workdir + "/" + path  # the working directory: changing it is denied
    pending = str_.split(path, "/")[::-1]
    parts = []
    links = 0
    while pending:
      part = pending.pop()
      if part in ("", "."):
        continue
      if part == "..":
        if parts:
          parts.pop()
        continue
      candidate = "/" + "/".join(parts + [part])
      try:
        mode = lstat(candidate).st_mode
      except os_error:
        parts.append(part)
        continue
      if mode & file_type != link_mode:
        parts.append(part)
        continue
      links += 1
      if links > 40:
        raise os_error("too many levels of symbolic links")
      target = readlink(candidate)
      if str_.startswith(target, "/"):
        parts = []
      pending.extend(str_.split(target, "/")[::-1])
    return "/" + "/".join(parts)

  def named(value):
    """The resolved path an event argument names; None for a file descriptor."""
    kind = type_(value)
    if kind is int_:
      return None
    if kind is bytes_:
      value = bytes_.decode(value, encoding, "surrogateescape")
    elif kind is not str_:
      raise type_error("a path that is neither str nor bytes")
    path = resolve(value)
    if not str_.startswith(value, "/") and not inside(path, workdir):
      # A path relative to a directory descriptor would be resolved by the kernel from there,
      # not from the working directory; refusing to climb out keeps the two in agreement.
      raise os_error("a relative path out of the working directory")
    return path

  def opened(fd):
    """The path of the file behind descriptor `fd`; None for pipes and other unnamed files."""
    target = readlink("/proc/self/fd/" + str_(fd))
    return resolve(target) if str_.startswith(target, "/") else None

  # The standard library's directories, readable even where they lie under a protected root (a
  # Python installed in the caller's home); native modules load from nowhere else.
  library = tuple(resolve(entry) for entry in sys.path if str_.startswith(entry, "/"))

  def in_library(path):
    for root in library:
      if inside(path, root):
        return True
    return False

  def readable(path):
    if inside(path, workdir) or in_library(path):
      return True
    for root in protected:
      if inside(path, root):
        return False
    if str_.startswith(path, "/proc/"):
      pid = str_.split(path, "/")[2]
      if str_.isdigit(pid) and pid != str_(getpid()):
        return False
    return True

  def writable(path):
    if path is None or inside(path, workdir) or path == "/dev/null":
      return True
    # Left under /proc/<pid>/fd after resolving: a descriptor of no file (the stdout pipe, for
    # /dev/stdout); one of a file resolves to the file's own path.
    return inside(path, "/proc/" + str_(getpid()) + "/fd")

  def verdict(event, args):
    """None to allow the event, or why it is denied."""
    if event in denied_events:
      return denied_events[event]
    for prefix, reason in denied_prefixes:
      if str_.startswith(event, prefix):
        return reason
    if event == "open":
      path = named(args[0])
      if path is None:
        return None
      if args[2] & write_flags:
        return None if writable(path) else "writing outside the program's directory"
      if not readable(path):
        return "reading the project's or caller's files"
      if args[1] is None and not inside(path, workdir):  # os.open, which can open directories
        try:
          is_directory = stat(path).st_mode & file_type == directory_mode
        except os_error:
          is_directory = False
        if is_directory:
          return "a descriptor of a directory outside the program's (for dir_fd)"
      return None
    if event in write_events:
      path = opened(args[0]) if type_(args[0]) is int_ else named(args[0])
      return None if writable(path) else "changing files outside the program's directory"
    if event == "os.rename":
      if writable(named(args[0])) and writable(named(args[1])):
        return None
      return "moving files outside the program's directory"
    if event in read_events:
      path = named(args[0]) if args[0] is not None else workdir
      return None if path is None or readable(path) else "reading the project's or caller's files"
    if event == "import":
      name = str_.rpartition(args[0], ".")[2]
      if name in denied_modules:
        return denied_modules[name]
      if str_.startswith(name, "_test"):
        return "CPython's test helpers"
      if args[1] is not None and not in_library(named(args[1])):
        return "native code from outside the standard library"
      return None
    if event in ("os.fork", "os.forkpty"):
      if getpid() != main_pid or forks_left[0] <= 0:
        return "more processes than max_processes"
      forks_left[0] -= 1
      return None
    if event == "os.kill":
      return None if args[0] == getpid() else "signalling another process"
    if event == "llama_jax.sandbox.make_module":
      kind, made_args, box = args
      if kind == "builtin":
        if made_args[0].name in denied_modules:
          return denied_modules[made_args[0].name]
        box.append(create_builtin(*made_args))
      elif made_args[1] is not None:
        return "code from bytes (a frozen module given its data)"
      else:
        box.append(get_frozen_object(made_args[0]))
      return None
    if event == "object.__setattr__" and args[1] == "__code__":
      return "replacing a function's code"
    if testing[0] and (event == "sys._getframe" or (
        event == "object.__getattr__" and args[1] in frame_attributes)):
      return "reaching frames while the tests run"
    if event == "llama_jax.sandbox.tests":
      if testing[0] or not from_runner():
        return "starting the tests from the program"
      list_.append(args[2], tests_namespace(args[0], args[1]))
      testing[0] = True
      return None
    if event == "llama_jax.sandbox.result":
      return None if plain(args[0]) else ("a result that is not plain data (" +
                                          type_(args[0]).__name__ + ")")
    if event == "llama_jax.sandbox.completed":
      if reported[0] or not from_runner():
        return "reporting the program's end from the program"
      reported[0] = True
      write(verdict_fd, secret)
      return None
    if event in shutdown_events:
      exit_now(1)  # the interpreter is finalizing: _child_main's os._exit was bypassed
    return None

  def describe(args):
    shown = []
    for value in args[:3]:
      if type_(value) in (str_, bytes_, int_):
        shown.append(repr_(value)[:200])
      else:
        shown.append("...")
    return "(" + ", ".join(shown) + ")"

  def hook(event, args):
    if checking[0] is not None and checking[0] == get_ident():
      return  # the hook's own look at the caller's frames
    try:
      reason = verdict(event, args)
    except base_exception:
      reason = "could not be checked"
    if reason is None:
      return
    try:
      message = "\nsandbox: denied " + event + describe(args) + ": " + reason + "\n"
      write(2, str_.encode(message, "utf-8", "replace"))
    finally:
      exit_now(denied_code)

  return hook


def _child_run(source: str, filename: str, tests: str | None) -> int:
  """Runs the program as __main__, then `tests` (if any) in the namespace the audit hook builds;
  returns the exit status the interpreter would have given."""
  import atexit
  import builtins
  import sys

  module = type(sys)("__main__")
  module.__file__ = filename
  module.__builtins__ = builtins
  sys.modules["__main__"] = module
  # Bound before the program runs, which could rebind builtins and this module's globals.
  report, run, code = sys.audit, exec, compile(source, filename, "exec")
  tests_code = None if tests is None else compile(tests, "tests.py", "exec")
  try:
    run(code, module.__dict__)
    if tests_code is not None:
      namespace = []
      report("llama_jax.sandbox.tests", tests_code, module.__dict__, namespace)
      run(tests_code, namespace[0])
    exit_code = 0
    report("llama_jax.sandbox.completed")  # the audit hook's verdict: ran to its end
  except SystemExit as stop:
    exit_code = _child_exit_code(stop.code)
  except BaseException as error:
    error.__traceback__ = error.__traceback__.tb_next  # the program's frames, not this one
    sys.excepthook(type(error), error, error.__traceback__)
    exit_code = 1
  # What the interpreter does at exit, short of finalizing: wait for threads, run atexit.
  threading = sys.modules.get("threading")
  for finish in ([threading._shutdown] if threading else []) + [atexit._run_exitfuncs]:
    try:
      finish()
    except SystemExit as stop:
      exit_code = exit_code or _child_exit_code(stop.code)
    except BaseException:
      sys.excepthook(*sys.exc_info())
      exit_code = exit_code or 1
  return exit_code


def _child_exit_code(code) -> int:
  """The exit status for sys.exit(code), without the interpreter's wrap-around: sys.exit(256)
  would otherwise exit with 0, which reads as passed."""
  import sys

  if code is None:
    return 0
  if isinstance(code, int):
    return code if 0 <= code <= 255 else 1
  try:
    print(code, file=sys.stderr)
  except BaseException:
    pass
  return 1
