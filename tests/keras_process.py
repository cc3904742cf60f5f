"""One Python process per Keras backend for the whole test session.

Keras fixes its backend when it is first imported, so a test that compares the TensorFlow and torch
backends runs the other backend's side in another process. Starting one (torch, Keras, rnnshap and
their imports) costs 5-10 s on 2 cores; the tests share one per backend through the session fixture
``keras_process`` (tests/conftest.py) instead of starting their own.

A job is a script run as ``python -c script arg...`` would run it: a fresh namespace named
``__main__``, ``sys.argv == ["-c", *args]``; what it prints comes back, and an exception fails the test
with its traceback. In the worker each job starts a fresh Keras session (``keras.backend.clear_session()``:
layer names start over, as in a new process). On the backend the pytest process itself runs, the job
runs in this process (its Keras session left as it is).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import queue
import subprocess
import sys
import threading
import traceback
from pathlib import Path
from typing import IO, Any, Callable

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

#: the worker: reads one job (JSON) a line, answers one line on the process's original stdout;
#: anything else written to stdout (by C code too) goes to stderr
_WORKER = r"""
import contextlib, io, json, os, sys, traceback
answers = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
import keras
answers.write(json.dumps({"id": "hello", "backend": keras.backend.backend()}) + "\n")
answers.flush()
for line in sys.stdin:
    job = json.loads(line)
    printed = io.StringIO()
    sys.argv = ["-c", *job["argv"]]
    keras.backend.clear_session()
    try:
        with contextlib.redirect_stdout(printed):
            exec(compile(job["script"], "<job>", "exec"), {"__name__": "__main__"})
        answer = {"id": job["id"], "ok": True, "stdout": printed.getvalue()}
    except BaseException:
        answer = {"id": job["id"], "ok": False, "stdout": printed.getvalue(), "error": traceback.format_exc()}
    answers.write(json.dumps(answer) + "\n")
    answers.flush()
