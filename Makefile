# The two commands of mmr. Both install what they need first (scripts/setup.sh).
.PHONY: setup test demo bench package

setup:
	scripts/setup.sh

test: setup
	scripts/test.sh

demo: setup
	scripts/demo.sh

bench: setup
	scripts/bench.sh

# A Debian package for PostgreSQL 15: target/package/mmr_<version>_amd64.deb
package: setup
	scripts/package.sh
