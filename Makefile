.PHONY: all build test test-quick demo bench bench-fastpath bench-synflood bench-reload bench-lifecycle clean install

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

bench-fastpath:
	scripts/bench-fastpath.sh

bench-synflood:
	scripts/bench-synflood.sh

bench-reload:
	scripts/bench-reload.sh

bench-lifecycle:
	scripts/bench-lifecycle.sh

install: build
	install -D -m 0755 "$$(swift build -c release --show-bin-path)/second-chance" $(DESTDIR)$(PREFIX)/sbin/second-chance
	install -D -m 0755 "$$(swift build -c release --show-bin-path)/bindkeeper" $(DESTDIR)$(PREFIX)/bin/bindkeeper
	install -D -m 0644 systemd/second-chance@.service $(DESTDIR)/lib/systemd/system/second-chance@.service
	install -D -m 0644 systemd/bindkeeper.service $(DESTDIR)/lib/systemd/system/bindkeeper.service
	install -D -m 0644 systemd/haproxy-multi@.service $(DESTDIR)/lib/systemd/system/haproxy-multi@.service
	install -D -m 0644 systemd/listen-fds-app@.service $(DESTDIR)/lib/systemd/system/listen-fds-app@.service
	install -D -m 0644 kmod/modules-load.d/proxyside.conf $(DESTDIR)/usr/lib/modules-load.d/proxyside.conf
	install -D -m 0644 kmod/sysctl.d/60-proxyside.conf $(DESTDIR)/usr/lib/sysctl.d/60-proxyside.conf
	[ -e $(DESTDIR)/etc/default/second-chance ] || install -D -m 0644 examples/second-chance/default $(DESTDIR)/etc/default/second-chance

clean:
	rm -rf .build