"""


def _run_here(script: str, args: tuple[str, ...]) -> str:
    printed = io.StringIO()
    argv = sys.argv
    sys.argv = ["-c", *args]
    try:
        with contextlib.redirect_stdout(printed):
            exec(compile(script, "<job>", "exec"), {"__name__": "__main__"})  # noqa: S102 - the test's own script
    except Exception:
        pytest.fail(f"the job failed on this process's Keras backend:\n{traceback.format_exc()[-3000:]}")
    finally:
        sys.argv = argv
    return printed.getvalue()


def _read_lines(stream: IO[str], lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line)
    lines.put("")


class KerasProcess:
    """Runs jobs on one Keras backend: in this process where it is this process's backend, else in
    one worker process started on first use and kept for the session."""

    def __init__(self, backend: str, log: Path) -> None:
        self.backend, self.log = backend, log
        self._worker: subprocess.Popen[str] | None = None
        self._log: IO[str] | None = None
        self._jobs = 0
        self._lines: queue.Queue[str] = queue.Queue()

    def _here(self) -> bool:
        import keras  # this process's backend: the one the other Keras tests run on

        return bool(keras.backend.backend() == self.backend)

    def _start(self) -> subprocess.Popen[str]:
        """The worker, started; its first line (its backend) is read before the first answer."""
        if self._log is not None:  # a restarted worker: the last one's log is done
            self._log.close()
        self._log = open(self.log, "w", encoding="utf-8")  # noqa: SIM115 - kept open for the session
        env = {
            **os.environ, "KERAS_BACKEND": self.backend, "TF_CPP_MIN_LOG_LEVEL": "3",
            "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path]),
        }
        worker = subprocess.Popen(
            [sys.executable, "-c", _WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True, env=env,
            cwd=ROOT,
        )
        # its answers, a line each, read by a thread (a timeout on a queue, not select() on a buffered pipe);
        # "" when it exits
        self._lines = queue.Queue()
        threading.Thread(target=_read_lines, args=(worker.stdout, self._lines), daemon=True).start()
        return worker

    def _answer(self, timeout: float) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            line = None
        if not line:
            assert self._worker is not None
            self._worker.kill()
            why = f"no answer in {timeout:g} s" if line is None else f"it exited with {self._worker.wait()}"
            self._worker = None
            pytest.fail(f"the Keras {self.backend} worker: {why}; its stderr ends:\n{self.log.read_text()[-3000:]}")
        return dict(json.loads(line))

    def submit(self, script: str, *args: str, timeout: float = 600) -> Callable[[], str]:
        """Start ``script`` (run with ``sys.argv == ["-c", *args]`` on this backend); the function returned
        waits for it and returns what it printed. In a worker it runs while this process goes on (the other
        backend's side of a test, say): a test submits, computes, then reads."""
        if self._here():
            printed = _run_here(script, args)
            return lambda: printed
        if self._worker is None or self._worker.poll() is not None:
            self._worker = self._start()
        worker = self._worker
        assert worker.stdin is not None
        self._jobs += 1
        job = self._jobs
        worker.stdin.write(json.dumps({"id": job, "script": script, "argv": list(args)}) + "\n")
        worker.stdin.flush()

        def result() -> str:
            answer = self._answer(timeout)
            while answer["id"] != job:  # the worker's greeting, or the answer of a job a failed test left unread
                if answer["id"] == "hello":
                    assert answer["backend"] == self.backend, answer
                answer = self._answer(timeout)
            if not answer["ok"]:
                pytest.fail(f"the job failed on the Keras {self.backend} backend:\n{answer['error'][-3000:]}")
            return str(answer["stdout"])

        return result

    def run(self, script: str, *args: str, timeout: float = 600) -> str:
        """What ``script`` prints, run with ``sys.argv == ["-c", *args]`` on this backend."""
        return self.submit(script, *args, timeout=timeout)()

    def close(self) -> None:
        if self._worker is not None:
            assert self._worker.stdin is not None
            self._worker.stdin.close()
            self._worker.kill()  # nothing is left to do there: no need to wait for its interpreter's shutdown
            self._worker.wait()
            if self._worker.stdout is not None:
                self._worker.stdout.close()
            self._worker = None
        if self._log is not None:
            self._log.close()


#: the other backend's side of a test that builds its models from shared source: ``sys.argv`` is (the path prefix
#: the models were saved under by :func:`save_rebuilt`, the source that defines ``BUILDERS``: name → a function
#: that builds the model). Every model is rebuilt there, given the saved weights and explained; its values are
#: saved at ``{path}.{name}.{backend}.npy``, and what it prints is JSON: per model, the engine's class and the
#: model's own outputs on ``x`` and on ``background`` (``(n, k)`` lists).
REBUILT_AND_EXPLAINED = """
import json, sys
import numpy as np, keras, rnnshap
exec(sys.argv[2])
found = {}
for name, build in BUILDERS.items():
    data = np.load(sys.argv[1] + f".{name}.npz")
    model = build()
    model.set_weights([data[f"w{i}"] for i in range(len(model.weights))])
    explainer = rnnshap.DeepExplainer(model, data["background"])
    np.save(sys.argv[1] + f".{name}.{keras.backend.backend()}.npy", explainer.shap_values(data["x"]))
    outputs = {}
    for key in ("x", "background"):
        out = np.asarray(keras.ops.convert_to_numpy(model(keras.ops.convert_to_tensor(data[key]))), np.float64)
        outputs[key] = out.reshape(len(out), -1).tolist()
    found[name] = {"engine": type(explainer.engine).__name__, "outputs": outputs}
print(json.dumps(found))
"""


def save_rebuilt(path: str, name: str, model: Any, background: np.ndarray, x: np.ndarray) -> None:
    """Save ``model``'s weights and its data for :data:`REBUILT_AND_EXPLAINED` (at ``{path}.{name}.npz``)."""
    np.savez(f"{path}.{name}.npz", background=background, x=x, **{f"w{i}": w for i, w in enumerate(model.get_weights())})
