"""A worker process of encode_file where there is no fork (macOS, Windows), run as a script by
support/corpus.py (_encode_in_fresh_interpreters).

It is its own __main__, so it imports only what encoding needs (the corpus reader, and the
tokenizer's module when its job is unpickled), never the script that asked for it (train.py and
torch). Its job comes pickled on stdin: the parent's sys.path, then (encode_pieces, typecode, path,
ranges). Its messages go pickled to stdout, ("ids", array) per range or ("error", exception).
"""
import signal

signal.signal(signal.SIGINT, signal.SIG_IGN)  # first: Ctrl-C is the parent's to handle; it ends us

import pickle  # noqa: E402
import sys  # noqa: E402


class PipeQueue:
    """The put of a queue, into a pipe: each message pickled and flushed, so the parent reads it at
    once. A full pipe makes put wait until the parent reads: the worker runs only a little ahead."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def put(self, message) -> None:
        pickle.dump(message, self.stream)
        self.stream.flush()


def main() -> None:
    job, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr   # a stray print must not land among the pickled arrays
    # The parent's sys.path (as multiprocessing's spawn passes it), before any import of ours: this
    # file's folder, which Python put first, is not a package root.
    sys.path[:] = pickle.load(job)
    from support.corpus import _encode_stripe
    encode_pieces, typecode, path, ranges = pickle.load(job)
    _encode_stripe(encode_pieces, typecode, path, ranges, PipeQueue(out))


if __name__ == "__main__":
    main()
