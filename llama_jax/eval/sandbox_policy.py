"""What the sandbox denies a program, and why: the policy of llama_jax/eval/sandbox.py in one place.

sandbox_child.py enforces it: the tables below go to the child as data (its configuration), where
the audit hook (PEP 578) denies the events and modules named here, `_child_disarm` replaces the
functions named here by stubs, and the rules that need a path or a process (files, fork, kill)
are the hook's own code. The mindset is an allow-list: evaluation needs plain computation, so
anything that reaches outside the process, builds code from bytes or changes the interpreter is
denied, whether or not an attack through it is known.
"""

from __future__ import annotations

# Audit events denied outright, by event name.
DENIED_EVENTS = {
    "os.system": "runs a program",
    "os.exec": "runs a program",
    "os.spawn": "runs a program",
    "os.posix_spawn": "runs a program",
    "subprocess.Popen": "runs a program",
    "pty.spawn": "runs a program",
    "os.killpg": "signals a process group",
    "os.link": "links a file, which a later check would take for the program's own",
    "os.symlink": "links a file, which a later check would take for the program's own",
    "os.chdir": "changes the directory that relative paths are checked against",
    "resource.setrlimit": "lifts the sandbox's limits",
    "resource.prlimit": "lifts the sandbox's limits",
    "gc.get_objects": "walks the collector's objects, which lead to the hook's own state",
    "gc.get_referrers": "walks the collector's objects, which lead to the hook's own state",
    "gc.get_referents": "walks the collector's objects, which lead to the hook's own state",
    "sys._current_frames": "reaches other threads' frames",
    "sys.settrace": "a trace function can skip the tests' lines or rebind what they call",
    "sys.setprofile": "a profile function can rebind what the tests call",
    "code.__new__": "builds code by hand (bytecode is not memory-safe)",
    "marshal.loads": "turns bytes into code (bytecode is not memory-safe)",
    "marshal.load": "turns bytes into code (bytecode is not memory-safe)",
    "cpython.PyInterpreterState_New": "a subinterpreter has no audit hook",
}

# Audit events denied by the start of their name.
DENIED_EVENT_PREFIXES = {
    "socket.": "the network",
    "ctypes.": "foreign code, which can switch the hook off",
    "syslog.": "writes outside the program's directory",
    "sandbox.": "a function the sandbox replaced (DISARMED)",
}

# Modules that may not be imported (or created fresh through the import machinery), by the last
# part of their name; names starting with "_test" too (CPython's test helpers poke at internals).
DENIED_MODULES = {
    "ctypes": "foreign code, which can switch the hook off",
    "_ctypes": "foreign code, which can switch the hook off",
    "cffi": "foreign code, which can switch the hook off",
    "_cffi_backend": "foreign code, which can switch the hook off",
    "posix": "a fresh copy gives back the functions DISARMED replaced",
    "_signal": "a fresh copy gives back the functions DISARMED replaced",
    "_posixsubprocess": "fork and exec without an audit event",
    "_xxsubinterpreters": "a subinterpreter has no audit hook",
    "_xxinterpchannels": "a subinterpreter has no audit hook",
    "readline": "writes its history file from C, without an audit event",
    "_posixshmem": "POSIX shared memory, outside the program's directory",
    "_dbm": "files from C, without an audit event",
    "_gdbm": "files from C, without an audit event",
    "_tkinter": "Tcl runs commands and files from C",
    "spwd": "the shadow password file",
    "_sqlite3": "ATTACH and VACUUM INTO write files anywhere, without an audit event",
}

# Functions that raise no audit event, replaced before the program runs by stubs that raise a
# "sandbox.<module>.<name>" event (denied above). os and signal copy theirs from posix and _signal.
_PROCESS = ("mkfifo", "mknod", "chroot", "pidfd_open", "setsid", "setpgid", "setpgrp",
            "setpriority", "sched_setaffinity", "sched_setscheduler", "sched_setparam")
DISARMED = {
    "posix": _PROCESS,  # FIFOs and devices anywhere, leaving the process group, scheduling others
    "os": _PROCESS,
    "_signal": ("pidfd_send_signal",),  # signals another process through a pidfd
    "signal": ("pidfd_send_signal",),
    "_posixsubprocess": ("fork_exec",),  # behind subprocess and multiprocessing
}

# Events allowed only on paths inside the program's directory (and /dev/null).
WRITE_EVENTS = ("os.remove", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.utime",
                "os.truncate", "os.setxattr", "os.removexattr", "os.chflags", "os.lchflags",
                "shutil.rmtree")
# Events allowed only outside the protected directories (the project, the caller's).
READ_EVENTS = ("os.listdir", "os.scandir", "os.getxattr", "os.listxattr")
# The interpreter finalizing, which clears audit hooks: the child ends at once instead.
SHUTDOWN_EVENTS = ("cpython.PyInterpreterState_Clear", "cpython._PySys_ClearAuditHooks")


def as_config() -> dict:
  """The tables as the child's configuration (literals only)."""
  return {"events": DENIED_EVENTS, "event_prefixes": DENIED_EVENT_PREFIXES,
          "modules": DENIED_MODULES, "disarmed": DISARMED, "write_events": WRITE_EVENTS,
          "read_events": READ_EVENTS, "shutdown_events": SHUTDOWN_EVENTS}
