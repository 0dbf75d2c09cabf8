# Sourced by the benchmarks: sets $ansible_playbook to an ansible-playbook from a venv with
# ansible-core from PyPI, created once under target/bench-venv and shared by every benchmark.
venv=target/bench-venv
if [ ! -x "$venv/bin/ansible-playbook" ]; then
  echo "creating $venv with ansible-core (one time)" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet 'ansible-core>=2.19,<2.20'
fi
ansible_playbook="$venv/bin/ansible-playbook"
