# spkid — fresh machine: `make demo` (offline end-to-end run) or `make test` (the test suite).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-0.1.0

.PHONY: install demo test test-fast bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip==25.3
	# torch==2.13.0 resolves to the local CPU wheel here; other versions pull several GB of CUDA packages
	$(BIN)/pip install -q -e ".[test,export,plot,report,tensorboard,serve,browser,diarization]"
	# import parity references (test-only): their declared torchaudio/webrtcvad would replace torch or fail to import
	$(BIN)/pip install -q librosa==0.11.0
	$(BIN)/pip install -q --no-deps resemblyzer==0.1.4 webrtcvad-wheels==2.0.14.post1 speechbrain==1.1.2 \
		hyperpyyaml==1.2.3 ruamel.yaml==0.18.16
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/spkid demo --out demo_out

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

bench: $(STAMP)
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache
