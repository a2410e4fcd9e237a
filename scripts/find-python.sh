#!/usr/bin/env bash
# Prints the path of a working Python X.Y interpreter, or one clear line on stderr and exit 1.
# Order: $PYTHONXY, a pythonX.Y on PATH that actually runs, pyenv's newest installed X.Y.*.
set -u
want="$1"                     # e.g. 3.6
var="PYTHON${want/./}"        # e.g. PYTHON36
works() { "$1" -c "import sys; sys.exit(0 if '%d.%d' % sys.version_info[:2] == '$want' else 1)" >/dev/null 2>&1; }
if [ -n "${!var:-}" ]; then
  if works "${!var}"; then echo "${!var}"; exit 0; fi
  echo "error: $var=${!var} is not a working Python $want interpreter" >&2; exit 1
fi
if p=$(command -v "python$want" 2>/dev/null) && works "$p"; then echo "$p"; exit 0; fi
root=$(pyenv root 2>/dev/null) || root="${PYENV_ROOT:-$HOME/.pyenv}"  # pyenv itself need not be on PATH
if [ -d "$root/versions" ]; then
  for p in $(ls -d "$root/versions/$want".*/bin/python 2>/dev/null | sort -V -r); do
    if works "$p"; then echo "$p"; exit 0; fi
  done
fi
echo "error: no working Python $want found: install it (e.g. 'pyenv install $want') or set $var=/path/to/python$want" >&2
exit 1
