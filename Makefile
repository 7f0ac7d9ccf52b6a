# careloop: the two commands are `make demo` and `make test`; both build .venv themselves.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo-out
DEMO_PATIENTS ?= 10000
# the drift scenario: from DRIFT_DATE the creatinine assay reads high and some diagnoses are coded differently (the
# simulation itself is the same before it); the model is trained on the data as it stood at TRAIN_END, then goes live
DRIFT_DATE ?= 2024-01-01
TRAIN_END ?= 2023-07-01
SEED ?= 42
DEMO_PORT ?= 8765
DASHBOARD ?= 1

.PHONY: demo test test-scale lint bench clean venv

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/careloop synth --patients $(DEMO_PATIENTS) --seed $(SEED) --drift --drift-date $(DRIFT_DATE) \
		--out $(DEMO_DIR)/hospital --overwrite --updates
	$(BIN)/careloop ingest $(DEMO_DIR)/hospital/ndjson --store $(DEMO_DIR)/store
	# two nightly _since exports, the second night's first and the first night's late: the newest version wins
	$(BIN)/careloop ingest $(DEMO_DIR)/hospital/updates/day-2 --store $(DEMO_DIR)/store
	$(BIN)/careloop ingest $(DEMO_DIR)/hospital/updates/day-1 --store $(DEMO_DIR)/store
	$(BIN)/careloop store info $(DEMO_DIR)/store
	$(BIN)/careloop cohort --task readmission-30d --store $(DEMO_DIR)/store --out $(DEMO_DIR)/cohort/readmission-30d.parquet
	$(BIN)/careloop features --cohort $(DEMO_DIR)/cohort/readmission-30d.parquet --store $(DEMO_DIR)/store \
		--features readmission --out $(DEMO_DIR)/features/readmission-30d.parquet
	$(BIN)/careloop train --task readmission-30d --store $(DEMO_DIR)/store --registry $(DEMO_DIR)/registry \
		--clinician $(DEMO_DIR)/hospital/truth/stays.parquet --seed $(SEED) --data-end $(TRAIN_END) > $(DEMO_DIR)/train.log
	cat $(DEMO_DIR)/train.log
	$(BIN)/careloop models list --registry $(DEMO_DIR)/registry
	$(BIN)/careloop predict --model "$$(tail -n 1 $(DEMO_DIR)/train.log)" --store $(DEMO_DIR)/store \
		--task readmission-30d --out $(DEMO_DIR)/predictions.parquet
	$(BIN)/python -m careloop.serve.demo --model "$$(tail -n 1 $(DEMO_DIR)/train.log)" \
		--hospital $(DEMO_DIR)/hospital --store $(DEMO_DIR)/store --out $(DEMO_DIR)/service --dashboard-port $(DEMO_PORT)
	# after go-live: the stays since the training data, quarter by quarter, against the reference stored in the bundle
	$(BIN)/careloop monitor --model "$$(tail -n 1 $(DEMO_DIR)/train.log)" --store $(DEMO_DIR)/store \
		--out $(DEMO_DIR)/monitor --period quarter
	@echo "Validation report: open $$(tail -n 1 $(DEMO_DIR)/train.log)/report.html in a browser"
	@echo "Monitoring report: open $(DEMO_DIR)/monitor/monitor.html in a browser (drift from $(DRIFT_DATE))"
	@if [ "$(DASHBOARD)" = "1" ]; then \
		echo "Starting the service and dashboard on http://127.0.0.1:$(DEMO_PORT)/dashboard (Ctrl-C to stop)"; \
		$(BIN)/careloop serve --model "$$(tail -n 1 $(DEMO_DIR)/train.log)" --config $(DEMO_DIR)/service/dashboard.yaml \
			--port $(DEMO_PORT) --dashboard --demo --store $(DEMO_DIR)/store --monitor $(DEMO_DIR)/monitor; \
	fi

test: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/python -m pytest

# the slow runs (marked `scale`: hospital scale, Spark over many tiny stores) that `make test` leaves out to stay under
# ten minutes; CI runs both
test-scale: $(STAMP)
	$(BIN)/python -m pytest -m scale

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

bench: $(STAMP)
	$(BIN)/python bench/synth.py
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/features.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
