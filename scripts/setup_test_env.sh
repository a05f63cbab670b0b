#!/usr/bin/env bash
# Everything the test suite needs on a fresh Debian machine: the real services the tests start on loopback
# (Chromium + ChromeDriver for the web page, Orthanc + its DICOMweb plugin as a PACS, PostgreSQL as a catalog),
# then the project with its test extras. Installs only what is missing, so a second run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
packages=(chromium chromium-driver orthanc orthanc-dicomweb postgresql)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
    sudo_cmd=()
    [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
    echo "installing ${missing[*]}" >&2
    "${sudo_cmd[@]}" apt-get update -q
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
pip install -q -e ".[test]"
