#!/usr/bin/env bash
# Builds the stand-in libraries into OUT_DIR (see standin.c), with the real libraries' SONAMEs
# and symbol version, so a binary linked against Debian's libxen finds them instead through
# LD_LIBRARY_PATH.
set -euo pipefail
out=${1:?usage: build.sh OUT_DIR}
mkdir -p "$out"
here=$(dirname "$0")
printf 'VERS_4.17.0 { global: *; };\n' > "$out/vers.map"
for lib in xenctrl xenguest; do
  cc -shared -fPIC -O1 -Wall -Werror -o "$out/lib$lib.so.4.17" \
     -Wl,-soname,"lib$lib.so.4.17" -Wl,--version-script,"$out/vers.map" "$here/standin.c"
done
