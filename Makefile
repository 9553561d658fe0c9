# The two commands of mmr. Both install what they need first (scripts/setup.sh).
.PHONY: setup test demo bench

setup:
	scripts/setup.sh

test: setup
	scripts/test.sh

demo: setup
	scripts/demo.sh

bench: setup
	scripts/bench.sh
