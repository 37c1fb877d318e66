# remus: two commands on a fresh machine.
#   make demo   install what is missing, build, run the main demonstration
#   make test   install what is missing, build, run every test (needs root: namespaces, AF_PACKET)
.PHONY: all setup build release test lint bench demo demo-netbuf clean

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

# Unit and property tests of the pure cores, then integration tests that drive the real
# binaries over real namespaces, veths, bridges and QEMU guests.
test: setup build lint
	$(CARGO) test --workspace --no-fail-fast $(FEATURES)

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets $(FEATURES) -- -D warnings

bench: setup release
	bash scripts/bench-netbuf.sh
	bash scripts/bench-diskrep.sh
	bash scripts/bench-checkpointd.sh
	bash scripts/bench-dirty.sh
	bash scripts/bench-failover.sh
	bash scripts/bench-false-takeover.sh

# The main job: a QEMU guest protected across two simulated hosts, a primary crash, failover.
demo: setup build
	target/debug/remus demo

demo-netbuf: setup build
	bash scripts/demo-netbuf.sh

clean:
	$(CARGO) clean
