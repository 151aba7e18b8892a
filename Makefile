.PHONY: setup demo test bench clean

setup:
	@scripts/setup.sh

demo: setup
	@scripts/demo.sh

test:
	@WITH_NODE=1 scripts/setup.sh
	.venv/bin/python -m pytest -q

bench: setup
	.venv/bin/python bench/run.py

clean:
	rm -rf out .pytest_cache
