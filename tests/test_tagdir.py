"""The ner-tag output folder's names (common/tagdir.py): part files in part order, temporary files left out."""

from common.tagdir import part_files, part_name


def test_part_files_in_part_order_without_temporary_files(tmp_path):
    for index in (999_999, 2, 1_000_000, 0):
        (tmp_path / part_name(index)).touch()
    (tmp_path / ".part-000001.parquet.tmp-host-123").touch()  # a part being written
    (tmp_path / "part-000003.parquet.bak").touch()
    assert [p.rsplit("/", 1)[1] for p in part_files(str(tmp_path))] == [
        "part-000000.parquet", "part-000002.parquet", "part-999999.parquet", "part-1000000.parquet"]
