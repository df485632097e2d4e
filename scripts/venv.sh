# Sourced by run.sh and test.sh: `ensure_venv DIR EXTRAS` creates the virtual environment DIR (if missing), installs
# the CPU torch wheel first (a bare `torch` requirement would pull a multi-GB CUDA build), then relax with EXTRAS,
# and activates it. It installs again only when pyproject.toml or EXTRAS changed (a stamp file records them), so a
# second call takes a moment.
ensure_venv() {
  local dir=$1 extras=$2
  local want
  want="$(sha256sum pyproject.toml | cut -d' ' -f1) $extras"
  if [ ! -x "$dir/bin/python" ]; then
    python3 -m venv "$dir"
  fi
  if [ "$(cat "$dir/.relax-installed" 2>/dev/null)" != "$want" ]; then
    "$dir/bin/python" -m pip install --quiet --upgrade pip
    "$dir/bin/python" -m pip install --quiet torch==2.13.0
    "$dir/bin/python" -m pip install --quiet -e ".[$extras]"
    echo "$want" > "$dir/.relax-installed"
  fi
  # shellcheck disable=SC1091
  . "$dir/bin/activate"
}
