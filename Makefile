# remus: two commands on a fresh machine.
#   make demo   install what is missing, build, run the main demonstration
#   make test   install what is missing, build, run every test (needs root: namespaces, AF_PACKET)
.PHONY: all setup build release install test lint bench fuzz demo demo-netbuf clean

CARGO ?= cargo

all: build

setup:
	@bash scripts/setup.sh

# checkpointd's Xen driver is built against Debian's libxen-dev (make setup installs it).
FEATURES := --features checkpointd/xen

build:
	$(CARGO) build --workspace --all-targets $(FEATURES)

release:
	$(CARGO) build --workspace --release $(FEATURES)

# Installs the binaries, the systemd units, the Pacemaker resource agent and the docs (README.md,
# "Operating remus"). `make release install`; PREFIX=/usr/local, DESTDIR for staging. The units
# and the agent name $(PREFIX)/bin/remus; systemd reads units from /usr/local/lib/systemd/system.
PREFIX ?= /usr/local
OCF_ROOT ?= /usr/lib/ocf
BUILD_DIR ?= target/release
install:
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib/systemd/system
	install -d $(DESTDIR)$(OCF_ROOT)/resource.d/remus $(DESTDIR)$(PREFIX)/share/doc/remus/pacemaker
	install -d -m 0755 $(DESTDIR)/etc/remus
	install -m 0755 $(BUILD_DIR)/remus $(BUILD_DIR)/netbuf $(BUILD_DIR)/diskrep $(BUILD_DIR)/checkpointd $(DESTDIR)$(PREFIX)/bin/
	for u in dist/systemd/*.service; do sed 's|/usr/local/|$(PREFIX)/|g' "$$u" > "$(DESTDIR)$(PREFIX)/lib/systemd/system/$${u##*/}"; done
	sed 's|/usr/local/bin/remus|$(PREFIX)/bin/remus|' dist/ocf/vm > $(DESTDIR)$(OCF_ROOT)/resource.d/remus/vm
	chmod 0755 $(DESTDIR)$(OCF_ROOT)/resource.d/remus/vm
	install -m 0644 README.md $(DESTDIR)$(PREFIX)/share/doc/remus/
	install -m 0644 cli/README.md $(DESTDIR)$(PREFIX)/share/doc/remus/remus.md
	install -m 0644 dist/pacemaker/*.xml $(DESTDIR)$(PREFIX)/share/doc/remus/pacemaker/

# Unit and property tests of the pure cores, then integration tests that drive the real
# binaries over real namespaces, veths, bridges and QEMU guests.
test: setup build lint
	$(CARGO) test --workspace --no-fail-fast $(FEATURES)

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets $(FEATURES) -- -D warnings

# Coverage-guided fuzzing (libFuzzer, stable toolchain) of every parser that reads outside
# bytes, FUZZ_SECS seconds each (default 60); reports inputs run and corpus growth per parser.
# (`make test` runs the property-based fuzzer over the same parsers, 2 s each.)
fuzz: setup
	bash scripts/fuzz.sh

bench: setup release
	bash scripts/bench-netbuf.sh
	bash scripts/bench-diskrep.sh
	bash scripts/bench-checkpointd.sh
	bash scripts/bench-dirty.sh
	bash scripts/bench-failover.sh
	bash scripts/bench-false-takeover.sh
	bash scripts/bench-auth.sh

# The main job: a QEMU guest protected across two simulated hosts, a primary crash, failover.
demo: setup build
	target/debug/remus demo

demo-netbuf: setup build
	bash scripts/demo-netbuf.sh

clean:
	$(CARGO) clean
