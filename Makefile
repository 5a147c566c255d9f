# tunneld: build, install, uninstall and package.
#
#   make                        release build, Swift runtime linked in (needs only libssh2-1)
#   make install                PREFIX=/usr/local, DESTDIR for staging
#   make uninstall              removes what install put there; keeps /etc files you changed
#   make deb                    dist/tunneld_VERSION_ARCH.deb (needs dpkg-dev)
#
# /etc files (the examples in services.d, all installed with disable = yes, the defaults
# with run_as, the NetworkManager hook) never overwrite a file that is there and differs:
# their checksums as installed are kept in $(DATADIR)/etc-files.sha256, and uninstall
# removes only the ones that still match.

PREFIX ?= /usr/local
DESTDIR ?=
SBINDIR ?= $(PREFIX)/sbin
MANDIR ?= $(PREFIX)/share/man
DATADIR ?= $(PREFIX)/share/tunneld
SYSTEMUNITDIR ?= $(PREFIX)/lib/systemd/system
USERUNITDIR ?= $(PREFIX)/lib/systemd/user
# systemd-sleep (systemd 252, Debian 12) runs hooks from /usr/lib/systemd/system-sleep only,
# whatever the prefix.
SLEEPHOOKDIR ?= /usr/lib/systemd/system-sleep
SYSCONFDIR ?= /etc
CONFDIR = $(SYSCONFDIR)/tunneld/services.d
NMDISPATCHERDIR = $(SYSCONFDIR)/NetworkManager/dispatcher.d

SWIFT ?= swift
# SwiftPM's build directory; the install tests use their own.
SCRATCH ?= .build
# --static-swift-stdlib links the Swift runtime and FoundationEssentials into the binary, so
# that it runs without the toolchain; -z now completes RELRO. The toolchain's lld packs the
# relative relocations (DT_RELR) where glibc is 2.36 or later: the loader then reads some 8 KB
# of them at start instead of 0.9 MB, which would stay resident. Such a binary needs glibc 2.36
# or later (Debian 12's); dpkg-shlibdeps puts that in the .deb's Depends.
RELR := $(shell getconf GNU_LIBC_VERSION 2>/dev/null | awk '{ split($$2, v, "."); if (v[1] > 2 || (v[1] == 2 && v[2] >= 36)) print "-Xlinker -z -Xlinker pack-relative-relocs" }')
SWIFTBUILDFLAGS = -c release --static-swift-stdlib --scratch-path $(SCRATCH) -Xswiftc -use-ld=lld -Xlinker -z -Xlinker now $(RELR)
BINARY = $(SCRATCH)/release/tunneld
STAGE = $(SCRATCH)/install-stage

VERSION := $(shell sed -n 's/^ *static let version = "\(.*\)"$$/\1/p' Sources/tunneld/Tunneld.swift)
ARCH := $(shell dpkg --print-architecture 2>/dev/null || uname -m)
MAINTAINER ?= tunneld maintainers <tunneld@packages.invalid>
DIST ?= dist
DEB = $(DIST)/tunneld_$(VERSION)_$(ARCH).deb
DEBROOT = $(abspath $(SCRATCH))/deb/debian/tunneld

