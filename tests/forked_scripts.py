"""Run the project's scripts many times for the price of one `import torch`, and inject faults.

A test suite that starts `python train.py` thirty times spends most of its time importing torch
(3-4 s a process on a busy machine). This server imports the heavy modules once, then runs each
script in a forked child: a separate process that executes the real script file as `__main__`,
with its own argv, working folder, stdin, stdout and stderr files and exit code, exactly as
`python script.py ...` would after its imports. An exception that escapes the script is printed
as Python prints it (a "Traceback" on stderr, exit code 1), so tests can still say "no traceback".
The child leaves with os._exit after flushing stdout and stderr: the atexit handlers it inherited are
the server's, so they do not run, nor do the finalizers of objects still alive at the end.

Protocol: one JSON request per line on stdin, one JSON reply per line on stdout.
  request: {"script", "args", "cwd", "env", "stdin", "fault", "kill_on", "timeout"}
  reply:   {"returncode", "stdout", "stderr", "maxrss_kb", "timed_out"}
returncode is negative for a child ended by a signal (-9: SIGKILL), as in subprocess.

Faults (the "fault" field, a list; the child arms them before the script starts):
  ["half", FILE, STEP]       the save of FILE ("latest" or "best") for step STEP writes half its
                             bytes to the temporary file, then the process SIGKILLs itself
  ["unrenamed", FILE, STEP]  the save writes the whole temporary file, then SIGKILL before the rename
  ["enospc", FILE, STEP]     the save fails as on a full disk (the bytes go to /dev/full)
  ["vanish", FILE, STEP]     the save finds its folder gone (removed, with everything in it, just before)
  ["kill_at_step", N]        SIGKILL when the run draws the batch of its N-th training step
  ["sigint_at_step", N, K]   K SIGINTs (Ctrl-C pressed K times) when the run draws its N-th batch
  ["kill_on_print", TEXT]    SIGKILL the moment the script writes TEXT to stderr (no time to go on,
                             unlike kill_on, which the server notices some milliseconds later)
kill_on: the server SIGKILLs the child as soon as this text appears on the child's stderr.
"""
import io
import json
import os
import runpy
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROJECT_MODULES = ("Model_Params", "Model", "tokenizer")

# What every script run would import; done once here, before any fork. No torch operation runs in
# this process, so no thread pool exists that a fork could leave in a broken state.
sys.path.insert(0, str(REPO))
import numpy  # noqa: E402,F401
import torch  # noqa: E402
import torch.distributed  # noqa: E402,F401
import torch.nn.functional  # noqa: E402,F401
import torch.optim  # noqa: E402,F401
import torch._dynamo  # noqa: E402,F401  (the first AdamW imports it: ~2.5 s)
import tqdm  # noqa: E402,F401
try:
    import matplotlib  # noqa: E402
    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: E402
    matplotlib.pyplot.close(matplotlib.pyplot.subplots()[0])      # loads fonts and the backend
except ImportError:
    pass
import Model  # noqa: E402,F401
import tokenizer  # noqa: E402,F401


class KillOnPrint:
    """sys.stderr, but the process SIGKILLs itself once the text written so far holds `text`."""

    def __init__(self, stream, text: str):
        self.stream, self.text, self.tail = stream, text, ""

    def write(self, data: str) -> int:
        written = self.stream.write(data)
        self.tail = (self.tail + data)[-2 * len(self.text) - len(data):]
        if self.text in self.tail:
            self.stream.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return written

    def __getattr__(self, name):
        return getattr(self.stream, name)


