import pytest

from fastamqp import engine

CODECS = [pytest.param(engine.py_codec, id="python")]
if engine.c_codec is not None:
    CODECS.insert(0, pytest.param(engine.c_codec, id="c"))


@pytest.fixture(params=CODECS)
def codec(request):
    return request.param
