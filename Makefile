# CVLAN: the two commands. Both install what is missing first (run as root on Debian).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
SSLYZE_VENV := .venv-sslyze
SSLYZE := sslyze==6.3.1
APT_PKGS := wireguard-go wireguard-tools nftables iproute2 iputils-ping iperf3 nebula stun-client stun-server sqlite3 \
            postgresql chromium procps curl haproxy graphviz prometheus \
            debhelper dh-virtualenv python3-venv lintian mmdebstrap systemd systemd-container dnsutils
APT_BINS := wireguard-go wg nft ip ping iperf3 nebula stun stund chromium ps curl haproxy sqlite3 dot promtool \
            dh dh_virtualenv lintian mmdebstrap systemd-analyze systemd-nspawn dig

.PHONY: demo test deps venv sysdeps check unit integration e2e ui bench clean proto diagrams deb oidc-provider

deps: sysdeps venv oidc-provider

sysdeps: .stamp-sysdeps
.stamp-sysdeps: Makefile
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

# The OpenID Connect provider the sign-in tests start on loopback (docs/TESTING.md): npm's
# oidc-provider, pinned by tests/oidcprovider/package-lock.json. node and npm come from Debian when
# missing (a NodeSource node brings its own npm: installing Debian's npm beside it would conflict).
oidc-provider: tests/oidcprovider/node_modules/.stamp
tests/oidcprovider/node_modules/.stamp: tests/oidcprovider/package-lock.json
	@command -v node >/dev/null && command -v npm >/dev/null || \
	  { export DEBIAN_FRONTEND=noninteractive; apt-get update -q && apt-get install -y -q --no-install-recommends nodejs npm; }
	npm ci --prefix tests/oidcprovider --no-audit --no-fund
	@touch $@

proto: venv
	$(PY) scripts/gen_proto.py

# docs/diagrams/*.dot -> *.svg, and the sources' hashes that scripts/check compares.
# (dot comes with the Debian packages; a checkout whose .stamp-sysdeps predates graphviz gets it here.)
diagrams: sysdeps
	@command -v dot >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends graphviz
	bash scripts/diagrams.sh build

demo: deps
	$(PY) -m cvlan.devtools.demo

check: venv
	bash scripts/check

# The suite under coverage, on two workers; fails below the floor in pyproject.toml (docs/TESTING.md).
test: deps
	bash scripts/check
	$(PY) -m pytest -q -p no:cacheprovider --durations=25 -n 2 --cov --cov-report= tests
	$(PY) -m coverage report --format=total

ui: deps
	$(PY) -m pytest -q -p no:cacheprovider tests/ui

# Debian packages cvlan-client and cvlan-server in dist/, with lintian's report (docs/PACKAGING.md).
deb: sysdeps
	CVLAN_LINTIAN=1 packaging/build-deb dist

bench: deps
	$(PY) bench/run_all.py

clean:
	rm -rf cvlan-data .stamp-sysdeps $(VENV) $(SSLYZE_VENV) build dist tests/oidcprovider/node_modules
