# Sourced by scripts/setup and scripts/test-install: `quiet_pip ARGS...` runs "${pip[@]}" ARGS with pip's
# "WARNING: Location 'file:///…/simple/<name>/' is ignored: it is neither a file nor a directory." lines dropped
# (pip prints one for every package a local file:// index lacks: hundreds per install). Everything else pip
# prints, errors included, still shows, and its exit status is kept.
quiet_pip() {
  { "${pip[@]}" "$@" 2>&1 1>&3 3>&- | { grep -v "^WARNING: Location '.*' is ignored: it is neither a file nor a directory\.\$" || true; } >&2; } 3>&1
}
