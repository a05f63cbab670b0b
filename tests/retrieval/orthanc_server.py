"""A real Orthanc PACS with its DICOMweb plugin on a loopback port (Debian `orthanc` + `orthanc-dicomweb`), for tests and benchmarks."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
_RETRIEVE_SERIES = re.compile(r"\(http\) GET /dicom-web/studies/[^/\s]+/series/[^/\s]+\s*$")


def available() -> str | None:
    """Why Orthanc cannot run here (for a skip reason), or None when it can."""
    if shutil.which("Orthanc") is None or not PLUGIN.is_file():
        return "Orthanc or its DICOMweb plugin is not installed (run scripts/setup_test_env.sh)"
    return None


def _free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Orthanc:
    """One Orthanc process with its own storage folder; `stop()` and `start()` again keep the stored studies."""

    folder: Path
    users: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=_free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The REST root."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def source(self) -> str:
        """The DICOMweb source as `retrieval` takes it."""
        return f"dicomweb:{self.url}/dicom-web"

    @property
    def log(self) -> Path:
        """Orthanc's verbose log (one line per HTTP request)."""
        return self.folder / "orthanc.log"

    def _auth(self) -> tuple[str, str] | None:
        return next(iter(self.users.items())) if self.users else None

    def start(self, timeout: float = 30.0) -> "Orthanc":
        """Write the configuration, start Orthanc and wait until its REST API answers."""
        self.folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "retrieval-tests", "StorageDirectory": str(self.folder / "storage"), "IndexDirectory": str(self.folder / "storage"),
            "HttpPort": self.port, "DicomServerEnabled": False, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(self.users), "RegisteredUsers": self.users,
            "Plugins": [str(PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        (self.folder / "orthanc.json").write_text(json.dumps(config))
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(["Orthanc", "--verbose", str(self.folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}; see {self.log}")
            try:
                if requests.get(f"{self.url}/system", auth=self._auth(), timeout=1).ok:
                    return self
            except requests.ConnectionError:
                time.sleep(0.1)
        raise RuntimeError(f"Orthanc did not answer on {self.url} within {timeout:.0f} s; see {self.log}")

    def stop(self) -> None:
        """Stop Orthanc (SIGTERM, then SIGKILL after 10 s)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def upload(self, files: list[Path]) -> list[str]:
        """Store DICOM files with REST `POST /instances`; return Orthanc's instance ids."""
        ids = []
        for path in files:
            answer = requests.post(f"{self.url}/instances", data=Path(path).read_bytes(), auth=self._auth(), timeout=60)
            answer.raise_for_status()
            ids.append(answer.json()["ID"])
        return ids

    def delete_instance(self, orthanc_id: str) -> None:
        """Delete one stored instance."""
        requests.delete(f"{self.url}/instances/{orthanc_id}", auth=self._auth(), timeout=60).raise_for_status()

    def series_retrieved(self) -> int:
        """WADO-RS retrieve-series requests served so far (from the log)."""
        return sum(bool(_RETRIEVE_SERIES.search(line)) for line in self.log.read_text(errors="replace").splitlines())
