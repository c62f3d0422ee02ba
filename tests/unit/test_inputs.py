import gzip

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dmf_ray.inputs import InputError, discover_inputs, read_chunks


def _rows(file, chunk_rows=1000):
    chunks = list(read_chunks(file, chunk_rows))
    return [(r, s, i) for c in chunks for r, s, i in zip(c.rows, c.smiles, c.ids)], chunks


def test_smi_with_header_blank_lines_and_ids(tmp_path):
    path = tmp_path / "lib.smi"
    path.write_text("SMILES ID\nCCO ethanol\n\n  \nc1ccccc1\tbenzene\nC1CC\n")
    (file,) = discover_inputs([str(path)])
    rows, _ = _rows(file)
    assert rows == [(2, "CCO", "ethanol"), (5, "c1ccccc1", "benzene"), (6, "C1CC", None)]


def test_a_cxsmiles_extension_stays_with_its_smiles_and_the_id_follows_it(tmp_path):
    path = tmp_path / "lib.smi"
    path.write_text("C[C@H](O)CC |&1:1| butanol-racemic\nCCO ethanol\nC[C@@H](N)C(=O)O |o1:1|\n")
    (file,) = discover_inputs([str(path)])
    rows, _ = _rows(file)
    assert rows == [(1, "C[C@H](O)CC |&1:1|", "butanol-racemic"), (2, "CCO", "ethanol"),
                    (3, "C[C@@H](N)C(=O)O |o1:1|", None)]
    from dmf_ray.molecules import canonical_id

    assert canonical_id(rows[0][1]) == canonical_id("C[C@H](O)CC")  # RDKit reads the extension


def test_gzip_csv_with_chosen_columns(tmp_path):
    path = tmp_path / "lib.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write("name,structure,y\na,CCO,1\nb,,0\nc,\"CCN\",1\n")
    with pytest.raises(InputError, match="no SMILES column found"):
        discover_inputs([str(path)])
    with pytest.raises(InputError, match="no column 'nope'"):
        discover_inputs([str(path)], smiles_column="nope")
    (file,) = discover_inputs([str(path)], smiles_column="structure", id_column="name")
    rows, _ = _rows(file)
    assert rows == [(1, "CCO", "a"), (2, "", "b"), (3, "CCN", "c")]  # empty: recorded as a failure later


def test_parquet_and_folder_and_tsv(tmp_path):
    pq.write_table(pa.table({"smiles": ["CCO", "CCC"], "id": [1, 2]}), tmp_path / "a.parquet")
    (tmp_path / "b.tsv").write_text("smiles\tname\nCCCl\tx\n")
    (tmp_path / "notes.md").write_text("ignored: unsupported extension")
    files = discover_inputs([str(tmp_path)], id_column=None)
    assert [f.format for f in files] == ["parquet", "tsv"]
    assert _rows(files[0])[0] == [(1, "CCO", None), (2, "CCC", None)]
    assert _rows(files[1])[0] == [(1, "CCCl", None)]


def test_chunks_are_deterministic_and_skippable(tmp_path):
    path = tmp_path / "lib.txt"
    path.write_text("\n".join(["C" * (i % 5 + 1) for i in range(25)]) + "\n")
    (file,) = discover_inputs([str(path)])
    _, chunks = _rows(file, chunk_rows=10)
    assert [len(c.rows) for c in chunks] == [10, 10, 5]
    assert [c.shard for c in chunks] == [file.chunk_key(i) for i in range(3)]
    again = list(read_chunks(file, 10, skip={chunks[1].shard}))
    assert [c.shard for c in again] == [chunks[0].shard, chunks[2].shard]
    assert again[1].rows == chunks[2].rows


def test_missing_and_unsupported_files_are_named(tmp_path):
    with pytest.raises(InputError, match="nope.smi: no such file"):
        discover_inputs([str(tmp_path / "nope.smi")])
    (tmp_path / "x.sdf").write_text("")
    with pytest.raises(InputError, match="x.sdf: unknown file type"):
        discover_inputs([str(tmp_path / "x.sdf")])
    with pytest.raises(InputError, match="no input files"):
        discover_inputs([])


