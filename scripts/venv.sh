# Sourced by scripts/serve.sh and scripts/test.sh (from the repository root):
# `ensure_venv SPEC` makes .venv hold the project installed as SPEC ("." or ".[dev]").
#
# pip runs only when .venv is missing or pyproject.toml changed since the last
# set-up (a fresh clone, as in CI, installs): a reinstall on every start took
# over two minutes of silent pip. A stamp in .venv records the hash of
# pyproject.toml and what was installed; it is written after pip succeeds, so an
# interrupted set-up is redone. An exclusive lock on pyproject.toml serialises
# set-ups of one checkout: two starts at once rebuilt .venv under each other
# ("No such file or directory: .venv/bin/sentiloop").

ensure_venv() {
  local spec="$1"
  local venv="${SENTILOOP_VENV:-.venv}"
  local stamp="$venv/.sentiloop-installed"
  local digest reason lock
  exec {lock}<pyproject.toml
  flock "$lock"
  digest="$(sha256sum pyproject.toml | cut -d' ' -f1)"
  # A development install (".[dev]") also serves ".".
  if [[ -f "$stamp" ]] && { grep -qxF "$digest $spec" "$stamp" ||
    { [[ "$spec" == "." ]] && grep -qxF "$digest .[dev]" "$stamp"; }; }; then
    echo "using $venv (set up for this pyproject.toml; sentiloop is $venv/bin/sentiloop)" >&2
  else
    if [[ ! -x "$venv/bin/python" ]]; then
      reason="there is no $venv yet"
    elif [[ -f "$stamp" ]] && grep -q "^$digest " "$stamp"; then
      reason="$spec is not installed yet"
    else
      reason="pyproject.toml changed since the last set-up"
    fi
    echo "setting up $venv: pip install -e '$spec' ($reason; a few minutes the first time)" >&2
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$spec"
    if [[ -f "$stamp" ]] && grep -q "^$digest " "$stamp"; then
      echo "$digest $spec" >>"$stamp"
    else
      echo "$digest $spec" >"$stamp"
    fi
  fi
  flock -u "$lock"
  exec {lock}<&-
}
