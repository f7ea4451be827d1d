"""Sources and bad input: unreadable, non-UTF-8, empty and huge files, malformed JSONL lines are skipped and counted
with file and line named; nothing usable left is one clear error."""

import gzip
import json

import pytest

from codelm.data.prepare import DataConfig, filter_documents
from codelm.data.sources import documents_from, stdlib_documents
from codelm.errors import DataError

CODE = '''def greet(name: str) -> str:
    """Say hello to someone by name."""
    if not name:
        return "Hello!"
    return f"Hello, {name}!"
'''


def offline_config(source, **kw) -> DataConfig:
    """Every stage on, except decontamination's benchmark loading where a test does not need it."""
    base = dict(source=str(source), workers=1, progress_seconds=0)
    base.update(kw)
    return DataConfig(**base)


def test_directory_source_takes_only_the_chosen_extensions_in_sorted_order(tmp_path):
    (tmp_path / "b.py").write_text(CODE)
    (tmp_path / "a.py").write_text(CODE.replace("hello", "hi"))
    (tmp_path / "notes.txt").write_text("not code")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "c.js").write_text("function f() { return 1; }\n")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "hook.py").write_text(CODE)
    assert [d.id for d in documents_from(str(tmp_path))] == ["a.py", "b.py"]
    assert [d.id for d in documents_from(str(tmp_path), extensions=(".py", ".js"))] == ["a.py", "b.py", "pkg/c.js"]


def test_bad_files_are_skipped_and_counted_with_their_names(tmp_path):
    (tmp_path / "good.py").write_text(CODE)
    (tmp_path / "latin1.py").write_bytes("s = 'café'\n".encode("latin-1"))
    (tmp_path / "empty.py").write_text("")
    (tmp_path / "huge.py").write_text("x = 1\n" * 200_000)
    (tmp_path / "broken_link.py").symlink_to(tmp_path / "missing.py")
    corpus = filter_documents(offline_config(tmp_path, decontaminate=False, max_bytes=100_000))
    assert [d.id for d in corpus.docs] == ["good.py"]
    m = corpus.manifest
    unreadable = dict((p.rsplit("/", 1)[-1], why) for p, why in m["unreadable"]["examples"])
    assert unreadable["latin1.py"].startswith("not UTF-8")
    assert unreadable["broken_link.py"].startswith("unreadable")
    assert m["unreadable"]["reasons"] == {"not UTF-8": 1, "unreadable": 1}
    size = next(s for s in m["stages"] if s["name"] == "size")
    assert size["removed"] == {"too large": 1, "too small": 1}
    assert size["examples"] == {"too large": ["huge.py"], "too small": ["empty.py"]}


def test_enormous_files_are_not_even_read(tmp_path):
    from codelm.data.sources import read_text_file
    (tmp_path / "dump.py").write_bytes(b"x" * 5000)
    text, why = read_text_file(tmp_path / "dump.py", max_bytes=4096)
    assert text is None and why == "too large to read (5,000 bytes > 4,096)"


def test_jsonl_malformed_lines_are_skipped_with_file_and_line(tmp_path):
    path = tmp_path / "code.jsonl"
    path.write_text(json.dumps({"content": CODE, "path": "greet.py"}) + "\n"
                    + "{not json\n"
                    + json.dumps({"text": "wrong field"}) + "\n"
                    + "\n"
                    + json.dumps({"content": CODE.replace("hello", "hey")}) + "\n")
    rejects = []
    docs = list(documents_from(str(path), rejects))
    assert [d.id for d in docs] == ["code.jsonl:greet.py", "code.jsonl:line5"]
    assert [(where.rsplit("/", 1)[-1], why.split(" (")[0]) for where, why in rejects] == [
        ("code.jsonl:2", "malformed JSON"), ("code.jsonl:3", "no string field 'content'")]


def test_gzipped_jsonl_and_a_custom_text_field(tmp_path):
    path = tmp_path / "code.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps({"code": CODE}) + "\n")
    assert [d.text for d in documents_from(str(path), text_field="code")] == [CODE]


def test_parquet_through_datasets(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    path = tmp_path / "code.parquet"
    pq.write_table(pa.table({"content": [CODE, CODE + "\n# more\n"], "path": ["a.py", "b.py"]}), path)
    docs = list(documents_from(str(path)))
    assert [d.text for d in docs] == [CODE, CODE + "\n# more\n"]
    assert docs[0].id.endswith("a.py")


def test_stdlib_is_the_default_and_excludes_tests():
    ids = [d.id for d in stdlib_documents()]
    assert "textwrap.py" in ids and not any(i.startswith("test/") or "/tests/" in i for i in ids)


@pytest.mark.parametrize("source,message", [
    ("/nonexistent/dir", "no such file or directory"),
    ("notes.txt", "unsupported file type"),
])
def test_bad_source_names_are_clear_errors(tmp_path, source, message):
    if source == "notes.txt":
        (tmp_path / source).write_text("x")
        source = str(tmp_path / source)
    with pytest.raises(DataError, match=message):
        list(documents_from(source))


def test_an_empty_source_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no documents found"):
        filter_documents(offline_config(tmp_path))


def test_nothing_left_after_filtering_is_a_clear_error(tmp_path):
    (tmp_path / "gen.py").write_text("# auto-generated, do not edit\n" + CODE)
    with pytest.raises(DataError, match="no usable documents remain.*quality: -1"):
        filter_documents(offline_config(tmp_path, decontaminate=False))


def test_dataset_rows_become_documents_the_way_hub_streams_do():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"content": [CODE, None, CODE + "\n"], "path": ["a.py", "b.py", "c.py"]})
    from codelm.data.sources import datasets_documents
    rejects = []
    docs = list(datasets_documents(ds, "hf:org/code", "content", rejects, max_docs=3))
    assert [d.id for d in docs] == ["hf:org/code:0:a.py", "hf:org/code:2:c.py"]
    assert rejects[0][0] == "hf:org/code:row1" and "no string field 'content'" in rejects[0][1]
    assert len(list(datasets_documents(ds, "hf:org/code", "content", max_docs=1))) == 1


def test_hub_source_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="hf:bigcode/the-stack-smol/data/python: cannot load dataset"):
        list(documents_from("hf:bigcode/the-stack-smol/data/python", max_docs=2))