def test_redact_drops_credentials_from_uris_only():
    from dmf_ray.files import redact

    assert redact("s3://KEY:SECRET@bucket/a/b?region=x") == "s3://***@bucket/a/b?region=x"
    assert redact("s3://bucket/a@b") == "s3://bucket/a@b"
    assert redact("/data/lib@2.smi") == "/data/lib@2.smi"


# ---- issue 15: inputs that are not perfectly clean -----------------------------------------
from dmf_ray.inputs import check_readable  # noqa: E402


def _all_rows(path, **kw):
    files = discover_inputs([str(path)], **kw)
    return [(r, s, i, p) for f in files for c in read_chunks(f, 7) for r, s, i, p in zip(c.rows, c.smiles, c.ids, c.problems)]


@pytest.mark.parametrize("name", ["lib.smi", "lib.txt", "lib.csv", "lib.tsv"])
@pytest.mark.parametrize("bom,encoding", [(b"\xef\xbb\xbf", "utf-8"), (b"", "utf-16")])
def test_a_byte_order_mark_is_not_part_of_the_first_row(tmp_path, name, bom, encoding):
    sep = {"csv": ",", "tsv": "\t"}.get(name.rsplit(".", 1)[1], " ")
    text = f"smiles{sep}name\nCCO{sep}a\nCCN{sep}b\nCCC{sep}c\n"
    data = bom + text.encode(encoding)  # Python's utf-16 writes its own BOM
    (tmp_path / name).write_bytes(data)
    rows = _all_rows(tmp_path / name, **({} if sep == " " else {"id_column": "name"}))
    assert [(s, i, p) for _, s, i, p in rows] == [("CCO", "a", None), ("CCN", "b", None), ("CCC", "c", None)]


@pytest.mark.parametrize("where", [1, 40_000])
def test_a_malformed_csv_row_is_a_recorded_row_with_its_line(tmp_path, where):
    lines = [f"C{'C' * (i % 3)}O,m{i}" for i in range(50_000)]
    lines.insert(where, "C[C@H](O)CC |&1:1,4,r|,x")  # a CXSMILES extension with unquoted commas
    lines.insert(where + 3, "CCN")  # a missing field
    (tmp_path / "lib.csv").write_text("smiles,id\n" + "\n".join(lines) + "\n")
    (file,) = discover_inputs([str(tmp_path / "lib.csv")])
    rows = [(r, s, p) for c in read_chunks(file, 20_000) for r, s, p in zip(c.rows, c.smiles, c.problems)]
    assert len(rows) == 50_002 and [r for r, _, _ in rows] == list(range(1, 50_003))
    bad = [(r, s, p) for r, s, p in rows if p]
    assert bad == [
        (where + 1, "C[C@H](O)CC |&1:1,4,r|,x", f"malformed CSV row at line {where + 2}: expected 2 fields, got 4"),
        (where + 4, "CCN", f"malformed CSV row at line {where + 5}: expected 2 fields, got 1"),
    ]
    assert rows[where + 1][1] == lines[where + 1].split(",")[0]  # the next good row keeps its place


def test_gzip_with_trailing_bytes_is_read_whole_with_a_note(tmp_path):
    path = tmp_path / "lib.smi.gz"
    path.write_bytes(gzip.compress(b"CCO a\nCCN b\n") + gzip.compress(b"CCC c\n") + b"garbage!\n")
    (file,) = discover_inputs([str(path)])
    assert check_readable(file) == f"{path}: ignored 9 byte(s) after the end of the gzip data (as zcat does)"
    assert [s for _, s, _, _ in _all_rows(path)] == ["CCO", "CCN", "CCC"]


