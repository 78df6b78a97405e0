import subprocess
import sys


def test_server_never_imports_torch():
    code = (
        "import sys, server.app, server.__main__, server.engine, modelrepo; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
