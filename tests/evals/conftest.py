"""Fixtures for the evals tests: sample files written on the fly."""

import json

import pytest


def write_samples(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


@pytest.fixture
def samples_file(tmp_path):
    return lambda rows, name="samples.jsonl": write_samples(tmp_path / name, rows)
