"""The test tree itself: pytest's default import mode ("prepend") imports each test module
by its basename, so two files of one name anywhere under tests/ stop a whole run at
collection (exit 2) -- which is how CI once failed, on hw/ and unit/ each holding a
test_uml_placement.py. Caught here, in the unit tests, before a full run finds it."""

import collections
import pathlib

TESTS = pathlib.Path(__file__).resolve().parents[1]


def same_basenames(root):
    """{basename: [paths]} for the test modules under root that share a basename."""
    seen = collections.defaultdict(list)
    for path in sorted(root.rglob("test_*.py")):
        seen[path.name].append(path.relative_to(root))
    return {name: paths for name, paths in seen.items() if len(paths) > 1}


def test_no_two_test_modules_share_a_basename():
    assert same_basenames(TESTS) == {}


def test_the_finder_sees_two_modules_of_one_name(tmp_path):
    for part in ("hw", "unit"):
        (tmp_path / part).mkdir()
        (tmp_path / part / "test_uml_placement.py").write_text("")
    (tmp_path / "unit" / "test_other.py").write_text("")
    assert same_basenames(tmp_path) == {
        "test_uml_placement.py": [pathlib.Path("hw/test_uml_placement.py"),
                                  pathlib.Path("unit/test_uml_placement.py")]}
