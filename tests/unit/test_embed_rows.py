"""`dmf embed` over input files, row by row without Ray: a malformed CSV row ends as an output
row whose error is the reader's reason (file line, fields expected and found), not RDKit's
complaint about the raw line read as a SMILES; the rows around it are embedded. A modality an
encoder refuses is named in the row's modality_errors with the encoder's reason."""

import pyarrow as pa

from dmf_ray.inputs import discover_inputs, read_rows_stage
from dmf_ray.pipelines.embed import EmbedSmilesStage
from dmf_ray.testing import save_random_model

SMILES = ["CCO", "c1ccccc1", "CC(=O)O", "CCN(CC)CC"]


def test_malformed_csv_row_keeps_the_readers_reason(tmp_path):
    path = tmp_path / "library.csv"
    path.write_text("smiles,name\nCCO,ethanol\nc1ccccc1,benzene,extra,fields\nCC(=O)O,acetic acid\n")
    (file,) = discover_inputs([str(path)])
    table = pa.concat_tables(list(read_rows_stage({"file": [file.__dict__]}, chunk_rows=100)))
    assert table.column("row").to_pylist() == [1, 2, 3]
    problems = table.column("problem").to_pylist()
    assert problems[0] is None and problems[2] is None
    assert problems[1] == "malformed CSV row at line 3: expected 2 fields, got 4"

    model = save_random_model(tmp_path / "model", SMILES, ["maccs"], latent_dim=8, gate_hidden=8,
                              attention_hidden=4, decoder_hidden=8)
    out = EmbedSmilesStage(model, drop=None)(table)
    errors = out.column("error").to_pylist()
    assert errors == [None, problems[1], None]
    assert out.column("embedding").null_count == 1 and out.column("row").to_pylist() == [1, 2, 3]


def test_a_modality_the_encoder_refuses_is_named_with_its_reason(tmp_path):
    """A molecule over atom-pair's size bound (500 heavy atoms) is embedded from MACCS alone, and
    its output row says why atom-pair is missing; the rows around it have an empty map."""
    big = "C" * 600
    table = pa.table({"smiles": ["CCO", big, "c1ccccc1"], "source": ["lib.smi"] * 3, "row": [1, 2, 3]})
    model = save_random_model(tmp_path / "model", SMILES, ["maccs", "atompair"], latent_dim=8, gate_hidden=8,
                              attention_hidden=4, decoder_hidden=8)
    out = EmbedSmilesStage(model, drop=None)(table)
    assert out.column("error").to_pylist() == [None, None, None]
    assert out.column("present").to_pylist() == [["maccs", "atompair"], ["maccs"], ["maccs", "atompair"]]
    errors = out.column("modality_errors").to_pylist()
    assert errors[0] == [] and errors[2] == []
    ((name, reason),) = errors[1]
    assert name == "atompair" and "600 heavy atoms" in reason and "500" in reason


def test_the_id_column_is_kept_as_source_id_on_every_row(tmp_path):
    """--id-column: each output row carries its input's id, an unparsable SMILES's row too (the
    user joins the vectors back to their compounds by it); a row too malformed to split has none."""
    path = tmp_path / "library.csv"
    path.write_text("smiles,name\nCCO,ethanol\nc1ccccc1,benzene,extra,fields\nbad(,broken\nCC(=O)O,acetic acid\n")
    (file,) = discover_inputs([str(path)], id_column="name")
    table = pa.concat_tables(list(read_rows_stage({"file": [file.__dict__]}, chunk_rows=100)))
    model = save_random_model(tmp_path / "model", SMILES, ["maccs"], latent_dim=8, gate_hidden=8,
                              attention_hidden=4, decoder_hidden=8)
    out = EmbedSmilesStage(model, drop=None)(table)
    assert out.column("source_id").to_pylist() == ["ethanol", None, "broken", "acetic acid"]
    assert out.column("error").null_count == 2  # ethanol and acetic acid embedded


def test_out_holding_anything_but_an_earlier_output_is_refused_and_kept(tmp_path):
    """embed replaces what --out holds: a folder of the user's files (or a file) is refused before
    any work, with nothing deleted; a new folder or an earlier embed output is accepted."""
    import pytest

    from dmf_ray.pipelines.embed import _empty_output, check_output, write_part

    notes = tmp_path / "work"
    (notes / "sub").mkdir(parents=True)
    (notes / "important_notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="holds 2 entries that are not an earlier embed output .*'important_notes.txt'"):
        _empty_output(str(notes))
    assert (notes / "important_notes.txt").read_text() == "keep me" and (notes / "sub").is_dir()
    with pytest.raises(ValueError, match="is a file"):
        check_output(str(notes / "important_notes.txt"))

    check_output(str(tmp_path / "new"))  # not there yet
    earlier = tmp_path / "earlier"
    model = save_random_model(tmp_path / "model", SMILES, ["maccs"], latent_dim=8, gate_hidden=8,
                              attention_hidden=4, decoder_hidden=8)
    write_part(EmbedSmilesStage(model, drop=None)(pa.table({"smiles": ["CCO"], "source": ["a.smi"], "row": [1]})),
               str(earlier))
    _empty_output(str(earlier))
    assert list(earlier.iterdir()) == []
    # An output written before 2026-12-03 carries Ray Data's own file names: still ours to replace.
    old = tmp_path / "old"
    old.mkdir()
    (old / f"{'a' * 32}_000000_000000.parquet").write_bytes(b"PAR1")
    (old / f"{'b' * 32}_{'c' * 32}_000001.parquet").write_bytes(b"PAR1")
    _empty_output(str(old))
    assert list(old.iterdir()) == []
    # The model's own folder is not an embed output either.
    with pytest.raises(ValueError, match="not an earlier embed output"):
        check_output(model)
