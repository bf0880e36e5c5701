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
(frames, closures of functions the program can reach), the program shares its interpreter with
the tests it is checked by unless they run apart, and a kernel exploit defeats every layer.
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

Tests apart (`tests=`, a `Tests`): the tests run in a process of their own that the program
never ran in. Before the program runs (the hook installed, nothing untrusted yet), the runner
forks: the fork runs the program, the original waits until the program's runner sends it the
secret (the program ran to its end), then runs the tests' setup and the tests. The names the tests
use from the program are bound there as the program describes them: its functions as proxies that
call them in the program's process over a pipe, its modules imported afresh, its plain values
copied. Arguments and results cross as pickles of plain data (None, bool, numbers, str, bytes and
lists, tuples, sets and dicts of them, exact types; the tests' side unpickles no class). So a
completion can rebind builtins, modules (math.fabs) or the prompt's helpers, or return an object
whose `__eq__` says yes to anything, and none of it reaches the tests; only the tests' process
writes the verdict, and an early end of the program (before or during the tests) ends the tests'
process with the program's own status. What crosses is only plain data, so tests that pass the
program's own objects to it (instances of its classes) cannot run apart.
"""

from __future__ import annotations

import dataclasses
import functools
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

from llama_jax.eval import sandbox_child, sandbox_policy

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


@dataclasses.dataclass(frozen=True)
class Tests:
  """Tests run apart from the program (see "Tests apart" in the module docstring).

  code: the tests' source (asserts, a `check` function and its call).
  setup: source run before the tests in their own process: trusted code the tests rely on, such
    as a HumanEval prompt's helper functions, which the completion could otherwise rebind.
  calls: names the tests call in the program even where `setup` defines them (HumanEval's entry
    point, which its prompt defines without a body). Other names the tests use and neither the
    setup nor the builtins define are looked up in the program.
  """

  code: str
  setup: str = ""
  calls: tuple[str, ...] = ()


def run_python(program: str, *, tests: str | Tests | None = None, timeout_s: float = 10.0,
               memory_mb: int = 1024, max_processes: int = 0, file_size_mb: int = 64,
               namespaces: bool = True) -> ExecutionResult:
  """Runs `program` (Python source) in the sandbox described in the module docstring.

  tests: tests run apart from the program (a `Tests`, or its code alone; see "Tests apart" in
    the module docstring); the program passes only if it and its tests run to their end.
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
    tests_config = None
    if tests is not None:
      tests = tests if isinstance(tests, Tests) else Tests(tests)
      tests_config = {"calls": list(tests.calls)}
      for part, text in (("code", tests.code), ("setup", tests.setup)):
        tests_config[part] = os.path.join(workdir, f"tests_{part}.py")
        with open(tests_config[part], "w", encoding="utf-8") as f:
          f.write(text)
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
        "tests": tests_config,
        "workdir": workdir,
        "protected": _protected_roots(),
        "cpu_s": cpu_s,
        "memory_bytes": memory_mb << 20,
        "file_bytes": file_size_mb << 20,
        "max_processes": max_processes,
        "nproc_margin": _NPROC_MARGIN,
        "denied_code": DENIED_EXIT_CODE,
        "secret_fd": secret_read,
        "secret_bytes": len(secret),
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


def run_many(programs: Sequence[str], *, tests: Sequence[str | Tests | None] | None = None,
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
  """The code the child runs before (and around) the program: sandbox_child.py, sent as source so
  that the child need not import this package."""
  return Path(sandbox_child.__file__).read_text(encoding="utf-8")


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
