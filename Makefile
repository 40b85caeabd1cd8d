# Two entry points, each doing all the set-up it needs (see README.md):
#   make demo   run the monitor node on the bundled detector against a replayed camera stream
#   make test   run every test: offline core, live ROS 2 (real DDS, loopback only), colcon build
.PHONY: demo test setup build clean-venv

setup:
	bash scripts/bootstrap.sh

build: setup
	bash -c 'source scripts/env.sh && cargo build --features ros --bins'

demo:
	bash scripts/demo.sh

test:
	bash scripts/test.sh

clean-venv:
	rm -rf .venv
