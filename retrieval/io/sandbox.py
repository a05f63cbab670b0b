"""Read untrusted files in a reader process: a crash in a C library (ITK, an image codec, HDF5) or a read that never
returns costs that one file, not the run or the server that asked.

A `Sandbox` keeps one reader process, forked from multiprocessing's fork server, which imported the readers once: a
fresh reader starts in about 10 ms and never inherits the caller's threads (torch's, ONNX Runtime's, a web server's).
`call(fn, *args, seconds=…)` runs a picklable function there and returns what it returns or raises what it raises.
When the process dies (a signal, the OOM killer) or has not answered within `seconds` of wall time, it is killed,
`ReaderCrashed` says why in one line, and the next call starts a new one; so does a reader that reaches its memory limit
(`memory`, RLIMIT_DATA). Objects given to `Sandbox(*shared)` (an Identity with a large manifest) travel to each reader
process once and are passed by reference afterwards.
"""

from __future__ import annotations

import ctypes
import itertools
import multiprocessing
import os
import signal
import sys
import threading
import time
import types
import warnings
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Callable, Iterable, Iterator, TypeVar

from retrieval.io.limits import size_text

T = TypeVar("T")
# what the fork server imports once, so a reader starts warm: the readers and the libraries they import on first use
_PRELOAD = ["retrieval.io.archive", "retrieval.scan", "pydicom.pixels", "pydicom.encaps", "nibabel", "PIL.Image", "SimpleITK"]
_CRASH_SIGNALS = ("SIGSEGV", "SIGBUS", "SIGABRT", "SIGFPE", "SIGILL")
_STARTING = threading.Lock()  # one start at a time: each hides the caller's __main__ for its duration


class ReaderCrashed(Exception):
    """The reader process died, or was stopped at its deadline, while reading; the message says how."""


@dataclass(frozen=True)
class _Shared:
    """A reference to the n-th shared object, sent in place of the object itself."""

    index: int


def _context() -> Any:
    """The fork server's context (spawn where a platform has none), the readers preloaded into it."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)
    return context


@contextmanager
def _without_main() -> Iterator[None]:
    """Start a reader without the caller's __main__: multiprocessing would run the caller's script again in it (or fail on
    `python -`'s "<stdin>"), and the reader only runs functions of importable modules."""
    with _STARTING:
        main = sys.modules["__main__"]
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            yield
        finally:
            sys.modules["__main__"] = main


def warm() -> None:
    """Start the fork server now (about half a second, once per process): a server's first query then does not wait."""
    from multiprocessing import forkserver

    if _context().get_start_method() == "forkserver":
        try:
            forkserver.ensure_running()
        except OSError:  # the first sandboxed read says why, and reads in this process
            pass


def _die_with_caller() -> None:
    """Make a reader stuck in a C call end when its caller is killed. multiprocessing hands every child of the fork
    server a copy of the caller's keep-alive pipe to it (so children could fork in turn; a reader never does), which
    keeps the fork server, the reader's parent, running after the caller dies: close that copy, and on Linux have
    the kernel kill this reader when the fork server ends (PR_SET_PDEATHSIG)."""
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    alive = getattr(server, "_forkserver_alive_fd", None)
    if isinstance(alive, int):
        os.close(alive)
        server._forkserver_alive_fd = None  # type: ignore[union-attr]
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def _cap_memory(memory: int | None) -> None:
    """Bound this reader's data memory (RLIMIT_DATA: heap and private mappings, where numpy's arrays live), so a codec
    that allocates without end fails here instead of waking the OOM killer, which may pick another process."""
    if memory is None:
        return
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_DATA, (memory, memory))
    except (ImportError, ValueError, OverflowError, OSError):  # no such limit here, or a limit past what the kernel takes
        pass


def _serve(connection: Connection, shared: tuple[Any, ...], memory: int | None) -> None:
    """The reader process: answer (fn, args) requests with (True, result) or (False, exception) until the caller hangs up."""
    _die_with_caller()
    _cap_memory(memory)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to handle; it then stops this process
    while True:
        try:
            fn, args = connection.recv()
        except (EOFError, OSError):
            return
        args = [shared[a.index] if isinstance(a, _Shared) else a for a in args]
        try:
            outcome = (True, fn(*args))
        except MemoryError:
            outcome = (False, ReaderCrashed(f"the reader process reached its memory limit ({size_text(memory or 0)}) while reading it"))
        except Exception as exc:  # noqa: BLE001 - the caller gets the reader's exception as its own
            outcome = (False, exc)
        try:
            connection.send(outcome)
        except Exception as exc:  # noqa: BLE001 - a result or exception that does not pickle
            connection.send((False, RuntimeError(f"the reader's answer could not be sent back ({type(exc).__name__}: {exc})")))


def _death(exitcode: int | None) -> str:
    """How a reader process ended, in words: the signal that killed it and what that usually means."""
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        cause = " (a crash in a C library)" if name in _CRASH_SIGNALS else " (out of memory, or killed from outside)" if name == "SIGKILL" else ""
        return f"the reader process was killed by {name} while reading it{cause}"
    return f"the reader process exited (status {exitcode}) while reading it"


