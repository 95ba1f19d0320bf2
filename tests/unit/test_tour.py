from lguest import tour


def test_numbered_comments_are_unique_and_references_resolve():
    assert tour.problems() == []


def test_tour_starts_at_the_backend_interface():
    blocks, _ = tour.collect()
    first = min(blocks)
    assert first[1].name == "base.py" and first[1].parent.name == "backends", first


def test_problems_reports_duplicates_and_dangling(tmp_path):
    (tmp_path / "a.py").write_text("#L:5 one\n# more\nx = 1\n#L:5 again\n# see L:7\n")
    found = tour.problems(tmp_path)
    assert any("L:5 defined twice" in p for p in found)
    assert any("refers to L:7" in p for p in found)


def test_tour_prints_blocks_in_order(capsys):
    tour.main([])
    out = capsys.readouterr().out
    numbers = [int(line[3:line.index("]")]) for line in out.splitlines() if line.startswith("[L:")]
    assert numbers == sorted(numbers) and len(numbers) >= 3
