.PHONY: all build test test-quick demo bench bench-synflood clean install

PREFIX ?= /usr/local

all: build

build:
	swift build -c release

test:
	scripts/test.sh

test-quick:
	scripts/test.sh --quick

demo:
	scripts/demo.sh

bench:
	scripts/bench.sh

bench-synflood:
	scripts/bench-synflood.sh

install: build
	install -D -m 0755 "$$(swift build -c release --show-bin-path)/second-chance" $(DESTDIR)$(PREFIX)/sbin/second-chance
	install -D -m 0644 systemd/second-chance@.service $(DESTDIR)/lib/systemd/system/second-chance@.service
	install -D -m 0644 kmod/modules-load.d/proxyside.conf $(DESTDIR)/usr/lib/modules-load.d/proxyside.conf
	install -D -m 0644 kmod/sysctl.d/60-proxyside.conf $(DESTDIR)/usr/lib/sysctl.d/60-proxyside.conf

clean:
	rm -rf .build
