"""Source of the task functions the tests pickle in real Python 3.6 / 3.8 (each defines `run`)."""

SOURCES = {
    "add": "def run(x, y, z):\n    return x + y + z\n",
    "version": "def run():\n    import sys\n    return sys.version\n",
    "boom": "def run(x):\n    print('about to fail with', x)\n    raise ValueError('bad x: %r' % (x,))\n",
    "exit": "def run():\n    import os\n    os._exit(7)\n",
    "segfault": "def run():\n    import ctypes\n    ctypes.string_at(0)\n",
    "sleep": "def run(s):\n    import time\n    time.sleep(s)\n    return s\n",
    "not_json": "def run():\n    return {1, 2, 3}\n",
    "prints": ("def run():\n    import os, sys\n    print('to stdout')\n    sys.stdout.flush()\n"
               "    print('to stderr', file=sys.stderr)\n    os.write(2, b'from C level\\n')\n    return 'printed'\n"),
    # appends name to path when it starts: the order tasks really ran in
    "mark": "def run(path, name):\n    with open(path, 'a') as f:\n        f.write(name + '\\n')\n    return name\n",
    # holds its slot until path exists (bounded), so tests control when it ends
    "wait_for_file": ("def run(path, limit_s=60):\n    import os, time\n    end = time.time() + limit_s\n"
                      "    while not os.path.exists(path) and time.time() < end:\n        time.sleep(0.01)\n"
                      "    return os.path.exists(path)\n"),
    # writes its pid to path, then sleeps: lets a test see the process a cancel must kill
    "pid_then_sleep": ("def run(path, s=60):\n    import os, time\n    with open(path + '.tmp', 'w') as f:\n"
                       "        f.write(str(os.getpid()))\n    os.rename(path + '.tmp', path)\n"
                       "    time.sleep(s)\n    return 'slept'\n"),
    # sleeps, then returns the pid of the process that ran it: tells attempts apart
    "slow_pid": "def run(s):\n    import os, time\n    time.sleep(s)\n    return os.getpid()\n",
    # appends name to path after sleeping s seconds, or exits its process first: a step of a batch of short tasks
    "step": ("def run(path, name, sleep_s=0.0, exit_code=None):\n    import os, time\n    time.sleep(sleep_s)\n"
             "    if exit_code is not None:\n        os._exit(exit_code)\n"
             "    with open(path, 'a') as f:\n        f.write(name + '\\n')\n    return name\n"),
    # the chaos workload: a short random sleep, then the token it was given
    "token": ("def run(token, sleep_s=0.0, path=None):\n    import time\n    time.sleep(sleep_s)\n"
              "    if path:\n        with open(path, 'a') as f:\n            f.write(token + '\\n')\n    return token\n"),
}
