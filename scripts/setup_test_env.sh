#!/usr/bin/env bash
# Everything the test suite needs on a fresh Debian machine: the real services the tests start on loopback
# (Chromium + ChromeDriver for the web page, Orthanc + its DICOMweb plugin as a PACS, PostgreSQL's initdb/pg_ctl
# for a throwaway catalog server), then the project with its test extras. Installs only what is missing, so a
# second run takes seconds; then checks that every executable the tests call is where they look for it, since a
# test that cannot find its service skips.
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
# the executables the tests start, by the paths they use (package → what it provides)
required=(/usr/bin/chromium /usr/bin/chromedriver /usr/share/orthanc/plugins/libOrthancDicomWeb.so)  # chromium, chromium-driver, orthanc-dicomweb
command -v Orthanc >/dev/null || required+=(Orthanc)  # orthanc
initdb=$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | tail -n 1)  # postgresql (the server refuses root: tests use runuser)
required+=("${initdb:-/usr/lib/postgresql/VERSION/bin/initdb}" "${initdb%/initdb}/pg_ctl")
absent=()
for path in "${required[@]}"; do
    [[ -e $path ]] || absent+=("$path")
done
if ((${#absent[@]})); then
    echo "setup_test_env.sh: still missing after apt-get: ${absent[*]}" >&2
    exit 1
fi
pip install -q -e ".[test]"
