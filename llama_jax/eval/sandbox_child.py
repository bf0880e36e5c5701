"""The sandbox's child side: what runs inside the sandboxed interpreter, around the program.

sandbox.py sends this file's source to a fresh `python -I -S -B` and calls `_child_main(config)`;
so every function here imports what it uses itself and nothing from this package. In order:
`_child_main` sets the limits (`_child_set_limits`), replaces the functions that raise no audit
event (`_child_disarm`), installs the audit hook (`_child_audit_hook`, which enforces
sandbox_policy.py's tables and the rules that need a path or a process) and runs the program
(`_child_run`); with tests apart, `_child_run` forks, the program's process serves the tests' calls
(`_child_serve`) and the tests' process binds what they use of the program (`_child_link`).
"""

from __future__ import annotations


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
      tests = {"calls": config["tests"]["calls"]}
      for part in ("code", "setup"):
        with open(config["tests"][part], encoding="utf-8") as f:
          tests[part] = f.read()
    sys.argv = [config["program"]]
    # No bytecode is read: imports compile the standard library from source (where nothing
    # unmarshals bytes), so the hook can deny marshal, the one way to turn bytes into code.
    sys.pycache_prefix = config["workdir"] + "/.no-bytecode"
    sys.addaudithook(_child_audit_hook(config))
    exit_code = _child_run(source, config["program"], tests, config["secret_bytes"])
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
  tasks = (_child_count_tasks() + config["max_processes"] + config["nproc_margin"]
           + (config["tests"] is not None))  # the tests' process
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
  write, close, exit_now, lstat, stat, readlink, getpid = (
      posix.write, posix.close, posix._exit, posix.lstat, posix.stat, posix.readlink, posix.getpid)
  str_, bytes_, int_, type_, repr_ = str, bytes, int, type, repr
  base_exception, os_error, type_error = BaseException, OSError, TypeError
  encoding = sys.getfilesystemencoding()
  workdir = config["workdir"]
  protected = tuple(config["protected"])
  denied_code = config["denied_code"]
  forks_left = [config["max_processes"]]
  main_pid = [getpid()]  # the program's process, once the runner has split
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

  # Tests apart (run_python's `tests`): the runner forks once before the program runs; the
  # original process runs the tests, the fork the program. The hook learns each process's part
  # from the runner's events: the program's process reports its end on the replies pipe (the
  # tests' process starts only when the secret arrives there), the tests' process on verdict_fd.
  import _thread

  get_ident, checking = _thread.get_ident, [None]
  part, splitting, replies_fd = [None], [False], [None]

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
      if splitting[0]:
        splitting[0] = False
        return None
      if getpid() != main_pid[0] or forks_left[0] <= 0:
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
    if event == "llama_jax.sandbox.split":
      if part[0] is not None or splitting[0] or not from_runner():
        return "starting the tests' process from the program"
      splitting[0] = True  # the fork that follows is the runner's own
      part[0] = "tests"
      return None
    if event == "llama_jax.sandbox.program":
      if part[0] != "tests" or replies_fd[0] is not None or not from_runner():
        return "taking the program's part from the program"
      part[0], replies_fd[0], main_pid[0] = "program", args[0], getpid()
      close(verdict_fd)  # only the tests' process gives the verdict
      return None
    if event == "llama_jax.sandbox.ready":
      if part[0] != "tests" or reported[0] or args[0] != secret or not from_runner():
        return "a report of the program's end that its runner did not write"
      return None
    if event == "llama_jax.sandbox.completed":
      if reported[0] or not from_runner():
        return "reporting the program's end from the program"
      reported[0] = True
      write(replies_fd[0] if part[0] == "program" else verdict_fd, secret)
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


def _child_run(source: str, filename: str, tests: dict | None, secret_bytes: int) -> int:
  """Runs the program as __main__ and returns the exit status the interpreter would have given.
  With `tests` (code, setup, calls: see Tests), forks first: the fork runs the program and then
  serves the tests' calls; this process waits for the program's end, runs the tests and returns
  their status (or, where the program ended first, the program's)."""
  import atexit
  import builtins
  import posix
  import sys

  # Bound before the program runs, which could rebind builtins and this module's globals.
  report, run, code = sys.audit, exec, compile(source, filename, "exec")
  serve = None
  if tests is not None:
    tests_code = compile(tests["code"], "tests.py", "exec")
    setup_code = compile(tests["setup"], "tests_setup.py", "exec")
    requests, replies = posix.pipe(), posix.pipe()
    report("llama_jax.sandbox.split")
    program_pid = posix.fork()
    if program_pid:
      posix.close(requests[0])
      posix.close(replies[1])
      ready = _child_read(replies[0], secret_bytes)
      if len(ready) < secret_bytes:  # the program ended without running to its end
        _child_end_like(program_pid)
      report("llama_jax.sandbox.ready", ready)
      try:
        namespace = {"__name__": "__main__", "__builtins__": builtins}
        run(setup_code, namespace)
        _child_link(namespace, tests_code, tests["calls"], requests[1], replies[0], program_pid)
        run(tests_code, namespace)
      except BaseException as error:
        error.__traceback__ = error.__traceback__.tb_next
        sys.excepthook(type(error), error, error.__traceback__)
        return 1
      report("llama_jax.sandbox.completed")
      return 0
    posix.close(requests[1])
    posix.close(replies[0])
    report("llama_jax.sandbox.program", replies[1])
    serve = _child_serve(requests[0], replies[1])
  module = type(sys)("__main__")
  module.__file__ = filename
  module.__builtins__ = builtins
  sys.modules["__main__"] = module
  try:
    run(code, module.__dict__)
    exit_code = 0
    report("llama_jax.sandbox.completed")  # the audit hook's verdict: ran to its end
    if serve is not None:
      serve(module.__dict__)
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


def _child_read(fd: int, size: int) -> bytes:
  """`size` bytes from `fd`, or fewer at end of file."""
  import posix

  data = b""
  while len(data) < size:
    chunk = posix.read(fd, min(size - len(data), 1 << 20))
    if not chunk:
      break
    data += chunk
  return data


def _child_write(fd: int, data: bytes) -> None:
  import posix

  view = memoryview(data)
  while view:
    view = view[posix.write(fd, view):]


def _child_serve(requests_fd: int, replies_fd: int):
  """The program's side of the tests' calls (bound before the program runs): each request,
  length-prefixed and pickled by the tests' process, asks what some names are ("describe") or
  calls one ("call"); each reply is pickled back. Returns when the tests' process closes its end."""
  import pickle

  dumps, loads, read, write = pickle.dumps, pickle.loads, _child_read, _child_write
  type_, callable_, str_ = type, callable, str
  module_type = type(pickle)

  def describe(namespace, names):
    found = {}
    for name in names:
      if name in namespace:
        value = namespace[name]
        if type_(value) is module_type:
          found[name] = ("module", value.__name__)
        else:
          found[name] = ("call",) if callable_(value) else ("value", value)
    return found

  def serve(namespace):
    while len(header := read(requests_fd, 8)) == 8:
      request = loads(read(requests_fd, int.from_bytes(header, "little")))
      try:
        if request[0] == "describe":
          reply = ("ok", describe(namespace, request[1]))
        elif request[1] not in namespace:
          reply = ("raised", f"NameError: name {request[1]!r} is not defined by the program")
        else:
          reply = ("ok", namespace[request[1]](*request[2], **request[3]))
        payload = dumps(reply, protocol=5)
      except Exception as error:  # SystemExit and the like end the program: the tests see that
        try:
          text = type_(error).__name__ + ": " + str_(error)[:1000]
        except Exception:
          text = "an exception that cannot be shown"
        payload = dumps(("raised", text), protocol=5)
      write(replies_fd, len(payload).to_bytes(8, "little") + payload)

  return serve


def _child_link(namespace: dict, tests_code, calls, requests_fd: int, replies_fd: int,
                program_pid: int) -> None:
  """Binds in the tests' `namespace` what they use of the program: its functions as proxies
  that call them in the program's process, its modules imported here afresh, its plain values
  copied. Arguments and results cross as pickles of plain data only (exact types; the tests'
  side unpickles no class), so no object of the program's can reach the tests."""
  import builtins
  import io
  import pickle

  plain_types = (bool, int, float, complex, str, bytes, type(None), list, tuple, dict, set,
                 frozenset)

  def plain(value):
    pending = [value]
    while pending:
      item = pending.pop()
      if type(item) not in plain_types:
        return False
      if type(item) is dict:
        pending.extend(item.keys())
        pending.extend(item.values())
      elif type(item) in (list, tuple, set, frozenset):
        pending.extend(item)
    return True

  class PlainUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
      if (module, name) == ("builtins", "complex"):
        return complex
      raise pickle.UnpicklingError(f"the program sent an object of class {module}.{name}")

  def ask(request):
    payload = pickle.dumps(request, protocol=5)
    try:
      _child_write(requests_fd, len(payload).to_bytes(8, "little") + payload)
      header = _child_read(replies_fd, 8)
      body = _child_read(replies_fd, int.from_bytes(header, "little")) if len(header) == 8 else b""
    except BrokenPipeError:
      header = body = b""
    if len(header) < 8 or len(body) < int.from_bytes(header, "little"):
      _child_end_like(program_pid)  # the program ended while the tests ran; does not return
    kind, value = PlainUnpickler(io.BytesIO(body)).load()
    if kind == "raised" and type(value) is str:
      raise RuntimeError("the program raised " + value)
    if kind != "ok" or not plain(value):
      raise TypeError("the program's reply is not plain data (None, bool, numbers, str, bytes "
                      "and lists, tuples, sets and dicts of them)")
    return value

  def proxy(name):
    def call(*args, **kwargs):
      if not plain(args) or not plain(kwargs):
        raise TypeError(f"{name}() runs in the program's process: its arguments must be plain "
                        "data")
      return ask(("call", name, args, kwargs))

    call.__name__ = call.__qualname__ = name
    return call

  names, codes = set(calls), [tests_code]
  while codes:
    code = codes.pop()
    names.update(code.co_names)
    codes.extend(c for c in code.co_consts if type(c) is type(tests_code))
  wanted = sorted(name for name in names
                  if name in calls or (name not in namespace and not hasattr(builtins, name)))
  for name, found in ask(("describe", wanted)).items():
    if name in calls or found[0] == "call":
      namespace[name] = proxy(name)
    elif found[0] == "module":
      __import__(found[1])
      namespace[name] = __import__("sys").modules[found[1]]
    else:
      namespace[name] = found[1]
  for name in calls:
    namespace[name] = proxy(name)


def _child_end_like(pid: int) -> None:
  """Waits for the program's process and ends this one as it ended, with its exit status or by
  its signal; does not return."""
  import _signal
  import posix

  _, status = posix.waitpid(pid, 0)
  if posix.WIFSIGNALED(status):
    if posix.WTERMSIG(status) != _signal.SIGKILL:  # whose action cannot be changed
      _signal.signal(posix.WTERMSIG(status), _signal.SIG_DFL)
    posix.kill(posix.getpid(), posix.WTERMSIG(status))
  posix._exit(posix.WEXITSTATUS(status) if posix.WIFEXITED(status) else 1)


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
