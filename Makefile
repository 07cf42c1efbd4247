# Doorstep — top-level Makefile.  The README's two commands live here:
#   make run    install what is missing, build, start the server with a demo street
#   make test   install what is missing, build twice (gcc; clang+ASan+UBSan), run ctest on both
# Also: make bench, make fuzz, make clean.  Build trees: build/ and build-asan/.

JOBS     ?= $(shell nproc 2>/dev/null || echo 2)
BUILD    ?= build
ASAN     ?= build-asan
FUZZ     ?= build-fuzz
FUZZ_SECONDS ?= 60

.PHONY: all deps build build-asan test test-normal test-asan run bench fuzz clean

all: build

deps:
	@scripts/install-deps

build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=gcc >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

build-asan: deps
	@cmake -S . -B $(ASAN) -DCMAKE_BUILD_TYPE=Debug -DCMAKE_C_COMPILER=clang -DDOORSTEP_SANITIZE=ON >/dev/null
	@cmake --build $(ASAN) -j $(JOBS)

test-normal: build
	@echo "== ctest: normal build (gcc, $(BUILD)/) =="
	@cd $(BUILD) && ctest --output-on-failure -j $(JOBS) </dev/null

test-asan: build-asan
	@echo "== ctest: ASan+UBSan build (clang, $(ASAN)/) =="
	@cd $(ASAN) && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		ctest --output-on-failure -j $(JOBS) </dev/null

test: test-normal test-asan

run: build
	@scripts/run-demo $(BUILD)

bench: build
	@scripts/run-bench $(BUILD)

fuzz: deps
	@cmake -S . -B $(FUZZ) -DCMAKE_BUILD_TYPE=Debug -DCMAKE_C_COMPILER=clang -DDOORSTEP_FUZZ=ON >/dev/null
	@cmake --build $(FUZZ) -j $(JOBS)
	@scripts/run-fuzz $(FUZZ) $(FUZZ_SECONDS)

clean:
	rm -rf $(BUILD) $(ASAN) $(FUZZ)
