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
