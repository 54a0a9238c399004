#!/usr/bin/env bash
# Each program given allocates with tcmalloc (CMakeLists.txt, BERTH_TCMALLOC): the dynamic
# loader binds malloc and operator new to libtcmalloc_minimal, not to glibc.
set -euo pipefail
for bin in "$@"; do
  bindings=$(LD_DEBUG=bindings "$bin" --help 2>&1 >/dev/null || true)
  for sym in malloc free _Znwm _ZdlPv; do
    if ! grep -qE "to [^ ]*libtcmalloc_minimal\.so[^ ]* \[[0-9]+\]: normal symbol \`$sym'" \
      <<<"$bindings"; then
      echo "FAIL: $bin: $sym is not bound to tcmalloc_minimal" >&2
      grep -E "normal symbol \`$sym'" <<<"$bindings" | head -3 >&2 || true
      exit 1
    fi
  done
  echo "ok: $bin allocates with tcmalloc_minimal"
done
