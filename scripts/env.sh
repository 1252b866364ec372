# Sourced by the other scripts: sets PYTHON to the interpreter jointsparse is installed into.
# An active virtual environment is used as it is; otherwise the project's own .venv (created by
# setup.sh), so that nothing is installed into the system Python (which Debian/Ubuntu refuse:
# "externally-managed-environment").
if [ -n "${VIRTUAL_ENV:-}" ]; then
  PYTHON="$VIRTUAL_ENV/bin/python"
else
  PYTHON="$PWD/.venv/bin/python"
fi
