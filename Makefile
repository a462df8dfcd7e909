# Fuzzing (libFuzzer + ASan + UBSan, clang from Debian: apt-get install clang libclang-rt-dev).
#   make fuzz SECONDS=60    build every target and run each for SECONDS; prints a summary
#   make fuzz-smoke         the same for ~10 s per target (CI)
#   make fuzz-build         only build (into build/fuzz/)
#   make fuzz-corpus        regenerate the seed corpus in fuzz/corpus/ (needs jpeglm installed)
# A crash stops that target and leaves its input in build/fuzz/crashes/; the summary lists it and
# the make exits non-zero. Reproduce with build/fuzz/<target> <file>.

CLANGXX ?= $(shell command -v clang++ || command -v clang++-16 || command -v clang++-15 || command -v clang++-14)
SECONDS ?= 60
JOBS ?= 1
FUZZ_TARGETS := decode decode_tolerant tables coefficients mcu_validity scan_grammar \
                token_grammar bpe bpe_train
FUZZ_DIR := build/fuzz
SAN := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
FUZZ_CXXFLAGS := -std=c++17 -O1 -g $(SAN) -Icsrc -Ifuzz
NATIVE_SRCS := csrc/codec.cpp csrc/scan_automaton.cpp csrc/bpe.cpp
NATIVE_OBJS := $(patsubst csrc/%.cpp,$(FUZZ_DIR)/obj/%.o,$(NATIVE_SRCS))
FUZZ_BINS := $(addprefix $(FUZZ_DIR)/fuzz_,$(FUZZ_TARGETS))

.PHONY: fuzz fuzz-smoke fuzz-build fuzz-corpus fuzz-clean
.SECONDARY: $(NATIVE_OBJS)

fuzz-build: $(FUZZ_BINS)

$(FUZZ_DIR)/obj/%.o: csrc/%.cpp csrc/*.h
	@mkdir -p $(dir $@)
	$(CLANGXX) $(FUZZ_CXXFLAGS) -fsanitize=fuzzer-no-link $(COV_$*) -c $< -o $@

# The automaton's inner loop runs 256 times per byte (allowed_bytes): comparison tracing there
# halves the speed and the guided harness mode already finds the legal bytes.
COV_scan_automaton := -fno-sanitize-coverage=trace-cmp

$(FUZZ_DIR)/fuzz_%: fuzz/fuzz_%.cpp fuzz/*.h $(NATIVE_OBJS)
	@mkdir -p $(dir $@)
	$(CLANGXX) $(FUZZ_CXXFLAGS) -fsanitize=fuzzer $< $(NATIVE_OBJS) -ljpeg -lpthread -o $@

fuzz: fuzz-build
	bash fuzz/run.sh $(SECONDS) $(FUZZ_TARGETS)

fuzz-smoke: fuzz-build
	bash fuzz/run.sh 10 $(FUZZ_TARGETS)

fuzz-corpus:
	python fuzz/make_corpus.py

fuzz-clean:
	rm -rf $(FUZZ_DIR)

# atheris (pip install atheris) harnesses of the Python layer, SECONDS each.
PY_FUZZ := codec tokenizer grammar
fuzz-python:
	@for t in $(PY_FUZZ); do \
	  echo "== atheris $$t"; \
	  python fuzz/python/fuzz_$$t.py -max_total_time=$(SECONDS) -max_len=8192 -timeout=20 \
	    -print_final_stats=1 -artifact_prefix=build/fuzz/crashes/py-$$t- 2>&1 \
	    | grep -E "stat::number_of_executed_units|Error|error:|Traceback|DONE|crash-" || exit 1; \
	done
