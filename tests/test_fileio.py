"""The data hash: the content of the folders a model was fit on, nothing else."""

from __future__ import annotations

import shutil

from polycolor.fileio import folder_digest


def test_folder_digest_follows_content_not_location(tmp_path, tiny_dataset):
    a = folder_digest(tiny_dataset / "training", tiny_dataset / "validation")
    assert len(a) == 16 and set(a) <= set("0123456789abcdef"), a
    copy = tmp_path / "elsewhere"
    shutil.copytree(tiny_dataset, copy)
    assert folder_digest(copy / "training", copy / "validation") == a, "same files, same digest, wherever they are"
    assert folder_digest(copy / "training") != a, "the validation split is part of the data"
    png = sorted((copy / "validation" / "outputs").iterdir())[0]
    png.write_bytes(png.read_bytes() + b"\0")
    assert folder_digest(copy / "training", copy / "validation") != a, "one changed byte changes it"
    shutil.copytree(tiny_dataset / "validation", copy / "validation", dirs_exist_ok=True)
    assert folder_digest(copy / "training", copy / "validation") == a
    png.rename(png.with_name("renamed.png"))
    assert folder_digest(copy / "training", copy / "validation") != a, "a renamed file changes it"