EXAMPLES := $(notdir $(filter-out %~ %.bak,$(wildcard services.d/*)))

.PHONY: all build install install-files install-etc uninstall deb clean-dist

all: build

build:
	$(SWIFT) build $(SWIFTBUILDFLAGS)

$(BINARY):
	$(SWIFT) build $(SWIFTBUILDFLAGS)

# The /etc files as installed: every example with its `disable = no` turned into
# `disable = yes` (and refused if it has no such line), the defaults, the NM hook.
$(STAGE)/etc: $(addprefix services.d/,$(EXAMPLES)) contrib/tunneld-defaults contrib/tunneld-nm-dispatcher
	rm -rf $@ && mkdir -p $@/services.d
	for name in $(EXAMPLES); do \
		sed 's/^\([[:space:]]*disable[[:space:]]*=[[:space:]]*\)no\([[:space:]]\|$$\)/\1yes\2/' \
			services.d/$$name >$@/services.d/$$name && \
		grep -Eq '^[[:space:]]*disable[[:space:]]*=[[:space:]]*yes([[:space:]]|$$)' $@/services.d/$$name || \
		{ echo "services.d/$$name: no 'disable = no' line to turn off; add one" >&2; exit 1; }; \
	done
	cp contrib/tunneld-defaults $@/services.d/00-defaults
	cp contrib/tunneld-nm-dispatcher $@/90-tunneld

# Everything but /etc: binary (stripped), manual pages, units, sleep hook.
install-files: $(BINARY)
	install -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(MANDIR)/man5 \
		$(DESTDIR)$(SYSTEMUNITDIR) $(DESTDIR)$(USERUNITDIR) $(DESTDIR)$(SLEEPHOOKDIR)
	install -m 0755 -s $(BINARY) $(DESTDIR)$(SBINDIR)/tunneld
	install -m 0644 man/tunneld.8 $(DESTDIR)$(MANDIR)/man8/tunneld.8
	install -m 0644 man/tunneld.conf.5 $(DESTDIR)$(MANDIR)/man5/tunneld.conf.5
	sed 's|@SBINDIR@|$(SBINDIR)|g' contrib/tunneld.service.in >$(DESTDIR)$(SYSTEMUNITDIR)/tunneld.service
	chmod 0644 $(DESTDIR)$(SYSTEMUNITDIR)/tunneld.service
	install -m 0644 contrib/tunneld.socket $(DESTDIR)$(SYSTEMUNITDIR)/tunneld.socket
	sed 's|@SBINDIR@|$(SBINDIR)|g' contrib/tunneld-user.service.in >$(DESTDIR)$(USERUNITDIR)/tunneld.service
	chmod 0644 $(DESTDIR)$(USERUNITDIR)/tunneld.service
	install -m 0755 contrib/tunneld-sleep-hook $(DESTDIR)$(SLEEPHOOKDIR)/tunneld

install-etc: $(STAGE)/etc
	sh packaging/etc-files install $(DESTDIR)$(DATADIR)/etc-files.sha256 "$(DESTDIR)" \
		$(foreach name,$(EXAMPLES),0644 $(STAGE)/etc/services.d/$(name) $(CONFDIR)/$(name)) \
		0644 $(STAGE)/etc/services.d/00-defaults $(CONFDIR)/00-defaults \
		0755 $(STAGE)/etc/90-tunneld $(NMDISPATCHERDIR)/90-tunneld

install: install-files install-etc
	@if [ -z "$(DESTDIR)" ] && ! getent passwd tunneld >/dev/null; then \
		echo "run_as = tunneld ($(CONFDIR)/00-defaults) needs the account:"; \
		echo "    adduser --system --group --home /var/lib/tunneld tunneld"; \
	fi

uninstall:
	rm -f $(DESTDIR)$(SBINDIR)/tunneld \
		$(DESTDIR)$(MANDIR)/man8/tunneld.8 $(DESTDIR)$(MANDIR)/man5/tunneld.conf.5 \
		$(DESTDIR)$(SYSTEMUNITDIR)/tunneld.service $(DESTDIR)$(SYSTEMUNITDIR)/tunneld.socket \
		$(DESTDIR)$(USERUNITDIR)/tunneld.service $(DESTDIR)$(SLEEPHOOKDIR)/tunneld
	sh packaging/etc-files uninstall $(DESTDIR)$(DATADIR)/etc-files.sha256 "$(DESTDIR)"
	for directory in $(DESTDIR)$(DATADIR) $(DESTDIR)$(CONFDIR) $(DESTDIR)$(SYSCONFDIR)/tunneld; do \
		rmdir $$directory 2>/dev/null || true; \
	done

# A binary package built with dpkg-deb alone: files as `make install PREFIX=/usr` puts them,
# /etc files as conffiles, manual pages gzipped, Depends from dpkg-shlibdeps.
deb: $(STAGE)/etc
	rm -rf $(SCRATCH)/deb && mkdir -p $(DEBROOT)/DEBIAN $(DIST)
	$(MAKE) --no-print-directory install-files DESTDIR=$(DEBROOT) PREFIX=/usr \
		SYSTEMUNITDIR=/lib/systemd/system SLEEPHOOKDIR=/lib/systemd/system-sleep
	install -d $(DEBROOT)$(CONFDIR) $(DEBROOT)$(NMDISPATCHERDIR) $(DEBROOT)/usr/share/doc/tunneld
	install -m 0644 $(STAGE)/etc/services.d/* $(DEBROOT)$(CONFDIR)/
	install -m 0755 $(STAGE)/etc/90-tunneld $(DEBROOT)$(NMDISPATCHERDIR)/90-tunneld
	strip --remove-section=.comment $(DEBROOT)/usr/sbin/tunneld
	gzip -9n $(DEBROOT)/usr/share/man/man8/tunneld.8 $(DEBROOT)/usr/share/man/man5/tunneld.conf.5
	install -m 0644 packaging/copyright $(DEBROOT)/usr/share/doc/tunneld/copyright
	sed -e 's|@VERSION@|$(VERSION)|' -e 's|@MAINTAINER@|$(MAINTAINER)|' \
		-e "s|@DATE@|$$(date -R -d @$${SOURCE_DATE_EPOCH:-$$(git log -1 --format=%ct 2>/dev/null || date +%s)})|" \
		packaging/changelog.in >$(DEBROOT)/usr/share/doc/tunneld/changelog
	gzip -9n $(DEBROOT)/usr/share/doc/tunneld/changelog
	cd $(DEBROOT) && find etc -type f | sed 's|^|/|' | sort >DEBIAN/conffiles
	install -m 0755 packaging/postinst packaging/prerm packaging/postrm $(DEBROOT)/DEBIAN/
	mkdir -p $(SCRATCH)/deb/debian && printf 'Source: tunneld\n\nPackage: tunneld\nArchitecture: any\n' >$(SCRATCH)/deb/debian/control
	cd $(SCRATCH)/deb && dpkg-shlibdeps -O -e debian/tunneld/usr/sbin/tunneld | sed -n 's/^shlibs:Depends=//p' >depends
	test -s $(SCRATCH)/deb/depends
	sed -e 's|@VERSION@|$(VERSION)|' -e 's|@ARCH@|$(ARCH)|' -e 's|@MAINTAINER@|$(MAINTAINER)|' \
		-e "s|@DEPENDS@|$$(cat $(SCRATCH)/deb/depends), adduser|" \
		-e "s|@SIZE@|$$(du -sk --exclude=DEBIAN $(DEBROOT) | cut -f1)|" \
		packaging/control.in >$(DEBROOT)/DEBIAN/control
	cd $(DEBROOT) && find . -type f ! -path './DEBIAN/*' ! -path './etc/*' -printf '%P\n' | LC_ALL=C sort | xargs md5sum >DEBIAN/md5sums
	dpkg-deb --root-owner-group -Zxz --build $(DEBROOT) $(DEB)

clean-dist:
	rm -rf $(DIST) $(SCRATCH)/deb $(STAGE)