class Sandbox:
    """One reader process at a time, restarted after a crash; use as a context manager, or call `close()`."""

    def __init__(self, *shared: Any, memory: int | None = None) -> None:
        self.shared, self.memory = shared, memory
        self._refs = {id(value): _Shared(n) for n, value in enumerate(shared)}  # what a request sends in place of a shared object
        self._process: Any = None
        self._connection: Connection | None = None
        self._mapping = False  # a `map` has requests queued: a `call` now would read their answers
        self._inline = False  # no reader process can be started here: calls run in this process

    def call(self, fn: Callable[..., T], *args: Any, seconds: float) -> T:
        """`fn(*args)` in the reader process, within `seconds` of wall time; raises ReaderCrashed when it dies or overruns."""
        if self._mapping:
            raise RuntimeError("Sandbox.call during a map over the same sandbox: finish the map first, or use a second Sandbox")
        if not self._ready():
            return fn(*args)
        self._send(fn, args)
        outcome = self._receive(time.monotonic() + seconds, seconds)
        if isinstance(outcome, ReaderCrashed):
            raise outcome
        return outcome  # type: ignore[no-any-return]

    def map(self, fn: Callable[..., T], items: Iterable[Any], *args: Any, seconds: float, window: int = 16) -> Iterator[tuple[Any, T | ReaderCrashed]]:
        """(item, fn(item, *args)) for each item in order, run in the reader process with up to `window` small requests
        queued there, so neither side waits for the other. Each item gets `seconds` from the answer before it; one whose
        reader died or overran gets its ReaderCrashed, and the items queued behind it go to a fresh reader."""
        if not self._ready():
            yield from ((item, fn(item, *args)) for item in items)
            return
        source, queued = iter(items), deque[Any]()
        self._mapping = True
        try:
            since = time.monotonic()
            while True:
                for item in itertools.islice(source, window - len(queued)):
                    queued.append(item)
                    self._send(fn, (item, *args))
                if not queued:
                    return
                outcome = self._receive(since + seconds, seconds)
                since = time.monotonic()
                item = queued.popleft()
                if isinstance(outcome, ReaderCrashed):
                    for later in queued:  # lost with the dead reader: a fresh one reads them
                        self._send(fn, (later, *args))
                yield item, outcome
        finally:
            self._mapping = False
            if queued:  # left early (an exception, or the caller stopped): answers still queued must not reach the next call
                self._stop()

    def _ready(self) -> bool:
        """Whether calls go to a reader process: one runs, or starts now; False (with a warning) where none can start."""
        if self._process is None and not self._inline:
            try:
                self._start()
            except OSError as exc:  # no fork server here (a changed effective user, no temp folder): read in this process
                self._inline = True
                warnings.warn(f"no reader process can be started ({exc}); files are read in this process, where a crash "
                              "in a C library ends the run", RuntimeWarning, stacklevel=3)
        return not self._inline

    def _send(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        """Queue a request to the reader process, starting one if none runs; a reader that just died is found by `_receive`."""
        if self._process is None:
            self._start()
        assert self._connection is not None
        try:
            self._connection.send((fn, [self._refs.get(id(arg), arg) for arg in args]))
        except OSError:  # BrokenPipeError: the reader died reading an earlier request
            pass

    def _receive(self, deadline: float, seconds: float) -> Any:
        """The next answer: the result, the reader's exception raised, or a ReaderCrashed when it died or passed `deadline`."""
        assert self._connection is not None
        try:
            answered = self._connection.poll(max(0.0, deadline - time.monotonic()))
            outcome = self._connection.recv() if answered else None
        except (EOFError, OSError):
            return ReaderCrashed(_death(self._stop()))
        except BaseException:  # KeyboardInterrupt while waiting: the reader goes with the caller
            self._stop()
            raise
        if outcome is None:
            self._stop()
            return ReaderCrashed(f"reading did not finish within {seconds:g} s of wall time; the reader process was stopped")
        done, value = outcome
        if not done and isinstance(value, ReaderCrashed):  # out of memory: that reader may be in any state; start afresh
            self._stop()
            return value
        if not done:
            raise value
        return value

    def _start(self) -> None:
        """Start a reader process holding the shared objects."""
        context = _context()
        ours, theirs = context.Pipe()
        process = context.Process(target=_serve, args=(theirs, self.shared, self.memory), daemon=True, name="retrieval-reader")
        try:
            with _without_main():
                process.start()
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._process, self._connection = process, ours

    def _stop(self) -> int | None:
        """Kill the reader process (if it still runs), reap it and return its exit code."""
        process, self._process = self._process, None
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        if process is None:
            return None
        if process.is_alive():
            process.kill()
        process.join()
        return process.exitcode  # type: ignore[no-any-return]

    def close(self) -> None:
        """Hang up: the reader process, idle between calls, then ends by itself and its fork server reaps it, so closing
        never waits for it (7 ms a query in `serve`, which reads each upload in a reader of its own)."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        self._process = None

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
