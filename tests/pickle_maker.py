"""Run by a worker's interpreter: read {name: source} JSON on stdin, print {name: base64 dill of `run`}.

Each source defines a function named `run`; it is pickled with recurse=True, as users do.
"""
import base64
import json
import sys

import dill

out = {}
for name, source in json.load(sys.stdin).items():
    namespace = {"__name__": "__main__"}
    exec(compile(source, "<%s>" % name, "exec"), namespace)
    out[name] = base64.b64encode(dill.dumps(namespace["run"], recurse=True)).decode("ascii")
json.dump(out, sys.stdout)