def arm_faults(faults) -> None:
    """Wrap torch.save and torch.randint (as train.py calls them) and sys.stderr so the listed faults happen."""
    saves = [f for f in faults if f[0] in ("half", "unrenamed", "enospc", "vanish")]
    kill_at = [f[1] for f in faults if f[0] == "kill_at_step"]
    sigint_at = {f[1]: f[2] for f in faults if f[0] == "sigint_at_step"}
    for fault in faults:
        if fault[0] == "kill_on_print":
            sys.stderr = sys.__stderr__ = KillOnPrint(sys.stderr, fault[1])
    real_save, real_randint = torch.save, torch.randint
    draws = 0

    def save(obj, f, *args, **kwargs):
        name = Path(f).name if isinstance(f, (str, os.PathLike)) else ""
        for mode, which, step in saves:
            if name.startswith(f"weights-{which}.pth") and isinstance(obj, dict) and obj.get("step") == step:
                if mode == "enospc":
                    return real_save(obj, "/dev/full", *args, **kwargs)
                if mode == "vanish":
                    shutil.rmtree(Path(f).parent)
                    return real_save(obj, f, *args, **kwargs)
                if mode == "half":
                    buffer = io.BytesIO()
                    real_save(obj, buffer, *args, **kwargs)
                    data = buffer.getvalue()
                    with open(f, "wb") as out:
                        out.write(data[:len(data) // 2])
                else:
                    real_save(obj, f, *args, **kwargs)
                os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, f, *args, **kwargs)

    def randint(*args, **kwargs):
        nonlocal draws
        draws += 1
        if draws in kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        for _ in range(sigint_at.get(draws, 0)):
            os.kill(os.getpid(), signal.SIGINT)      # Python runs the handler before the next line
        return real_randint(*args, **kwargs)

    torch.save, torch.randint = save, randint


def child(request: dict, out_path: str, err_path: str) -> None:
    """In the forked process: become `python script args...` and never return."""
    code = 1
    try:
        os.chdir(request["cwd"])
        os.environ.update(request.get("env") or {})
        stdin_fd = os.open(request.get("stdin") or os.devnull, os.O_RDONLY)
        os.dup2(stdin_fd, 0)
        os.dup2(os.open(out_path, os.O_WRONLY | os.O_TRUNC), 1)
        os.dup2(os.open(err_path, os.O_WRONLY | os.O_TRUNC), 2)
        # Fresh text streams on the new descriptors, as the interpreter makes at start-up.
        sys.stdin = sys.__stdin__ = open(0, "r", encoding="utf-8", closefd=False)
        sys.stdout = sys.__stdout__ = open(1, "w", encoding="utf-8", closefd=False)
        sys.stderr = sys.__stderr__ = open(2, "w", encoding="utf-8", errors="backslashreplace",
                                           closefd=False, buffering=1)
        signal.signal(signal.SIGINT, signal.default_int_handler)     # as at start-up (SIGPIPE stays
        signal.signal(signal.SIGTERM, signal.SIG_DFL)                # ignored, as Python sets it)
        script = Path(request["script"]).resolve()
        sys.argv = [str(script), *request["args"]]
        sys.path[0] = str(script.parent)
        if script.parent != REPO:            # a copy of the scripts: import its modules, not ours
            for name in list(sys.modules):
                if name in PROJECT_MODULES or name == "support" or name.startswith("support."):
                    sys.modules.pop(name, None)
        arm_faults(request.get("fault") or [])
        try:
            runpy.run_path(str(script), run_name="__main__")
            code = 0
        except SystemExit as e:
            if e.code is None or isinstance(e.code, int):
                code = e.code or 0
            else:
                print(e.code, file=sys.stderr)
                code = 1
    except BaseException:                    # what the interpreter does with an uncaught exception
        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


def run(request: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="forked-run-") as tmp:
        out_path, err_path = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
        for path in (out_path, err_path):
            open(path, "w").close()
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            child(request, out_path, err_path)
        deadline = time.monotonic() + request.get("timeout", 120)
        kill_on, timed_out = request.get("kill_on"), False
        while True:
            done, status, usage = os.wait4(pid, os.WNOHANG)
            if done:
                break
            if kill_on and kill_on in Path(err_path).read_text(encoding="utf-8", errors="replace"):
                os.kill(pid, signal.SIGKILL)
                kill_on = None
            elif time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                timed_out = True
            time.sleep(0.005)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        read = lambda p: Path(p).read_text(encoding="utf-8", errors="replace")  # noqa: E731
        # ru_maxrss is in kilobytes on Linux, in bytes on macOS.
        maxrss_kb = usage.ru_maxrss // 1024 if sys.platform == "darwin" else usage.ru_maxrss
        return {"returncode": code, "stdout": read(out_path), "stderr": read(err_path),
                "maxrss_kb": maxrss_kb, "timed_out": timed_out}


def main() -> None:
    if not hasattr(os, "fork"):      # conftest skips the tests that use this server there
        sys.exit("forked_scripts.py needs os.fork, which this platform lacks")
    protocol_out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    for line in sys.stdin:
        protocol_out.write(json.dumps(run(json.loads(line))) + "\n")
        protocol_out.flush()


if __name__ == "__main__":
    main()
