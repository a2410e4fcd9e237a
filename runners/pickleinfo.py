"""Tell which Python made a dill pickle, without unpickling it.

Stdlib only and valid on Python 3.6: the supervisor uses it to refuse a
pickle meant for another Python at submit time, the runner to explain an
UnpicklingError. Walks the opcodes with pickletools, keeps a symbolic stack
and looks at each REDUCE whose callable is dill's ``_create_code``: the
length of its argument tuple and the type of its first item depend on the
layout of code objects, which changes between Python minor versions.
"""
import pickletools

# (number of code-object fields, type of the first one) -> Pythons with that layout
CODE_LAYOUTS = {
    (15, int): ("3.6", "3.7"),
    (16, int): ("3.8", "3.9"),
    (17, bytes): ("3.10",),
    (19, bytes): ("3.11", "3.12", "3.13"),
}


class NotAPickle(ValueError):
    """The bytes are not a well-formed pickle."""


class _Global(object):
    __slots__ = ("module", "name")

    def __init__(self, module, name):
        self.module, self.name = module, name


_MARK = object()
_MEMO_PUT = frozenset(["PUT", "BINPUT", "LONG_BINPUT"])
_MEMO_GET = frozenset(["GET", "BINGET", "LONG_BINGET"])


def code_layouts(data):
    """Set of (field count, first field type) for every code object dill pickled in data."""
    stack, memo, found = [], {}, set()

    def pop_to_mark():
        items = []
        while stack:
            item = stack.pop()
            if item is _MARK:
                return items[::-1]
            items.append(item)
        raise NotAPickle("MARK expected on the stack")

    def pop():
        if not stack:
            raise NotAPickle("stack underflow")
        return stack.pop()

    try:
        for op, arg, _pos in pickletools.genops(data):
            name = op.name
            if name == "MARK":
                stack.append(_MARK)
            elif name == "STOP":
                break
            elif name == "GLOBAL":
                module, _, attr = arg.partition(" ")
                stack.append(_Global(module, attr))
            elif name == "STACK_GLOBAL":
                attr, module = pop(), pop()
                stack.append(_Global(module, attr))
            elif name in _MEMO_PUT:
                memo[arg] = stack[-1] if stack else None
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1] if stack else None
            elif name in _MEMO_GET:
                stack.append(memo.get(arg))
            elif name == "TUPLE":
                stack.append(tuple(pop_to_mark()))
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                n = int(name[-1])
                items = [pop() for _ in range(n)]
                stack.append(tuple(items[::-1]))
            elif name == "EMPTY_TUPLE":
                stack.append(())
            elif name == "REDUCE":
                args, func = pop(), pop()
                if (isinstance(func, _Global) and func.name == "_create_code"
                        and func.module.startswith("dill") and isinstance(args, tuple) and args):
                    found.add((len(args), type(args[0])))
                stack.append(None)
            else:
                _generic(op, arg, stack, pop, pop_to_mark)
    except NotAPickle:
        raise
    except Exception as exc:  # genops raises ValueError, struct errors, ... on garbage
        raise NotAPickle(str(exc) or type(exc).__name__)
    return found


def _generic(op, arg, stack, pop, pop_to_mark):
    """Apply an opcode's declared stack effect, keeping constants it pushes."""
    before = op.stack_before
    if pickletools.markobject in before:
        pop_to_mark()
        for _ in range(before.index(pickletools.markobject)):
            pop()
    else:
        for _ in before:
            pop()
    after = op.stack_after
    if len(after) == 1 and not before and arg is not None:
        stack.append(arg)
    else:
        stack.extend([None] * len(after))


def pickle_pythons(data):
    """Tuple of "major.minor" strings that could have made this pickle, or None if it cannot be told."""
    if not data:
        raise NotAPickle("empty")
    candidates = None
    for layout in code_layouts(data):
        pythons = CODE_LAYOUTS.get(layout)
        if pythons is None:
            continue
        candidates = pythons if candidates is None else tuple(p for p in candidates if p in pythons)
    return candidates


def describe(pythons):
    """'Python 3.8 or 3.9' for a tuple from pickle_pythons."""
    if not pythons:
        return "an unknown Python"
    return "Python " + " or ".join(pythons)
