"""TLS files given by the user or found in certs.d, loaded so that none can hold a run.

Python's ssl module opens CA, certificate and key files by name, in OpenSSL: a FIFO there blocks
the open for ever (no writer) and a link to a device reads without end. A CA file is read here
first, bounded (a pipe, as `--ca-cert <(…)` gives, is read as it is written), and OpenSSL loads
that copy; a certificate and its key, which OpenSSL must read itself, are checked to be small
regular files first, so the key is never copied anywhere.
"""

from __future__ import annotations

import ssl
import tempfile

from ..files import check_small, read_small

MAX_TLS_FILE_BYTES = 16 << 20  # a system CA bundle is ~200 KB


def load_ca(context: ssl.SSLContext, path: str) -> None:
    """Add the CAs of the file `path` to `context`, as load_verify_locations(cafile=…) adds them.
    SourceError for a file that is not one to read; OSError or ValueError (ssl.SSLError) as
    OpenSSL refuses its content."""
    data = read_small(path, MAX_TLS_FILE_BYTES, "CA file", pipes=True)
    with tempfile.NamedTemporaryFile(prefix="imgdex-ca-") as copy:
        copy.write(data)
        copy.flush()
        context.load_verify_locations(cafile=copy.name)


def load_key_pair(context: ssl.SSLContext, cert_file: str, key_file: str) -> None:
    """`context.load_cert_chain(cert_file, key_file)` once both are small regular files."""
    check_small(cert_file, MAX_TLS_FILE_BYTES, "client certificate")
    check_small(key_file, MAX_TLS_FILE_BYTES, "client key")
    context.load_cert_chain(cert_file, key_file)
