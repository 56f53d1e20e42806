"""Joining a Ray cluster, the Ray engine's preflight: before a run folder exists.

:func:`connect` joins the cluster at an address (``auto``, ``HOST:PORT``, ``ray://HOST:PORT``) or
starts a local one, and :func:`disconnect` leaves it when the run ends. An address that leads
nowhere is a one-line ``FaithprobeError`` naming it: the host is looked up and the port tried
first (``REACH_TIMEOUT_S``), for ray.init would wait minutes, printing, before giving up; a port
that answers but holds no cluster is given up after ``JOIN_TIMEOUT_S``. Ray's own lines (its
C++ core writes to file descriptor 2) never reach stderr. A local cluster starts in the main
thread (the processes it starts die with the thread that started them) and the command's
SIGTERM and SIGINT handlers stay in place: Ray's own would exit with code 15, where a cancelled
run records ``cancelled`` and exits 143.

:func:`ray_call` and :func:`wait_one` run the driver's Ray calls with SIGTERM and SIGINT only
noted while Ray's core holds the thread: an exception raised inside it (as the command's
handlers raise) comes out as a ``SystemError``, an internal error where the run was cancelled.
The signal is raised once the call returns, and waits are bounded (``POLL_S``) so it is soon.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import Any

from faithprobe.errors import Cancelled, FaithprobeError

__all__ = ["JOIN_TIMEOUT_S", "POLL_S", "REACH_TIMEOUT_S", "connect", "disconnect", "ray_call",
           "wait_one"]

REACH_TIMEOUT_S = 5.0  # an address's host found and its port answering, at most
POLL_S = 0.5  # a signal that arrives while the driver waits on Ray is raised within this
JOIN_TIMEOUT_S = 30.0  # ray.init joining a cluster that answered, at most


def _bounded(fn: Callable[[], Any], seconds: float) -> tuple[bool, Any, BaseException | None]:
    """``fn()`` in a daemon thread, waited for at most ``seconds``: (finished, result, error).
    A call still running is left behind (the process ends soon after: the run is refused)."""
    box: dict[str, Any] = {}

    def call() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=call, name="faithprobe-ray-connect", daemon=True)
    thread.start()
    thread.join(seconds)
    return not thread.is_alive(), box.get("result"), box.get("error")


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[Callable[[], None]]:
    """Ray's own lines (its C++ core writes to file descriptor 2, its Python to sys.stderr)
    go to a file that is dropped. The block may call the function it is given to keep them
    off for good (a Ray call left running): in a process whose stderr is its own (the
    command), descriptor 2 then stays on /dev/null and Python's stderr moves to a copy of the
    real one, for the run's own last line."""
    keep: list[bool] = []
    real = sys.stderr
    with tempfile.TemporaryFile() as sink, contextlib.redirect_stderr(io.StringIO()):
        try:
            real.flush()
        except (AttributeError, OSError, ValueError):
            pass
        try:
            saved = os.dup(2)
        except OSError:  # no descriptor 2: nothing to keep quiet
            yield lambda: None
            return
        os.dup2(sink.fileno(), 2)
        try:
            yield lambda: keep.append(True)
        finally:
            if keep and real is sys.__stderr__:  # the process's own stderr, not a capture
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, 2)
                os.close(null)
                real = sys.__stderr__ = open(saved, "w", buffering=1,  # noqa: SIM115
                                             encoding="utf-8", errors="backslashreplace")
            else:
                os.dup2(saved, 2)
                os.close(saved)
    sys.stderr = real


