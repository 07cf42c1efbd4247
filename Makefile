# Doorstep — top-level Makefile.  The README's two commands live here:
#   make run    install what is missing, build, start the server with a demo street
#               (DEMO=district: a district server fed by two street servers)
#   make test   install what is missing, build three times (gcc; gcc Release, build only; clang+ASan+UBSan),
#               run ctest on the first and last, and every fuzz target for FUZZ_SECONDS in build-fuzz/ (before ASan)
# Also: make bench, make fuzz, make memcheck, make soak, make clean.  Build trees: build/ and build-asan/.

JOBS     ?= $(shell nproc 2>/dev/null || echo 2)
BUILD    ?= build
ASAN     ?= build-asan
FUZZ     ?= build-fuzz
FUZZ_SECONDS ?= 60

.PHONY: all deps build build-asan build-release test test-normal test-asan run bench fuzz clean

all: build

deps:
	@scripts/install-deps

build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=gcc -DDOORSTEP_WERROR=ON >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

build-asan: deps
	@cmake -S . -B $(ASAN) -DCMAKE_BUILD_TYPE=Debug -DCMAKE_C_COMPILER=clang -DDOORSTEP_SANITIZE=ON -DDOORSTEP_WERROR=ON >/dev/null
	@cmake --build $(ASAN) -j $(JOBS)

test-normal: build
	@echo "== ctest: normal build (gcc, $(BUILD)/) =="
	@cd $(BUILD) && ctest --output-on-failure -j $(JOBS) </dev/null

test-asan: build-asan
	@echo "== ctest: ASan+UBSan build (clang, $(ASAN)/) =="
	@cd $(ASAN) && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		ctest --output-on-failure -j $(JOBS) </dev/null

# The optimised build packagers make (-O3 -DNDEBUG finds warnings -O2 does not):
# built once, with warnings as errors, so it stays buildable.  Not run: the
# normal build's tests cover the same code.
RELEASE  ?= build-release
build-release: deps
	@echo "== build: Release (gcc, $(RELEASE)/) =="
	@cmake -S . -B $(RELEASE) -DCMAKE_BUILD_TYPE=Release -DCMAKE_C_COMPILER=gcc -DDOORSTEP_WERROR=ON >/dev/null
	@cmake --build $(RELEASE) -j $(JOBS)

test: test-normal build-release test-fuzz test-asan

run: build
	@if [ "$(DEMO)" = district ]; then scripts/run-demo-district $(BUILD); \
	 else scripts/run-demo $(BUILD); fi

bench: build
	@scripts/run-bench $(BUILD)

fuzz: deps
	@cmake -S . -B $(FUZZ) -DCMAKE_BUILD_TYPE=Debug -DCMAKE_C_COMPILER=clang -DDOORSTEP_FUZZ=ON -DDOORSTEP_WERROR=ON >/dev/null
	@cmake --build $(FUZZ) -j $(JOBS)
	@scripts/run-fuzz $(FUZZ) $(FUZZ_SECONDS)

clean:
	rm -rf $(BUILD) $(ASAN) $(FUZZ) $(RELEASE)

# ---- reliability (issue #9; docs/RELIABILITY.md) ------------------------------------
# test-fuzz: every libFuzzer target for FUZZ_SECONDS (60) as ctest tests in
# $(FUZZ)/, in parallel, after replaying its seed corpus.  memcheck: the unit
# tests (sync_test_session included) and one end-to-end sync run under valgrind:
# doorstepd itself under load from the crash harness's devices, stopped with SIGTERM.  soak: the crash harness with many
# more SIGKILLs (SOAK_KILLS) and devices.
SOAK_KILLS ?= 500
SOAK_DEVICES ?= 32
MEMCHECK_TESTS ?= crdt_test_clock crdt_test_codec crdt_test_converge crdt_test_mpcheck \
	crdt_test_record crdt_test_val crdt_test_validate wire_test_envelope wire_test_schema \
	store_test_store store_test_admin store_test_review store_test_faults sync_test_session \
	faults_alloc
# somalloc=nouserintercepts: valgrind replaces malloc only in libc, so faults_alloc's own
# malloc (tests/common/failalloc.c, forwarding to __libc_malloc) stays in place.
VALGRIND = valgrind -q --leak-check=full --errors-for-leak-kinds=definite,indirect \
	--error-exitcode=1 --soname-synonyms=somalloc=nouserintercepts

.PHONY: test-fuzz memcheck soak

test-fuzz: deps
	@cmake -S . -B $(FUZZ) -DCMAKE_BUILD_TYPE=Debug -DCMAKE_C_COMPILER=clang -DDOORSTEP_FUZZ=ON \
		-DDOORSTEP_FUZZ_SECONDS=$(FUZZ_SECONDS) -DDOORSTEP_WERROR=ON >/dev/null
	@cmake --build $(FUZZ) -j $(JOBS)
	@echo "== ctest: fuzz targets, $(FUZZ_SECONDS)s each ($(FUZZ)/) =="
	@cd $(FUZZ) && ctest --output-on-failure -j $(JOBS) -R '^fuzz_' </dev/null

memcheck: build
	@echo "== valgrind memcheck ($(BUILD)/) =="
	@cd $(BUILD) && fail=0; for t in $(MEMCHECK_TESTS); do \
		if DOORSTEP_MEMCHECK=1 $(VALGRIND) ./$$t >$$t.memcheck.log 2>&1; then echo "memcheck ok: $$t"; \
		else echo "memcheck FAILED: $$t (see $(BUILD)/$$t.memcheck.log)"; tail -30 $$t.memcheck.log; fail=1; fi; \
	done; \
	if $(CURDIR)/$(BUILD)/crash_harness --build $(CURDIR)/$(BUILD) --kills 0 --devices 4 --run-ms 5000 \
		--wrap "$(VALGRIND) --log-file=$(CURDIR)/$(BUILD)/doorstepd.memcheck.log" >/dev/null; \
	then echo "memcheck ok: doorstepd under load (end-to-end sync, graceful stop)"; \
	else echo "memcheck FAILED: doorstepd (see $(BUILD)/doorstepd.memcheck.log)"; fail=1; fi; \
	exit $$fail

soak: build
	@echo "== soak: crash harness, $(SOAK_KILLS) kills, $(SOAK_DEVICES) devices =="
	@$(BUILD)/crash_harness --build $(BUILD) --kills $(SOAK_KILLS) --devices $(SOAK_DEVICES)
	@$(BUILD)/crash_harness --build $(BUILD) --doorstepd $(BUILD)/doorstepd-ackfirst --expect-loss --kills 100
