import pytest

from search import _tracking


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A parent run in a file store (fast to create; the transport code is the same as over HTTP)."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    exp_id, parent = _tracking.ensure_parent(uri, "exp", tags={})
    return uri, exp_id, parent
