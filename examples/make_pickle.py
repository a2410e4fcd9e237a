"""Pickle the example function run(x, y, z) with dill, in the Python that will run it.

    .venvs/py36/bin/python examples/make_pickle.py run36.pkl   # for the py36 worker
    .venvs/py38/bin/python examples/make_pickle.py run38.pkl   # for the py38 worker

Prints the file name; pass --base64 to print the base64 text for a JSON body instead.
"""
import base64
import sys

import dill


def helper(x, y):
    return x * y


def run(x, y, z):
    """The classic example: uses a helper, so it must be pickled with recurse=True."""
    import sys
    return {"sum": helper(x, y) + z, "python": "%d.%d" % sys.version_info[:2]}


def main(argv):
    data = dill.dumps(run, recurse=True)  # recurse: carry helper() along, not a reference to __main__
    if "--base64" in argv:
        sys.stdout.write(base64.b64encode(data).decode("ascii") + "\n")
        return 0
    path = argv[1] if len(argv) > 1 else "run.pkl"
    with open(path, "wb") as f:
        f.write(data)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