@pytest.mark.parametrize("name", ["lib.smi.gz", "lib.csv.gz"])
def test_a_truncated_gzip_is_refused_in_one_line_before_reading(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(gzip.compress(b"smiles,id\n" + b"".join(b"CCO,%d\n" % i for i in range(5000)))[:-40])
    with pytest.raises(InputError, match=r"lib\.(smi|csv)\.gz: truncated gzip file: its compressed data ends early") as err:
        (file,) = discover_inputs([str(path)])  # a CSV's header is read here: for a small file, all of it
        check_readable(file)
    assert "\n" not in str(err.value)


def test_a_column_of_the_wrong_type_is_named(tmp_path):
    pq.write_table(pa.table({"smiles": [1, 2], "id": [[1], [2]]}), tmp_path / "a.parquet")
    with pytest.raises(InputError, match=r"a.parquet: column 'smiles' holds int64 values, not SMILES text"):
        discover_inputs([str(tmp_path / "a.parquet")])
    pq.write_table(pa.table({"smiles": ["CCO", "CCN"], "id": [[1], [2]]}), tmp_path / "b.parquet")
    with pytest.raises(InputError, match=r"b.parquet: id column 'id' holds list<element: int64> values"):
        discover_inputs([str(tmp_path / "b.parquet")], id_column="id")
    (tmp_path / "c.csv").write_text("smiles,id\n1,2\nCCO,3\n")  # CSV columns are read as text
    assert [(s, i) for _, s, i, _ in _all_rows(tmp_path / "c.csv", id_column="id")] == [("1", "2"), ("CCO", "3")]


def test_a_repeated_column_name_is_refused_when_it_is_the_one_used(tmp_path):
    """A header that names the SMILES (or id) column twice is refused in one line, not a
    KeyError from the reader; a repeated column that is not used is left alone."""
    (tmp_path / "a.csv").write_text("smiles,smiles\nCCO,CCN\n")
    with pytest.raises(InputError, match=r"a.csv: the header names column 'smiles' 2 times; rename all but one"):
        discover_inputs([str(tmp_path / "a.csv")])
    (tmp_path / "b.tsv").write_text("smiles\tname\tname\nCCO\ta\tb\n")
    with pytest.raises(InputError, match=r"column 'name' 2 times"):
        discover_inputs([str(tmp_path / "b.tsv")], id_column="name")
    assert [s for _, s, _, _ in _all_rows(tmp_path / "b.tsv")] == ["CCO"]


def test_files_without_a_known_extension_are_recognised_by_content(tmp_path):
    (tmp_path / "test").write_text("chembl_id\tcanonical_smiles\tstandard_inchi\nCHEMBL1\tCCO\tInChI=1S/x\n")
    (tmp_path / "lib.ism").write_text("CCO ethanol\nc1ccccc1 benzene\n")
    (tmp_path / "plain").write_text("CCO\nCCN\nnot-a-smiles\n")
    (tmp_path / "chembl.txt").write_text("chembl_id\tcanonical_smiles\nCHEMBL1\tCCO\n")
    assert [f.format for f in discover_inputs([str(tmp_path / n) for n in ("test", "lib.ism", "plain", "chembl.txt")])] \
        == ["tsv", "smi", "smi", "tsv"]
    assert [s for _, s, _, _ in _all_rows(tmp_path / "test")] == ["CCO"]
    (tmp_path / "notes").write_text("hello world\nthis is prose\n")
    with pytest.raises(InputError, match="notes: unknown file type .* name it with --format"):
        discover_inputs([str(tmp_path / "notes")])
    (tmp_path / "data.dat").write_text("smiles;id\n")
    (file,) = discover_inputs([str(tmp_path / "plain")], format="smi")
    assert file.format == "smi"
    with pytest.raises(InputError, match="unknown --format 'sdf'"):
        discover_inputs([str(tmp_path / "plain")], format="sdf")


def test_the_file_key_follows_the_content(tmp_path):
    path = tmp_path / "lib.smi"
    path.write_text("CCO a\nCCX b\n")
    before = discover_inputs([str(path)])[0].key
    path.write_text("CCO a\nCCN b\n")  # one SMILES corrected, same size
    after = discover_inputs([str(path)])[0].key
    assert before != after and path.stat().st_size == 12
    assert discover_inputs([str(path), str(path)])[0].key == after  # named twice: read once
    assert len(discover_inputs([str(path), str(path)])) == 1
