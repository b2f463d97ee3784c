#!/usr/bin/env bash
# Builds llama-cpp-python from its PyPI sdist ONCE per machine into a cache outside the repo
# (a `pip install --target` folder), and prints that folder. Re-runs reuse it.
#
#   bench/llama_cpp_build.sh            # build if needed, print the folder
#   PYTHON=.venv/bin/python bench/llama_cpp_build.sh
#
# The flags are the portable AVX2 set: llama.cpp's default native build picks the AMX matmul path
# on Intel AMX machines and segfaults in the first decode (llama.cpp #20824).
# The build time (seconds) is written to BUILD_SECONDS inside the folder.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
FLAGS=${LLAMA_CPP_CMAKE_ARGS:-"-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"}
CACHE=${TUNEFORGE_LLAMA_CPP_CACHE:-"${XDG_CACHE_HOME:-$HOME/.cache}/tuneforge/llama-cpp-python"}
hash=$(printf '%s' "$FLAGS" | sha256sum | cut -c1-12)
dest="$CACHE/$VERSION-$hash"

if [ -f "$dest/BUILD_OK" ]; then
  echo "$dest"
  exit 0
fi

mkdir -p "$CACHE"
tmp=$(mktemp -d "$CACHE/.build-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "building llama-cpp-python $VERSION with CMAKE_ARGS=\"$FLAGS\" into $dest (8-20 min on 2 cores) …" >&2
start=$(date +%s)
# --no-binary: the sdist, compiled here. --no-deps + diskcache: numpy/jinja2 come from the venv,
# so the cached folder never shadows the venv's own numpy.
CMAKE_ARGS="$FLAGS" CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
  "$PYTHON" -m pip --disable-pip-version-check install --no-cache-dir --no-binary llama-cpp-python \
  --no-deps --target "$tmp/site" "llama-cpp-python==$VERSION" "diskcache>=5.6.1" >&2
end=$(date +%s)
echo $((end - start)) > "$tmp/site/BUILD_SECONDS"
printf '%s\n' "$FLAGS" > "$tmp/site/CMAKE_ARGS"
"$PYTHON" -c "import sys; print(sys.version.split()[0])" > "$tmp/site/PYTHON_VERSION"
touch "$tmp/site/BUILD_OK"
rm -rf "$dest"
mv "$tmp/site" "$dest"
echo "built in $((end - start)) s" >&2
echo "$dest"
