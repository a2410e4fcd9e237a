"""Pickle an example task function with dill, in the Python that will run it.

    .venvs/py36/bin/python examples/make_pickle.py run36.pkl          # run(x, y, z) for the py36 worker
    .venvs/py38/bin/python examples/make_pickle.py run38.pkl          # the same for the py38 worker
    .venvs/py38/bin/python examples/make_pickle.py --slow slow38.pkl  # run(seconds): sleeps, to try cancel

Prints the file name; pass --base64 to print the base64 text for a JSON body instead.
Runs unchanged on Python 3.6 and newer.
"""
import base64
import sys

import dill


def helper(x, y):
    return x * y


def run(x, y, z):
    """The classic example: uses a helper, so it must be pickled with recurse=True."""
    import sys
    print("computing with", x, y, z)
    if z < 0:
        raise ValueError("z must not be negative, got %r" % (z,))
    return {"sum": helper(x, y) + z, "python": "%d.%d" % sys.version_info[:2]}


def slow(seconds):
    """Sleeps: something to cancel while it runs."""
    import time
    time.sleep(seconds)
    return seconds


def main(argv):
    args = [a for a in argv[1:] if not a.startswith("--")]
    fn = slow if "--slow" in argv else run
    data = dill.dumps(fn, recurse=True)  # recurse: carry helper() along, not a reference to __main__
    if "--base64" in argv:
        sys.stdout.write(base64.b64encode(data).decode("ascii") + "\n")
        return 0
    path = args[0] if args else "run.pkl"
    with open(path, "wb") as f:
        f.write(data)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
