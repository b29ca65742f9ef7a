import importlib.util

import pytest

# The stdlib-only session (tests/test_stdlib.py on every Python) has no pyro.
HAVE_PYRO = importlib.util.find_spec("pyro") is not None

if HAVE_PYRO:
    import pyro

    import pyro_pickle_fix  # activation, as in a user's program

    @pytest.fixture(autouse=True)
    def _fix_is_on_and_store_is_empty():
        if not pyro_pickle_fix.is_patched():
            pyro_pickle_fix.patch()
        pyro.clear_param_store()
        yield
        pyro.clear_param_store()
