# shellcheck shell=bash
# Shared set-up for every script a user runs (sourced, not executed).
#
# rustup does not install a rust-toolchain.toml toolchain on first use where
# RUSTUP_AUTO_INSTALL=0 (these machines, and many users), so each script installs
# what it needs itself, idempotently: a check costs a few milliseconds when the
# toolchain is already there.
#
#   tally_host_toolchain      the channel and components of rust-toolchain.toml
#   tally_program_toolchain   the program's pinned nightly with rust-src
#
# The pins live in one place each: rust-toolchain.toml (host) and
# TALLY_PROGRAM_NIGHTLY below (program; scripts/build-program and scripts/fuzz use it).

TALLY_ROOT=${TALLY_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
TALLY_PROGRAM_NIGHTLY=nightly-2026-09-01

command -v rustup >/dev/null 2>&1 || {
  echo "tally: rustup is needed to install the pinned Rust toolchains (https://rustup.rs)" >&2
  exit 1
}

# The channel of rust-toolchain.toml (read, never repeated in the scripts).
tally_host_channel() {
  sed -n 's/^[[:space:]]*channel[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' \
    "$TALLY_ROOT/rust-toolchain.toml" | head -n 1
}

# The components of rust-toolchain.toml, comma-separated ("clippy,rustfmt").
tally_host_components() {
  sed -n 's/^[[:space:]]*components[[:space:]]*=[[:space:]]*\[\(.*\)\].*/\1/p' \
    "$TALLY_ROOT/rust-toolchain.toml" | tr -d ' "' | head -n 1
}

# Installs TOOLCHAIN with the comma-separated COMPONENTS unless all are present.
tally_ensure_toolchain() {
  local toolchain=$1 components=${2:-} installed missing="" c
  if installed=$(rustup component list --installed --toolchain "$toolchain" 2>/dev/null); then
    IFS=, read -ra wanted <<<"$components"
    for c in "${wanted[@]}"; do
      [ -n "$c" ] || continue
      # Listed as "clippy-x86_64-unknown-linux-gnu", or "rust-src" without a target.
      grep -Eq "^${c}(-preview)?(\$|-[a-z0-9_]+-[a-z0-9_]+-)" <<<"$installed" \
        || missing="$missing $c"
    done
    [ -z "$missing" ] && return 0
    echo "tally: adding component(s)$missing to the $toolchain toolchain" >&2
    # shellcheck disable=SC2086
    rustup component add --toolchain "$toolchain" $missing >&2
    return
  fi
  echo "tally: installing the Rust toolchain $toolchain${components:+ ($components)} (once; about a minute)" >&2
  rustup toolchain install "$toolchain" --profile minimal ${components:+--component "$components"} >&2
}

tally_host_toolchain() {
  local channel
  channel=$(tally_host_channel)
  [ -n "$channel" ] || { echo "tally: rust-toolchain.toml names no channel" >&2; exit 1; }
  tally_ensure_toolchain "$channel" "$(tally_host_components)"
  TALLY_HOST_TOOLCHAIN=$channel
}

tally_program_toolchain() {
  tally_ensure_toolchain "$TALLY_PROGRAM_NIGHTLY" rust-src
}
