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
    with pytest.raises(InputError, match="unsupported file type"):
        discover_inputs([str(tmp_path / "x.sdf")])
    with pytest.raises(InputError, match="no input files"):
        discover_inputs([])


def test_redact_drops_credentials_from_uris_only():
    from dmf_ray.files import redact

    assert redact("s3://KEY:SECRET@bucket/a/b?region=x") == "s3://***@bucket/a/b?region=x"
    assert redact("s3://bucket/a@b") == "s3://bucket/a@b"
    assert redact("/data/lib@2.smi") == "/data/lib@2.smi"
