"""What one `retrieval serve` process needs: the index, the checkpoint, the secrets and the limits.

The config travels to `--workers` processes as JSON in an environment variable; secrets travel as
the token file's path, never as values, and each worker reads them itself.
"""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from retrieval.checkpoint import new_patient_key
from retrieval.io.limits import Limits

ENVIRONMENT = "RETRIEVAL_SERVE_CONFIG"
KEY_NAME = "pseudonym.key"  # the pseudonymisation key lives beside the token file


@dataclass(frozen=True)
class ServeConfig:
    """Options of `retrieval serve` that the app itself uses."""

    index: str
    checkpoint: str | None = None
    device: str = "auto"
    backend: str = "auto"
    token_file: str | None = None
    pseudonymise: bool = False
    max_upload_mb: float = 512.0
    threads: int = 1
    reload_every_s: float = 1.0
    max_slice_pixels: int = Limits.max_slice_pixels  # reading limits of an uploaded query, as `scan`'s options
    max_slices_per_file: int = Limits.max_slices_per_file
    max_file_mb: int = Limits.max_file_mb
    seconds_per_file: float = Limits.seconds_per_file

    def limits(self) -> Limits:
        """The reading limits of uploaded queries."""
        return Limits(self.max_slice_pixels, self.max_slices_per_file, self.max_file_mb, self.seconds_per_file)

    def token(self) -> str | None:
        """The bearer token from the token file (None without one)."""
        if self.token_file is None:
            return None
        token = Path(self.token_file).read_text().strip()
        if not token or len(token.split()) != 1:
            raise ValueError(f"{self.token_file}: the token file must hold one non-empty token")
        return token

    def pseudonym_key(self) -> str | None:
        """The key of the patient-id hash, created (owner-only) beside the token file on first use."""
        if not self.pseudonymise:
            return None
        if self.token_file is None:
            raise ValueError("--pseudonymise needs --token-file: its key is kept in the token file's folder")
        path = Path(self.token_file).parent / KEY_NAME
        if not path.exists():
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as handle:
                    handle.write(new_patient_key() + "\n")
            except FileExistsError:
                pass  # another worker made it first
        key = path.read_text().strip()
        try:
            bytes.fromhex(key)
        except ValueError:
            raise ValueError(f"{path}: not a pseudonymisation key (expected hex)") from None
        return key

    def to_environment(self) -> None:
        """Hand the config to worker processes (they call `from_environment`)."""
        os.environ[ENVIRONMENT] = json.dumps(asdict(self))

    @classmethod
    def from_environment(cls) -> ServeConfig:
        """The config the serving command put in the environment."""
        return cls(**json.loads(os.environ[ENVIRONMENT]))


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