def _check_reachable(address: str) -> None:
    """``HOST:PORT`` (or ``ray://HOST:PORT``): the host is found and the port answers, within
    REACH_TIMEOUT_S seconds; ray.init would wait minutes, printing, before it gives up."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    host = host.strip("[]") or "127.0.0.1"

    def reach() -> None:
        with socket.create_connection((host, int(port)), timeout=REACH_TIMEOUT_S):
            pass

    done, _, exc = _bounded(reach, REACH_TIMEOUT_S + 1)
    why = (f"no answer within {REACH_TIMEOUT_S:g} s" if not done or isinstance(
        exc, TimeoutError) else f"host {host!r} not found" if isinstance(exc, socket.gaierror)
        else "nothing listens on that port" if isinstance(exc, ConnectionRefusedError)
        else f"{exc.strerror or exc}" if isinstance(exc, OSError) else None)
    if why is not None:
        raise FaithprobeError(f"cannot reach a Ray cluster there: {why}", source=address,
                              field="--ray-address")


def _signal_handlers(handlers: dict[int, Any] | None = None) -> dict[int, Any]:
    """SIGTERM's and SIGINT's handlers; given ``handlers``, set them back (main thread)."""
    out = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            out[sig] = signal.getsignal(sig)
            if handlers is not None and handlers.get(sig) is not None:
                signal.signal(sig, handlers[sig])
        except ValueError:  # not the main thread: nothing was set
            pass
    return out


def connect(address: str | None) -> bool:
    """Join the Ray cluster at ``address`` (or start a local one): the run's preflight, before
    its folder exists. Returns True when this call started (or joined) Ray, so the run ends it
    (:func:`disconnect`); False when the process had joined already. An address that leads
    nowhere, or a cluster that does not answer, is a FaithprobeError naming it."""
    from faithprobe.run.ray_engine import import_ray

    ray = import_ray()
    if ray.is_initialized():
        return False
    where = address or "a local cluster"
    if address is not None and address != "auto":
        _check_reachable(address)
    if address is not None and address.startswith("ray://"):
        try:
            import grpc  # noqa: F401 - Ray Client needs its client extra
        except ImportError:
            raise FaithprobeError("this Ray has no client for ray:// addresses (pip install "
                                  "'ray[client]'); give the cluster's HOST:PORT instead",
                                  source=address, field="--ray-address") from None
    def init() -> None:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)

    with _quiet_stderr() as for_good:
        if address is None:  # in this thread: the processes it starts die with their thread
            try:  # Ray's own SIGTERM handler (it exits with 15) is kept out: see ray_call
                ray_call(init)
                done, exc = True, None
            except Cancelled:
                disconnect()
                raise
            except Exception as error:  # noqa: BLE001 - said below, in one line
                done, exc = True, error
        else:  # joining starts nothing here: in a thread, bounded, and no signal handlers
            done, _, exc = _bounded(init, JOIN_TIMEOUT_S)
            if not done:  # it goes on trying, and printing, until the process ends
                for_good()
    if not done:
        raise FaithprobeError(f"Ray did not join {where} within {JOIN_TIMEOUT_S:g} s",
                              source=address, field="--ray-address")
    if exc is not None:
        text = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise FaithprobeError(f"cannot join the Ray cluster ({text})",
                              source=address or "local", field="--ray-address")
    return True


def disconnect() -> None:
    """Leave the cluster (a local one started by :func:`connect` stops), quietly."""
    from faithprobe.run.ray_engine import import_ray

    ray = import_ray()
    if ray.is_initialized():
        with _quiet_stderr():
            ray.shutdown()


def ray_call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` (a call into Ray) with SIGTERM and SIGINT noted, not raised, while
    it runs, and Ray kept from setting handlers of its own for them (``ray.init`` would set one
    that exits with 15 wherever the signal lands, and a half-done init aborts the interpreter's
    exit). A signal that arrived is raised after the call returns: ``Cancelled`` for SIGTERM,
    ``KeyboardInterrupt`` for SIGINT (see the module docstring)."""
    noted: list[int] = []
    ours = (signal.SIGTERM, signal.SIGINT)
    real = signal.signal
    try:
        saved = {sig: real(sig, lambda signum, frame: noted.append(signum)) for sig in ours}
    except ValueError:  # not the main thread: signals are not ours to handle here
        return fn(*args, **kwargs)

    def keep_ours(sig: int, handler: Any) -> Any:
        return signal.getsignal(sig) if sig in ours else real(sig, handler)

    signal.signal = keep_ours
    try:
        result = fn(*args, **kwargs)
    finally:
        signal.signal = real
        _signal_handlers(saved)
        if signal.SIGTERM in noted:
            raise Cancelled("SIGTERM")
        if noted:
            raise KeyboardInterrupt
    return result


def wait_one(ray: Any, refs: list[Any]) -> tuple[Any, list[Any]]:
    """The first of ``refs`` to finish and the rest (``ray.wait``), waiting in bounded slices so
    a signal is raised within ``POLL_S`` of its arrival."""
    while True:
        ready, rest = ray_call(ray.wait, refs, num_returns=1, timeout=POLL_S)
        if ready:
            return ready[0], rest
