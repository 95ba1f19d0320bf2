"""The declared public API: every name in lguest.__all__ and lguest.testing.__all__
exists, `import lguest` stays cheap, and Hypothesis is imported only by lguest.testing's
parts that need it."""

import os
import subprocess
import sys

import lguest
import lguest.testing

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def python(code):
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_every_public_name_resolves_and_says_what_it_is():
    for module in (lguest, lguest.testing):
        assert module.__all__ == sorted(set(module.__all__), key=module.__all__.index)
        for name in module.__all__:
            value = getattr(module, name)
            if callable(value) and not name.isupper():
                assert value.__doc__, f"{module.__name__}.{name} has no docstring"
    assert lguest.Guest.__module__ == "lguest.uml.guest"
    assert set(dir(lguest)) >= set(lguest.__all__)


def test_unknown_names_are_attribute_errors():
    for module in (lguest, lguest.testing):
        try:
            module.no_such_name
        except AttributeError as e:
            assert "no_such_name" in str(e)
        else:
            raise AssertionError("an unknown name resolved")


def test_import_lguest_is_cheap_and_lazy():
    loaded = python("import sys, lguest; print(*sorted(m for m in sys.modules "
                    "if m.startswith(('lguest', 'hypothesis', 'elftools'))))")
    assert loaded == ["lguest", "lguest._lazy"]
    loaded = python("import sys, lguest; lguest.PciBus; print('hypothesis' in sys.modules, "
                    "'lguest.uml.guest' in sys.modules)")
    assert loaded == ["False", "False"]


def test_hypothesis_only_with_the_parts_that_need_it():
    out = python("import sys, lguest.testing, lguest.testing.plugin; "
                 "lguest.testing.DriverHarness; lguest.testing.FakeRuns; "
                 "print('hypothesis' in sys.modules); lguest.testing.hostile_rings; "
                 "print('hypothesis' in sys.modules)")
    assert out == ["False", "True"]


def test_the_package_declares_its_type_hints():
    assert os.path.isfile(os.path.join(os.path.dirname(lguest.__file__), "py.typed"))


# -- docstrings and type hints on the public surface ----------------------------------------
# Hypothesis calls rules and invariants itself, so they need neither; everything a user
# calls or overrides (make_device, make_device_queue, teardown, and `setup`, the
# initializer each base names as the place to start) does. Rules are found by the marker
# attributes hypothesis.stateful puts on them.
EXEMPT_MARKERS = ("hypothesis_stateful_rule", "hypothesis_stateful_invariant")


def type_checking_names(module):
    """What the module's `if TYPE_CHECKING:` blocks import, so hints naming them resolve."""
    import ast
    import inspect

    names = {}
    tree = ast.parse(inspect.getsource(module))
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            code = compile(ast.Module(body=node.body, type_ignores=[]), module.__file__, "exec")
            scope = {"__name__": module.__name__, "__package__": module.__package__}
            exec(code, scope)
            names.update({k: v for k, v in scope.items() if not k.startswith("__")})
    return names


def public_functions(module):
    """(qualified name, function, is __init__) for each public function and method."""
    import inspect

    for name in module.__all__:
        obj = getattr(module, name)
        if inspect.isfunction(obj):
            yield name, obj, False
        if not inspect.isclass(obj):
            continue
        yield name, obj, None          # the class itself: its docstring
        for attr in sorted(dir(obj)):
            if attr.startswith("_") and attr != "__init__":
                continue
            owner = next((k for k in obj.__mro__ if attr in vars(k)), None)
            if owner is None or not owner.__module__.startswith("lguest"):
                continue                # Exception's, RuleBasedStateMachine's, object's
            if attr in getattr(owner, "__dataclass_fields__", {}):
                continue                # a field (its default may be a function), not a method
            value = vars(owner)[attr]
            if isinstance(value, (staticmethod, classmethod)):
                value = value.__func__
            if isinstance(value, property):
                value = value.fget
            if not inspect.isfunction(value):
                continue
            if any(hasattr(value, marker) for marker in EXEMPT_MARKERS):
                continue
            yield f"{name}.{attr}", value, attr == "__init__"


def missing_docs_and_hints(module):
    import inspect
    import typing

    missing = []
    for qual, fn, is_init in public_functions(module):
        if is_init is None:
            if not inspect.getdoc(fn):
                missing.append(f"{qual}: no docstring")
            continue
        if not is_init and not inspect.getdoc(fn):
            missing.append(f"{qual}: no docstring")
        sig = inspect.signature(fn)
        params = [p for p in sig.parameters.values() if p.name not in ("self", "cls")]
        missing += [f"{qual}: parameter {p.name} has no hint" for p in params
                    if p.annotation is inspect.Parameter.empty]
        if not is_init and sig.return_annotation is inspect.Signature.empty:
            missing.append(f"{qual}: no return hint")
        # The defining module's names, not fn.__globals__: a @st.composite strategy is a
        # wrapper made inside hypothesis, whose globals know none of ours.
        home = sys.modules[fn.__module__]
        try:
            typing.get_type_hints(fn, globalns=vars(home), localns=type_checking_names(home))
        except Exception as e:   # a typo or a name imported nowhere
            missing.append(f"{qual}: hints do not resolve: {e!r}")
    return missing


def test_the_public_surface_has_docstrings_and_type_hints():
    missing = missing_docs_and_hints(lguest) + missing_docs_and_hints(lguest.testing)
    assert not missing, f"{len(missing)} missing:\n" + "\n".join(missing)


def test_the_check_catches_a_missing_hint_and_an_unresolvable_one(monkeypatch):
    import types

    def documented(x: int) -> int:
        """Documented and hinted."""
        return x

    def bare(x):
        return x

    def typo(x: "Intt") -> int:  # noqa: F821
        """Hinted with a name that does not exist."""
        return x

    fake = types.ModuleType("lguest._fake_api")
    fake.__file__ = __file__
    fake.__all__ = ["documented", "bare", "typo"]
    for fn in (documented, bare, typo):
        fn.__module__ = fake.__name__
        setattr(fake, fn.__name__, fn)
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    missing = missing_docs_and_hints(fake)
    assert not [m for m in missing if m.startswith("documented")]
    assert {"bare: no docstring", "bare: parameter x has no hint",
            "bare: no return hint"} <= set(missing)
    assert any(m.startswith("typo: hints do not resolve") for m in missing)
