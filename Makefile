# The two commands of the README. Both set the machine up first (idempotent).
.PHONY: install demo test bench

install:
	bash scripts/install.sh

demo: install
	vtcr demo

test:
	bash scripts/install.sh --test
	python3 -m pytest -q tests

bench: install
	python3 -m perf.render_bench
