#!/bin/bash
# Run Python under another glibc, everything else unchanged, to compare what the C library's allocator does
# (docs/performance.md: glibc before 2.38 does not reuse freed 64-byte-aligned chunks).
#
#   benchmarks/with_debian_glibc.sh SUITE ARGS...     e.g.  benchmarks/with_debian_glibc.sh trixie -m benchmarks.heap_reuse
#
# Downloads Debian SUITE's libc6 (amd64) from deb.debian.org once into .cache/glibc-SUITE/, then runs this
# checkout's .venv Python with ARGS through that glibc's loader. A wrapper venv under the cache makes
# sys.executable point back at the wrapper, so subprocesses (sweep jobs, benchmark workers) run on it too.
set -euo pipefail
suite=${1:?usage: $0 SUITE ARGS... (a Debian suite, e.g. trixie)}
shift
root=$(cd "$(dirname "$0")/.." && pwd)
cache=$root/.cache/glibc-$suite
lib=$cache/root/usr/lib/x86_64-linux-gnu
if [ ! -e "$lib/libc.so.6" ]; then
  mkdir -p "$cache"
  mirror=http://deb.debian.org/debian
  curl -fsS -o "$cache/Packages.xz" "$mirror/dists/$suite/main/binary-amd64/Packages.xz"
  deb=$(xz -dc "$cache/Packages.xz" | awk '/^Package: libc6$/{p=1} p && !f && /^Filename:/{f=$2} END{print f}')
  curl -fsS -o "$cache/libc6.deb" "$mirror/$deb"
  dpkg-deb -x "$cache/libc6.deb" "$cache/root"
fi
base=$("$root/.venv/bin/python" -c 'import sys; print(sys.base_prefix)')
real=$("$root/.venv/bin/python" -c 'import os, sys; print(os.path.realpath(sys.executable))')
venv=$cache/venv
mkdir -p "$venv/bin"
cp "$root/.venv/pyvenv.cfg" "$venv/"
ln -sfn "$root/.venv/lib" "$venv/lib"
cat > "$venv/bin/python" <<EOF
#!/bin/bash
exec "$lib/ld-linux-x86-64.so.2" --argv0 "$venv/bin/python" \
  --library-path "$lib:$base/lib:/usr/lib/x86_64-linux-gnu:/lib/x86_64-linux-gnu" "$real" "\$@"
EOF
chmod +x "$venv/bin/python"
cd "$root"
exec "$venv/bin/python" "$@"
