import pytest

from emlib.cache import atomic_path, content_key, sha256_file, write_text_atomic


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    dest = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_directory_and_replace(tmp_path):
    dest = tmp_path / "d"
    with atomic_path(dest) as tmp:
        tmp.mkdir()
        (tmp / "a").write_text("x")
    assert (dest / "a").read_text() == "x"
    write_text_atomic(tmp_path / "f", "1")
    write_text_atomic(tmp_path / "f", "2")
    assert (tmp_path / "f").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "f"]


def test_content_key_is_order_independent_and_sensitive():
    assert content_key({"a": 1, "b": [1, 2]}) == content_key({"b": [1, 2], "a": 1})
    assert content_key({"a": 1}) != content_key({"a": 2})


def test_sha256_file(tmp_path):
    f = tmp_path / "x"
    f.write_bytes(b"abc")
    assert sha256_file(f) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
