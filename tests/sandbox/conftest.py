import os

import pytest

import sandbox

# A secret in the caller's environment, set before any fork server starts: programs must never see it.
SECRET = "sk-codelm-test-secret-7f3a9c"
os.environ["AWS_SECRET_ACCESS_KEY"] = SECRET
os.environ["OPENAI_API_KEY"] = SECRET


def _docker_or_skip():
    from sandbox import docker_backend
    try:
        docker_backend.client()
    except sandbox.SandboxUnavailable as e:
        pytest.skip(str(e))


@pytest.fixture(params=["local", pytest.param("docker", marks=pytest.mark.docker)])
def backend(request):
    if request.param == "docker":
        _docker_or_skip()
    return request.param


@pytest.fixture
def run(backend):
    """sandbox.run bound to the backend under test."""
    def _run(program, **kw):
        return sandbox.run(program, backend=backend, **kw)
    return _run


@pytest.fixture
def secret():
    return SECRET
