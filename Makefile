.PHONY: all build test test-quick demo bench bench-fastpath bench-synflood bench-reload bench-canary bench-lifecycle clean install deb

PREFIX ?= /usr/local

all: build

build:
	swift build -c release --static-swift-stdlib --product second-chance
	swift build -c release --static-swift-stdlib --product bindkeeper

test:
	scripts/test.sh

test-quick:
	scripts/test.sh --quick

demo:
	scripts/demo.sh

bench:
	scripts/bench.sh

bench-fastpath:
	scripts/bench-fastpath.sh

bench-synflood:
	scripts/bench-synflood.sh

bench-reload:
	scripts/bench-reload.sh

bench-canary:
	scripts/bench-canary.sh

bench-lifecycle:
	scripts/bench-lifecycle.sh

# Release binaries (the Swift runtime linked in), man pages, completions, units with these paths,
# configuration in /etc where none is yet, documentation and examples.
install:
	DESTDIR="$(DESTDIR)" PREFIX="$(PREFIX)" scripts/install.sh

# The Debian package, into .build-release/deb (dpkg-buildpackage -b, then lintian).
deb:
	scripts/build-deb.sh

clean:
	rm -rf .build
