# CVLAN: the two commands. Both install what is missing first (run as root on Debian).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
SSLYZE_VENV := .venv-sslyze
SSLYZE := sslyze==6.3.1
APT_PKGS := wireguard-go wireguard-tools nftables iproute2 iputils-ping iperf3 nebula stun-client stun-server sqlite3 \
            postgresql chromium procps curl haproxy prometheus
APT_BINS := wireguard-go wg nft ip ping iperf3 nebula stun stund chromium ps curl haproxy sqlite3 promtool

.PHONY: demo test deps venv sysdeps check unit integration e2e ui bench clean proto

deps: sysdeps venv

sysdeps: .stamp-sysdeps
.stamp-sysdeps:
	@missing=""; for b in $(APT_BINS); do command -v $$b >/dev/null 2>&1 || missing="$$missing $$b"; done; \
	pgbin=$$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | tail -1); [ -x "$$pgbin/initdb" ] || missing="$$missing postgres"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages (missing:$$missing)"; \
	  export DEBIAN_FRONTEND=noninteractive; apt-get update -q && apt-get install -y -q --no-install-recommends $(APT_PKGS); \
	fi
	@touch $@

venv: $(VENV)/.stamp $(SSLYZE_VENV)/.stamp
$(VENV)/.stamp: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

# The TLS scanner the front's tests run, in a virtualenv of its own: it pins an older cryptography
# than the project's.
$(SSLYZE_VENV)/.stamp: Makefile
	@test -x $(SSLYZE_VENV)/bin/python || python3 -m venv $(SSLYZE_VENV)
	$(SSLYZE_VENV)/bin/python -m pip install -q '$(SSLYZE)'
	@touch $@

proto: venv
	$(PY) scripts/gen_proto.py

demo: deps
	$(PY) -m cvlan.demo

check: venv
	bash scripts/check

test: deps
	bash scripts/check
	$(PY) -m pytest -q -p no:cacheprovider tests

ui: deps
	$(PY) -m pytest -q -p no:cacheprovider tests/ui

bench: deps
	$(PY) bench/run_all.py

clean:
	rm -rf cvlan-data .stamp-sysdeps $(VENV) $(SSLYZE_VENV)
